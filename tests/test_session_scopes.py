"""Session scopes beyond app.session: async sessions, scoped sessions, with_store (a task)
and SessionSet (a request), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import pytest
from sqlalchemy import select

from chat.model import Chat, ChatBase, Message, User
from integration_checks import ChatReader, ChatWriter, GameWriter
from storekeeper import App, BadInput, NotFound, Store
from storekeeper.drivers import ReadDriver
from storekeeper.sessions import SessionSet, driver_store, with_drivers, with_store


def channels(app: App) -> set[str]:
    with app.session("chat_db") as session:
        return set(session.scalars(select(Chat.channel)))


def test_async_session_commits_rolls_back_and_closes(chat_app: App) -> None:
    async def scenario() -> None:
        async with chat_app.async_session("chat_db") as session:
            session.add(Chat(channel="kept"))
        with pytest.raises(RuntimeError):
            async with chat_app.async_session("chat_db") as session:
                session.add(Chat(channel="lost"))
                await session.flush()
                raise RuntimeError("boom")
        async with chat_app.async_session("chat_db") as session:
            assert await session.get(User, "ada") is not None
        engine = chat_app.async_engine("chat_db")
        assert engine is chat_app.async_engine("chat_db")
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        await chat_app.site.dispose_async_engines()

    asyncio.run(scenario())
    assert channels(chat_app) == {"general", "kept"}


def test_async_engines_belong_to_their_event_loop(chat_app: App) -> None:
    async def engine_and_read() -> object:
        async with chat_app.async_session("chat_db") as session:
            assert (await session.get(Chat, "general")) is not None
        return chat_app.async_engine("chat_db")

    # Two loops one after the other (as test clients do): each gets a working engine.
    first = asyncio.run(engine_and_read())
    second = asyncio.run(engine_and_read())
    assert first is not second
    assert first not in list(chat_app.site.async_engines())


def test_async_driver_follows_the_dialect(chat_app: App, dialect: str) -> None:
    async def driver() -> str:
        return chat_app.async_engine("chat_db").url.drivername

    expected = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}[dialect]
    assert asyncio.run(driver()) == expected


def test_scoped_sessions_are_one_per_store_and_removed_together(chat_app: App) -> None:
    chat, scores = chat_app.scoped_session("chat_db"), chat_app.scoped_session("scores_db")
    assert chat is chat_app.scoped_session("chat_db")
    first = chat()
    chat().add(Chat(channel="never"))
    scores().flush()
    chat_app.remove_sessions()
    assert chat() is not first
    assert chat_app.engine("chat_db").pool.checkedout() == 0  # type: ignore[attr-defined]
    chat_app.remove_sessions()
    assert channels(chat_app) == {"general"}


def test_scoped_session_kept_by_code_follows_a_refresh(chat_app: App) -> None:
    chat = chat_app.scoped_session("chat_db")  # as a module global would keep it
    chat().add(Chat(channel="before"))
    chat().commit()
    chat_app.sync(stores=["chat_db"], refresh=True)
    assert chat is chat_app.scoped_session("chat_db")
    assert set(chat().scalars(select(Chat.channel))) == {"general"}
    chat_app.remove_sessions()
    assert chat_app.engine("chat_db").pool.checkedout() == 0  # type: ignore[attr-defined]


def test_with_store_commits_on_return_and_rolls_back_on_error(chat_app: App) -> None:
    @with_store(chat_app, "chat_db")
    def add(channel: str, fail: bool = False, *, chat_db: object) -> str:
        chat_db.add(Chat(channel=channel))  # type: ignore[attr-defined]
        chat_db.flush()  # type: ignore[attr-defined]
        if fail:
            raise ValueError(channel)
        return channel

    assert add("kept") == "kept"
    with pytest.raises(ValueError):
        add("lost", fail=True)
    assert channels(chat_app) == {"general", "kept"}
    assert "chat_db" not in inspect.signature(add).parameters
    assert chat_app.engine("chat_db").pool.checkedout() == 0  # type: ignore[attr-defined]


def test_with_store_on_async_functions_and_other_argument_names(chat_app: App) -> None:
    @with_store(chat_app, "chat_db", arg="db")
    async def post(text: str, db: object) -> None:
        db.add(Message(channel="general", user="ada", content=text))  # type: ignore[attr-defined]

    asyncio.run(post("hello"))
    with chat_app.session("chat_db") as session:
        assert session.scalars(select(Message.content)).all() == ["hello"]


def test_with_store_refuses_a_function_without_the_argument(chat_app: App) -> None:
    def task(x: int) -> int:
        return x

    with pytest.raises(BadInput) as caught:
        with_store(chat_app, "chat_db")(task)
    assert str(caught.value) == (
        f"with_store({chat_app.name}.chat_db): "
        "test_with_store_refuses_a_function_without_the_argument.<locals>.task has no keyword "
        "parameter 'chat_db' to receive the session; add one, or pass arg= another name"
    )


def test_session_set_opens_lazily_and_ends_everything(chat_app: App) -> None:
    sessions = SessionSet(chat_app)
    assert list(sessions) == []
    sessions.chat_db.add(Chat(channel="together"))
    assert sessions.get("chat_db") is sessions.chat_db
    assert "chat_db" in sessions and "scores_db" not in sessions
    sessions.finish(commit=True)
    assert list(sessions) == []
    assert channels(chat_app) == {"general", "together"}
    with pytest.raises(NotFound, match="has no store 'nope'"):
        sessions.nope  # noqa: B018 - the attribute access is the call under test


def test_with_drivers_gives_drivers_on_one_unit_of_work(chat_app: App) -> None:
    @with_drivers(chat_app, chats=ChatWriter, reader=ChatReader, scores=GameWriter)
    def open_channels(
        names: list[str], chats: ChatWriter, reader: ChatReader, **rest: object
    ) -> int:
        # One session per store, shared by its drivers: the reader sees the writer's rows.
        assert reader.session is chats.session
        assert rest["scores"].session is not chats.session  # type: ignore[attr-defined]
        for name in names:
            chats.add({"channel": name})
        if "fail" in names:
            raise ValueError("fails after writing")
        return reader.count()

    assert list(inspect.signature(open_channels).parameters) == ["names", "rest"]
    assert open_channels(["a", "b"]) == 3
    with pytest.raises(ValueError, match="fails after writing"):
        open_channels(["c", "fail"])
    assert channels(chat_app) == {"general", "a", "b"}


def test_with_drivers_refuses_what_it_cannot_give(chat_app: App) -> None:
    with pytest.raises(BadInput, match=r"open_channel has no keyword parameter 'chats' to receive"):

        @with_drivers(chat_app, chats=ChatWriter)
        def open_channel(name: str) -> None: ...

    with pytest.raises(BadInput, match=r"is async; give it a session with with_store"):

        @with_drivers(chat_app, chats=ChatWriter)
        async def later(chats: ChatWriter) -> None: ...

    with pytest.raises(BadInput, match=r"with_drivers needs at least one keyword=DriverClass"):
        with_drivers(chat_app)


def test_a_driver_finds_its_store_from_its_model(chat_app: App) -> None:
    assert driver_store(chat_app, ChatWriter) == "chat_db"
    assert driver_store(chat_app, GameWriter) == "scores_db"
    assert driver_store(chat_app, ChatWriter, "scores_db") == "scores_db"  # named: that one
    with pytest.raises(NotFound, match="declares no store 'nope'"):
        driver_store(chat_app, ChatWriter, "nope")
    with pytest.raises(BadInput, match=r"ReadDriver is not a driver class that names its model"):
        driver_store(chat_app, ReadDriver)
    twice = App(
        f"{chat_app.name}_b",
        stores=[Store(n, metadata=ChatBase.metadata) for n in ("a_db", "b_db")],
    )
    with pytest.raises(
        BadInput, match=r"ChatWriter's model Chat is in 2 stores of app .*\(a_db, b_db\): name"
    ):
        driver_store(twice, ChatWriter)
    assert driver_store(twice, ChatWriter, default="b_db") == "b_db"
    sessions = SessionSet(chat_app)
    try:
        assert sessions.driver(ChatReader).session is sessions.chat_db
        assert sessions.driver(GameWriter).session is sessions.scores_db
    finally:
        sessions.close()


def test_import_storekeeper_imports_no_framework() -> None:
    frameworks = ["flask", "celery", "starlette", "fastapi", "pyramid", "aiosqlite"]
    code = (
        "import sys, storekeeper, storekeeper.sessions, storekeeper.pagination; "
        f"print([m for m in {frameworks!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
