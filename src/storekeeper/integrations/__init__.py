"""The faces storekeeper shows to frameworks; each module imports its framework, so import
one only where that framework is installed (``storekeeper.flask`` and so on re-export them)."""
