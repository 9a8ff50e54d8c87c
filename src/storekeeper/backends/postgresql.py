"""PostgreSQL: databases made with CREATE DATABASE on the service's server."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from ..errors import ProvisionError, ServiceUnavailable
from ..secret import mask
from .base import Backend, LockHolder, Service, lock_timeout_error, unreachable

log = logging.getLogger("storekeeper")

MAINTENANCE_DATABASE = "postgres"
_MARK = "storekeeper template: "
# A database's comment while its first initialization runs: in the server's shared catalog,
# readable without connecting to the database, and gone with it.
_UNFINISHED = "storekeeper: first initialization not finished"

# A lock's holder record rides in a comment of the statement that took the lock, so other
# sessions read it from pg_stat_activity.query while the lock connection sits idle.
_HOLDER = "storekeeper lock holder"
_HOLDER_RECORD = re.compile(_HOLDER + r": pid=(\d+); host=([^;]*); doing=(.*?) \*/")
_LOCK_NOT_AVAILABLE = "55P03"


def find_program(name: str, *, install: str) -> str:
    """The path of PostgreSQL's program ``name`` (``pg_dump``, ``initdb``...): on ``PATH``, else
    in Debian's ``/usr/lib/postgresql/<version>/bin``, newest version first. ``install`` ends
    the error when it is nowhere: what to install (or set) to get it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    raise ServiceUnavailable(f"PostgreSQL's {name!r} program was not found: {install}")


