"""What apps write: :class:`App` (the facade over sites, sessions, provisioning and
migrations), and the declarations it is made of, re-exported from :mod:`.declarations`.

This module is imported by ``import storekeeper`` and so stays light: the core's verbs (site,
provision, sessions), SQLAlchemy and the rest are imported by the methods that use them, when
an app first touches a database.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .declarations import (
    AppDeclaration,
    Initializer,
    InitializerSpec,
    Kind,
    ServerSetting,
    Store,
)
from .errors import StorekeeperError

if TYPE_CHECKING:
    import asyncio

    from sqlalchemy import URL, Connection, Engine
    from sqlalchemy.ext.asyncio import (
        AsyncEngine,
        AsyncSession,
        async_scoped_session,
        async_sessionmaker,
    )

    # Inside App the names sessionmaker and async_sessionmaker are methods; these aliases
    # name the classes.
    from sqlalchemy.ext.asyncio import async_sessionmaker as AsyncSessionMaker
    from sqlalchemy.orm import Session, scoped_session, sessionmaker
    from sqlalchemy.orm import sessionmaker as SessionMaker

    from .provision import StoreInfo, SyncReport
    from .replicas import ReadSessionScope
    from .site import Placement, Site

__all__ = ["App", "Initializer", "InitializerSpec", "Kind", "ServerSetting", "Store"]


@dataclass(eq=False)
class App(AppDeclaration):
    """An application's stores, server settings and kinds, and the sessions on them.

    ``App("my_first_app", stores=[Store("example_db", metadata=Base.metadata)], module=__name__)``

    ``migrations`` is the folder of the stores' Alembic script directories (default: a
    ``migrations`` folder beside the module that creates the app); ``module`` is that module's
    name (``__name__``), found by looking at the caller when not given.
    """

    _site: Site | None = field(default=None, repr=False)
    _makers: dict[str, sessionmaker[Session]] = field(default_factory=dict, repr=False)
    # store -> (event loop, factory): async engines are per loop, so is their factory.
    _async_makers: dict[
        str, tuple[asyncio.AbstractEventLoop | None, async_sessionmaker[AsyncSession]]
    ] = field(default_factory=dict, repr=False)
    _scoped: dict[str, scoped_session[Session]] = field(default_factory=dict, repr=False)
    _async_scoped: dict[str, async_scoped_session[AsyncSession]] = field(
        default_factory=dict, repr=False
    )
    _joining_makers: dict[str, tuple[Connection, sessionmaker[Session]]] = field(
        default_factory=dict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _APPS.add(self)

    def _made_at_run_time(self) -> list[str]:
        try:
            return [r.name for r in self.site.catalog.runtime_stores(self.name)]
        except StorekeeperError:  # an unreachable catalog must not hide the caller's error
            return []

    # the site -------------------------------------------------------------------------

    @property
    def site(self) -> Site:
        """The configuration and catalog this app uses (the process default until bound)."""
        if self._site is None:
            # lazy: import storekeeper stays light
            from .site import Site

            self._site = Site.default()
        return self._site

    def bind(self, site: Site | None) -> App:
        """Use ``site`` from now on (forgetting sessions made from the previous one); ``None``
        goes back to the process-wide default site."""
        with self._lock:
            self._site = site
            self._makers.clear()
            self._joining_makers.clear()
            self._async_makers.clear()
        # Scoped sessions are kept (code holds them), and find the new site's factories.
        self.remove_sessions()
        return self

    def placement(self, name: str) -> Placement:
        """Where store ``name`` lives: service, database name and the assignment used."""
        # lazy: import storekeeper stays light
        from .site import place

        return place(self, name)

    # engines and sessions -------------------------------------------------------------

    def url(self, name: str) -> URL:
        """The SQLAlchemy URL of store ``name`` (its ``str()`` hides the password)."""
        where = self.placement(name)
        return self.site.backend(where.service).database_url(where.database)

    def engine(self, name: str) -> Engine:
        """The engine of store ``name``: one per store per process, made on first use."""
        where = self.placement(name)
        backend = self.site.backend(where.service)
        return self.site.engine(backend.database_url(where.database), backend)

    def sessionmaker(self, name: str) -> sessionmaker[Session]:
        """A ``sessionmaker`` bound to store ``name`` (cached per store)."""
        maker = self._makers.get(name)
        if maker is None:
            # lazy: import storekeeper stays light
            from sqlalchemy.orm import sessionmaker as make

            maker = make(bind=self.engine(name), expire_on_commit=False)
            # lazy: import storekeeper stays light
            from .replicas import watch_commits

            watch_commits(self, name, maker)  # read-your-writes, for stores with replicas
            self._makers[name] = maker
        return maker

    def session(self, name: str, *, readonly: bool = False) -> _SessionScope | ReadSessionScope:
        """``with app.session("example_db") as s:`` commits on success, rolls back on error,
        and always closes.

        ``readonly=True``: a session that only reads, from one of the store's replicas when
        one has replayed this unit of work's writes and is not too far behind, else from the
        primary in a read-only transaction (see :mod:`storekeeper.replicas`)."""
        if readonly:
            # lazy: import storekeeper stays light
            from .replicas import ReadSessionScope

            return ReadSessionScope(self, name)
        maker = self._makers.get(name) or self.sessionmaker(name)
        return _SessionScope(maker)

    def scoped_session(self, name: str) -> scoped_session[Session]:
        """The thread-local ``scoped_session`` of store ``name`` (one per store); call
        ``.remove()`` when done, or :meth:`remove_sessions` for every store at once."""
        scoped = self._scoped.get(name)
        if scoped is None:
            # lazy: import storekeeper stays light
            from sqlalchemy.orm import scoped_session as make_scoped

            # The factory is looked up per new session, so a scoped session that code keeps
            # (a module global) follows a refresh or a new site instead of a stale engine.
            def factory(**options: Any) -> Session:
                return (self._makers.get(name) or self.sessionmaker(name))(**options)

            with self._lock:
                scoped = self._scoped.get(name)
                if scoped is None:
                    scoped = make_scoped(factory)  # type: ignore[arg-type]
                    self._scoped[name] = scoped
        return scoped

    def remove_sessions(self) -> None:
        """Close and discard this thread's scoped session of every store (end of a request)."""
        for scoped in list(self._scoped.values()):
            scoped.remove()

    def async_engine(self, name: str) -> AsyncEngine:
        """The asyncio engine of store ``name``: psycopg's async mode on PostgreSQL, aiosqlite
        on SQLite; one per store per event loop, made on first use. Before closing a loop of
        your own, ``await app.site.dispose_async_engines()`` closes its connections (the
        Starlette integration's lifespan does this at shutdown)."""
        where = self.placement(name)
        backend = self.site.backend(where.service)
        return self.site.async_engine(backend.database_url(where.database), backend)

    def async_sessionmaker(self, name: str) -> async_sessionmaker[AsyncSession]:
        """An ``async_sessionmaker`` bound to store ``name``'s engine in the running loop."""
        # lazy: import storekeeper stays light
        from .site import running_loop

        loop = running_loop()
        cached = self._async_makers.get(name)
        if cached is not None and cached[0] is loop:
            return cached[1]
        # lazy: import storekeeper stays light
        from sqlalchemy.ext.asyncio import async_sessionmaker as make

        maker = make(bind=self.async_engine(name), expire_on_commit=False)
        self._async_makers[name] = (loop, maker)
        return maker

    def async_scoped_session(self, name: str) -> async_scoped_session[AsyncSession]:
        """The ``async_scoped_session`` of store ``name``, one session per request (inside
        :class:`storekeeper.asgi.StoresMiddleware`) or else per asyncio task; end it with
        ``await ....remove()`` or :meth:`remove_async_sessions`."""
        scoped = self._async_scoped.get(name)
        if scoped is None:
            # lazy: import storekeeper stays light
            from sqlalchemy.ext.asyncio import async_scoped_session as make_scoped

            # lazy: import storekeeper stays light
            from .sessions import request_scope

            # Resolved per new session: the factory depends on the running loop and the site.
            def factory(**options: Any) -> AsyncSession:
                return self.async_sessionmaker(name)(**options)

            scoped = make_scoped(factory, scopefunc=request_scope)  # type: ignore[arg-type]
            self._async_scoped[name] = scoped
        return scoped

    async def remove_async_sessions(self) -> None:
        """Close and discard the current request's (or task's) async scoped sessions."""
        for scoped in list(self._async_scoped.values()):
            await scoped.remove()

    def async_session(self, name: str) -> _AsyncSessionScope:
        """``async with app.async_session("example_db") as s:`` commits on success, rolls back
        on error, and always closes."""
        return _AsyncSessionScope(self.async_sessionmaker(name))

    @contextmanager
    def async_sessions_joining(
        self, name: str, maker: AsyncSessionMaker[AsyncSession]
    ) -> Iterator[None]:
        """While inside, in the running event loop, async sessions of store ``name``
        (``async_session``, ``async_sessionmaker`` and async scoped sessions) come from
        ``maker``: a test's factory joined to its transaction."""
        # lazy: import storekeeper stays light
        from .site import running_loop

        loop = running_loop()
        with self._lock:
            previous = self._async_makers.get(name)
            self._async_makers[name] = (loop, maker)
        try:
            yield
        finally:
            with self._lock:
                current = self._async_makers.get(name)
                if current is not None and current[1] is maker:
                    if previous is None:
                        self._async_makers.pop(name, None)
                    else:
                        self._async_makers[name] = previous

    @contextmanager
    def sessions_joining(self, name: str, connection: Connection) -> Iterator[None]:
        """While inside, sessions of store ``name`` (``session``, ``sessionmaker`` and scoped
        sessions made meanwhile) join ``connection``'s transaction through savepoints, so their
        commits stay inside it: how a test rolls back everything the code under test did."""
        joined = self.joining_sessionmaker(name, connection)
        with self._lock:
            previous = self._makers.get(name)
            self._makers[name] = joined
        try:
            yield
        finally:
            with self._lock:
                if self._makers.get(name) is joined:
                    if previous is None:
                        self._makers.pop(name, None)
                    else:
                        self._makers[name] = previous

    def joining_sessionmaker(self, name: str, connection: Connection) -> SessionMaker[Session]:
        """A ``sessionmaker`` whose sessions join ``connection``'s transaction through
        savepoints (kept per store while the connection is the same: a test run makes one per
        test, and a new ``sessionmaker`` class each time would cost more than the test)."""
        cached = self._joining_makers.get(name)
        if cached is not None and cached[0] is connection:
            return cached[1]
        # lazy: import storekeeper stays light
        from sqlalchemy.orm import sessionmaker as make

        joined = make(bind=connection, join_transaction_mode="create_savepoint")
        self._joining_makers[name] = (connection, joined)
        return joined

    def server_engine(self, setting: str) -> Engine:
        """An engine on the server behind ``setting``: its maintenance database on PostgreSQL,
        an in-memory database on SQLite (whose "server" is a folder of files)."""
        # lazy: import storekeeper stays light
        from .site import server_service

        backend = self.site.backend(server_service(self, setting))
        url = backend.server_url()
        return self.site.engine(url, backend)

    # provisioning ---------------------------------------------------------------------

    def sync(
        self,
        stores: Iterable[str] | None = None,
        *,
        refresh: bool = False,
        first_time: bool = False,
        progress: Callable[[Any], None] | None = None,
        backup: bool = True,
    ) -> SyncReport:
        """Create missing stores, bring schemas up, run initializers (what ``storekeeper sync``
        does); returns a report of what was done. An existing store about to be migrated is
        backed up first (pinned, see :func:`storekeeper.backup.before_migrating`) unless
        ``backup`` is false or the configuration turns that off (``auto_backup``)."""
        # lazy: import storekeeper stays light
        from .backup import auto_backup
        from .provision import sync

        return sync(
            [self],
            stores=stores,
            refresh=refresh,
            first_time=first_time,
            progress=progress,
            before=auto_backup(self.site, enabled=backup),
        )

    def create_store(
        self,
        name: str,
        *,
        server: str | None = None,
        kind: str | None = None,
        initializer: InitializerSpec = None,
        spatial: bool | None = None,
        refresh: bool = False,
        first_time: bool | None = None,
    ) -> StoreInfo:
        """Make a store at run time on the server behind ``server`` (recorded in the catalog).

        The initializer runs with ``first_time`` true when this call created the database, or
        when ``first_time=True`` is given; by default (``None``) that is decided. A store that
        exists is kept (its kind too, when ``kind`` is not given) unless ``refresh``.
        """
        # lazy: import storekeeper stays light
        from .provision import create_store

        return create_store(
            self,
            name,
            server=server,
            kind=kind,
            initializer=initializer,
            spatial=spatial,
            refresh=refresh,
            first_time=first_time,
        )

    def drop_store(self, name: str) -> bool:
        """Drop store ``name``'s database (ending its connections); returns whether it existed."""
        # lazy: import storekeeper stays light
        from .provision import drop_store

        return drop_store(self, name)

    def store_exists(self, name: str) -> bool:
        """Whether store ``name``'s database exists."""
        # lazy: import storekeeper stays light
        from .provision import store_exists

        return store_exists(self, name)

    def list_stores(self) -> list[str]:
        """Declared stores and stores made at run time."""
        names = [s.name for s in self.stores]
        names += [
            r.name for r in self.site.catalog.runtime_stores(self.name) if r.name not in names
        ]
        return names

    def list_servers(self) -> list[str]:
        """The app's server settings."""
        return [s.name for s in self.servers]

    def _forget_parents_sessions(self) -> None:
        # In a forked child: the sessions holding the parent's connections (this thread's
        # scoped sessions, sessions joined to a test's connection) let go of them without a
        # byte on their sockets, and are dropped; the child's next sessions are its own. A
        # lock another thread of the parent held would never be released here.
        from .forks import abandon, abandon_session  # lazy: forks imports SQLAlchemy

        self._lock = threading.Lock()
        for scoped in self._scoped.values():
            if scoped.registry.has():
                abandon_session(scoped.registry())
                scoped.registry.clear()
        for connection, joined in self._joining_makers.values():
            abandon(connection)
            for name in [n for n, maker in self._makers.items() if maker is joined]:
                del self._makers[name]
        self._joining_makers.clear()

    def forget(self, name: str) -> None:
        """Drop cached session factories of store ``name`` (after a drop or reassignment)."""
        with self._lock:
            self._makers.pop(name, None)
            self._async_makers.pop(name, None)
            scoped = self._scoped.get(name)
        if scoped is not None:
            scoped.remove()


_APPS: weakref.WeakSet[App] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for app in list(_APPS):
        app._forget_parents_sessions()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _SessionScope:
    """The context manager behind :meth:`App.session`: a plain class, because it sits on every
    request's path and a generator-based one costs more."""

    __slots__ = ("_maker", "_session")

    def __init__(self, maker: sessionmaker[Session]) -> None:
        self._maker = maker

    def __enter__(self) -> Session:
        self._session = self._maker()
        return self._session

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        session = self._session
        try:
            if exc_type is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()


class _AsyncSessionScope:
    """The async context manager behind :meth:`App.async_session`."""

    __slots__ = ("_maker", "_session")

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:
        self._maker = maker

    async def __aenter__(self) -> AsyncSession:
        self._session = self._maker()
        return self._session

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        session = self._session
        try:
            if exc_type is None:
                await session.commit()
            else:
                await session.rollback()
        finally:
            await session.close()
