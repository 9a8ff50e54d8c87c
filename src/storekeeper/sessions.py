"""Sessions for units of work: a task (:func:`with_store`) or a request (:class:`SessionSet`).

Framework-free: the integrations (Flask, Pyramid, Celery...) are thin faces on these two.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BadInput
from .naming import check_identifier

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .declare import App

R = TypeVar("R")
D = TypeVar("D")

# The key of a store's read session in a SessionSet (store names cannot hold a colon).
_READ = ":read"

# The request an ASGI middleware is serving, if any: what async scoped sessions are keyed by.
_request: ContextVar[object | None] = ContextVar("storekeeper_request", default=None)


def request_scope() -> object:
    """The key of async scoped sessions (``App.async_scoped_session``): the request being
    served (see :func:`new_request_scope`), else the running asyncio task."""
    scope = _request.get()
    return scope if scope is not None else asyncio.current_task()


@contextmanager
def new_request_scope() -> Iterator[object]:
    """Within the block, and the tasks it starts, async scoped sessions belong to a new
    request (the ASGI middleware wraps each request in one)."""
    scope = object()
    token = _request.set(scope)
    try:
        yield scope
    finally:
        _request.reset(token)


def with_store(
    app: App, name: str, *, arg: str | None = None, readonly: bool = False
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Run the decorated function with a session of store ``name`` passed in as keyword
    ``arg`` (default: the store's name), Qapla's ``WithDatabase`` for any task runner::

        @celery.task(bind=True)
        @with_store(app, "example_db")
        def add_score(self, user, points, example_db): ...

    The session commits when the function returns, rolls back when it raises (a Celery
    ``Retry`` included), and is closed either way. ``async def`` functions get an
    ``AsyncSession``. Callers do not pass the argument: the wrapper's signature leaves it out,
    so Celery's argument check and ``inspect.signature`` see the task's real parameters.

    ``readonly=True`` passes a session that only reads, from a replica when one will do
    (``app.session(name, readonly=True)``; not for ``async def`` functions).
    """
    check_identifier(name, "store")
    keyword = arg or name

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        signature = _receiving(
            func,
            [keyword],
            f"with_store({app.name}.{name})",
            "the session",
            ", or pass arg= another name",
        )
        wrapper: Callable[..., Any]
        if readonly and inspect.iscoroutinefunction(func):
            raise BadInput(
                f"with_store({app.name}.{name}, readonly=True): {func.__qualname__} is async; "
                "read sessions from replicas are synchronous for now"
            )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                async with app.async_session(name) as session:
                    return await func(*args, **kwargs, **{keyword: session})

        else:

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with app.session(name, readonly=readonly) as session:
                    return func(*args, **kwargs, **{keyword: session})

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return wrapper

    return decorate


