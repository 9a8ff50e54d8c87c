"""storekeeper.flask through Flask's own test client and CLI runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import logging

import pytest
from flask import Flask
from sqlalchemy import func, select

from chat.model import Chat, Game, Message, User
from integration_checks import PoolWatch, assert_kept, write_pair
from storekeeper import App, BadInput, NotFound
from storekeeper.flask import StoreKeeper


def make_flask(app: App) -> tuple[Flask, StoreKeeper]:
    flask_app = Flask(__name__)
    # Failing views become 500 responses, as in production, instead of raising in the test.
    flask_app.config["PROPAGATE_EXCEPTIONS"] = False
    flask_app.logger.setLevel(logging.CRITICAL)
    stores = StoreKeeper(flask_app, app, default="chat_db")

    @flask_app.post("/say/<int:n>")
    def say(n: int) -> str:
        write_pair(stores.session(), stores.session("scores_db"), n)
        stores.session.commit()
        stores.session("scores_db").commit()
        return "ok"

    @flask_app.get("/user/<name>")
    def user(name: str) -> str:
        return stores.get_or_404(User, name).username

    @flask_app.get("/first/<channel>")
    def first(channel: str) -> str:
        return stores.first_or_404(select(Chat).filter_by(channel=channel)).channel

    @flask_app.get("/one/<user>")
    def one(user: str) -> str:
        return str(stores.one_or_404(select(Message.id).filter_by(user=user)))

    @flask_app.get("/messages")
    def messages() -> dict[str, object]:
        page = stores.paginate(select(Message).order_by(Message.id))
        return {
            "ids": [m.id for m in page],
            "total": page.total,
            "pages": page.pages,
            "next": page.next_num,
        }

    return flask_app, stores


def test_thousand_requests_one_in_ten_failing(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    client = flask_app.test_client()
    statuses = {n: client.post(f"/say/{n}").status_code for n in range(1, 1001)}

    assert set(statuses.values()) == {200, 500}
    assert_kept(chat_app, {n for n, code in statuses.items() if code == 500})
    for name in ("chat_db", "scores_db"):
        assert chat_app.engine(name).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_two_stores_in_one_request_are_both_closed(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    watch = PoolWatch(chat_app.engine("chat_db"), chat_app.engine("scores_db"))
    assert flask_app.test_client().post("/say/7").status_code == 200
    for name in ("chat_db", "scores_db"):
        engine = chat_app.engine(name)
        assert watch.opened(engine) == watch.returned(engine) == 1


def test_store_not_used_opens_no_connection(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    watch = PoolWatch(chat_app.engine("chat_db"), chat_app.engine("scores_db"))
    assert flask_app.test_client().get("/user/ada").text == "ada"
    assert watch.opened(chat_app.engine("chat_db")) == 1
    assert watch.opened(chat_app.engine("scores_db")) == 0


def test_session_outlives_nothing_but_its_app_context(chat_app: App) -> None:
    flask_app, stores = make_flask(chat_app)
    with flask_app.app_context():
        first = stores.session()
        assert stores.session() is first and stores.session("chat_db") is first
        first.add(Chat(channel="uncommitted"))
        first.flush()
    with flask_app.app_context():
        assert stores.session() is not first
        assert stores.session.get(Chat, "uncommitted") is None


def test_flask_sqlalchemy_conveniences(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    with chat_app.session("chat_db") as session:
        session.add_all([Message(id=n, channel="general", user="ada") for n in range(1, 46)])
    client = flask_app.test_client()
    assert client.get("/user/nobody").status_code == 404
    assert client.get("/first/general").text == "general"
    assert client.get("/first/none").status_code == 404
    assert client.get("/messages").json == {
        "ids": list(range(1, 21)),
        "total": 45,
        "pages": 3,
        "next": 2,
    }
    last = client.get("/messages?page=3&per_page=20").json
    assert last["ids"] == list(range(41, 46)) and last["next"] is None
    assert client.get("/one/ada").status_code == 404  # several messages
    assert client.get("/one/nobody").status_code == 404  # none
    with chat_app.session("chat_db") as session:
        session.add(User(username="solo"))
        session.flush()
        session.add(Message(id=99, channel="general", user="solo"))
    assert client.get("/one/solo").text == "99"
    bad = client.get("/messages?page=abc")
    assert bad.status_code == 404
    assert "?page= must be a whole number of at least 1, not 'abc'" in html.unescape(bad.text)


def test_default_store_must_be_named_when_there_are_several(chat_app: App) -> None:
    flask_app = Flask(__name__)
    stores = StoreKeeper(flask_app, chat_app)
    with flask_app.app_context(), pytest.raises(BadInput) as caught:
        stores.session()
    assert str(caught.value) == (
        f"app {chat_app.name!r} has 2 stores (chat_db, scores_db): name the store, or give "
        "the integration a default one (default='NAME')"
    )


def test_unknown_stores_are_refused_by_name(chat_app: App) -> None:
    with pytest.raises(NotFound, match="declares no store 'chats'; its stores: chat_db"):
        StoreKeeper(Flask(__name__), chat_app, default="chats")
    flask_app, stores = make_flask(chat_app)
    with flask_app.app_context(), pytest.raises(NotFound, match="has no store 'nope'"):
        stores.session("nope")


def test_one_storekeeper_per_flask_app(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    with pytest.raises(BadInput, match=f"already has a StoreKeeper for app '{chat_app.name}'; use"):
        StoreKeeper(flask_app, chat_app)
    with pytest.raises(BadInput, match=r"needs the storekeeper App: StoreKeeper\(flask_app, app\)"):
        StoreKeeper().init_app(Flask("other"))


def test_flask_shell_has_stores(chat_app: App) -> None:
    flask_app, stores = make_flask(chat_app)
    with flask_app.app_context():
        assert flask_app.make_shell_context()["stores"] is stores


def test_init_app_later(chat_app: App) -> None:
    stores = StoreKeeper(app=chat_app, default="scores_db")
    flask_app = Flask(__name__)
    stores.init_app(flask_app)
    with flask_app.app_context():
        assert stores.session.get(Game, 1) is not None


def test_flask_stores_commands(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    runner = flask_app.test_cli_runner()
    chat_app.drop_store("scores_db")

    synced = runner.invoke(args=["stores", "sync"])
    assert synced.exit_code == 0, synced.output
    assert f"{chat_app.name}.chat_db: up to date" in synced.output
    assert f"{chat_app.name}.scores_db: created, tables added: games, scores" in synced.output
    with chat_app.session("scores_db") as session:
        assert session.scalar(select(func.count()).select_from(Game)) == 1

    status = runner.invoke(args=["stores", "status"])
    assert status.exit_code == 0, status.output
    assert f"{chat_app.name}_scores_db" in status.output

    bad = runner.invoke(args=["stores", "sync", "--store", "nope"])
    assert bad.exit_code == 2
    assert f"app {chat_app.name!r} declares no store 'nope'" in bad.output
    assert "Traceback" not in bad.output


def test_flask_stores_sync_refresh_asks_first(chat_app: App) -> None:
    flask_app, _ = make_flask(chat_app)
    with chat_app.session("chat_db") as session:
        session.add(Chat(channel="precious"))
    runner = flask_app.test_cli_runner()
    refresh = ["stores", "sync", "--refresh", "--store", "chat_db"]
    declined = runner.invoke(args=refresh, input="n\n")
    assert declined.exit_code == 1
    assert f"Drop and recreate {chat_app.name}.chat_db? All their data is lost." in declined.output
    assert "precious" in {c.channel for c in channels_of(chat_app)}

    done = runner.invoke(args=[*refresh, "--yes"])
    assert done.exit_code == 0, done.output
    assert f"{chat_app.name}.chat_db: recreated" in done.output
    assert {c.channel for c in channels_of(chat_app)} == {"general"}


def channels_of(app: App) -> list[Chat]:
    with app.session("chat_db") as session:
        return list(session.scalars(select(Chat)))
