"""Fork safety: a forked child never uses, resets or closes a connection of its parent.

After ``os.fork`` the child holds copies of the parent's sockets; a byte it sent on one would
land in the parent's session on the server (a ROLLBACK would silently undo the parent's open
transaction). So, in the child:

- every engine gets a new pool without closing the parent's connections (SQLAlchemy's
  ``engine.dispose(close=False)``; see :meth:`storekeeper.site.Site.forget_connections`);
- sessions that held a parent's connection (the forking thread's scoped sessions, sessions
  joined to a test's connection) lose it without I/O (:func:`abandon_session`) and are
  dropped from their registries, so the child's next session opens its own connection;
- pools made by :func:`create_engine` roll back a returned connection only in the process that
  opened it: the parent's connections that the child's garbage collector finds (another
  thread's session, which the child does not have) go back untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy import URL, Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

# Where a pooled connection records the process that opened it.
_OPENED_BY = "storekeeper_opened_by_pid"


def create_engine(url: str | URL, **options: Any) -> Engine:
    """``sqlalchemy.create_engine`` whose pool resets only this process's connections."""
    from sqlalchemy import create_engine as create  # as ours is named create_engine

    engine = create(url, **_options(options))
    _reset_own_connections_only(engine)
    return engine


def create_async_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """``sqlalchemy.ext.asyncio.create_async_engine``, likewise."""
    # The asyncio extension is imported only by apps that ask for an async engine.
    from sqlalchemy.ext.asyncio import create_async_engine as create

    engine = create(url, **_options(options))
    _reset_own_connections_only(engine.sync_engine)
    return engine


def _options(options: dict[str, Any]) -> dict[str, Any]:
    # The pool's own reset is replaced by the "reset" event below (SQLAlchemy's documented
    # way to customize it): the same rollback, skipped for a connection of another process.
    return {**options, "pool_reset_on_return": None}


def _reset_own_connections_only(engine: Engine) -> None:
    dialect = engine.dialect

    def stamp(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_OPENED_BY] = os.getpid()

    def reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        # What the pool's own reset does (a rollback unless the transaction already ended, and
        # no I/O where asyncio forbids it), only for a connection this process opened.
        if state.transaction_was_reset or not state.asyncio_safe:
            return
        # os.getpid() itself, not a value an at-fork hook keeps: the child collects the other
        # threads' objects before any such hook runs.
        if record is None or record.info.get(_OPENED_BY) != os.getpid():
            return
        dialect.do_rollback(dbapi_connection)

    event.listen(engine, "connect", stamp)
    event.listen(engine, "reset", reset)


def abandon(connection: Connection) -> None:
    """Make ``connection`` unusable without a byte on its socket: its pool forgets it (so
    nothing resets or closes it later) and its next use raises instead of reaching the socket.
    """
    if connection.closed or connection.invalidated:
        return
    connection.detach()
    connection.invalidate()


def abandon_session(session: Session) -> None:
    """:func:`abandon` every connection ``session`` holds (it then raises until rolled back)."""
    for connection in _connections(session):
        abandon(connection)


def _connections(session: Session) -> Iterable[Connection]:
    root = session.get_transaction()
    if root is None:
        return ()
    held = getattr(root, "connections", None)  # public from SQLAlchemy 2.1.7
    if held is not None:
        return list(held)
    return {entry[0] for entry in root._connections.values()}  # SQLAlchemy 2.0
