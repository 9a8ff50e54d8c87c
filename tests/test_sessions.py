"""Engines and sessions of an app: one engine per store per process, sessions that commit,
roll back and close, scoped sessions per thread, and fresh pools after a fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import App, ServerSetting, Store
from storekeeper.site import Site


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def app(site: Site, app_name: str) -> Iterator[App]:
    app = App(
        app_name,
        stores=[Store("main_db", metadata=Base.metadata)],
        servers=[ServerSetting("tenants")],
    ).bind(site)
    site.assign(app_name, "tenants", "main")
    app.sync()
    yield app


def names(app: App) -> list[str]:
    with app.session("main_db") as session:
        return list(session.scalars(select(Item.name).order_by(Item.id)))


def test_one_engine_per_store_and_its_url(app: App, dialect: str) -> None:
    assert app.engine("main_db") is app.engine("main_db")
    assert app.engine("main_db").url == app.url("main_db")
    assert app.sessionmaker("main_db") is app.sessionmaker("main_db")
    if dialect == "postgresql":
        password = app.url("main_db").password
        assert password
        for shown in (
            str(app.url("main_db")),
            repr(app.url("main_db")),
            repr(app.engine("main_db")),
        ):
            assert str(password) not in shown
            assert "***" in shown


def test_a_session_commits_on_success_rolls_back_on_error_and_always_closes(app: App) -> None:
    engine = app.engine("main_db")
    with app.session("main_db") as session:
        session.add(Item(name="kept"))
    assert names(app) == ["kept"]

    with pytest.raises(RuntimeError, match="boom"), app.session("main_db") as session:
        session.add(Item(name="lost"))
        session.flush()
        raise RuntimeError("boom")
    assert names(app) == ["kept"]
    assert not session.in_transaction()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_scoped_sessions_are_one_per_thread(app: App) -> None:
    scoped = app.scoped_session("main_db")
    mine = scoped()
    assert scoped() is mine
    theirs: list[Session] = []
    thread = threading.Thread(target=lambda: theirs.append(scoped()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    scoped.remove()
    assert scoped() is not mine
    scoped.remove()


def test_server_engine_reaches_the_server_behind_a_setting(app: App, dialect: str) -> None:
    with app.server_engine("tenants").connect() as conn:
        if dialect == "postgresql":
            assert conn.execute(text("SELECT current_database()")).scalar() == "postgres"
        else:
            assert conn.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_forked_child_gets_its_own_connections(app: App) -> None:
    engine = app.engine("main_db")
    with engine.connect() as conn:
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    # The pool now holds the parent's connection; the child must open its own.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            with app.session("main_db") as session:
                child_pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
                session.add(Item(name="from the child"))
            os.write(write, str(child_pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_pid = int(os.read(read, 64) or 0)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_pid and child_pid != parent_pid
    # The parent's pooled connection survived the child's exit.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == parent_pid
    assert names(app) == ["from the child"]
