"""WSGI middleware for frameworks without an integration of their own: at the end of each
request it removes the scoped sessions (``app.scoped_session(name)``) of the given apps.

::

    application = StoresMiddleware(application, app)

    def view(environ, start_response):
        session = app.scoped_session("chat_db")()     # this thread's session
        ...
        session.commit()                               # commit yourself; the rest is rolled back
        gages = driver(app, GageReader)                # a driver on this thread's session

"At the end" is when the server closes the response (PEP 3333), after the body was sent, in
the thread that served the request, which is the thread the scoped sessions belong to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..sessions import driver_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..declare import App

__all__ = ["StoresMiddleware", "driver"]

D = TypeVar("D")

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class StoresMiddleware:
    """Wraps a WSGI application; removes ``apps``' scoped sessions after every request."""

    def __init__(self, application: WSGIApplication, *apps: App) -> None:
        self.application = application
        self.apps = apps

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        try:
            body = self.application(environ, start_response)
        except BaseException:
            self._remove()
            raise
        return _ClosingBody(body, self._remove)

    def _remove(self) -> None:
        for app in self.apps:
            app.remove_sessions()


def driver(app: App, driver: Callable[[Session], D], store: str | None = None) -> D:
    """``driver(app, GageReader)``: a driver on this thread's scoped session of its store
    (``store``, else the store whose metadata holds its model), the session
    ``app.scoped_session(name)()`` gives and the middleware ends with the request."""
    return driver(app.scoped_session(driver_store(app, driver, store))())


class _ClosingBody:
    """The application's response body, with ``close()`` also ending the sessions."""

    __slots__ = ("_body", "_end")

    def __init__(self, body: Iterable[bytes], end: Callable[[], None]) -> None:
        self._body = body
        self._end = end

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._end()
