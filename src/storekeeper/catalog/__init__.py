"""The catalog: storekeeper's own small database of services, assignments, stores made at run
time, and the history of what was done to them.

SQLite at ``./var/catalog.sqlite`` by default; PostgreSQL when ``STOREKEEPER_CATALOG`` says so.
Its schema carries a version, so later releases can change it (see :mod:`.tables`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import getpass
import json
import secrets
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    delete,
    event,
    func,
    insert,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from .. import forks
from ..errors import ConfigError, ServiceUnavailable
from ..secret import decrypt, encrypt, mask, mask_url
from . import tables as t

__all__ = [
    "AdminSession",
    "AdminUser",
    "BackupRecord",
    "Catalog",
    "Event",
    "RuntimeStore",
    "StoreState",
    "acting",
]

#: Who is acting and from where, recorded with every history entry (see :func:`acting`).
_ACTOR: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "storekeeper_actor", default=None
)


@contextlib.contextmanager
def acting(actor: str, client: str) -> Iterator[None]:
    """Record ``actor`` (a user) and ``client`` (an address) with every history entry written
    in this context: the admin page says who clicked and from where. Outside it, entries name
    the operating system's user and this host."""
    token = _ACTOR.set((actor[:63], client[:255]))
    try:
        yield
    finally:
        _ACTOR.reset(token)


def _actor() -> tuple[str, str]:
    given = _ACTOR.get()
    if given is not None:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "?"
    return user[:63], socket.gethostname()[:255]


# Advisory lock key held while a PostgreSQL catalog's schema is made or upgraded.
_CATALOG_LOCK = 0x73746F72656B6565  # "storekee"

# The storekeeper_meta row holding the key that signs keyset pagination cursors.
_CURSOR_KEY = "cursor_signing_key"


def _sqlite_journal(dbapi_conn: Any, _record: Any) -> None:
    # A write-ahead log without a sync per commit: every store made at run time writes the
    # catalog twice, and with SQLite's default journal each commit waited for the disk (up
    # to a hundred milliseconds on a busy one). A commit can only be lost with the machine
    # itself, not with the process.
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert(
    conn: Connection, table: Table, values: dict[str, Any], *, replace: Sequence[str]
) -> int:
    """Insert a row; on a conflict with its primary key, set the ``replace`` columns instead
    (none: keep the row there). One statement, so two writers racing on one key cannot make it
    fail: a failed INSERT aborts a PostgreSQL transaction, whose COMMIT then silently rolls
    back. Returns the number of rows written."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    keys = [column.name for column in table.primary_key]
    statement: Any = dialect.insert(table).values(values)
    if replace:
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={c: statement.excluded[c] for c in replace}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    return conn.execute(statement).rowcount


@dataclass(frozen=True)
class RuntimeStore:
    """A store made at run time with ``app.create_store`` (the columns of
    ``storekeeper_stores``, in order)."""

    app: str
    name: str
    service: str
    server_setting: str | None
    kind: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class Event:
    """One entry of the history: what was done to which store, when, by whom, from where."""

    at: dt.datetime
    app: str
    store: str
    action: str
    ok: bool
    detail: str
    actor: str | None = None
    client: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class StoreState:
    """What the core last knew about a store (written by sync, migrations, backups, drops and
    refreshes; read by the admin page instead of connecting to every store). Its fields are
    the columns of ``storekeeper_store_state``, in order."""

    app: str
    store: str
    service: str | None
    database: str | None
    present: bool | None
    size: int | None
    revision: str | None
    problem: str
    checked_at: dt.datetime | None
    synced_at: dt.datetime | None
    migrated_at: dt.datetime | None
    backed_up_at: dt.datetime | None
    #: The store's replicas as the last refresh found them (``service``, ``state``, ``lag``,
    #: ``replayed``, ``problem`` each); ``None`` when never read.
    replicas: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class AdminUser:
    """The admin page's user: a name and an Argon2 hash of the password."""

    name: str
    password_hash: str
    changed_at: dt.datetime


