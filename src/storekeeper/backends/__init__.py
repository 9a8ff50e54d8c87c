"""Database backends, one module per dialect, and the service URLs they accept."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import BadInput
from ..secret import mask
from .base import Backend, Service

__all__ = ["Backend", "Service", "backend_for", "parse_service_url"]

SUPPORTED = "postgresql (postgresql+psycopg://user:password@host:5432) or sqlite (sqlite:///folder)"


def parse_service_url(text: str, root: Path, *, what: str = "service URL") -> URL:
    """Parse a service URL; a relative SQLite folder is taken relative to ``root``.

    ``postgres://`` and ``postgresql://`` mean psycopg 3, which storekeeper installs.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"{what} is empty; expected {SUPPORTED}")
    try:
        url = make_url(text.strip())
    except ArgumentError:
        raise BadInput(
            f"{what} {mask(text)!r} is not a database URL; expected {SUPPORTED}"
        ) from None
    backend = url.get_backend_name()
    if backend == "postgres":
        url = url.set(drivername="postgresql+psycopg")
    elif backend == "postgresql":
        if url.get_driver_name() in ("psycopg2", "", None) or url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        elif url.get_driver_name() != "psycopg":
            raise BadInput(
                f"{what} {mask(text)!r}: driver {url.get_driver_name()!r} is not supported "
                "here; use postgresql+psycopg://"
            )
    elif backend == "sqlite":
        folder = url.database
        if not folder or folder == ":memory:":
            raise BadInput(
                f"{what} {mask(text)!r}: a SQLite service is a folder, like sqlite:///var/stores"
            )
        path = Path(folder).expanduser()
        if not path.is_absolute():
            path = root / path
        url = url.set(drivername="sqlite", database=str(path))
    else:
        raise BadInput(
            f"{what} {mask(text)!r}: database {backend!r} is not supported; use {SUPPORTED}"
        )
    return url


def backend_for(service: Service) -> Backend:
    """The backend that manages databases on ``service``."""
    name = service.url.get_backend_name()
    if name == "postgresql":
        from .postgresql import PostgresBackend

        return PostgresBackend(service)
    if name == "sqlite":
        from .sqlite import SqliteBackend

        return SqliteBackend(service)
    raise BadInput(f"service {service.name!r}: database {name!r} is not supported; use {SUPPORTED}")
