"""storekeeper.wsgi and storekeeper.asgi: scoped sessions ended per request, through WebTest
and Starlette's TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from webtest import TestApp

from chat.model import Chat, User
from integration_checks import (
    AsyncChatReader,
    AsyncChatWriter,
    ChatReader,
    ChatWriter,
    PoolWatch,
    assert_kept,
    loop_engines,
    write_pair,
    write_pair_async,
)
from storekeeper import App
from storekeeper.asgi import StoresMiddleware as AsgiStores
from storekeeper.asgi import driver as asgi_driver
from storekeeper.wsgi import StoresMiddleware as WsgiStores
from storekeeper.wsgi import driver as wsgi_driver


def wsgi_chat(app: App) -> Callable[..., Iterable[bytes]]:
    """A bare WSGI application on the app's scoped sessions."""
    chat, scores = app.scoped_session("chat_db"), app.scoped_session("scores_db")

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        _, verb, arg = environ["PATH_INFO"].split("/")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if verb == "user":
            return [chat.get(User, arg).username.encode()]  # type: ignore[union-attr]
        if verb == "channels":  # streamed: the session is used while the body is sent

            def stream() -> Iterator[bytes]:
                for channel in chat.scalars(select(Chat.channel)):
                    yield channel.encode() + b"\n"

            return stream()
        n = int(arg)
        write_pair(chat(), scores(), n)
        chat.commit()
        scores.commit()
        return [b"ok"]

    return application


def test_wsgi_thousand_requests_one_in_ten_failing(chat_app: App) -> None:
    web = TestApp(WsgiStores(wsgi_chat(chat_app), chat_app))
    failed = set()
    for n in range(1, 1001):
        try:
            web.post(f"/say/{n}")
        except RuntimeError:
            failed.add(n)
    assert_kept(chat_app, failed)
    for name in ("chat_db", "scores_db"):
        assert chat_app.engine(name).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_wsgi_sessions_end_after_the_body_and_only_used_stores_connect(chat_app: App) -> None:
    web = TestApp(WsgiStores(wsgi_chat(chat_app), chat_app))
    chat_engine, scores_engine = chat_app.engine("chat_db"), chat_app.engine("scores_db")
    watch = PoolWatch(chat_engine, scores_engine)
    assert web.get("/channels/all").text == "general\n"
    assert web.get("/user/ada").text == "ada"
    assert watch.opened(chat_engine) == watch.returned(chat_engine) == 2
    assert watch.opened(scores_engine) == 0
    web.post("/say/1")
    assert watch.opened(scores_engine) == watch.returned(scores_engine) == 1


def asgi_chat(app: App) -> AsgiStores:
    """A Starlette app on the app's async scoped sessions, wrapped in the middleware."""

    async def say(request: Request) -> PlainTextResponse:
        n = int(request.path_params["n"])
        chat, scores = app.async_scoped_session("chat_db"), app.async_scoped_session("scores_db")
        await write_pair_async(chat, scores, n)
        await chat.commit()
        await scores.commit()
        return PlainTextResponse("ok")

    async def same(request: Request) -> PlainTextResponse:
        first = app.async_scoped_session("chat_db")()
        await first.get(User, "ada")
        return PlainTextResponse(str(app.async_scoped_session("chat_db")() is first))

    routes = [Route("/say/{n}", say, methods=["POST"]), Route("/same", same)]
    return AsgiStores(Starlette(routes=routes), app)


def test_asgi_thousand_requests_one_in_ten_failing(chat_app: App) -> None:
    with TestClient(asgi_chat(chat_app), raise_server_exceptions=False) as client:
        engines = loop_engines(client, chat_app, "chat_db", "scores_db")
        watch = PoolWatch(*(e.sync_engine for e in engines))
        statuses = {n: client.post(f"/say/{n}").status_code for n in range(1, 1001)}
        for engine in engines:
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            assert watch.opened(engine.sync_engine) == watch.returned(engine.sync_engine) == 1000
        assert client.get("/same").text == "True"
        assert watch.opened(engines[1].sync_engine) == 1000
    assert set(statuses.values()) == {200, 500}
    assert_kept(chat_app, {n for n, code in statuses.items() if code == 500})


def test_asgi_passes_the_lifespan_through(chat_app: App) -> None:
    events = []

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("stopped")

    with TestClient(AsgiStores(Starlette(lifespan=lifespan), chat_app)):
        assert events == ["started"]
    assert events == ["started", "stopped"]


def test_wsgi_drivers_on_the_threads_scoped_session(chat_app: App) -> None:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        chats = wsgi_driver(chat_app, ChatWriter)
        same = chats.session is chat_app.scoped_session("chat_db")()
        chats.add({"channel": environ["PATH_INFO"].strip("/")})
        if "commit" in environ["QUERY_STRING"]:
            chats.session.commit()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{same} {wsgi_driver(chat_app, ChatReader).count()}".encode()]

    web = TestApp(WsgiStores(application, chat_app))
    assert web.post("/kept?commit=1").text == "True 2"
    assert web.post("/lost").text == "True 3"  # not committed: removed after the request
    with chat_app.session("chat_db") as session:
        assert set(session.scalars(select(Chat.channel))) == {"general", "kept"}


def test_asgi_drivers_on_the_requests_async_scoped_session(chat_app: App) -> None:
    async def open_channel(request: Request) -> PlainTextResponse:
        chats = asgi_driver(chat_app, AsyncChatWriter)
        same = chats.session is chat_app.async_scoped_session("chat_db")()
        await chats.add({"channel": request.path_params["channel"]})
        if request.query_params.get("commit"):
            await chats.session.commit()
        count = await asgi_driver(chat_app, AsyncChatReader).count()
        return PlainTextResponse(f"{same} {count}")

    routes = [Route("/{channel}", open_channel, methods=["POST"])]
    web = AsgiStores(Starlette(routes=routes), chat_app)
    with TestClient(web) as client:
        assert client.post("/kept?commit=1").text == "True 2"
        assert client.post("/lost").text == "True 3"  # not committed: removed after the request
    with chat_app.session("chat_db") as session:
        assert set(session.scalars(select(Chat.channel))) == {"general", "kept"}