def with_drivers(
    app: App, **drivers: Callable[[Session], Any]
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Run the decorated function with drivers passed in as keywords, all on one unit of
    work::

        @celery.task
        @with_drivers(app, gages=GageWriter, readings=ReadingReader)
        def record(rows, gages, readings): ...

    Each driver is built on its store's session (the store whose metadata holds its model,
    see :func:`driver_store`); drivers of one store share it. The sessions commit when the
    function returns, roll back when it raises, and are closed either way; callers do not
    pass the drivers (the wrapper's signature leaves them out)."""
    if not drivers:
        raise BadInput("with_drivers needs at least one keyword=DriverClass")
    stores = {keyword: driver_store(app, cls) for keyword, cls in drivers.items()}

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        what = f"with_drivers({app.name})"
        if inspect.iscoroutinefunction(func):
            raise BadInput(
                f"{what}: {func.__qualname__} is async; give it a session with with_store and "
                "build the async drivers on it"
            )
        signature = _receiving(func, list(drivers), what, "a driver")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            sessions = SessionSet(app)
            try:
                given = {k: cls(sessions.get(stores[k])) for k, cls in drivers.items()}
                result = func(*args, **kwargs, **given)
            except BaseException:
                sessions.finish(commit=False)
                raise
            sessions.finish(commit=True)
            return result

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _receiving(
    func: Callable[..., Any], keywords: list[str], what: str, given: str, hint: str = ""
) -> inspect.Signature:
    """``func``'s signature without ``keywords``, the parameters a wrapper fills in; BadInput
    when ``func`` cannot take one of them by keyword."""
    signature = inspect.signature(func)
    parameters = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for keyword in keywords:
        target = parameters.get(keyword)
        if (target is None and not takes_any) or (
            target is not None and target.kind in (target.POSITIONAL_ONLY, target.VAR_POSITIONAL)
        ):
            raise BadInput(
                f"{what}: {func.__qualname__} has no keyword parameter {keyword!r} to receive "
                f"{given}; add one{hint}"
            )
    return signature.replace(parameters=[p for p in parameters.values() if p.name not in keywords])


def driver_store(
    app: App, driver: object, store: str | None = None, default: str | None = None
) -> str:
    """The store of ``app`` that driver class ``driver`` works on: ``store`` when given;
    else the one store whose metadata holds the driver's model's table; else ``default``, or
    the app's only store. BadInput when the model is in several stores and none is named."""
    if store is not None:
        return app.store(store).name
    name = getattr(driver, "__name__", repr(driver))
    model = getattr(driver, "model", None)
    if model is None:
        raise BadInput(
            f"{name} is not a driver class that names its model: class "
            f"{name}(ReadDriver[Model]) or model = Model"
        )
    table = getattr(model, "__table__", None)
    holders = [
        s.name
        for s in app.stores
        if table is not None and s.metadata is not None and table in s.metadata.tables.values()
    ]
    if len(holders) == 1:
        return holders[0]
    if default is not None and (not holders or default in holders):
        return app.store(default).name
    if not holders:
        return default_store(app, None)
    raise BadInput(
        f"{name}'s model {model.__name__} is in {len(holders)} stores of app "
        f"{app.name!r} ({', '.join(holders)}): name the store (store='NAME')"
    )


def default_store(app: App, default: str | None) -> str:
    """The store an integration's short forms use: ``default``, or the app's only store."""
    if default is not None:
        return default
    if len(app.stores) == 1:
        return app.stores[0].name
    raise BadInput(
        f"app {app.name!r} has {len(app.stores)} stores "
        f"({', '.join(s.name for s in app.stores) or 'none'}): name the store, or give the "
        "integration a default one (default='NAME')"
    )


class SessionSet:
    """The sessions one request uses, each opened on first use and all ended together.

    ``sessions.get("chat_db")`` (or ``sessions.chat_db``) opens store ``chat_db``'s session the
    first time and returns the same one after; a store never asked for opens no connection.
    :meth:`finish` commits or rolls back every opened session and closes them all.
    """

    __slots__ = ("_app", "_on_open", "_sessions")

    def __init__(self, app: App, on_open: Callable[[Session], object] | None = None) -> None:
        self._app = app
        self._on_open = on_open
        self._sessions: dict[str, Session] = {}

    def get(self, name: str, *, readonly: bool = False) -> Session:
        """The session of store ``name`` in this unit of work (opened on first use).

        ``readonly=True``: a session that only reads, from a replica of the store when one
        will do (see :mod:`storekeeper.replicas`); once this unit of work has the store's
        own session, that one, which sees what the unit of work wrote and did not commit yet.
        """
        session = self._sessions.get(name)
        if session is None and readonly:
            key = name + _READ
            session = self._sessions.get(key)
            if session is None:
                # lazy: import storekeeper stays light
                from .replicas import read_session

                session = self._sessions[key] = read_session(self._app, name)
            return session
        if session is None:
            session = self._sessions[name] = self._app.sessionmaker(name)()
            if self._on_open is not None:
                self._on_open(session)
        return session

    def __getattr__(self, name: str) -> Session:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    def driver(self, driver: Callable[[Session], D], store: str | None = None) -> D:
        """A driver (``sessions.driver(GageReader)``) on this unit of work's session of its
        store (``store``, or the one :func:`driver_store` finds from its model)."""
        return driver(self.get(driver_store(self._app, driver, store)))

    def __contains__(self, name: object) -> bool:
        return name in self._sessions

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self._sessions if not n.endswith(_READ)])

    def finish(self, commit: bool) -> None:
        """Commit (``commit``) or roll back every opened session, then close all of them.

        If a commit fails, the sessions not yet committed are rolled back, every session is
        still closed, and the error is raised.
        """
        sessions, self._sessions = self._sessions, {}
        error: BaseException | None = None
        for session in sessions.values():
            try:
                if commit and error is None:
                    session.commit()
            except BaseException as exc:
                error = error or exc
            finally:
                # close() rolls back what was not committed (one round trip, not two).
                session.close()
        if error is not None:
            raise error

    def close(self) -> None:
        """Roll back what was not committed and close every opened session."""
        self.finish(commit=False)
