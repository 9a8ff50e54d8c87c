"""The Celery app that tests/test_celery.py runs in a real worker process.

Configured by the environment: CHAT_APP (the app name), BROKER and RESULTS (Redis URLs),
REPORTS (a folder where each process writes what it saw), DIALECT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery import Celery, signals
from sqlalchemy import text
from sqlalchemy.orm import Session

from chat.model import ChatBase, GameBase, Message, Score
from integration_checks import ChatReader, ChatWriter, GameWriter
from storekeeper import App, Store, replicas
from storekeeper.celery import StoreKeeper, with_store

REPORTS = Path(os.environ["REPORTS"])

app = App(
    os.environ["CHAT_APP"],
    stores=[
        Store("chat_db", metadata=ChatBase.metadata),
        Store("scores_db", metadata=GameBase.metadata),
    ],
)
celery = Celery("celery_chat", broker=os.environ["BROKER"], backend=os.environ["RESULTS"])
celery.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)
tasks_run = 0


def report(name: str, data: dict[str, Any]) -> None:
    (REPORTS / f"{name}-{os.getpid()}.json").write_text(json.dumps(data))


def backend_pid(session: Session) -> int | None:
    if os.environ["DIALECT"] != "postgresql":
        return None
    return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


# In the parent, before the pool forks its children: a connection left idle in the pool.
with app.session("chat_db") as parent_session:
    report("parent", {"backend": backend_pid(parent_session)})


@signals.worker_process_init.connect
def child_starts(**_: Any) -> None:
    report("init", {"inherited": app.engine("chat_db").pool.checkedin()})  # type: ignore[attr-defined]


# Connected before StoreKeeper's own handler, which closes the pools: this one sees them.
@signals.worker_process_shutdown.connect
def child_ends(**_: Any) -> None:
    checked_out = {str(e.url.database): e.pool.checkedout() for e in app.site.engines()}  # type: ignore[attr-defined]
    report("shutdown", {"checked_out": checked_out, "tasks": tasks_run})


stores = StoreKeeper(celery, app)


@stores.task("chat_db", name="celery_chat.record", bind=True, max_retries=2)
@with_store(app, "scores_db")
def record(self: Any, n: int, chat_db: Session, scores_db: Session) -> int:
    """Writes to both stores; every tenth n fails, every seventh is retried once."""
    global tasks_run
    tasks_run += 1
    attempt = self.request.retries
    chat_db.add(Message(id=n, channel="general", user="ada", content=f"attempt {attempt}"))
    scores_db.add(Score(game=1, user=f"u{n}", points=attempt))
    chat_db.flush()
    scores_db.flush()
    if n % 10 == 0:
        raise ValueError(f"task {n} fails after writing")
    if n % 7 == 0 and attempt == 0:
        raise self.retry(countdown=0)
    return n


@stores.task("chat_db", name="celery_chat.backend")
def backend(chat_db: Session) -> int | None:
    """The PostgreSQL backend serving this worker process's session."""
    return backend_pid(chat_db)


@stores.task(
    name="celery_chat.open_channels",
    drivers={"chats": ChatWriter, "reader": ChatReader, "games": GameWriter},
)
def open_channels(
    channels: list[str], chats: ChatWriter, reader: ChatReader, games: GameWriter
) -> dict[str, Any]:
    """Opens channels through drivers; fails after writing when a channel is called fail."""
    for channel in channels:
        chats.add({"channel": channel})
    if "fail" in channels:
        raise ValueError("fails after writing")
    return {
        "channels": reader.count(),
        "one_unit_of_work": reader.session is chats.session,
        "games_db": games.session.get_bind().url.database != chats.session.get_bind().url.database,
    }


@celery.task(name="celery_chat.carried_token", bind=True)
def carried_token(self: Any) -> str:
    """The read-your-writes token the task was sent with (a header), as the README says to
    take it in."""
    with replicas.scope(self.request.get("storekeeper_token")) as unit:
        return str(unit.token)
