"""SQLite: each store is a file ``<name>.sqlite`` in the service's folder."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import URL, Engine, event

from ..errors import InvalidName, ProvisionError, ServiceUnavailable
from .base import Backend, Service

SUFFIX = ".sqlite"


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

    def drop(self, name: str) -> None:
        path = self.path(name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)

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

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        folder = self._folder()
        with FileLock(str(folder / f".{name}.lock")):
            yield

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

    def prepare_engine(self, engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
