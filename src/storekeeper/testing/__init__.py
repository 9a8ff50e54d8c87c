"""Testing with stores: the throwaway PostgreSQL server (the pytest plugin comes later)."""
