"""The chat's background work on Celery. ``python -m chat.celery_app`` runs it all on one
machine: a Redis of its own, a worker with two processes, a few tasks (one fails and leaves
nothing behind, one is retried), then prints the channel and stops.

In a real deployment: ``celery -A chat.celery_app:celery worker`` with CHAT_BROKER set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from storekeeper.celery import StoreKeeper, with_store

from .model import Message
from .stores import app as chat_app
from .talk import post

broker = os.environ.get("CHAT_BROKER", "redis://127.0.0.1:6379/0")
celery = Celery("chat", broker=broker, backend=broker)
celery.conf.broker_connection_retry_on_startup = True
stores = StoreKeeper(celery, chat_app)


@stores.task("chat_db", bind=True, max_retries=1)
@with_store(chat_app, "scores_db")
def deliver(
    self: Any, channel: str, user: str, text: str, chat_db: Session, scores_db: Session
) -> int:
    """Post a message from the background; "fail" fails, "retry" is retried once."""
    message = post(chat_db, scores_db, channel, user, text)
    if text == "fail":
        raise ValueError("this message fails after writing: nothing of it is kept")
    if text == "retry" and self.request.retries == 0:
        raise self.retry(countdown=0)
    return message.id


def main() -> None:
    from storekeeper.testing.redis import RedisServer

    chat_app.sync()
    with RedisServer() as redis:
        env = {**os.environ, "CHAT_BROKER": redis.url}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "chat.celery_app:celery",
                "worker",
                "--concurrency=2",
                "--loglevel=error",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
        )
        try:
            client = Celery(broker=redis.url, backend=redis.url)
            sent = [
                client.send_task("chat.celery_app.deliver", ("background", "bob", text))
                for text in ("hello", "fail", "retry", "bye")
            ]
            for text, result in zip(("hello", "fail", "retry", "bye"), sent, strict=True):
                outcome = result.get(timeout=60, propagate=False)
                print(f"{text!r}: {result.state} {outcome!r}")
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    with chat_app.session("chat_db") as session:
        kept = session.scalars(select(Message.content).where(Message.channel == "background"))
        print("channel 'background' now holds:", ", ".join(sorted(kept)))


if __name__ == "__main__":
    main()
