"""storekeeper.pagination on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request
from sqlalchemy import delete, select

from chat.model import Message
from storekeeper import App, BadInput
from storekeeper.pagination import paginate


@pytest.fixture
def messages(chat_app: App) -> App:
    with chat_app.session("chat_db") as session:
        session.add_all([Message(id=n, channel="general", user="ada") for n in range(1, 26)])
    return chat_app


def test_pages_count_and_link(messages: App) -> None:
    statement = select(Message).order_by(Message.id)
    with messages.session("chat_db") as session:
        first = paginate(session, statement, page=1, per_page=10)
        last = paginate(session, statement, page=3, per_page=10)
        beyond = paginate(session, statement, page=4, per_page=10)
    assert [m.id for m in first] == list(range(1, 11))
    assert (first.total, first.pages, first.prev_num, first.next_num) == (25, 3, None, 2)
    assert [m.id for m in last.items] == list(range(21, 26))
    assert (last.has_next, last.prev_num) == (False, 2)
    assert list(beyond) == [] and beyond.has_prev


def test_without_counting_the_next_page_is_guessed(messages: App) -> None:
    statement = select(Message).order_by(Message.id)
    with messages.session("chat_db") as session:
        full = paginate(session, statement, page=1, per_page=25, count=False)
        short = paginate(session, statement, page=2, per_page=20, count=False)
    assert (full.total, full.pages, full.has_next) == (None, 0, True)
    assert (len(short.items), short.has_next) == (5, False)


@pytest.mark.parametrize(("page", "per_page", "wrong"), [(0, 10, "page"), (1, -5, "per_page")])
def test_bad_page_numbers_are_refused(messages: App, page: int, per_page: int, wrong: str) -> None:
    with messages.session("chat_db") as session, pytest.raises(BadInput) as caught:
        paginate(session, select(Message), page=page, per_page=per_page)
    value = page if wrong == "page" else per_page
    assert str(caught.value) == f"{wrong} must be a whole number of at least 1, not {value!r}"


# storekeeper.flask's paginate against Flask-SQLAlchemy's, over one table, request by request --

QUERIES = [
    "",
    "?page=2",
    "?page=3&per_page=10",
    "?page=4&per_page=10",  # past the last page
    "?page=99",
    "?page=0",
    "?page=-1",
    "?page=abc",
    "?page=1.5",
    "?page=",
    "?per_page=0",
    "?per_page=-5",
    "?per_page=x",
    "?per_page=500",  # above max_per_page
    "?page=2&per_page=25",
]


def flask_pair(app: App) -> Flask:
    """One Flask app serving the same pages through ``stores.paginate`` (``/ours/...``) and
    Flask-SQLAlchemy's ``db.paginate`` (``/theirs/...``); ``/<who>/lenient`` passes
    ``error_out=False``, ``/<who>/explicit`` passes ``?p=&pp=`` as arguments."""
    from flask_sqlalchemy import SQLAlchemy

    from storekeeper.flask import StoreKeeper

    web = Flask(__name__)
    web.config["SQLALCHEMY_DATABASE_URI"] = app.url("chat_db").render_as_string(hide_password=False)
    db = SQLAlchemy(web)
    stores = StoreKeeper(web, app, default="chat_db")
    paginators = {"ours": stores.paginate, "theirs": db.paginate}

    @web.get("/<who>/<mode>")
    def page(who: str, mode: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_per_page": 100}
        if mode == "lenient":
            kwargs["error_out"] = False
        if mode == "explicit":
            kwargs.update(page=int(request.args["p"]), per_page=int(request.args["pp"]))
        found = paginators[who](select(Message).order_by(Message.id), **kwargs)
        return described(found)

    return web


def described(found: Any) -> dict[str, Any]:
    return {
        "ids": [m.id for m in found.items],
        "page": found.page,
        "per_page": found.per_page,
        "total": found.total,
        "pages": found.pages,
        "prev": found.prev_num,
        "next": found.next_num,
    }


def answer(client: Any, path: str) -> tuple[int, Any]:
    response = client.get(path)
    return response.status_code, response.json if response.status_code == 200 else None


@pytest.mark.parametrize("mode", ["query", "lenient"])
def test_flask_paginate_answers_as_flask_sqlalchemy(messages: App, mode: str) -> None:
    client = flask_pair(messages).test_client()
    for query in QUERIES:
        ours = answer(client, f"/ours/{mode}{query}")
        assert ours == answer(client, f"/theirs/{mode}{query}"), query
    # What Flask-SQLAlchemy does, so what we do: a page past the last one is not found...
    assert answer(client, f"/ours/{mode}?page=4&per_page=10")[0] == (
        404 if mode == "query" else 200
    )
    assert answer(client, f"/ours/{mode}?page=0")[0] == (404 if mode == "query" else 200)


def test_flask_paginate_given_numbers_answer_as_flask_sqlalchemy(messages: App) -> None:
    client = flask_pair(messages).test_client()
    for p, pp in [(1, 10), (3, 10), (4, 10), (0, 10), (-2, 10), (1, 0), (1, -1)]:
        query = f"?p={p}&pp={pp}"
        assert answer(client, f"/ours/explicit{query}") == answer(
            client, f"/theirs/explicit{query}"
        ), query


def test_flask_paginate_outside_a_request_starts_at_page_one(messages: App) -> None:
    web = flask_pair(messages)
    stores = web.extensions["storekeeper"][messages.name]
    db = web.extensions["sqlalchemy"]
    statement = select(Message).order_by(Message.id)
    with web.app_context():
        assert described(stores.paginate(statement)) == described(db.paginate(statement))


def test_an_empty_result_is_still_a_first_page(chat_app: App) -> None:
    client = flask_pair(chat_app).test_client()
    with chat_app.session("chat_db") as session:
        session.execute(delete(Message))
    for who in ("ours", "theirs"):
        assert answer(client, f"/{who}/query") == (
            200,
            {
                "ids": [],
                "page": 1,
                "per_page": 20,
                "total": 0,
                "pages": 0,
                "prev": None,
                "next": None,
            },
        )
        assert answer(client, f"/{who}/query?page=2")[0] == 404
