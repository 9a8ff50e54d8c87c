"""Database backends, one module per dialect, and the service URLs they accept."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import BadInput
from ..secret import mask
from .base import Backend, Service

__all__ = ["Backend", "Service", "backend_for", "parse_service_url"]

SUPPORTED = "postgresql (postgresql+psycopg://user:password@host:5432) or sqlite (sqlite:///folder)"


# The parts of a URL as SQLAlchemy's make_url finds them (sqlalchemy.engine.url._parse_url),
# so a malformed host or port can be named before make_url fails on it with a ValueError.
_URL_PARTS = re.compile(
    r"""
    [\w+]+://
    (?:[^:/]*(?::[^@]*)?@)?
    (?:
        (?:\[(?P<ipv6>[^/?]+)\] | (?P<host>[^/:?]+))?
        (?::(?P<port>[^/?]*))?
    )?
    """,
    re.X,
)
_HOST_NAME = re.compile(r"[\w.-]+")
_PORT = re.compile(r"[0-9]+")


def parse_service_url(text: str, root: Path, *, what: str = "service URL") -> URL:
    """Parse a service URL; a relative SQLite folder is taken relative to ``root``.

    ``postgres://`` and ``postgresql://`` mean psycopg 3, which storekeeper installs. Anything
    malformed (a port that is not a number from 1 to 65535, a host that is not a host name or
    a bracketed IPv6 address, control characters, text that is not UTF-8) raises
    :class:`BadInput` naming the part at fault, never the password.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"{what} is empty; expected {SUPPORTED}")
    text = text.strip()
    _check_characters(text, what)
    _check_host_and_port(text, what)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError, TypeError):
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
        url = url.set(drivername="sqlite", database=str(_sqlite_folder(url, root, text, what)))
    else:
        raise BadInput(
            f"{what} {mask(text)!r}: database {backend!r} is not supported; use {SUPPORTED}"
        )
    return url


def _check_characters(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput(
            f"{what} is not valid UTF-8 text (character {text[exc.start]!r} at position "
            f"{exc.start}); type it again, or percent-encode that part"
        ) from None
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            raise BadInput(
                f"{what} contains the control character {char!r} at position {position}; "
                "a URL has none (percent-encode it in a password, like %0A)"
            )


def _check_host_and_port(text: str, what: str) -> None:
    parts = _URL_PARTS.match(text)
    if parts is None:
        return  # not URL-shaped at all: make_url says so
    ipv6, host, port = parts["ipv6"], parts["host"], parts["port"]
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            raise BadInput(
                f"{what}: host [{ipv6}] is not an IPv6 address; expected {SUPPORTED}"
            ) from None
    elif host is not None and not _HOST_NAME.fullmatch(host):
        raise BadInput(
            f"{what}: host {host!r} is not a host name; write a name or address, an IPv6 "
            "address in brackets ([::1]:5432), and percent-encode '@', ':' and '/' in the "
            "user name and password"
        )
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        shown = port if _PORT.fullmatch(port) else repr(port)
        raise BadInput(
            f"{what}: port {shown} is not a number from 1 to 65535; expected {SUPPORTED}"
        )


def _sqlite_folder(url: URL, root: Path, text: str, what: str) -> Path:
    if url.host or url.port or url.username:
        raise BadInput(
            f"{what} {mask(text)!r}: a SQLite service URL names no host, only a folder: "
            "sqlite:///relative/folder or sqlite:////absolute/folder"
        )
    folder = url.database
    if not folder or folder == ":memory:":
        raise BadInput(
            f"{what} {mask(text)!r}: a SQLite service is a folder, like sqlite:///var/stores"
        )
    try:
        path = Path(folder).expanduser()
    except RuntimeError:  # ~name of a user who does not exist, or no home folder
        raise BadInput(
            f"{what}: folder {folder!r}: cannot find the home folder of {Path(folder).parts[0]!r}"
        ) from None
    return path if path.is_absolute() else root / path


def backend_for(service: Service) -> Backend:
    """The backend that manages databases on ``service``."""
    name = service.url.get_backend_name()
    # Each dialect's module (and its driver) is imported when a service of it is first used.
    if name == "postgresql":
        from .postgresql import PostgresBackend

        return PostgresBackend(service)
    if name == "sqlite":
        from .sqlite import SqliteBackend

        return SqliteBackend(service)
    raise BadInput(f"service {service.name!r}: database {name!r} is not supported; use {SUPPORTED}")
