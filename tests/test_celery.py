"""storekeeper.celery with a real worker process (prefork pool) and a real Redis broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from sqlalchemy import select
from sqlalchemy.orm import Session

from chat.model import Chat, Message, Score
from integration_checks import ChatWriter, GameWriter
from storekeeper import App, BadInput, InvalidName
from storekeeper.celery import StoreKeeper
from storekeeper.testing.redis import RedisServer

HERE = Path(__file__).resolve().parent


class Worker:
    """A Celery worker process running tests/celery_chat.py with two forked processes, a
    client of the same broker, and the folder where the worker's processes report."""

    def __init__(self, app: App, project: Path, redis: RedisServer, dialect: str) -> None:
        self.reports = project / "reports"
        self.reports.mkdir()
        env = {
            **os.environ,
            "CHAT_APP": app.name,
            "BROKER": redis.url_for(0),
            "RESULTS": redis.url_for(1),
            "REPORTS": str(self.reports),
            "DIALECT": dialect,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        self.log = project / "worker.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_chat:celery", "worker",
                 "--pool=prefork", "--concurrency=2", "--loglevel=warning", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--hostname", f"{app.name}@test"],
                cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.client = Celery(broker=redis.url_for(0), backend=redis.url_for(1))

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): the pool's processes finish their tasks and exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()

    def wait(self, result: AsyncResult, timeout: float = 120) -> Any:
        """The task's result (its exception when it failed); fails the test, with the
        worker's log, if the worker process died or the task did not end in time."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited: {self.log.read_text()[-3000:]}")
            try:
                return result.get(timeout=1, propagate=False)
            except CeleryTimeout:
                if time.monotonic() > deadline:
                    pytest.fail(f"task {result.id} did not end: {self.log.read_text()[-3000:]}")

    def tasks_run_returning_every_connection(self) -> int:
        """After :meth:`stop`: checks that each of the two pool processes ended with no
        connection checked out of any engine; returns how many task attempts they ran."""
        ends = self.reported("shutdown")
        assert len(ends) == 2
        for end in ends:
            assert end["checked_out"] and set(end["checked_out"].values()) == {0}
        return sum(int(end["tasks"]) for end in ends)

    def reported(self, kind: str) -> list[dict[str, Any]]:
        """What the worker's processes wrote as ``kind`` (parent, init, shutdown)."""
        return [json.loads(p.read_text()) for p in sorted(self.reports.glob(f"{kind}-*.json"))]


@pytest.fixture
def worker(
    chat_app: App, project: Path, redis_server: RedisServer, dialect: str
) -> Iterator[Worker]:
    running = Worker(chat_app, project, redis_server, dialect)
    try:
        yield running
    finally:
        running.stop()


def test_two_hundred_tasks_some_failing_some_retried(chat_app: App, worker: Worker) -> None:
    sent = {n: worker.client.send_task("celery_chat.record", args=[n]) for n in range(1, 201)}
    states = {}
    for n, result in sent.items():
        worker.wait(result)
        states[n] = result.state
    assert {n for n, state in states.items() if state == "FAILURE"} == set(range(10, 201, 10))
    assert {n for n, state in states.items() if state == "SUCCESS"} == {
        n for n in range(1, 201) if n % 10
    }
    with chat_app.session("chat_db") as chat, chat_app.session("scores_db") as scores:
        messages = dict(chat.execute(select(Message.id, Message.content)).all())
        points = dict(scores.execute(select(Score.user, Score.points)).all())
    kept = {n for n in range(1, 201) if n % 10}
    assert set(messages) == kept
    assert set(points) == {f"u{n}" for n in kept}
    # A retried task's first attempt was rolled back: only the second attempt's rows remain.
    retried = {n for n in kept if n % 7 == 0}
    assert {n for n, content in messages.items() if content == "attempt 1"} == retried
    assert {u for u, p in points.items() if p == 1} == {f"u{n}" for n in retried}
    worker.stop()
    # Every task ran once, the retried ones twice; no process kept a connection checked out.
    assert worker.tasks_run_returning_every_connection() == 200 + len(retried)


def test_worker_processes_use_fresh_pools_and_return_every_connection(
    worker: Worker, dialect: str
) -> None:
    client = worker.client
    backends = {worker.wait(client.send_task("celery_chat.backend")) for _ in range(20)}
    assert worker.wait(client.send_task("celery_chat.record", args=[3])) == 3
    # A read-your-writes token rides in a task header (README, Read replicas).
    token = "my_app.example_db:16/B374D848"
    sent = client.send_task("celery_chat.carried_token", headers={"storekeeper_token": token})
    assert worker.wait(sent) == token
    worker.stop()

    [parent] = worker.reported("parent")
    children = worker.reported("init")
    # The parent left a connection in its pool; each child started with an empty pool.
    assert [c["inherited"] for c in children] == [0, 0]
    if dialect == "postgresql":
        assert parent["backend"] is not None and parent["backend"] not in backends
    assert worker.tasks_run_returning_every_connection() == 1


def test_tasks_given_drivers_commit_or_roll_back_their_unit_of_work(
    chat_app: App, worker: Worker
) -> None:
    done = worker.wait(worker.client.send_task("celery_chat.open_channels", args=[["a", "b"]]))
    assert done == {"channels": 3, "one_unit_of_work": True, "games_db": True}
    failed = worker.client.send_task("celery_chat.open_channels", args=[["c", "fail"]])
    assert isinstance(worker.wait(failed), ValueError)
    with chat_app.session("chat_db") as chat:
        assert set(chat.scalars(select(Chat.channel))) == {"general", "a", "b"}
    stores = StoreKeeper(worker.client, chat_app)
    with pytest.raises(BadInput, match=r"stores.task needs a store, drivers="):
        stores.task()
    with pytest.raises(BadInput, match=r"the drivers chats work on chat_db too"):
        stores.task("chat_db", drivers={"chats": ChatWriter, "games": GameWriter})


def test_celery_checks_task_arguments_against_the_real_signature(chat_app: App) -> None:
    # Eager mode: Celery's own call path in this process, argument check included.
    celery = Celery("eager", set_as_current=False)
    celery.conf.task_always_eager = True
    stores = StoreKeeper(celery, chat_app)

    @stores.task("chat_db", name="eager.open")
    def open_channel(channel: str, chat_db: Session) -> str:
        chat_db.add(Chat(channel=channel))
        return channel

    assert open_channel.delay("eager").get() == "eager"
    with pytest.raises(TypeError):
        open_channel.delay()
    with chat_app.session("chat_db") as session:
        assert session.get(Chat, "eager") is not None
    with pytest.raises(InvalidName, match="invalid store name 'chat db'"):
        stores.task("chat db")
