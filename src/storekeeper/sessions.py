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
        signature = inspect.signature(func)
        parameters = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        target = parameters.get(keyword)
        if (target is None and not takes_any) or (
            target is not None and target.kind in (target.POSITIONAL_ONLY, target.VAR_POSITIONAL)
        ):
            raise BadInput(
                f"with_store({app.name}.{name}): {func.__qualname__} has no keyword parameter "
                f"{keyword!r} to receive the session; add one, or pass arg= another name"
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

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for p in parameters.values() if p.name != keyword]
        )
        return wrapper

    return decorate


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
