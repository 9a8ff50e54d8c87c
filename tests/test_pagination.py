"""storekeeper.pagination on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

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
