"""ASGI middleware for frameworks without an integration of their own: each request gets its
own async scoped sessions (``app.async_scoped_session(name)``), removed when it ends.

::

    application = StoresMiddleware(application, app)

    async def endpoint(...):
        session = app.async_scoped_session("chat_db")   # the same session all through the request
        session.add(...)
        await session.commit()                          # commit yourself; the rest is rolled back
        gages = driver(app, AsyncGageReader)            # an async driver on that session
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..sessions import driver_store, new_request_scope

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..declare import App

__all__ = ["StoresMiddleware", "driver"]

D = TypeVar("D")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApplication = Callable[[Scope, Receive, Send], Awaitable[None]]


class StoresMiddleware:
    """Wraps an ASGI application: HTTP requests and websockets get fresh async scoped
    sessions of ``apps``' stores, closed (uncommitted work rolled back) when they end."""

    def __init__(self, application: ASGIApplication, *apps: App) -> None:
        self.application = application
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.application(scope, receive, send)
            return
        with new_request_scope():
            try:
                await self.application(scope, receive, send)
            finally:
                for app in self.apps:
                    await app.remove_async_sessions()


def driver(app: App, driver: Callable[[AsyncSession], D], store: str | None = None) -> D:
    """``driver(app, AsyncGageReader)``: an async driver on the request's async scoped session
    of its store (``store``, else the store whose metadata holds its model), the session
    ``app.async_scoped_session(name)()`` gives and the middleware ends with the request."""
    return driver(app.async_scoped_session(driver_store(app, driver, store))())