def quote(name: str) -> str:
    """Quote an identifier already checked by :mod:`storekeeper.naming`."""
    return '"' + name.replace('"', '""') + '"'


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for database ``name``."""
    digest = hashlib.blake2b(f"storekeeper:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresBackend(Backend):
    """Stores as databases on a PostgreSQL server, managed from its maintenance database."""

    dialect = "postgresql"

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self._admin: Engine | None = None
        self._locks: Engine | None = None
        self._version: int | None = None

    @property
    def admin(self) -> Engine:
        """An autocommit engine on the maintenance database (``postgres``)."""
        if self._admin is None:
            # Each use is one short statement (locks have connections of their own), so a few
            # kept serve many threads; new connections would cost more than most statements.
            self._admin = create_engine(
                self.server_url(),
                isolation_level="AUTOCOMMIT",
                pool_size=3,
                max_overflow=4,
                pool_pre_ping=True,
            )
        return self._admin

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            conn = self.admin.connect()
        except OperationalError as exc:
            raise unreachable(self.service, exc) from None
        try:
            yield conn
        finally:
            conn.close()

    def _scalar(self, sql: str, **params: Any) -> Any:
        with self._connection() as conn:
            return conn.execute(text(sql), params).scalar()

    def _run(self, sql: str, what: str) -> None:
        with self._connection() as conn:
            try:
                conn.execute(text(sql))
            except DBAPIError as exc:
                reason = " ".join(str(exc.orig).split())
                raise ProvisionError(
                    f"{what} failed on service {self.service.name!r}: "
                    f"{mask(reason, self.service.url.password)}"
                ) from None

    def database_url(self, name: str) -> URL:
        return self.service.url.set(database=name)

    def server_url(self) -> URL:
        return self.service.url.set(database=self.service.url.database or MAINTENANCE_DATABASE)

    def exists(self, name: str) -> bool:
        return bool(self._scalar("SELECT 1 FROM pg_database WHERE datname = :n", n=name))

    def create(self, name: str, *, spatial: bool = False) -> None:
        if spatial and not self._scalar(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'"
        ):
            raise ProvisionError(
                f"store database {name!r} is spatial but PostGIS is not installed on service "
                f"{self.service.name!r}: install it on that server (Debian: apt-get install "
                "postgresql-15-postgis-3) or declare the store without spatial=True"
            )
        self._run(
            f"CREATE DATABASE {quote(name)} ENCODING 'UTF8' TEMPLATE template0",
            f"creating database {name!r}",
        )
        if spatial:
            engine = create_engine(self.database_url(name), poolclass=NullPool)
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
            except DBAPIError as exc:
                engine.dispose()
                self.drop(name)
                raise ProvisionError(
                    f"enabling PostGIS in {name!r} failed on service {self.service.name!r}: "
                    f"{exc.orig}"
                ) from None
            engine.dispose()

    @property
    def server_version(self) -> int:
        """The server's ``server_version_num`` (150004 for 15.4), asked once."""
        if self._version is None:
            self._version = int(self._scalar("SHOW server_version_num"))
        return self._version

    def clone(self, template: str, name: str, *, strategy: str = "FILE_COPY") -> None:
        # FILE_COPY (the only way before 15) copies the template's files after a checkpoint:
        # the fastest for many small clones in a row; WAL_LOG writes every block to the WAL,
        # which is cheaper for a large template while the server is busy.
        options = f" STRATEGY {strategy}" if self.server_version >= 150000 else ""
        self._run(
            f"CREATE DATABASE {quote(name)} TEMPLATE {quote(template)}{options}",
            f"creating database {name!r} from template {template!r}",
        )

    def seal_template(self, name: str, mark: str = "") -> None:
        # A template that autovacuum still has to visit stalls every clone (the clone waits for
        # the worker to leave); a connection left open on it makes clones fail with "source
        # database is being accessed by other users". So: vacuum now, then refuse connections.
        engine = create_engine(
            self.database_url(name), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(text("VACUUM (FREEZE, ANALYZE)"))
        except OperationalError as exc:
            raise unreachable(self.service, exc) from None
        finally:
            engine.dispose()
        self._run(
            f"ALTER DATABASE {quote(name)} WITH ALLOW_CONNECTIONS false",
            f"sealing template {name!r}",
        )
        # The comment lives in the shared catalog, readable without connecting to the
        # template, and is not copied to clones.
        self.set_note(name, _MARK + mark)

    # A database's comment carries two things that different code writes: its note (the test
    # plugin's mark, a sealed template's mark) and, on a line of its own while a first
    # initialization runs, the unfinished mark. Each writer keeps the other's part.

    def _comment(self, name: str) -> tuple[bool, str | None]:
        """``(unfinished, note)`` from database ``name``'s comment."""
        comment = self._scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n",
            n=name,
        )
        if not isinstance(comment, str):
            return False, None
        lines = comment.split("\n")
        unfinished = bool(lines) and lines[0].startswith(_UNFINISHED)
        rest = "\n".join(lines[1:] if unfinished else lines)
        return unfinished, rest or None

    def _write_comment(self, name: str, unfinished_line: str | None, note: str | None) -> None:
        comment = "\n".join(part for part in (unfinished_line, note) if part)
        with self._connection() as conn:
            if not comment:
                conn.exec_driver_sql(f"COMMENT ON DATABASE {quote(name)} IS NULL")
                return
            # COMMENT takes no parameters. Plain printable text is quoted here (standard
            # strings take backslashes as they are); anything else is quoted by the server.
            if comment.isprintable() and "\\" not in comment:
                literal = "'" + comment.replace("'", "''") + "'"
            else:
                literal = str(conn.exec_driver_sql("SELECT quote_literal(%s)", (comment,)).scalar())
            conn.exec_driver_sql(f"COMMENT ON DATABASE {quote(name)} IS {literal}")

    def note(self, name: str) -> str | None:
        note = self._comment(name)[1]
        return None if note is None else note.removeprefix(_MARK)

    def set_note(self, name: str, note: str) -> None:
        unfinished, _ = self._comment(name)
        self._write_comment(name, _UNFINISHED if unfinished else None, note)

    def template_mark(self, name: str) -> str | None:
        sealed = self._scalar("SELECT NOT datallowconn FROM pg_database WHERE datname = :n", n=name)
        note = self._comment(name)[1] if sealed else None
        if note is None or not note.startswith(_MARK):
            return None
        return note[len(_MARK) :]

    def mark_unfinished(self, name: str, note: str = "") -> None:
        self._write_comment(
            name, _UNFINISHED + (f" ({note})" if note else ""), self._comment(name)[1]
        )

    def unfinished(self, name: str) -> bool:
        return self._comment(name)[0]

    def mark_finished(self, name: str) -> None:
        unfinished, note = self._comment(name)
        if unfinished:
            self._write_comment(name, None, note)

    def unseal_template(self, name: str) -> None:
        self._run(f"COMMENT ON DATABASE {quote(name)} IS NULL", f"unsealing template {name!r}")
        self._run(
            f"ALTER DATABASE {quote(name)} WITH ALLOW_CONNECTIONS true",
            f"unsealing template {name!r}",
        )

    def drop(self, name: str) -> None:
        if self.server_version >= 130000:
            self._run(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)", f"dropping {name!r}")
            return
        self._scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :n AND pid <> pg_backend_pid()",
            n=name,
        )
        self._run(f"DROP DATABASE IF EXISTS {quote(name)}", f"dropping {name!r}")

    def rename(self, name: str, new_name: str) -> None:
        """Rename database ``name`` to ``new_name``, ending other connections to it first."""
        self._scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :n AND pid <> pg_backend_pid()",
            n=name,
        )
        self._run(
            f"ALTER DATABASE {quote(name)} RENAME TO {quote(new_name)}",
            f"renaming database {name!r} to {new_name!r}",
        )

    def swap(self, name: str, replacement: str, keep_as: str) -> None:
        """Put database ``replacement`` in the place of ``name``, keeping ``name`` as
        ``keep_as``: both renames in one transaction, so an interrupted swap (even ``kill -9``)
        leaves both databases as they were, never the store's name without a database."""
        self._scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname IN (:a, :b) AND pid <> pg_backend_pid()",
            a=name,
            b=replacement,
        )
        try:
            with self.admin.connect() as autocommit:
                conn = autocommit.execution_options(isolation_level="READ COMMITTED")
                # ALTER DATABASE ... RENAME, unlike CREATE and DROP, runs in a transaction.
                conn.begin()
                conn.exec_driver_sql(f"ALTER DATABASE {quote(name)} RENAME TO {quote(keep_as)}")
                conn.exec_driver_sql(f"ALTER DATABASE {quote(replacement)} RENAME TO {quote(name)}")
                conn.commit()
        except DBAPIError as exc:
            reason = " ".join(str(exc.orig).split())
            raise ProvisionError(
                f"putting database {replacement!r} in the place of {name!r} failed on service "
                f"{self.service.name!r}: {mask(reason, self.service.url.password)}; nothing "
                "was changed"
            ) from None

    def list(self, prefix: str = "") -> list[str]:
        with self._connection() as conn:
            rows = conn.execute(
                text(
                    "SELECT datname FROM pg_database WHERE NOT datistemplate "
                    "AND left(datname, length(:p)) = :p ORDER BY datname"
                ),
                {"p": prefix},
            ).scalars()
            return list(rows)

    def size(self, name: str) -> int | None:
        value = self._scalar(
            "SELECT pg_database_size(datname) FROM pg_database WHERE datname = :n", n=name
        )
        return None if value is None else int(value)

    @property
    def lock_engine(self) -> Engine:
        """An engine on the maintenance database whose connections each hold one lock.

        Outside the admin pool, and unpooled: a lock never waits for a connection that the
        work under it needs, and closing the connection lets the lock go even if unlocking
        cannot be sent.
        """
        if self._locks is None:
            self._locks = create_engine(
                self.server_url(),
                isolation_level="AUTOCOMMIT",
                poolclass=NullPool,
                connect_args={"application_name": "storekeeper lock"},
            )
        return self._locks

    @contextmanager
    def lock(self, name: str, *, doing: str = "") -> Iterator[None]:
        # A session-level advisory lock on the maintenance database: it exists before the
        # store does, and the server releases the lock if this process dies.
        key = lock_key(name)
        here = LockHolder.here(doing)
        record = f"/* {_HOLDER}: pid={here.pid}; host={here.host}; doing={here.doing} */"
        try:
            conn = self.lock_engine.connect()
        except OperationalError as exc:
            raise unreachable(self.service, exc) from None
        owner = os.getpid()
        try:
            if not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key}) {record}").scalar():
                self._wait(conn, name, key, record)
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        try:
            yield
        finally:
            # A forked child must not let go of its parent's lock.
            if os.getpid() == owner:
                try:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                except DBAPIError:
                    conn.invalidate()  # closing it ends the session, and the lock with it
                finally:
                    conn.close()

    def _wait(self, conn: Connection, name: str, key: int, record: str) -> None:
        timeout = self.lock_timeout
        log.warning(
            "waiting for the lock on %r, held by %s (giving up after %g s)",
            name,
            (self._holder(conn, key) or LockHolder(detail="just released")).describe(),
            timeout,
        )
        if timeout > 0:
            # lock_timeout 0 means "wait forever" to PostgreSQL: only a positive one is set.
            conn.exec_driver_sql(f"SET lock_timeout = {max(int(timeout * 1000), 1)}")
            try:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({key}) {record}")
                return
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                    raise
        raise lock_timeout_error(name, timeout, self._holder(conn, key))

    def lock_holder(self, name: str) -> LockHolder | None:
        with self._connection() as conn:
            return self._holder(conn, lock_key(name))

    def _holder(self, conn: Connection, key: int) -> LockHolder | None:
        row = conn.execute(
            text(
                "SELECT a.pid, a.query, a.state, a.state_change, a.application_name, "
                "host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
        ).first()
        if row is None:
            return None
        server_pid, query, state, since, application, client = row
        found = _HOLDER_RECORD.search(query or "")
        if found is None:
            # Another role's sessions hide their query (pg_read_all_stats shows them).
            where = f" from {client}" if client else ""
            return LockHolder(
                since=since if state == "idle" else None,
                detail=f"server process {server_pid}{where}, application {application!r}",
            )
        return LockHolder(
            int(found[1]),
            found[2],
            since,
            found[3],
            detail=f"server process {server_pid}",
        )

    def ping(self) -> str:
        version = self._scalar("SHOW server_version")
        url = self.service.url
        return f"PostgreSQL {version} at {url.host or 'localhost'}:{url.port or 5432}"

    def engine_options(self) -> dict[str, object]:
        return {"pool_pre_ping": False}

    def close(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
            self._admin = None
        if self._locks is not None:
            self._locks.dispose()
            self._locks = None
