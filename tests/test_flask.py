"""storekeeper.flask through Flask's own test client and CLI runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask, request
from sqlalchemy import func, select

from chat.model import Chat, Game, Message, User
from integration_checks import (
    ChatReader,
    ChatWriter,
    GameWriter,
    PoolWatch,
    assert_kept,
    write_pair,
)
from storekeeper import App, BadInput, NotFound
from storekeeper.flask import StoreKeeper
from storekeeper.site import Site
from test_migrate import declare, schema


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


def test_drivers_on_the_app_contexts_sessions(chat_app: App) -> None:
    flask_app, stores = make_flask(chat_app)

    @flask_app.post("/open/<channel>")
    def open_channel(channel: str) -> dict[str, object]:
        chats = stores.driver(ChatWriter)
        chats.add({"channel": channel})
        games = stores.driver(GameWriter)  # its model is in scores_db
        if request.args.get("commit"):
            stores.session.commit()
        return {
            "unit_of_work": chats.session is stores.session() is stores.driver(ChatReader).session,
            "scores": games.session is stores.session("scores_db"),
            "channels": stores.driver(ChatReader).count(),
        }

    client = flask_app.test_client()
    facts = {"unit_of_work": True, "scores": True}
    assert client.post("/open/kept?commit=1").json == {**facts, "channels": 2}
    # Not committed: seen in its request, rolled back at teardown.
    assert client.post("/open/lost").json == {**facts, "channels": 3}
    assert {c.channel for c in channels_of(chat_app)} == {"general", "kept"}
    with flask_app.app_context(), pytest.raises(BadInput, match=r"names its model"):
        stores.driver(ChatReader.__mro__[1])


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
    # As the storekeeper command: 2, nothing was done at the user's word.
    assert declined.exit_code == 2, declined.output
    assert f"Drop and recreate {chat_app.name}.chat_db? All their data is lost." in declined.output
    assert "error: refresh not confirmed; nothing was changed" in declined.output
    unanswered = runner.invoke(args=refresh, input="")
    assert unanswered.exit_code == 2, unanswered.output
    assert "refresh not confirmed (no answer); nothing was changed; pass --yes" in unanswered.output
    assert "precious" in {c.channel for c in channels_of(chat_app)}

    done = runner.invoke(args=[*refresh, "--yes"])
    assert done.exit_code == 0, done.output
    assert f"{chat_app.name}.chat_db: recreated" in done.output
    assert {c.channel for c in channels_of(chat_app)} == {"general"}


def channels_of(app: App) -> list[Chat]:
    with app.session("chat_db") as session:
        return list(session.scalars(select(Chat)))


# flask stores init / migrate / upgrade / ...: Flask-Migrate's verbs, one store at a time ------


def migration_commands(app: App, *, cli_group: str = "stores") -> Callable[..., str]:
    """``run("upgrade", "--to", "r1", code=0)``: ``flask <cli_group> ...`` for a Flask app
    serving ``app``; asserts the exit code and that no traceback was printed, returns the
    output."""
    flask_app = Flask(__name__)
    StoreKeeper(flask_app, app, cli_group=cli_group)
    runner = flask_app.test_cli_runner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(args=[cli_group, *args])
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result.output

    return run


def column_names(app: App) -> list[str]:
    """The columns of table ``items`` as the database has them."""
    return [name for name, _type, _nullable in schema(app)["items"][0]]


@pytest.fixture
def items_v1(project: Path, site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch) -> App:
    """test_migrate's app (store ``main_db``, models v1: table ``items``), no migrations yet."""
    monkeypatch.syspath_prepend(str(project))
    return declare(project, site, app_name, 1)


def test_flask_stores_migrations_round_trip(
    project: Path, site: Site, app_name: str, items_v1: App, dialect: str
) -> None:
    run = migration_commands(items_v1)
    scripts = project / "migrations" / "main_db"
    assert f"{app_name}.main_db: script directory {scripts} created" in run("init")
    assert (scripts / "env.py").is_file()
    assert "already exists" in run("init", "main_db")

    made = run("migrate", "-m", "items", "--rev-id", "r1")
    assert f"new revision r1 (items) in {scripts / 'versions'}" in made
    assert re.search(
        r"op\.create_table\(\s*'items'", (scripts / "versions" / "r1_items.py").read_text()
    )
    # The store does not exist yet: sync creates it and brings it to head, as it would deploy.
    assert f"{app_name}.main_db: created" in run("sync")
    assert re.search(rf"{app_name}\.main_db\s+r1\s+r1\s+at head", run("current"))
    assert f"{app_name}.main_db: ok, models and schema agree" in run("check")

    # The developer changes the models: check names what the migrations lack.
    run = migration_commands(declare(project, site, app_name, 2))
    drift = run("check", code=1)
    assert "column items.price (INTEGER) is in the models but not in the database" in drift
    assert "table tags is in the models but not in the database" in drift
    assert (
        f"error: check failed for {app_name}.main_db: write a migration (flask stores migrate "
        "main_db -m MSG) or fix the models"
    ) in drift

    run("migrate", "main_db", "-m", "tags and prices", "--rev-id", "r2")
    assert re.search(rf"{app_name}\.main_db\s+r1\s+r2\s+\S+\s+ok", run("upgrade"))
    assert re.search(rf"{app_name}\.main_db\s+r2\s+r2\s+at head", run("current"))
    assert "models and schema agree" in run("check")
    assert "price" in column_names(items_v1)
    assert run("history").splitlines() == [
        "r1 -> r2 (head), tags and prices",
        "<base> -> r1, items",
    ]
    assert run("heads").splitlines() == ["r2"]

    assert re.search(rf"{app_name}\.main_db\s+r2\s+r1\s+\S+\s+ok", run("downgrade", "--to", "-1"))
    assert re.search(rf"{app_name}\.main_db\s+r1\s+r2\s+behind", run("current"))
    assert "price" not in column_names(items_v1)
    assert re.search(rf"{app_name}\.main_db\s+r1\s+r2\s+\S+\s+ok", run("stamp", "--to", "r2"))
    assert re.search(rf"{app_name}\.main_db\s+r2\s+r2\s+at head", run("current"))

    # revision without --autogenerate: an empty migration to write by hand.
    assert "new revision r3 (by hand)" in run("revision", "-m", "by hand", "--rev-id", "r3")
    assert (
        "def upgrade() -> None:\n    pass" in (scripts / "versions" / "r3_by_hand.py").read_text()
    )
    assert re.search(rf"{app_name}\.main_db\s+r2\s+r3\s+behind", run("current"))


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_flask_stores_refuses_an_unknown_store_and_revision_with_exit_2(
    app_name: str, items_v1: App
) -> None:
    run = migration_commands(items_v1)
    run("init")
    run("migrate", "-m", "items", "--rev-id", "r1")
    run("sync")

    unknown_store = run("upgrade", "nope", code=2)
    assert (
        f"error: app {app_name!r} has no store or kind 'nope'; its stores: main_db" in unknown_store
    )
    unknown_revision = run("upgrade", "--to", "zzz", code=2)
    assert (
        f"error: unknown revision 'zzz' for {app_name}.main_db; its revisions: r1"
        in unknown_revision
    )
    below_base = run("downgrade", "--to", "-2", code=2)
    assert f"cannot downgrade {app_name}.main_db by 2 revision(s): it is at r1" in below_base
    no_message = run("migrate", code=2)
    assert "error: a revision needs a message: -m 'what it changes'" in no_message
    assert re.search(rf"{app_name}\.main_db\s+r1\s+r1\s+at head", run("current"))


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_flask_stores_without_a_script_directory_says_how_to_make_one(
    project: Path, app_name: str, items_v1: App
) -> None:
    # The hint names the command the way this Flask app spells it: its cli_group.
    run = migration_commands(items_v1, cli_group="db")
    missing = (
        f"error: {app_name}.main_db has no migrations: no Alembic script directory at "
        f"{project / 'migrations' / 'main_db'}; create it with: flask db init main_db"
    )
    for verb in (
        ["migrate", "-m", "first"],
        ["revision", "-m", "first"],
        ["upgrade"],
        ["downgrade", "--to", "-1"],
        ["stamp", "--to", "head"],
        ["current"],
        ["history"],
        ["heads"],
        ["check"],
    ):
        assert missing in run(*verb, code=2), verb
    assert "next: flask db migrate main_db -m 'first tables'" in run("init")
    assert run("heads") == f"{app_name}.main_db: no revisions yet\n"


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_flask_stores_needs_a_store_name_when_there_are_several(chat_app: App) -> None:
    run = migration_commands(chat_app)
    several = run("current", code=2)
    assert f"error: app {chat_app.name!r} has 2 stores (chat_db, scores_db): name the" in several
    named = run("current", "scores_db", code=2)
    assert "create it with: flask stores init scores_db" in named


FLASK_MODULE = """
from flask import Flask, request

from chat.model import ChatBase, init_chat_db
from storekeeper import App, Store
from storekeeper.flask import StoreKeeper

app = App("{name}", stores=[Store("chat_db", metadata=ChatBase.metadata, initializer=init_chat_db)])
web = Flask(__name__)
StoreKeeper(web, app)
"""


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_declining_refresh_in_a_real_flask_process_exits_2_and_keeps_the_data(
    project: Path, chat_app: App, app_name: str
) -> None:
    (project / "flask_chat.py").write_text(FLASK_MODULE.format(name=app_name))
    with chat_app.session("chat_db") as session:
        session.add(Chat(channel="precious"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "FLASK_"))}
    command = [sys.executable, "-m", "flask", "--app", "flask_chat:web", "stores", "sync"]
    for answer in ("n\n", ""):  # "no", and no answer at all (stdin closed)
        declined = subprocess.run(
            [*command, "--refresh"],
            cwd=project,
            env=env,
            input=answer,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert declined.returncode == 2, declined.stdout + declined.stderr
        assert "refresh not confirmed" in declined.stderr
        assert "Traceback" not in declined.stderr
    assert "precious" in {c.channel for c in channels_of(chat_app)}


# Every verb that both commands have: a hint naming one of them inside `flask stores` must
# name the flask one.
STOREKEEPER_HINT = re.compile(
    r"storekeeper (sync|status|revision|upgrade|downgrade|stamp|current|history|heads|check)\b"
)


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_flask_stores_hints_name_flask_stores_commands(project: Path, items_v1: App) -> None:
    run = migration_commands(items_v1)
    run("init")
    run("migrate", "-m", "items", "--rev-id", "r1")
    outputs = []

    not_created = run("upgrade", code=1)  # the database is not there yet
    assert "create it first (flask stores sync, or app.create_store" in not_created
    outputs.append(not_created)
    run("sync")

    unknown = run("upgrade", "--to", "zzz", code=2)
    assert "(see flask stores history main_db)" in unknown
    outputs.append(unknown)

    run("revision", "-m", "by hand", "--rev-id", "r2")
    behind = run("check", code=1)
    assert "run flask stores upgrade main_db" in behind
    outputs.append(behind)

    run("revision", "-m", "other branch", "--rev-id", "r3")
    branch = project / "migrations" / "main_db" / "versions" / "r3_other_branch.py"
    branch.write_text(
        re.sub(r"down_revision: (.*) = .*", r"down_revision: \1 = 'r1'", branch.read_text())
    )
    branched = run("upgrade", code=1)
    assert "merge them first: flask stores revision main_db --merge -m 'merge heads'" in branched
    outputs.append(branched)

    for output in outputs:
        assert not STOREKEEPER_HINT.search(output), output


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_hints_flask_stores_cannot_say_stay_storekeeper_commands(chat_app: App) -> None:
    stores = StoreKeeper(Flask(__name__), chat_app, cli_group="db")
    name = chat_app.name
    spelled = {
        f"run: storekeeper assign {name}.chat_db SERVICE": f"run: storekeeper assign {name}."
        "chat_db SERVICE",
        f"merge: storekeeper revision {name}.tenant:* --merge": f"merge: storekeeper revision "
        f"{name}.tenant:* --merge",
        "storekeeper upgrade other.chat_db": "storekeeper upgrade other.chat_db",
        f"create it with: storekeeper revision {name}.chat_db --init": "create it with: flask db "
        "init chat_db",
        f"run storekeeper sync {name}.": "run flask db sync.",
        f"(see storekeeper history {name}.chat_db)": "(see flask db history chat_db)",
    }
    assert {text: stores._spell(text) for text in spelled} == spelled


def at_a_terminal(command: list[str], typed: bytes, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with a real terminal (a pty) as its standard input, ``typed`` on it."""
    import pty

    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "FLASK_"))}
    try:
        os.write(controller, typed)  # kept by the terminal until the command reads it
        return subprocess.run(
            command, stdin=terminal, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.mark.parametrize("dialect", ["sqlite"])
@pytest.mark.parametrize("typed", [b"n\n", b"\x04"], ids=["no", "ctrl-d"])
def test_declining_refresh_at_a_terminal_exits_2_in_both_commands(
    project: Path, chat_app: App, app_name: str, typed: bytes
) -> None:
    (project / "flask_chat.py").write_text(FLASK_MODULE.format(name=app_name))
    with chat_app.session("chat_db") as session:
        session.add(Chat(channel="precious"))
    faces = {
        "storekeeper": [sys.executable, "-m", "storekeeper", "--app", "flask_chat:app", "sync"],
        "flask": [sys.executable, "-m", "flask", "--app", "flask_chat:web", "stores", "sync"],
    }
    for face, command in faces.items():
        declined = at_a_terminal([*command, "--refresh"], typed, project)
        assert declined.returncode == 2, (face, declined.stdout, declined.stderr)
        assert "refresh not confirmed" in declined.stderr, face
    assert "precious" in {c.channel for c in channels_of(chat_app)}
