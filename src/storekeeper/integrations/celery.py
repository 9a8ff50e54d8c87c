"""Celery: a session per task, and clean pools in every worker process.

::

    celery = Celery("chat", broker="redis://...")
    stores = StoreKeeper(celery, app)

    @stores.task("chat_db", bind=True, max_retries=3)
    def post(self, text, chat_db):          # chat_db: a Session, committed when post returns
        chat_db.add(Message(content=text))

``stores.task(store, **options)`` is ``celery.task(**options)`` over
:func:`storekeeper.sessions.with_store`, which works for any task runner: the session is
committed when the task returns, rolled back when it raises (``self.retry()`` included, so a
retried attempt leaves nothing behind) and closed either way.

Worker processes forked by the prefork pool never use the parent's connections (storekeeper
gives every engine a new pool after ``fork``); at the end of each task the app's scoped
sessions are removed, and a worker process closes its connections when it shuts down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from celery import signals

from ..sessions import with_store

if TYPE_CHECKING:
    from celery import Celery

    from ..declare import App

__all__ = ["StoreKeeper", "with_store"]

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

    def task(self, store: str, **options: Any) -> Callable[[Callable[..., R]], Any]:
        """``@stores.task("chat_db", bind=True)``: a Celery task given store ``store``'s
        session as the keyword argument of that name (``arg=`` names it otherwise)."""
        give_session = with_store(self.app, store, arg=options.pop("arg", None))

        def decorate(func: Callable[..., R]) -> Any:
            return self.celery.task(**options)(give_session(func))

        return decorate

    def _task_done(self, *args: Any, **kwargs: Any) -> None:
        self.app.remove_sessions()

    def _process_ends(self, *args: Any, **kwargs: Any) -> None:
        self.app.site.close()
