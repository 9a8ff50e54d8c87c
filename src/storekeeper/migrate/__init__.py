"""Migrations for every store: Alembic per store and per kind, run by storekeeper.

``storekeeper.migrate`` is imported on demand (it imports Alembic); ``import storekeeper``
stays light.
"""

from .commands import (
    Checked,
    MigrateResult,
    Revision,
    alembic_config,
    check,
    checked,
    current,
    downgrade,
    heads,
    history,
    init,
    migrate_database,
    revision,
    revisions,
    script_directory,
    scripts_for,
    stamp,
    upgrade,
)
from .scripts import Scripts, kind_scripts, store_scripts

__all__ = [
    "Checked",
    "MigrateResult",
    "Revision",
    "Scripts",
    "alembic_config",
    "check",
    "checked",
    "current",
    "downgrade",
    "heads",
    "history",
    "init",
    "kind_scripts",
    "migrate_database",
    "revision",
    "revisions",
    "script_directory",
    "scripts_for",
    "stamp",
    "store_scripts",
    "upgrade",
]
