"""Async twins of the drivers: ``AsyncReadDriver`` and ``AsyncWriteDriver``, made from
``ReadDriver`` and ``WriteDriver`` so the two APIs have one source.

Each public method of the sync driver class becomes a coroutine method of its twin that runs
the sync method on the ``AsyncSession``'s own sync session in SQLAlchemy's greenlet
(``await session.run_sync(...)``): the same SQL, lookups, errors and results, and a method
added to a sync driver is in its twin with no change here. A method that returns an iterator
(``stream()``) becomes an async generator that fetches a batch of rows per trip to the
database::

    class GageReader(AsyncReadDriver[StreamGage]):   # or: model = StreamGage
        pass

    async with app.async_session("example_db") as session:
        gage = await GageReader(session).get_or_raise(1)

    async with GageReader.of(app, "example_db") as gages:   # its own unit of work
        print(await gages.count(value__gt=3))

A twin of a sync driver with methods of its own: ``sync_driver = MyGageReader``; its public
methods are made async too (declare them for mypy with ``Awaiting``, as below).

On PostgreSQL, ``add_many``'s ``COPY`` runs on psycopg's ``AsyncConnection``, each call awaited
inside the greenlet (:class:`_Blocking`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar, cast

from sqlalchemy.util import await_only

from .drivers import CursorKey, ReadDriver, WriteDriver, _Driver, model_of
from .errors import BadInput

if TYPE_CHECKING:
    from typing import Self

    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncSession

    from .declare import App

__all__ = ["AsyncReadDriver", "AsyncWriteDriver", "Awaiting", "Streaming"]

M = TypeVar("M")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: How many items an async ``stream()`` takes from the sync iterator per trip.
STREAM_BATCH = 1000


class Awaiting(Generic[P, R]):
    """For mypy only (under ``if TYPE_CHECKING:``): a sync driver's method as its twin has it,
    the same parameters and a coroutine of the same result: ``get = Awaiting(sync.get)``, where
    ``sync: ReadDriver[M]`` is the twin's sync driver."""

    def __init__(self, method: Callable[P, R]) -> None:
        self.method = method

    def __get__(self, obj: Any, owner: Any) -> Callable[P, Coroutine[Any, Any, R]]:
        raise NotImplementedError  # pragma: no cover - never built at run time


class Streaming(Generic[P, T]):
    """For mypy only: a sync driver method returning an iterator, as an async iterator."""

    def __init__(self, method: Callable[P, Iterator[T]]) -> None:
        self.method = method

    def __get__(self, obj: Any, owner: Any) -> Callable[P, AsyncIterator[T]]:
        raise NotImplementedError  # pragma: no cover - never built at run time


def _iterates(func: Callable[..., Any]) -> bool:
    """Whether a sync driver method hands back an iterator (a generator, or says it returns
    an ``Iterator``/``Generator``): its twin is then an async generator."""
    if inspect.isgeneratorfunction(func):
        return True
    returns = getattr(func, "__annotations__", {}).get("return")
    text = returns if isinstance(returns, str) else getattr(returns, "__name__", "")
    return text.split("[")[0].rsplit(".", 1)[-1] in ("Iterator", "Generator")


def _call(_session: Any, func: Callable[..., R], args: Any, kwargs: Any) -> R:
    return func(*args, **kwargs)


def _take(_session: Any, items: Iterator[T], size: int) -> list[T]:
    return list(itertools.islice(items, size))


def _awaiting(name: str) -> Callable[..., Any]:
    async def method(self: _AsyncDriver[Any], *args: Any, **kwargs: Any) -> Any:
        return await self.session.run_sync(_call, getattr(self.sync, name), args, kwargs)

    return method


