"""What every database backend can do to the databases of one service (a database server)."""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import URL, Engine

from ..errors import ServiceUnavailable
from ..secret import mask


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
        return mask(self.url.render_as_string(hide_password=True))

    def __repr__(self) -> str:
        return f"Service({self.name!r}, {self.display_url!r}, source={self.source!r})"


class Backend(abc.ABC):
    """Create, drop, find, measure and lock the databases of one service."""

    #: SQLAlchemy dialect name this backend serves.
    dialect: str = ""

    def __init__(self, service: Service) -> None:
        self.service = service

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

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Names of the databases on this service that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def size(self, name: str) -> int | None:
        """Size of database ``name`` in bytes, or ``None`` when it does not exist."""

    @abc.abstractmethod
    def lock(self, name: str) -> AbstractContextManager[None]:
        """An exclusive lock on ``name`` across processes, held while provisioning it."""

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
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

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
