"""What every database backend can do to the databases of one service (a database server)."""

from __future__ import annotations

import abc
import datetime as dt
import os
import re
import socket
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.pool import NullPool

from ..config import DEFAULT_LOCK_TIMEOUT
from ..errors import LockTimeout, ServiceUnavailable
from ..secret import mask, mask_url

# What a holder record may carry: it is written into SQL comments and one-line files.
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:=@/*+()\[\]<>'#~-]")


@dataclass(frozen=True)
class Service:
    """A database server with its connection facts, shared by many apps.

    ``url`` is a SQLAlchemy URL; for SQLite its database part is the folder that holds the
    stores' files. ``str()`` and ``repr()`` never show the password.
    """

    name: str
    url: URL
    source: str = "catalog"
    production: bool = False

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for output."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.display_url!r}, source={self.source!r})"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's lock: the process, its host, since when and what it is doing."""

    pid: int | None = None
    host: str | None = None
    since: dt.datetime | None = None
    doing: str = ""
    #: Anything else the backend knows (PostgreSQL: the server process, when the holder's
    #: record cannot be read).
    detail: str = ""

    @classmethod
    def here(cls, doing: str = "") -> LockHolder:
        """The record of this process, about to hold a lock for ``doing``, with its command
        line (passwords masked)."""
        command = " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])
        what = f"{doing} (in: {command})" if doing else command
        return cls(os.getpid(), socket.gethostname(), dt.datetime.now(dt.UTC), safe_text(what))

    def describe(self) -> str:
        """One line for a person: ``pid 42 on web1 since 09:12:03 UTC (31 s ago), doing: ...``."""
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host:
            parts.append(f"on {self.host}")
        if self.since is not None:
            since = self.since.astimezone(dt.UTC)
            ago = (dt.datetime.now(dt.UTC) - since).total_seconds()
            parts.append(f"since {since:%Y-%m-%d %H:%M:%S} UTC ({max(ago, 0):.0f} s ago)")
        text = " ".join(parts) or "an unknown process"
        if self.doing:
            text += f", doing: {self.doing}"
        if self.detail:
            text += f" ({self.detail})"
        return text


def safe_text(text: str, limit: int = 300) -> str:
    """``text`` with passwords masked and only plain characters kept, for a holder record."""
    # Nothing that could end (or nest) the SQL comment a PostgreSQL lock carries it in.
    plain = _UNSAFE.sub("?", mask(text)).replace("*/", "*?").replace("/*", "?*")
    return plain[:limit]


def lock_timeout_error(name: str, timeout: float, holder: LockHolder | None) -> LockTimeout:
    """The error of a lock on ``name`` not had within ``timeout`` seconds."""
    held = holder.describe() if holder is not None else "a process that has since let it go"
    return LockTimeout(
        f"gave up waiting for the lock on {name!r} after {timeout:g} s: it is held by {held}; "
        "wait for it to finish or end it, or give more time with --lock-timeout SECONDS "
        "(lock_timeout in storekeeper.toml)"
    )


class Backend(abc.ABC):
    """Create, drop, find, measure and lock the databases of one service."""

    #: SQLAlchemy dialect name this backend serves.
    dialect: str = ""
    #: Seconds :meth:`lock` waits before raising :class:`LockTimeout` (0: do not wait).
    lock_timeout: float = float(DEFAULT_LOCK_TIMEOUT)

    def __init__(self, service: Service) -> None:
        self.service = service

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.service!r})"

    @abc.abstractmethod
    def database_url(self, name: str) -> URL:
        """URL of database ``name`` on this service."""

    @abc.abstractmethod
    def server_url(self) -> URL:
        """URL of the server itself, outside any store (PostgreSQL: the maintenance database)."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether database ``name`` exists."""

    @abc.abstractmethod
    def create(self, name: str, *, spatial: bool = False) -> None:
        """Create database ``name`` (UTF-8); with ``spatial``, enable the spatial extension."""

    @abc.abstractmethod
    def drop(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending other connections to it first."""

    def sole_use(self, name: str, timeout: float | None = None) -> AbstractContextManager[None]:
        """A block in which no other connection uses database ``name``, to drop it in.

        Where :meth:`drop` ends other connections itself (PostgreSQL) there is nothing to do.
        A backend that cannot end them (SQLite) waits up to ``timeout`` seconds (by default
        :attr:`lock_timeout`) for them to close, and raises :class:`LockTimeout` if they do not.
        """
        return nullcontext()

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Names of the databases on this service that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def size(self, name: str) -> int | None:
        """Size of database ``name`` in bytes, or ``None`` when it does not exist."""

    @abc.abstractmethod
    def lock(self, name: str, *, doing: str = "") -> AbstractContextManager[None]:
        """An exclusive lock on ``name`` across processes, held while provisioning it.

        It never takes a connection that the work under it needs. While it waits it logs who
        holds it (see :meth:`lock_holder`); after :attr:`lock_timeout` seconds it raises
        :class:`LockTimeout` saying so. ``doing`` says what this process holds it for.
        """

    @abc.abstractmethod
    def lock_holder(self, name: str) -> LockHolder | None:
        """Who holds the lock on ``name`` now, or ``None`` when nobody does."""

    @abc.abstractmethod
    def clone(self, template: str, name: str) -> None:
        """Create database ``name`` as a copy of database ``template`` (which nobody may be
        connected to); raises :class:`ProvisionError` when ``name`` exists."""

    @abc.abstractmethod
    def seal_template(self, name: str, mark: str = "") -> None:
        """Make database ``name`` ready to be cloned many times: statistics fresh, nothing
        left for background maintenance to visit, and no new connections accepted.

        ``mark`` (a fingerprint of what the template was built from) is kept with it and
        read back by :meth:`template_mark`, so a later run can tell whether it is current.
        """

    @abc.abstractmethod
    def template_mark(self, name: str) -> str | None:
        """The mark given to :meth:`seal_template` of database ``name``, if it is sealed."""

    @abc.abstractmethod
    def unseal_template(self, name: str) -> None:
        """Accept connections to a sealed template again (to migrate it further)."""

    @abc.abstractmethod
    def mark_unfinished(self, name: str, note: str = "") -> None:
        """Mark database ``name`` as made but not yet through its first initialization.

        The mark lives in the database itself, so every process and site on the service sees
        it; a database that carries it when its lock is next taken was left by a run that was
        interrupted (Ctrl-C, SIGTERM, ``kill -9``), and is made again as new.
        """

    @abc.abstractmethod
    def unfinished(self, name: str) -> bool:
        """Whether database ``name`` carries the mark of :meth:`mark_unfinished`."""

    @abc.abstractmethod
    def mark_finished(self, name: str) -> None:
        """Remove the mark of :meth:`mark_unfinished` (nothing else) from database ``name``."""

    @abc.abstractmethod
    def note(self, name: str) -> str | None:
        """The note kept with database ``name`` (what :meth:`set_note` wrote, or a sealed
        template's mark), or ``None``; read without connecting to the database."""

    @abc.abstractmethod
    def set_note(self, name: str, note: str) -> None:
        """Keep ``note`` with database ``name`` (the test plugin marks what it made); clones
        do not inherit it."""

    @abc.abstractmethod
    def ping(self) -> str:
        """Connect and return a one-line description of the server; raise if unreachable."""

    def async_url(self, url: URL) -> URL:
        """``url`` with this dialect's asyncio driver (psycopg 3 is both sync and async)."""
        return url

    def engine_options(self) -> dict[str, object]:
        """Extra ``create_engine`` options for this dialect's store engines."""
        return {}

    def migration_engine(self, name: str) -> Engine:
        """A pool-less engine on database ``name`` whose transactions cover DDL, for running
        migrations (nothing stays connected afterwards, so a template can be sealed)."""
        return create_engine(self.database_url(name), poolclass=NullPool, **self.engine_options())

    def prepare_engine(self, engine: Engine) -> None:  # noqa: B027 - optional hook
        """Hook to add event listeners to a new store engine."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (maintenance connections)."""


def unreachable(service: Service, exc: BaseException) -> ServiceUnavailable:
    """The error for a service that cannot be reached, with every secret masked."""
    reason = getattr(exc, "orig", None) or exc
    text = " ".join(str(reason).split())
    return ServiceUnavailable(
        f"cannot connect to service {service.name!r} at {service.display_url}: "
        f"{mask(text, service.url.password)}; check the server is running and the URL "
        f"(storekeeper service test {service.name})"
    )
