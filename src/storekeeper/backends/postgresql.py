"""PostgreSQL: databases made with CREATE DATABASE on the service's server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from ..errors import ProvisionError
from ..secret import mask
from .base import Backend, Service, unreachable

MAINTENANCE_DATABASE = "postgres"
_MARK = "storekeeper template: "


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
        self._version: int | None = None

    @property
    def admin(self) -> Engine:
        """An autocommit engine on the maintenance database (``postgres``)."""
        if self._admin is None:
            # Three kept: making a store of a kind holds the store's lock and its template's
            # while it asks and clones, and new connections would cost more than the clone.
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
        self._comment(name, _MARK + mark)

    def _comment(self, name: str, comment: str) -> None:
        # COMMENT takes no parameters. Plain printable text is quoted here (standard strings
        # take backslashes as they are); anything else is quoted by the server.
        with self._connection() as conn:
            if comment.isprintable() and "\\" not in comment:
                literal = "'" + comment.replace("'", "''") + "'"
            else:
                literal = str(conn.exec_driver_sql("SELECT quote_literal(%s)", (comment,)).scalar())
            conn.exec_driver_sql(f"COMMENT ON DATABASE {quote(name)} IS {literal}")

    def note(self, name: str) -> str | None:
        comment = self._scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n",
            n=name,
        )
        if not isinstance(comment, str):
            return None
        return comment.removeprefix(_MARK)

    def set_note(self, name: str, note: str) -> None:
        self._comment(name, note)

    def template_mark(self, name: str) -> str | None:
        comment = self._scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname = :n AND NOT datallowconn",
            n=name,
        )
        if not isinstance(comment, str) or not comment.startswith(_MARK):
            return None
        return comment[len(_MARK) :]

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

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        # A session-level advisory lock on the maintenance database: it exists before the
        # store does, and the server releases the lock if this process dies.
        key = lock_key(name)
        with self._connection() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

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
