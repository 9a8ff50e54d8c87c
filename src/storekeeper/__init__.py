"""storekeeper: an application's SQL databases, whole.

Declare stores in code, plug them into database servers, sync them, and get sessions::

    from storekeeper import App, Store

    app = App("my_first_app", stores=[Store("example_db", metadata=Base.metadata)])
    app.sync()
    with app.session("example_db") as session:
        ...
"""

from .declarations import Kind, ServerSetting, Store
from .declare import App
from .errors import (
    BadCursor,
    BadInput,
    BadRevision,
    ConfigError,
    InitializerError,
    InvalidName,
    LockTimeout,
    MigrationError,
    MultipleFound,
    NotAssigned,
    NotFound,
    ProvisionError,
    ServiceUnavailable,
    StorekeeperError,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "BadCursor",
    "BadInput",
    "BadRevision",
    "ConfigError",
    "InitializerError",
    "InvalidName",
    "Kind",
    "LockTimeout",
    "MigrationError",
    "MultipleFound",
    "NotAssigned",
    "NotFound",
    "ProvisionError",
    "ServerSetting",
    "ServiceUnavailable",
    "Store",
    "StorekeeperError",
    "__version__",
]