def _streaming(name: str) -> Callable[..., Any]:
    def method(self: _AsyncDriver[Any], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        # Called at once, as the sync driver is: its arguments are checked at the call (a
        # sync driver's iterator touches the database only when iterated). Iterated in the
        # greenlet, a batch of items per await.
        items = iter(getattr(self.sync, name)(*args, **kwargs))
        return _drain(self.session, items)

    return method


async def _drain(session: AsyncSession, items: Iterator[Any]) -> AsyncIterator[Any]:
    try:
        while batch := await session.run_sync(_take, items, STREAM_BATCH):
            for item in batch:
                yield item
    finally:
        # A generator left early still holds its server-side cursor: end it in the greenlet.
        close = getattr(items, "close", None)
        if close is not None:
            await session.run_sync(_call, close, (), {})


def _twin(cls: type[_AsyncDriver[Any]], sync: type[_Driver[Any]]) -> None:
    """Give ``cls`` an async method for each public method of ``sync`` it does not define
    itself (methods a twin writes for itself are kept)."""
    for name, func in inspect.getmembers(sync, inspect.isfunction):
        if name.startswith("_"):
            continue
        own = next((c.__dict__[name] for c in cls.__mro__ if name in c.__dict__), None)
        if own is not None and not hasattr(own, "_twin_of"):
            continue
        method = _streaming(name) if _iterates(func) else _awaiting(name)
        method.__name__ = name
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        method.__doc__ = func.__doc__
        method._twin_of = func  # type: ignore[attr-defined]
        setattr(cls, name, method)


class _TwinDriver:
    """Mixed into the sync driver a twin runs: psycopg's ``AsyncConnection`` used as a sync
    one for driver-level calls (``COPY``), each call awaited inside the greenlet."""

    def _dbapi_connection(self, connection: Connection) -> Any:
        fairy = connection.connection
        if connection.dialect.is_async:
            return _Blocking(fairy.driver_connection)
        return fairy.dbapi_connection


class _Blocking:
    """A psycopg async object (connection, cursor, copy) with its sync twin's interface, for
    code running in SQLAlchemy's greenlet: coroutines are awaited there (``await_only``) and
    async context managers entered as sync ones; the objects they give are wrapped in turn."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return _blocking(value(*args, **kwargs))

        return call

    def __enter__(self) -> Any:
        return _blocking(await_only(self._target.__aenter__()))

    def __exit__(self, *exc: Any) -> Any:
        return await_only(self._target.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        iterator = self._target.__aiter__()
        while True:
            try:
                yield await_only(iterator.__anext__())
            except StopAsyncIteration:
                return


def _blocking(result: Any) -> Any:
    """A psycopg call's result for sync code: awaited if it is a coroutine, wrapped if it is
    an async context manager or iterator."""
    if inspect.isawaitable(result) and not hasattr(result, "__aenter__"):
        result = await_only(result)
    if hasattr(result, "__aenter__") or hasattr(result, "__aiter__"):
        return _Blocking(result)
    return result


class _AsyncDriver(Generic[M]):
    """What both twins share: the model, the ``AsyncSession``, the sync driver they run."""

    model: ClassVar[type[Any]]
    #: The sync driver class whose methods this twin runs (its base's unless declared).
    sync_driver: ClassVar[type[_Driver[Any]]]
    _sync_base: ClassVar[type[_Driver[Any]]]
    _declared_sync: ClassVar[type[_Driver[Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("sync_driver")
        if declared is None:
            declared = cls._declared_sync
        elif isinstance(declared, type) and issubclass(declared, cls._sync_base):
            cls._declared_sync = declared
        else:
            raise BadInput(
                f"{cls.__name__}.sync_driver must be a {cls._sync_base.__name__} class, "
                f"not {declared!r}"
            )
        model = model_of(cls) or getattr(declared, "model", None)
        if model is not None:
            cls.model = model
            # What the twin runs: the declared sync driver on the model, with psycopg's
            # AsyncConnection usable for COPY.
            cls.sync_driver = type(
                declared.__name__,
                (_TwinDriver, declared),
                {"model": model, "__module__": cls.__module__},
            )
        _twin(cls, declared)

    def __init__(self, session: AsyncSession, *, cursor_key: CursorKey | None = None):
        """A driver on ``session``; ``cursor_key`` signs ``after()``'s cursors, as the sync
        driver's does (:meth:`of` passes the site's)."""
        if getattr(type(self), "model", None) is None:
            name = type(self).__name__
            base = "AsyncWriteDriver" if isinstance(self, AsyncWriteDriver) else "AsyncReadDriver"
            raise BadInput(
                f"{name} names no model: declare it as class {name}({base}[Model]) or with "
                "model = Model"
            )
        self.session = session
        self.sync: Any = self.sync_driver(session.sync_session, cursor_key=cursor_key)
        self.info = self.sync.info

    @classmethod
    @asynccontextmanager
    async def of(cls, app: App, store: str) -> AsyncIterator[Self]:
        """A driver on its own unit of work on ``store``: ``async with GageReader.of(app,
        "example_db") as gages:`` commits when the block ends, rolls back if it raises."""
        async with app.async_session(store) as session:
            yield cls(session, cursor_key=app.site.catalog.cursor_key)


class AsyncReadDriver(_AsyncDriver[M]):
    """``ReadDriver``'s methods as coroutines on an ``AsyncSession`` (``stream()`` as an async
    generator)."""

    _sync_base = _declared_sync = ReadDriver

    # mypy's view of the methods made at run time: one line per ReadDriver method
    # (tests/test_drivers.py checks that none is missing).
    if TYPE_CHECKING:
        sync: ReadDriver[M] = cast("ReadDriver[M]", None)
        get = Awaiting(sync.get)
        get_or_raise = Awaiting(sync.get_or_raise)
        get_many = Awaiting(sync.get_many)
        find = Awaiting(sync.find)
        first = Awaiting(sync.first)
        one = Awaiting(sync.one)
        list = Awaiting(sync.list)
        page = Awaiting(sync.page)
        after = Awaiting(sync.after)
        count = Awaiting(sync.count)
        exists = Awaiting(sync.exists)
        rows = Awaiting(sync.rows)
        stream = Streaming(sync.stream)


class AsyncWriteDriver(_AsyncDriver[M]):
    """``WriteDriver``'s methods as coroutines on an ``AsyncSession``: flushed, not committed
    (the unit of work, or ``of()``, commits)."""

    _sync_base = _declared_sync = WriteDriver

    if TYPE_CHECKING:
        sync: WriteDriver[M] = cast("WriteDriver[M]", None)
        get = Awaiting(sync.get)
        get_or_raise = Awaiting(sync.get_or_raise)
        add = Awaiting(sync.add)
        add_many = Awaiting(sync.add_many)
        upsert = Awaiting(sync.upsert)
        upsert_many = Awaiting(sync.upsert_many)
        update = Awaiting(sync.update)
        update_many = Awaiting(sync.update_many)
        delete = Awaiting(sync.delete)
        delete_many = Awaiting(sync.delete_many)
        delete_where = Awaiting(sync.delete_where)
