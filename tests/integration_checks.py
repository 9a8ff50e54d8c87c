"""What the integrations' tests drive and check: a request's work on the chat example's two
stores, the final state after many requests, the connections engines hand out, and drivers of
the chat models (sync and async) for the per-request drivers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from chat.model import Chat, Game, Message, Score
from storekeeper import App
from storekeeper.drivers import ReadDriver, WriteDriver
from storekeeper.drivers_async import AsyncReadDriver, AsyncWriteDriver

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from starlette.testclient import TestClient


class ChatReader(ReadDriver[Chat]):
    pass


class ChatWriter(WriteDriver[Chat]):
    pass


class GameWriter(WriteDriver[Game]):  # in store scores_db, found from the model
    pass


class AsyncChatReader(AsyncReadDriver[Chat]):
    pass


class AsyncChatWriter(AsyncWriteDriver[Chat]):
    pass


class PoolWatch:
    """Counts connections checked out of and back into the pools of some engines."""

    def __init__(self, *engines: Engine) -> None:
        self.out = {id(e): 0 for e in engines}
        self.back = {id(e): 0 for e in engines}
        self.made = {id(e): 0 for e in engines}
        self.ended = {id(e): 0 for e in engines}
        for engine in engines:
            event.listen(engine, "checkout", self._counter(self.out, engine))
            event.listen(engine, "checkin", self._counter(self.back, engine))
            event.listen(engine, "connect", self._counter(self.made, engine))
            event.listen(engine, "close", self._counter(self.ended, engine))

    @staticmethod
    def _counter(counts: dict[int, int], engine: Engine) -> Callable[..., None]:
        def count(*_args: object) -> None:
            counts[id(engine)] += 1

        return count

    def opened(self, engine: Engine) -> int:
        """How many times ``engine`` handed out a connection."""
        return self.out[id(engine)]

    def returned(self, engine: Engine) -> int:
        """How many connections went back into ``engine``'s pool."""
        return self.back[id(engine)]

    def still_open(self, engine: Engine) -> int:
        """How many database connections ``engine``'s pools made and did not close."""
        return self.made[id(engine)] - self.ended[id(engine)]


def loop_engines(client: TestClient, app: App, *stores: str) -> list[AsyncEngine]:
    """The async engines of ``stores`` in the event loop of a started Starlette TestClient."""

    async def engines() -> list[AsyncEngine]:
        return [app.async_engine(name) for name in stores]

    assert client.portal is not None, "use the TestClient in a with block"
    return client.portal.call(engines)


def write_pair(chat: Session, scores: Session, n: int) -> None:
    """Request ``n``'s work, flushed to both stores; every tenth request then fails."""
    chat.add(Message(id=n, channel="general", user="ada", content=f"#{n}"))
    scores.add(Score(game=1, user=f"u{n}", points=n % 100))
    chat.flush()
    scores.flush()
    fail_every_tenth(n)


async def write_pair_async(chat: Any, scores: Any, n: int) -> None:
    """:func:`write_pair` on async sessions (or async scoped sessions)."""
    chat.add(Message(id=n, channel="general", user="ada", content=f"#{n}"))
    scores.add(Score(game=1, user=f"u{n}", points=n % 100))
    await chat.flush()
    await scores.flush()
    fail_every_tenth(n)


def fail_every_tenth(n: int) -> None:
    if n % 10 == 0:
        raise RuntimeError(f"request {n} fails after writing")


def assert_kept(app: App, failed: set[int], total: int = 1000) -> None:
    """Requests 1..total ran, every tenth failed: exactly the others' rows are in both stores."""
    assert failed == set(range(10, total + 1, 10))
    with app.session("chat_db") as chat, app.session("scores_db") as scores:
        messages = set(chat.scalars(select(Message.id)))
        scorers = set(scores.scalars(select(Score.user)))
    assert messages == {n for n in range(1, total + 1) if n % 10}
    assert scorers == {f"u{n}" for n in messages}
