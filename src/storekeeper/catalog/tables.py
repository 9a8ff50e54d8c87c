"""The catalog's tables, and the steps that bring an older catalog's schema up to date."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

meta = Table(
    "storekeeper_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

services = Table(
    "storekeeper_services",
    metadata,
    Column("name", String(63), primary_key=True),
    # The URL, encrypted with STOREKEEPER_SECRET_KEY when it is set (see storekeeper.secret).
    Column("url", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

assignments = Table(
    "storekeeper_assignments",
    metadata,
    Column("app", String(63), primary_key=True),
    Column("setting", String(63), primary_key=True),
    Column("service", String(63), nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
)

# Stores made at run time (app.create_store), so they are known to status, sessions and drops.
stores = Table(
    "storekeeper_stores",
    metadata,
    Column("app", String(63), primary_key=True),
    Column("name", String(63), primary_key=True),
    Column("service", String(63), nullable=False),
    Column("server_setting", String(63)),
    Column("kind", String(63)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The history of what was done to stores: sync, create, drop (later migrate, backup).
events = Table(
    "storekeeper_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("app", String(63), nullable=False),
    Column("store", String(63), nullable=False),
    Column("action", String(32), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

# Every backup taken (storekeeper.backup), and whether it is pinned: a pinned backup is never
# pruned by retention. ``manifest`` is the path of its manifest, so a backup stays known when
# the backups folder of its store is moved in the configuration.
backups = Table(
    "storekeeper_backups",
    metadata,
    Column("app", String(63), primary_key=True),
    Column("store", String(63), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("taken_at", DateTime(timezone=True), nullable=False),
    Column("pinned", Boolean, nullable=False, default=False),
    Column("reason", Text, nullable=False, default=""),
    Column("manifest", Text, nullable=False),
)


def _step_backups(conn: Connection) -> None:
    """Version 1 -> 2: the table of backups and their pins."""
    backups.create(conn, checkfirst=True)


# The replica services a store reads from (`assign APP.STORE SERVICE --replica NAME`);
# the primary stays in storekeeper_assignments.
replicas = Table(
    "storekeeper_replicas",
    metadata,
    Column("app", String(63), primary_key=True),
    Column("store", String(63), primary_key=True),
    Column("service", String(63), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)


def _step_replicas(conn: Connection) -> None:
    """Version 2 -> 3: the table of read replicas."""
    replicas.create(conn, checkfirst=True)


#: The schema version this code writes. Bump it and add a step to change the schema.
SCHEMA_VERSION = 3

#: STEPS[n] takes a catalog at version n to n + 1. Version 0 is an empty database.
STEPS: dict[int, Callable[[Connection], None]] = {
    0: lambda conn: metadata.create_all(conn),
    1: _step_backups,
    2: _step_replicas,
}
