"""The chat example (Aiopyramid's tutorial schema) served by every storekeeper integration."""