@dataclass(frozen=True)
class AdminSession:
    """A session of the admin page, found by the SHA-256 of its cookie's token."""

    token_hash: str
    user: str
    client: str
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True)
class BackupRecord:
    """A backup as the catalog knows it: when it was taken, where its manifest is, whether
    it is pinned (and why)."""

    app: str
    store: str
    id: str
    taken_at: dt.datetime
    pinned: bool
    reason: str
    manifest: str


class Catalog:
    """Reads and writes the catalog database; opens (and upgrades) it lazily, and creates it
    on the first write: reading a catalog that was never made finds it empty."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = make_url(url)
        #: A SQLite catalog's file. Until it exists, reading the catalog finds nothing and makes
        #: nothing (so read-only commands leave a bare folder as it was); a write makes it.
        self._file: Path | None = None
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            path = Path(self.url.database).expanduser()
            if not path.is_absolute():
                path = root / path
            self.url = self.url.set(database=str(path))
            self._file = path
        elif self.url.get_backend_name() == "postgresql" and self.url.drivername in (
            "postgresql",
            "postgres",
        ):
            self.url = self.url.set(drivername="postgresql+psycopg")
        if self.url.get_backend_name() not in ("sqlite", "postgresql"):
            # Its writes are INSERT ... ON CONFLICT in these two dialects.
            raise ConfigError(
                f"the catalog must be a SQLite or PostgreSQL database, not {self.display_url}; "
                "check STOREKEEPER_CATALOG or 'catalog' in storekeeper.toml"
            )
        self._engine: Engine | None = None
        self._cursor_key: bytes | None = None

    def __repr__(self) -> str:
        return f"Catalog({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The catalog's URL with its password masked."""
        return mask_url(self.url)

    @property
    def engine(self) -> Engine:
        """The catalog's engine; the schema is made or upgraded on first use."""
        if self._engine is None:
            options: dict[str, Any] = {}
            if self.url.get_backend_name() == "sqlite":
                if self.url.database:
                    Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
                options["connect_args"] = {"timeout": 30}
            engine = forks.create_engine(self.url, **options)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_journal)
            try:
                self._upgrade(engine)
            except OperationalError as exc:
                engine.dispose()
                raise ServiceUnavailable(
                    f"cannot open the catalog at {self.display_url}: "
                    f"{mask(' '.join(str(exc.orig).split()), self.url.password)}; "
                    "check STOREKEEPER_CATALOG or 'catalog' in storekeeper.toml"
                ) from None
            self._engine = engine
        return self._engine

    def _absent(self) -> bool:
        """Whether the catalog was never made: a SQLite file that is not there (yet)."""
        return self._engine is None and self._file is not None and not self._file.exists()

    def _upgrade(self, engine: Engine) -> None:
        # Several processes may open a new catalog at once (two `sync` runs): the schema is
        # made or upgraded by one of them at a time.
        if engine.dialect.name == "sqlite" and self.url.database not in (None, "", ":memory:"):
            with FileLock(f"{self.url.database}.lock"):
                self._upgrade_locked(engine)
        else:
            self._upgrade_locked(engine)

    def _upgrade_locked(self, engine: Engine) -> None:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CATALOG_LOCK})
            version = 0
            if engine.dialect.has_table(conn, t.meta.name):
                raw = conn.execute(
                    select(t.meta.c.value).where(t.meta.c.key == "schema_version")
                ).scalar()
                version = int(raw or 0)
            if version > t.SCHEMA_VERSION:
                raise ConfigError(
                    f"the catalog at {self.display_url} has schema version {version}, newer "
                    f"than this storekeeper understands ({t.SCHEMA_VERSION}); upgrade storekeeper"
                )
            if version == t.SCHEMA_VERSION:
                return
            while version < t.SCHEMA_VERSION:
                t.STEPS[version](conn)
                version += 1
            conn.execute(delete(t.meta).where(t.meta.c.key == "schema_version"))
            conn.execute(insert(t.meta).values(key="schema_version", value=str(version)))

    def schema_version(self) -> int:
        """The schema version of the catalog database (which this opens: makes or upgrades)."""
        with self.engine.connect() as conn:
            raw = conn.execute(
                select(t.meta.c.value).where(t.meta.c.key == "schema_version")
            ).scalar()
        return int(raw or 0)

    def cursor_key(self) -> bytes:
        """The key this site signs keyset pagination cursors with (``after()`` of the read
        drivers): 32 random bytes, made on first use and kept in ``storekeeper_meta``, so
        every process of the site signs and checks alike. Read once per catalog object."""
        if self._cursor_key is None:
            made = secrets.token_hex(32)
            with self.engine.begin() as conn:
                # Two processes making it at once: one insert wins, both read the winner.
                _insert(conn, t.meta, {"key": _CURSOR_KEY, "value": made}, replace=())
                kept = conn.execute(
                    select(t.meta.c.value).where(t.meta.c.key == _CURSOR_KEY)
                ).scalar_one()
            self._cursor_key = bytes.fromhex(kept)
        return self._cursor_key

    def close(self) -> None:
        """Close the catalog's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # services -------------------------------------------------------------------------

    def services(self) -> dict[str, str]:
        """Every service in the catalog, name to URL (decrypted)."""
        if self._absent():
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.services.c.name, t.services.c.url)).all()
        return {name: decrypt(url) for name, url in rows}

    def add_service(self, name: str, url: str, *, replace: bool = False) -> bool:
        """Add a service; with ``replace``, change its URL. Returns whether it existed."""
        values = {"name": name, "url": encrypt(url), "created_at": _now()}
        with self.engine.begin() as conn:
            if not replace:
                return _insert(conn, t.services, values, replace=()) == 0
            existed = conn.execute(
                select(t.services.c.name).where(t.services.c.name == name)
            ).first()
            _insert(conn, t.services, values, replace=("url",))
        return existed is not None

    def remove_service(self, name: str) -> bool:
        """Remove a service; returns whether it was there."""
        if self._absent():
            return False
        with self.engine.begin() as conn:
            return conn.execute(delete(t.services).where(t.services.c.name == name)).rowcount > 0

    def raw_service_urls(self) -> list[str]:
        """The stored (possibly encrypted) URL column, for checks that secrets are sealed."""
        if self._absent():
            return []
        with self.engine.connect() as conn:
            return list(conn.execute(select(t.services.c.url)).scalars())

    # assignments ----------------------------------------------------------------------

    def assignments(self) -> dict[tuple[str, str], str]:
        """Every assignment, ``(app, setting)`` to service name."""
        if self._absent():
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.assignments.c.app, t.assignments.c.setting, t.assignments.c.service)
            ).all()
        return {(app, setting): service for app, setting, service in rows}

    def assign(self, app: str, setting: str, service: str) -> None:
        """Plug ``service`` into ``app.setting`` (replacing an earlier assignment)."""
        values = {"app": app, "setting": setting, "service": service, "assigned_at": _now()}
        with self.engine.begin() as conn:
            _insert(conn, t.assignments, values, replace=("service", "assigned_at"))

    def unassign(self, app: str, setting: str) -> bool:
        """Remove the assignment of ``app.setting``; returns whether there was one."""
        if self._absent():
            return False
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(t.assignments).where(
                    (t.assignments.c.app == app) & (t.assignments.c.setting == setting)
                )
            )
            return result.rowcount > 0

    def users_of(self, service: str) -> list[str]:
        """``app.setting`` names assigned to ``service`` and run-time stores living on it."""
        if self._absent():
            return []
        with self.engine.connect() as conn:
            assigned = conn.execute(
                select(t.assignments.c.app, t.assignments.c.setting).where(
                    t.assignments.c.service == service
                )
            ).all()
            made = conn.execute(
                select(t.stores.c.app, t.stores.c.name).where(t.stores.c.service == service)
            ).all()
            reading = conn.execute(
                select(t.replicas.c.app, t.replicas.c.store).where(t.replicas.c.service == service)
            ).all()
        return sorted({f"{a}.{s}" for a, s in [*assigned, *made, *reading]})

    # read replicas --------------------------------------------------------------------

    def replicas(self) -> dict[tuple[str, str], list[str]]:
        """Every store's replica services, ``(app, store)`` to service names in the order
        they were added."""
        if self._absent():
            return {}
        r = t.replicas.c
        query = select(r.app, r.store, r.service).order_by(r.app, r.store, r.added_at, r.service)
        found: dict[tuple[str, str], list[str]] = {}
        with self.engine.connect() as conn:
            for app, store, service in conn.execute(query):
                found.setdefault((app, store), []).append(service)
        return found

    def add_replica(self, app: str, store: str, service: str) -> bool:
        """Name ``service`` a replica of ``app.store``; returns whether it was one already."""
        values = {"app": app, "store": store, "service": service, "added_at": _now()}
        with self.engine.begin() as conn:
            return _insert(conn, t.replicas, values, replace=()) == 0

    def remove_replica(self, app: str, store: str, service: str) -> bool:
        """Stop reading ``app.store`` from ``service``; returns whether it was a replica."""
        if self._absent():
            return False
        r = t.replicas.c
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(t.replicas).where(
                    (r.app == app) & (r.store == store) & (r.service == service)
                )
            )
            return result.rowcount > 0

    # stores made at run time ----------------------------------------------------------

    def runtime_stores(self, app: str | None = None) -> list[RuntimeStore]:
        """Stores made at run time, of one app or of all."""
        if self._absent():
            return []
        query = select(t.stores).order_by(t.stores.c.app, t.stores.c.name)
        if app is not None:
            query = query.where(t.stores.c.app == app)
        with self.engine.connect() as conn:
            # By position (the table's columns are the record's fields, in order): a
            # thousand stores are read on every view of the admin page's stores table.
            return [RuntimeStore(*row) for row in conn.execute(query)]

    def add_runtime_store(
        self, app: str, name: str, service: str, server_setting: str | None, kind: str | None
    ) -> None:
        """Record a store made at run time (replacing an older record of the same name)."""
        values = {
            "app": app,
            "name": name,
            "service": service,
            "server_setting": server_setting,
            "kind": kind,
            "created_at": _now(),
        }
        with self.engine.begin() as conn:
            _insert(
                conn, t.stores, values, replace=("service", "server_setting", "kind", "created_at")
            )

    def remove_runtime_store(self, app: str, name: str) -> bool:
        """Forget a store made at run time."""
        if self._absent():
            return False
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(t.stores).where((t.stores.c.app == app) & (t.stores.c.name == name))
            )
            return result.rowcount > 0

    # history --------------------------------------------------------------------------

    def record(self, app: str, store: str, action: str, ok: bool = True, detail: str = "") -> None:
        """Add an entry to the history (details are masked), naming who acts from where
        (see :func:`acting`)."""
        actor, client = _actor()
        with self.engine.begin() as conn:
            conn.execute(
                insert(t.events).values(
                    at=_now(),
                    app=app,
                    store=store,
                    action=action[:32],
                    ok=ok,
                    detail=mask(detail),
                    actor=actor,
                    client=client,
                )
            )

    def history(
        self,
        app: str | None = None,
        store: str | None = None,
        limit: int = 100,
        *,
        action: str | None = None,
        actor: str | None = None,
        ok: bool | None = None,
        offset: int = 0,
    ) -> list[Event]:
        """The newest entries first, of those matching every filter given."""
        if self._absent():
            return []
        query = self._history_filter(select(t.events), app, store, action, actor, ok).order_by(
            t.events.c.id.desc()
        )
        with self.engine.connect() as conn:
            return [
                Event(r.at, r.app, r.store, r.action, r.ok, r.detail, r.actor, r.client, r.id)
                for r in conn.execute(query.limit(limit).offset(offset))
            ]

    def history_count(
        self,
        app: str | None = None,
        store: str | None = None,
        *,
        action: str | None = None,
        actor: str | None = None,
        ok: bool | None = None,
    ) -> int:
        """How many entries :meth:`history` has with these filters (for its pages)."""
        if self._absent():
            return 0
        query = self._history_filter(
            select(func.count()).select_from(t.events), app, store, action, actor, ok
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    @staticmethod
    def _history_filter(
        query: Any,
        app: str | None,
        store: str | None,
        action: str | None,
        actor: str | None,
        ok: bool | None,
    ) -> Any:
        for column, value in (
            (t.events.c.app, app),
            (t.events.c.store, store),
            (t.events.c.action, action),
            (t.events.c.actor, actor),
            (t.events.c.ok, ok),
        ):
            if value is not None:
                query = query.where(column == value)
        return query

    def last_events(self, action: str) -> dict[tuple[str, str], dt.datetime]:
        """When ``action`` last succeeded for each ``(app, store)``."""
        if self._absent():
            return {}
        query = (
            select(t.events.c.app, t.events.c.store, func.max(t.events.c.at))
            .where((t.events.c.action == action) & t.events.c.ok)
            .group_by(t.events.c.app, t.events.c.store)
        )
        with self.engine.connect() as conn:
            return {(a, s): at for a, s, at in conn.execute(query)}

    # backups --------------------------------------------------------------------------

    def add_backup(
        self,
        app: str,
        store: str,
        backup_id: str,
        taken_at: dt.datetime,
        manifest: str,
        *,
        pinned: bool = False,
        reason: str = "",
    ) -> None:
        """Record a backup (replacing an older record of the same id)."""
        values = {
            "app": app,
            "store": store,
            "id": backup_id,
            "taken_at": taken_at,
            "pinned": pinned,
            "reason": reason,
            "manifest": manifest,
        }
        with self.engine.begin() as conn:
            _insert(conn, t.backups, values, replace=("taken_at", "pinned", "reason", "manifest"))

    def backup_records(
        self, app: str | None = None, store: str | None = None, backup_id: str | None = None
    ) -> list[BackupRecord]:
        """The backups recorded, oldest first: of one store, or with one id, or all."""
        if self._absent():
            return []
        query = select(t.backups).order_by(t.backups.c.taken_at, t.backups.c.id)
        if app is not None:
            query = query.where(t.backups.c.app == app)
        if store is not None:
            query = query.where(t.backups.c.store == store)
        if backup_id is not None:
            query = query.where(t.backups.c.id == backup_id)
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            # SQLite keeps no time zone: the times written are UTC.
            if row["taken_at"].tzinfo is None:
                row["taken_at"] = row["taken_at"].replace(tzinfo=dt.UTC)
        return [BackupRecord(**row) for row in rows]

    def set_pinned(
        self, app: str, store: str, backup_ids: Sequence[str], pinned: bool, reason: str = ""
    ) -> int:
        """Pin (or unpin) backups of one store; returns how many records changed."""
        if not backup_ids or self._absent():
            return 0
        with self.engine.begin() as conn:
            return conn.execute(
                t.backups.update()
                .where(
                    (t.backups.c.app == app)
                    & (t.backups.c.store == store)
                    & t.backups.c.id.in_(list(backup_ids))
                )
                .values(pinned=pinned, reason=reason if pinned else "")
            ).rowcount

    def remove_backup(self, app: str, store: str, backup_id: str) -> bool:
        """Forget a backup (its files are gone); returns whether it was recorded."""
        if self._absent():
            return False
        with self.engine.begin() as conn:
            return (
                conn.execute(
                    delete(t.backups).where(
                        (t.backups.c.app == app)
                        & (t.backups.c.store == store)
                        & (t.backups.c.id == backup_id)
                    )
                ).rowcount
                > 0
            )

    def last_backups(self) -> dict[tuple[str, str], BackupRecord]:
        """The newest recorded backup of each ``(app, store)``."""
        return {(r.app, r.store): r for r in self.backup_records()}

    # what the core last knew about each store ----------------------------------------

    def record_state(self, app: str, store: str, **values: Any) -> None:
        """Write what is now known about ``app.store`` (columns of ``storekeeper_store_state``:
        ``present``, ``size``, ``revision``, ``synced_at``, ``replicas`` (a list of dicts)...);
        the others are kept."""
        unknown = set(values) - set(t.store_state.c.keys())
        if unknown:
            raise TypeError(f"no such store state: {', '.join(sorted(unknown))}")
        row = {"app": app, "store": store, "problem": "", **values}
        if "problem" in row:
            row["problem"] = mask(str(row["problem"]))
        if row.get("replicas") is not None:
            row["replicas"] = json.dumps(
                [{**r, "problem": mask(str(r.get("problem") or ""))} for r in row["replicas"]]
            )
        with self.engine.begin() as conn:
            _insert(conn, t.store_state, row, replace=[k for k in row if k not in ("app", "store")])

    def store_states(self) -> dict[tuple[str, str], StoreState]:
        """What was last known about every store, by ``(app, store)``."""
        if self._absent():
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.store_state))
            return {
                (r.app, r.store): StoreState(
                    **{
                        **r._asdict(),
                        "replicas": None if r.replicas is None else json.loads(r.replicas),
                    }
                )
                for r in rows
            }

    def forget_state(self, app: str, store: str) -> None:
        """Forget what was known about ``app.store`` (a store made at run time, dropped)."""
        if self._absent():
            return
        with self.engine.begin() as conn:
            conn.execute(
                delete(t.store_state).where(
                    (t.store_state.c.app == app) & (t.store_state.c.store == store)
                )
            )

    # the admin page's user, sessions and signing key ---------------------------------

    def admin_user(self) -> AdminUser | None:
        """The admin page's user, or ``None`` before ``storekeeper admin set-password``."""
        if self._absent():
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(t.admin_users).order_by(t.admin_users.c.name)).first()
        return AdminUser(**row._mapping) if row is not None else None

    def set_admin_user(self, name: str, password_hash: str) -> None:
        """Make ``name`` the one admin user with this password hash, ending every session."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.admin_sessions))
            conn.execute(delete(t.admin_users))
            conn.execute(
                insert(t.admin_users).values(
                    name=name, password_hash=password_hash, changed_at=_now()
                )
            )

    def rehash_admin_user(self, name: str, password_hash: str) -> None:
        """Replace the stored hash of the same password (when its parameters are outdated)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(t.admin_users)
                .where(t.admin_users.c.name == name)
                .values(password_hash=password_hash)
            )

    def add_admin_session(
        self, token_hash: str, user: str, client: str, expires_at: dt.datetime
    ) -> None:
        """Keep a new session (and forget the expired ones)."""
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(delete(t.admin_sessions).where(t.admin_sessions.c.expires_at <= now))
            conn.execute(
                insert(t.admin_sessions).values(
                    token_hash=token_hash,
                    user=user,
                    client=client[:255],
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    def admin_session(self, token_hash: str) -> AdminSession | None:
        """The session whose token has this hash, unless it expired or its user is gone."""
        if self._absent():
            return None
        query = (
            select(t.admin_sessions)
            .join(t.admin_users, t.admin_users.c.name == t.admin_sessions.c.user)
            .where(t.admin_sessions.c.token_hash == token_hash)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        found = AdminSession(**row._mapping)
        expires = found.expires_at
        if expires.tzinfo is None:  # SQLite gives naive datetimes back
            expires = expires.replace(tzinfo=dt.UTC)
        return found if expires > _now() else None

    def end_admin_session(self, token_hash: str) -> None:
        """Forget a session (logout)."""
        if self._absent():
            return
        with self.engine.begin() as conn:
            conn.execute(
                delete(t.admin_sessions).where(t.admin_sessions.c.token_hash == token_hash)
            )

    def setting(self, key: str) -> str | None:
        """A value kept in the catalog's own table (the admin page's signing key)."""
        if self._absent():
            return None
        with self.engine.connect() as conn:
            return conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar()

    def setting_or_default(self, key: str, default: str) -> str:
        """The value kept under ``key``; the first caller's ``default`` is kept when none is
        (two processes starting at once agree on one)."""
        with self.engine.begin() as conn:
            _insert(conn, t.meta, {"key": key, "value": default}, replace=())
            value = conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalar()
        return str(value)
