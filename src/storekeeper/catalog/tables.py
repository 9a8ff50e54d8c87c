"""The catalog's tables, and the steps that bring an older catalog's schema up to date."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
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
    # Who did it and from where: the admin page's user and client address, or the operating
    # system's user and host for the command line and apps (see Catalog.acting).
    Column("actor", String(63)),
    Column("client", String(255)),
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


# What the core last knew about each store, written by every sync, migration, backup,
# restore and drop, and by a refresh that reads the stores themselves: the admin page's
# stores table renders from this, not from a connection per store per page view.
store_state = Table(
    "storekeeper_store_state",
    metadata,
    Column("app", String(63), primary_key=True),
    Column("store", String(63), primary_key=True),
    Column("service", String(63)),
    Column("database", String(255)),
    Column("present", Boolean),
    Column("size", BigInteger),
    Column("revision", String(255)),
    # Why the store could not be read at checked_at ("" when it could).
    Column("problem", Text, nullable=False, default=""),
    Column("checked_at", DateTime(timezone=True)),
    Column("synced_at", DateTime(timezone=True)),
    Column("migrated_at", DateTime(timezone=True)),
    Column("backed_up_at", DateTime(timezone=True)),
    # The store's read replicas as the last refresh found them: JSON, a list of
    # {service, state, lag, replayed, problem} (problems masked); NULL when never read.
    Column("replicas", Text),
)

# The admin page's one user: the password only as an Argon2 hash.
admin_users = Table(
    "storekeeper_admin_users",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

# The admin page's sessions, kept on the server: the cookie holds a random token, the
# catalog only its SHA-256, so a copy of the catalog opens no session.
admin_sessions = Table(
    "storekeeper_admin_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(63), nullable=False),
    Column("client", String(255), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)


def _step_event_actors(conn: Connection) -> None:
    """Version 3 -> 4: the history's who and from where (the admin page)."""
    have = {c["name"] for c in inspect(conn).get_columns(events.name)}
    for column in (events.c.actor, events.c.client):
        if column.name not in have:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {events.name} ADD COLUMN {column.name} {kind}")


def _step_store_state(conn: Connection) -> None:
    """Version 4 -> 5: what the core last knew about each store (the admin page's stores
    table)."""
    store_state.create(conn, checkfirst=True)


def _step_admin_accounts(conn: Connection) -> None:
    """Version 5 -> 6: the admin page's user and its sessions."""
    admin_users.create(conn, checkfirst=True)
    admin_sessions.create(conn, checkfirst=True)


def _step_store_state_replicas(conn: Connection) -> None:
    """Version 6 -> 7: each store's replicas' state and lag as a refresh found them (the admin
    page's "replicas (lag)" column)."""
    have = {c["name"] for c in inspect(conn).get_columns(store_state.name)}
    column = store_state.c.replicas
    if column.name not in have:
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {store_state.name} ADD COLUMN {column.name} {kind}")


#: The schema version this code writes. Bump it and add a step to change the schema.
SCHEMA_VERSION = 7

#: STEPS[n] takes a catalog at version n to n + 1. Version 0 is an empty database.
STEPS: dict[int, Callable[[Connection], None]] = {
    0: lambda conn: metadata.create_all(conn),
    1: _step_backups,
    2: _step_replicas,
    3: _step_event_actors,
    4: _step_store_state,
    5: _step_admin_accounts,
    6: _step_store_state_replicas,
}
