"""storekeeper.starlette through Starlette's TestClient: FastAPI dependencies and plain
Starlette endpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from chat.model import Chat, User
from integration_checks import (
    AsyncChatReader,
    AsyncChatWriter,
    PoolWatch,
    assert_kept,
    loop_engines,
    write_pair_async,
)
from storekeeper import App, BadInput, NotFound
from storekeeper.starlette import StoreKeeper


def make_api(app: App) -> FastAPI:
    stores = StoreKeeper(app, default="chat_db")
    api = FastAPI(lifespan=stores.lifespan)
    # FastAPI reads the annotations at run time, so the dependencies go in the defaults.
    chat_db = Depends(stores.dependency())
    scores_db = Depends(stores.dependency("scores_db"))

    @api.post("/say/{n}")
    async def say(n: int, chat: AsyncSession = chat_db, scores: AsyncSession = scores_db) -> str:
        await write_pair_async(chat, scores, n)
        return "ok"

    @api.get("/user/{name}")
    async def user(name: str, chat: AsyncSession = chat_db) -> str | None:
        found = await chat.get(User, name)
        return found.username if found else None

    return api


def test_thousand_requests_one_in_ten_failing(chat_app: App) -> None:
    with TestClient(make_api(chat_app), raise_server_exceptions=False) as client:
        chat_engine, scores_engine = loop_engines(client, chat_app, "chat_db", "scores_db")
        watch = PoolWatch(chat_engine.sync_engine, scores_engine.sync_engine)
        statuses = {n: client.post(f"/say/{n}").status_code for n in range(1, 1001)}
        assert set(statuses.values()) == {200, 500}
        for engine in (chat_engine, scores_engine):
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            assert watch.opened(engine.sync_engine) == watch.returned(engine.sync_engine) == 1000
    # The lifespan closed every connection the pools had made.
    assert watch.still_open(chat_engine.sync_engine) == 0
    assert watch.still_open(scores_engine.sync_engine) == 0

    assert_kept(chat_app, {n for n, code in statuses.items() if code == 500})


def test_store_not_used_opens_no_connection(chat_app: App) -> None:
    with TestClient(make_api(chat_app)) as client:
        chat_engine, scores_engine = loop_engines(client, chat_app, "chat_db", "scores_db")
        watch = PoolWatch(chat_engine.sync_engine, scores_engine.sync_engine)
        assert client.get("/user/ada").json() == "ada"
        assert watch.opened(chat_engine.sync_engine) == 1
        assert watch.returned(chat_engine.sync_engine) == 1
        assert watch.opened(scores_engine.sync_engine) == 0


def test_plain_starlette_endpoints(chat_app: App) -> None:
    stores = StoreKeeper(chat_app, default="chat_db")

    async def open_channel(request: Request) -> PlainTextResponse:
        async with stores.session() as session:
            session.add(Chat(channel=request.path_params["channel"]))
            await session.flush()
            if request.query_params.get("fail"):
                raise RuntimeError("fails after writing")
        return PlainTextResponse("opened")

    web = Starlette(
        routes=[Route("/open/{channel}", open_channel, methods=["POST"])],
        lifespan=stores.lifespan,
    )
    with TestClient(web, raise_server_exceptions=False) as client:
        assert client.post("/open/kept").text == "opened"
        assert client.post("/open/lost?fail=1").status_code == 500
    with chat_app.session("chat_db") as session:
        assert set(session.scalars(select(Chat.channel))) == {"general", "kept"}


def test_drivers_as_dependencies_share_the_requests_session(chat_app: App) -> None:
    stores = StoreKeeper(chat_app, default="chat_db")
    api = FastAPI(lifespan=stores.lifespan)
    chats, reader = Depends(stores.driver(AsyncChatWriter)), Depends(stores.driver(AsyncChatReader))
    session = Depends(stores.dependency("chat_db"))

    @api.post("/open/{channel}")
    async def open_channel(
        channel: str,
        fail: bool = False,
        chats: AsyncChatWriter = chats,
        reader: AsyncChatReader = reader,
        session: AsyncSession = session,
    ) -> dict[str, object]:
        await chats.add({"channel": channel})
        if fail:
            raise RuntimeError("fails after writing")
        return {
            "unit_of_work": chats.session is reader.session is session,
            "channels": await reader.count(),
        }

    with TestClient(api, raise_server_exceptions=False) as client:
        assert client.post("/open/kept").json() == {"unit_of_work": True, "channels": 2}
        assert client.post("/open/lost?fail=true").status_code == 500
    with chat_app.session("chat_db") as done:
        assert set(done.scalars(select(Chat.channel))) == {"general", "kept"}


def test_bad_store_names_are_refused(chat_app: App) -> None:
    with pytest.raises(NotFound, match="declares no store 'chats'; its stores: chat_db"):
        StoreKeeper(chat_app, default="chats")
    with pytest.raises(BadInput, match="has 2 stores \\(chat_db, scores_db\\): name the store"):
        StoreKeeper(chat_app).dependency()
    with pytest.raises(BadInput, match="invalid store name 'no such': use lower-case"):
        StoreKeeper(chat_app).dependency("no such")
