"""Starlette and FastAPI: async sessions as dependencies, engines closed at shutdown.

::

    stores = StoreKeeper(app, default="chat_db")
    api = FastAPI(lifespan=stores.lifespan)

    @api.post("/messages")
    async def post(text: str, session: AsyncSession = Depends(stores.dependency())):
        session.add(Message(...))          # committed when the endpoint returns

``Depends(stores.driver(GageReader))`` gives a driver (an ``AsyncReadDriver`` or
``AsyncWriteDriver``) on the request's session of its store, the one
``Depends(stores.dependency(...))`` gives that request. In plain Starlette endpoints,
``async with stores.session("chat_db") as session:`` does the same. Either way a session
commits when the endpoint returns, rolls back when it raises, and is closed; a store no
endpoint asks for opens no connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ..naming import check_identifier
from ..sessions import default_store, driver_store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..declare import App, _AsyncSessionScope

__all__ = ["StoreKeeper"]

D = TypeVar("D")


class StoreKeeper:
    """The async sessions of ``app``'s stores for an ASGI app built on Starlette.

    ``default`` names the store used when none is named; it defaults to the app's only store.
    """

    def __init__(self, app: App, *, default: str | None = None) -> None:
        if default is not None:
            app.store(default)
        self.app = app
        self.default = default
        # One dependency per store: FastAPI solves it once per request, so the endpoint's
        # sessions and drivers of a store share one session (one unit of work).
        self._dependencies: dict[str, Callable[[], AsyncIterator[AsyncSession]]] = {}

    def dependency(self, name: str | None = None) -> Callable[[], AsyncIterator[AsyncSession]]:
        """A FastAPI dependency (``Depends(stores.dependency("chat_db"))``) giving the
        request an ``AsyncSession`` of store ``name``: committed when the endpoint returns,
        rolled back when it raises, always closed. Every dependency on one store in a request
        gets the same session."""
        store = name or default_store(self.app, self.default)
        check_identifier(store, "store")
        known = self._dependencies.get(store)
        if known is not None:
            return known
        app = self.app

        async def store_session() -> AsyncIterator[AsyncSession]:
            async with app.async_session(store) as session:
                yield session

        store_session.__name__ = f"{store}_session"
        self._dependencies[store] = store_session
        return store_session

    def driver(self, driver: Callable[[AsyncSession], D], store: str | None = None) -> Any:
        """A FastAPI dependency (``Depends(stores.driver(GageReader))``) giving the request an
        async driver on its session of the driver's store (``store``, else the store whose
        metadata holds its model, else the default store): the session
        ``stores.dependency(...)`` gives the same request."""
        # lazy: the Starlette integration works without FastAPI; this dependency is FastAPI's
        from fastapi import Depends

        session_of = self.dependency(driver_store(self.app, driver, store, self.default))

        needs_session = Depends(session_of)

        def give(session: Any = needs_session) -> D:
            return driver(session)

        give.__name__ = f"{getattr(driver, '__name__', 'driver')}_driver"
        return give

    def session(self, name: str | None = None) -> _AsyncSessionScope:
        """``async with stores.session("chat_db") as s:`` in an endpoint (commit on success)."""
        return self.app.async_session(name or default_store(self.app, self.default))

    @asynccontextmanager
    async def lifespan(self, asgi_app: object) -> AsyncIterator[None]:
        """``Starlette(lifespan=stores.lifespan)``: at shutdown, close the pooled connections
        of the app's async engines. Inside a lifespan of your own:
        ``async with stores.lifespan(app): yield``."""
        try:
            yield
        finally:
            await self.app.site.dispose_async_engines()
