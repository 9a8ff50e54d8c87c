"""SQLite: each store is a file ``<name>.sqlite`` in the service's folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import URL, Engine, event, make_url

from ..errors import InvalidName, LockTimeout, ProvisionError, ServiceUnavailable
from .base import Backend, LockHolder, Service, lock_timeout_error

log = logging.getLogger("storekeeper")

SUFFIX = ".sqlite"
# The database header's application id while a store's first initialization runs ("SKuf"):
# in the file itself, so the mark moves with it.
_UNFINISHED = 0x534B7566


class SqliteBackend(Backend):
    """Stores as files in one folder; the service URL is ``sqlite:///path/to/folder``."""

    dialect = "sqlite"

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        if not service.url.database:
            raise ProvisionError(
                f"SQLite service {service.name!r} needs a folder: sqlite:///path/to/folder"
            )
        self.folder = Path(service.url.database)

    def path(self, name: str) -> Path:
        """The file of database ``name``; never outside the service's folder."""
        folder = self.folder.resolve()
        path = (folder / f"{name}{SUFFIX}").resolve()
        if path.parent != folder:
            raise InvalidName(
                f"store database {name!r} would be outside the folder of service "
                f"{self.service.name!r} ({folder})"
            )
        return path

    def database_url(self, name: str) -> URL:
        return self.service.url.set(database=str(self.path(name)))

    def server_url(self) -> URL:
        return make_url("sqlite://")

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def _folder(self) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceUnavailable(
                f"SQLite service {self.service.name!r}: cannot use folder "
                f"{str(self.folder)!r}: {exc.strerror}"
            ) from None
        return self.folder

    def create(self, name: str, *, spatial: bool = False) -> None:
        if spatial:
            raise ProvisionError(
                f"store database {name!r} is spatial, but service {self.service.name!r} is "
                "SQLite: assign a PostgreSQL service with PostGIS to it"
            )
        self._folder()
        path = self.path(name)
        conn = sqlite3.connect(path)
        try:
            # WAL lets readers go on while a writer works; the setting lives in the file.
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()

    def clone(self, template: str, name: str) -> None:
        source, target = self.path(template), self.path(name)
        if not source.is_file():
            raise ProvisionError(
                f"cannot create {name!r} from template {template!r}: the template does not exist "
                f"in service {self.service.name!r}"
            )
        if target.exists():
            raise ProvisionError(
                f"cannot create {name!r} from template {template!r}: it already exists in "
                f"service {self.service.name!r}"
            )
        # The online backup API copies a consistent snapshot even if the template is in use;
        # the copy is written beside the target and renamed, so no half-made store is seen.
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        src, dst = sqlite3.connect(source), sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
            src.close()
        partial.replace(target)

    def _application_id(self, name: str, value: int | None = None) -> int:
        conn = sqlite3.connect(self.path(name), timeout=30)
        try:
            if value is not None:
                conn.execute(f"PRAGMA application_id = {int(value)}")
            return int(conn.execute("PRAGMA application_id").fetchone()[0])
        finally:
            conn.close()

    def mark_unfinished(self, name: str, note: str = "") -> None:
        self._application_id(name, _UNFINISHED)

    def unfinished(self, name: str) -> bool:
        return self.path(name).is_file() and self._application_id(name) == _UNFINISHED

    def mark_finished(self, name: str) -> None:
        if self.unfinished(name):
            self._application_id(name, 0)

    def _mark_file(self, name: str) -> Path:
        path = self.path(name)
        return path.with_name(f".{path.name}.template")

    def seal_template(self, name: str, mark: str = "") -> None:
        # Fold the WAL into the main file so a clone copies one file, with fresh statistics.
        conn = sqlite3.connect(self.path(name))
        try:
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        self._mark_file(name).write_text(mark)

    def template_mark(self, name: str) -> str | None:
        mark = self._mark_file(name)
        if not mark.is_file() or not self.path(name).is_file():
            return None
        return mark.read_text()

    def _note_file(self, name: str) -> Path:
        path = self.path(name)
        return path.with_name(f".{path.name}.note")

    def note(self, name: str) -> str | None:
        if not self.path(name).is_file():
            return None
        for side in (self._mark_file(name), self._note_file(name)):
            if side.is_file():
                return side.read_text()
        return None

    def set_note(self, name: str, note: str) -> None:
        self._note_file(name).write_text(note)

    def unseal_template(self, name: str) -> None:
        # SQLite has no connection limit to lift; only the mark goes.
        self._mark_file(name).unlink(missing_ok=True)

    def drop(self, name: str) -> None:
        path = self.path(name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        self._mark_file(name).unlink(missing_ok=True)
        self._note_file(name).unlink(missing_ok=True)

    @contextmanager
    def sole_use(self, name: str, timeout: float | None = None) -> Iterator[None]:
        wait = self.lock_timeout if timeout is None else timeout
        path = self.path(name)
        if not path.is_file():
            yield
            return
        # Leaving WAL mode needs every other connection closed (each holds a shared lock on
        # the file while open); then an exclusive lock keeps new ones out until the files are
        # gone. SQLite cannot end another process's connection, so this waits for them.
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            deadline = time.monotonic() + wait
            warned = False
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=DELETE")
                    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
                    conn.execute("BEGIN EXCLUSIVE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"store database {name!r} is still open in another connection after "
                        f"{wait:g} s (a pooled connection or an open transaction, "
                        "in this process or another) and SQLite cannot end other processes' "
                        "connections: close them (engine.dispose()) and drop again, or give "
                        "more time with --lock-timeout SECONDS (lock_timeout in storekeeper.toml)"
                    )
                if not warned:
                    log.warning(
                        "waiting for the other connections to %r to close before dropping it "
                        "(giving up after %g s)",
                        name,
                        wait,
                    )
                    warned = True
                time.sleep(0.05)
            yield
        finally:
            conn.close()

    def list(self, prefix: str = "") -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.folder.glob(f"*{SUFFIX}")
            if p.name.startswith(prefix) and p.is_file()
        )

    def size(self, name: str) -> int | None:
        path = self.path(name)
        if not path.is_file():
            return None
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size + (wal.stat().st_size if wal.is_file() else 0)

    def _lock_files(self, name: str) -> tuple[Path, Path]:
        folder = self._folder()
        return folder / f".{name}.lock", folder / f".{name}.lock.holder"

    @contextmanager
    def lock(self, name: str, *, doing: str = "") -> Iterator[None]:
        path, record = self._lock_files(name)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self._wait(lock, name)
        try:
            # The holder record sits beside the lock; the next holder overwrites a stale one
            # (the lock itself dies with its process).
            here = LockHolder.here(doing)
            partial = record.with_name(f"{record.name}.{os.getpid()}")
            partial.write_text(
                json.dumps(
                    {
                        "pid": here.pid,
                        "host": here.host,
                        "since": here.since.isoformat() if here.since else None,
                        "doing": here.doing,
                    }
                )
            )
            partial.replace(record)
            yield
        finally:
            with suppress(OSError):
                record.unlink()
            lock.release()

    def _wait(self, lock: FileLock, name: str) -> None:
        timeout = self.lock_timeout
        log.warning(
            "waiting for the lock on %r, held by %s (giving up after %g s)",
            name,
            (self.lock_holder(name) or LockHolder(detail="just released")).describe(),
            timeout,
        )
        try:
            if timeout <= 0:
                raise Timeout(str(lock.lock_file))
            lock.acquire(timeout=timeout)
        except Timeout:
            raise lock_timeout_error(name, timeout, self.lock_holder(name)) from None

    def lock_holder(self, name: str) -> LockHolder | None:
        path, record = self._lock_files(name)
        probe = FileLock(str(path))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            pass
        else:
            probe.release()
            return None
        try:
            data = json.loads(record.read_text())
            since = dt.datetime.fromisoformat(data["since"]) if data.get("since") else None
            return LockHolder(data.get("pid"), data.get("host"), since, data.get("doing", ""))
        except (OSError, ValueError, TypeError, AttributeError):
            return LockHolder(detail="it has not written its record yet")

    def ping(self) -> str:
        folder = self._folder()
        probe = folder / ".storekeeper-write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ServiceUnavailable(
                f"SQLite service {self.service.name!r}: folder {str(folder)!r} is not "
                f"writable: {exc.strerror}"
            ) from None
        return f"SQLite {sqlite3.sqlite_version} in {folder}"

    def async_url(self, url: URL) -> URL:
        return url.set(drivername="sqlite+aiosqlite")

    def engine_options(self) -> dict[str, Any]:
        # Wait for a writer instead of failing with "database is locked" at once.
        return {"connect_args": {"timeout": 30}}

    def migration_engine(self, name: str) -> Engine:
        # pysqlite commits before DDL on its own: taken over, a failing migration's
        # CREATE/ALTER is rolled back too. Foreign keys stay off here, as Alembic's batch mode
        # needs to copy tables.
        return take_over_transactions(super().migration_engine(name))

    def prepare_engine(self, engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        begin_before_savepoint(engine)


def begin_before_savepoint(engine: Engine) -> Engine:
    """Make a SAVEPOINT on ``engine`` open inside a transaction, so that its RELEASE does not
    commit. pysqlite (legacy transaction control) begins a transaction only before
    INSERT/UPDATE/DELETE; a SAVEPOINT before any of those (a driver's batch, a session's own
    ``begin_nested()``) would itself begin one, and its RELEASE would commit the unit of work
    so far, out of reach of its rollback. This BEGINs first, only then: the rest (when reads
    begin, how writers wait for the lock) stays as pysqlite does it. Nothing to do when the
    connection's transactions are taken over (:func:`take_over_transactions`) or AUTOCOMMIT
    (pysqlite's ``isolation_level`` is None). Sync pysqlite and aiosqlite alike (``engine``
    is an async engine's ``sync_engine``). Returns ``engine``."""

    @event.listens_for(engine, "savepoint")
    def _on_savepoint(conn: Any, _name: str) -> None:
        driver = conn.connection.driver_connection
        if driver.isolation_level is not None and not driver.in_transaction:
            conn.exec_driver_sql("BEGIN")

    return engine


def take_over_transactions(engine: Engine, *, foreign_keys: bool = False) -> Engine:
    """Make SQLAlchemy, not pysqlite, begin and end ``engine``'s transactions (SQLAlchemy's
    documented recipe): then DDL stays inside them and SAVEPOINT works. ``foreign_keys``
    turns SQLite's foreign key checks on for each connection too. Returns ``engine``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        if foreign_keys:
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine
