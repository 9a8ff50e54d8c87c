"""storekeeper.pyramid through WebTest, on SQLite and PostgreSQL: both commit policies."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationExecutionError
from pyramid.httpexceptions import HTTPConflict
from pyramid.request import Request
from pyramid.response import Response
from sqlalchemy import select
from webtest import TestApp

from chat.model import Chat, Message, Score
from integration_checks import ChatReader, ChatWriter, PoolWatch, assert_kept, write_pair
from storekeeper import App, BadInput, ConfigError


def say(request: Request) -> Response:
    """Writes to both stores; fails after writing for every tenth n."""
    n = int(request.matchdict["n"])
    write_pair(request.stores.chat_db, request.stores.scores_db, n)
    if request.params.get("commit"):
        request.stores.chat_db.commit()
        request.stores.scores_db.commit()
    return Response("ok")


def open_channel(request: Request) -> Response:
    """Adds a channel; answers 409 when asked to."""
    request.stores.chat_db.add(Chat(channel=request.matchdict["channel"]))
    if request.params.get("conflict"):
        return HTTPConflict()
    return Response("opened")


def open_through_drivers(request: Request) -> Response:
    """Adds a channel through a driver on the request's session; answers 409 when asked to."""
    chats = request.stores.driver(ChatWriter)
    assert chats.session is request.stores.chat_db is request.stores.driver(ChatReader).session
    chats.add({"channel": request.matchdict["channel"]})
    if request.params.get("conflict"):
        return HTTPConflict()
    return Response(str(request.stores.driver(ChatReader).count()))


def boom(request: Request) -> Response:
    """Writes, then raises an exception no exception view handles."""
    request.stores.chat_db.add(Chat(channel="lost"))
    request.stores.chat_db.flush()
    raise KeyError("no exception view for this")


def failed(exc: Exception, request: Request) -> Response:
    return Response(f"failed: {exc}", status=500)


def make_web(app: App | None, settings: dict[str, str] | None = None, **policy: Any) -> TestApp:
    with Configurator(settings=settings) as config:
        config.include("storekeeper.pyramid")
        if app is not None:
            config.use_stores(app, **policy)
        config.add_route("say", "/say/{n}")
        config.add_view(say, route_name="say")
        config.add_route("open", "/open/{channel}")
        config.add_view(open_channel, route_name="open")
        config.add_route("drivers", "/drivers/{channel}")
        config.add_view(open_through_drivers, route_name="drivers")
        config.add_route("boom", "/boom")
        config.add_view(boom, route_name="boom")
        config.add_view(failed, context=RuntimeError)
        return TestApp(config.make_wsgi_app())


def channels(app: App) -> set[str]:
    with app.session("chat_db") as session:
        return set(session.scalars(select(Chat.channel)))


@pytest.mark.parametrize("commit", ["transaction", "manual"])
def test_thousand_requests_one_in_ten_failing(chat_app: App, commit: str) -> None:
    web = make_web(chat_app, commit=commit)
    # manual: the view commits itself (?commit=1); transaction: the tween commits.
    query = "?commit=1" if commit == "manual" else ""
    statuses = {
        n: web.post(f"/say/{n}{query}", expect_errors=True).status_int for n in range(1, 1001)
    }
    assert set(statuses.values()) == {200, 500}
    assert_kept(chat_app, {n for n, code in statuses.items() if code == 500})
    for name in ("chat_db", "scores_db"):
        assert chat_app.engine(name).pool.checkedout() == 0  # type: ignore[attr-defined]


def test_manual_policy_discards_what_the_view_did_not_commit(chat_app: App) -> None:
    web = make_web(chat_app, commit="manual")
    assert web.post("/say/1").text == "ok"
    with chat_app.session("chat_db") as chat, chat_app.session("scores_db") as scores:
        assert chat.scalars(select(Message)).all() == scores.scalars(select(Score)).all() == []


def test_transaction_policy_and_error_statuses(chat_app: App) -> None:
    web = make_web(chat_app, commit="transaction")
    web.post("/open/kept")
    web.post("/open/conflicted?conflict=1", status=409)
    assert channels(chat_app) == {"general", "kept"}

    lenient = make_web(chat_app, commit="transaction", rollback_on_error_status=False)
    lenient.post("/open/conflicted?conflict=1", status=409)
    assert channels(chat_app) == {"general", "kept", "conflicted"}


def test_drivers_on_the_requests_sessions_follow_the_commit_policy(chat_app: App) -> None:
    web = make_web(chat_app, commit="transaction")
    assert web.post("/drivers/kept").text == "2"
    web.post("/drivers/conflicted?conflict=1", status=409)
    assert channels(chat_app) == {"general", "kept"}
    assert chat_app.engine("chat_db").pool.checkedout() == 0  # type: ignore[attr-defined]


def test_an_exception_no_view_handles_still_rolls_back_and_closes(chat_app: App) -> None:
    web = make_web(chat_app, commit="transaction")
    with pytest.raises(KeyError, match="no exception view for this"):
        web.get("/boom")
    assert channels(chat_app) == {"general"}
    assert chat_app.engine("chat_db").pool.checkedout() == 0  # type: ignore[attr-defined]


def test_pyramid_tm_policy_lets_pyramid_tm_commit_or_abort(chat_app: App) -> None:
    web = make_web(chat_app, commit="pyramid_tm")
    watch = PoolWatch(chat_app.engine("chat_db"), chat_app.engine("scores_db"))
    web.post("/open/kept")
    web.post("/say/20", status=500)  # the view fails after writing: pyramid_tm aborts
    with pytest.raises(KeyError):
        web.get("/boom")
    assert channels(chat_app) == {"general", "kept"}
    with chat_app.session("chat_db") as chat, chat_app.session("scores_db") as scores:
        assert chat.scalars(select(Message)).all() == scores.scalars(select(Score)).all() == []
    for name in ("chat_db", "scores_db"):
        engine = chat_app.engine(name)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert watch.opened(engine) == watch.returned(engine)


def test_two_stores_closed_and_unused_store_untouched(chat_app: App) -> None:
    web = make_web(chat_app, commit="transaction")
    watch = PoolWatch(chat_app.engine("chat_db"), chat_app.engine("scores_db"))
    web.post("/say/3")
    for name in ("chat_db", "scores_db"):
        engine = chat_app.engine(name)
        assert watch.opened(engine) == watch.returned(engine) == 1
    web.post("/open/quiet")
    assert watch.opened(chat_app.engine("chat_db")) == 2
    assert watch.opened(chat_app.engine("scores_db")) == 1


def test_settings_name_the_app(chat_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHAT_APP", chat_app, raising=False)
    settings = {"storekeeper.app": f"{__name__}:CHAT_APP", "storekeeper.commit": "transaction"}
    make_web(None, settings).post("/open/from_settings")
    assert channels(chat_app) == {"general", "from_settings"}


def test_bad_settings_are_refused_by_name(chat_app: App) -> None:
    with pytest.raises(ConfigError) as caught:
        make_web(chat_app, commit="sometimes")
    assert str(caught.value) == (
        "storekeeper.commit 'sometimes' is not a commit policy; use one of: manual, transaction, "
        "pyramid_tm"
    )
    with pytest.raises(BadInput) as bad_app:
        make_web(None, {"storekeeper.app": "chat.stores"})
    assert str(bad_app.value) == (
        "setting storekeeper.app 'chat.stores': expected MODULE:ATTRIBUTE, like 'my_app.stores:app'"
    )
    with pytest.raises(ConfigurationExecutionError) as no_app:
        make_web(None)
    assert isinstance(no_app.value.evalue, ConfigError)
    assert str(no_app.value.evalue) == (
        "request.stores needs the storekeeper App: add the setting storekeeper.app = "
        "module:attribute, or call config.use_stores(app) after "
        "config.include('storekeeper.pyramid')"
    )
