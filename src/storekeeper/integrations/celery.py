"""Celery: a session per task, and clean pools in every worker process.

::

    celery = Celery("chat", broker="redis://...")
    stores = StoreKeeper(celery, app)

    @stores.task("chat_db", bind=True, max_retries=3)
    def post(self, text, chat_db):          # chat_db: a Session, committed when post returns
        chat_db.add(Message(content=text))

    @stores.task(drivers={"messages": MessageWriter})
    def post_many(texts, messages):          # messages: a MessageWriter on its store's session
        messages.add_many([{"content": t} for t in texts])

``stores.task(store, **options)`` is ``celery.task(**options)`` over
:func:`storekeeper.sessions.with_store`, which works for any task runner: the session is
committed when the task returns, rolled back when it raises (``self.retry()`` included, so a
retried attempt leaves nothing behind) and closed either way. ``drivers=`` gives drivers instead
(:func:`storekeeper.sessions.with_drivers`), with the same unit of work.

Worker processes forked by the prefork pool never use the parent's connections (storekeeper
gives every engine a new pool after ``fork``); at the end of each task the app's scoped
sessions are removed, and a worker process closes its connections when it shuts down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from celery import signals

from ..errors import BadInput
from ..sessions import driver_store, with_drivers, with_store

if TYPE_CHECKING:
    from celery import Celery

    from ..declare import App

__all__ = ["StoreKeeper", "with_drivers", "with_store"]

R = TypeVar("R")


class StoreKeeper:
    """Ties ``app``'s stores to the Celery app ``celery``'s workers and tasks."""

    def __init__(self, celery: Celery, app: App) -> None:
        self.celery = celery
        self.app = app
        # Celery's signals are process-wide; weak=False keeps these bound methods alive, and
        # the uid keeps one receiver per storekeeper app however many StoreKeepers are made.
        uid = f"storekeeper:{app.name}:{id(app):x}"
        signals.task_postrun.connect(self._task_done, weak=False, dispatch_uid=f"{uid}:postrun")
        signals.worker_process_shutdown.connect(
            self._process_ends, weak=False, dispatch_uid=f"{uid}:shutdown"
        )

    def task(
        self,
        store: str | None = None,
        *,
        drivers: Mapping[str, Callable[..., Any]] | None = None,
        **options: Any,
    ) -> Callable[[Callable[..., R]], Any]:
        """``@stores.task("chat_db", bind=True)``: a Celery task given store ``store``'s
        session as the keyword argument of that name (``arg=`` names it otherwise).
        ``drivers={"messages": MessageWriter}`` gives it drivers as keyword arguments too, or
        instead: each on its store's session, drivers of one store sharing it (not on
        ``store``'s, which would be a second unit of work: refused)."""
        if store is None and not drivers:
            raise BadInput("stores.task needs a store, drivers={keyword: DriverClass}, or both")
        shared = [k for k, cls in (drivers or {}).items() if driver_store(self.app, cls) == store]
        if shared:
            raise BadInput(
                f"stores.task({store!r}, drivers=...): the drivers {', '.join(shared)} work on "
                f"{store} too, which would be a second unit of work; ask for the drivers only "
                "(a driver's .session is its session)"
            )
        wrappers = []
        if drivers:
            wrappers.append(with_drivers(self.app, **drivers))
        if store is not None:
            wrappers.append(with_store(self.app, store, arg=options.pop("arg", None)))

        def decorate(func: Callable[..., R]) -> Any:
            for wrap in wrappers:
                func = wrap(func)
            return self.celery.task(**options)(func)

        return decorate

    def _task_done(self, *args: Any, **kwargs: Any) -> None:
        self.app.remove_sessions()

    def _process_ends(self, *args: Any, **kwargs: Any) -> None:
        self.app.site.close()
