"""The stream gages example app (Tethys' Persistent Stores tutorial) on storekeeper."""
