"""Engines and sessions of an app: one engine per store per process, sessions that commit,
roll back and close, scoped sessions per thread, and fresh pools after a fork."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import String, select, text
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import App, NotFound, ServerSetting, Store
from storekeeper.migrate.scripts import store_scripts
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


def in_child(work: Callable[[], object]) -> Any:
    """Run ``work`` in a forked child (``os.fork``); returns what it returned (through JSON
    on a pipe). The child's traceback, if it failed, is the parent's assertion message."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read)
            try:
                answer, code = json.dumps(work()), 0
            except BaseException:
                answer = traceback.format_exc()
            # The child ends as Python would, with the objects it inherited collected.
            gc.collect()
            os.write(write, answer.encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return json.loads(answer)


def backend_pid(session: Session) -> int:
    return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_scoped_session_checked_out_before_a_fork_is_never_used_by_the_child(
    app: App,
) -> None:
    scoped = app.scoped_session("main_db")
    session = scoped()
    # The parent's session holds a connection in an open transaction with a row in it.
    session.add(Item(name="the parent's, not committed yet"))
    session.flush()
    parent_pid = backend_pid(session)

    def child() -> object:
        mine = scoped()
        seen = mine.scalars(select(Item.name)).all()
        # Code that kept the parent's session object gets an error, not the parent's socket;
        # rolled back, the session goes on with a connection of the child's.
        with pytest.raises(PendingRollbackError):
            session.execute(text("SELECT 1"))
        session.rollback()
        return [backend_pid(mine), seen, backend_pid(session)]

    child_pid, seen, kept_pid = in_child(child)
    assert parent_pid not in (child_pid, kept_pid)
    assert seen == []  # the parent's transaction is not the child's
    # The parent's connection and transaction went through the child untouched.
    assert scoped() is session
    assert backend_pid(session) == parent_pid
    assert session.scalars(select(Item.name)).all() == ["the parent's, not committed yet"]
    session.commit()
    scoped.remove()
    assert names(app) == ["the parent's, not committed yet"]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_another_threads_scoped_session_survives_a_fork_in_the_parent(app: App) -> None:
    # The child does not have the other thread: its copy of that thread's session is
    # collected in the child, and must not roll back the parent's transaction on the way.
    scoped = app.scoped_session("main_db")
    flushed, forked, done = threading.Event(), threading.Event(), threading.Event()
    pids: list[int] = []

    def worker() -> None:
        # Only the thread's registry holds the session (no local name), as in a web worker.
        scoped().add(Item(name="the other thread's"))
        scoped().flush()
        pids.append(backend_pid(scoped()))
        flushed.set()
        assert forked.wait(30)
        pids.append(backend_pid(scoped()))
        scoped().commit()
        scoped.remove()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert flushed.wait(30)
        assert in_child(lambda: backend_pid(scoped())) != pids[0]
    finally:
        forked.set()
        thread.join(30)
    assert done.is_set()
    assert pids[0] == pids[1]
    assert names(app) == ["the other thread's"]


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_sessions_joined_to_a_test_transaction_are_not_used_by_a_forked_child(
    app: App,
) -> None:
    engine = app.engine("main_db")
    with engine.connect() as conn, conn.begin() as outer:
        conn_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with app.sessions_joining("main_db", conn):
            with app.session("main_db") as session:
                session.add(Item(name="inside the test's transaction"))
                assert backend_pid(session) == conn_pid

            def child() -> object:
                with app.session("main_db") as mine:
                    return backend_pid(mine)

            assert in_child(child) != conn_pid
            with app.session("main_db") as session:
                assert backend_pid(session) == conn_pid
                assert session.scalars(select(Item.name)).all() == ["inside the test's transaction"]
        outer.rollback()
    assert names(app) == []


def test_no_such_store_names_the_stores_made_at_run_time_too(app: App) -> None:
    app.site.add_runtime_store(app.name, "acme", "main", "tenants", None)
    # The declared store, and its migrations (upgrade, current, history...).
    for attempt in (lambda: app.store("nope"), lambda: store_scripts(app, "nope")):
        with pytest.raises(NotFound) as info:
            attempt()
        assert str(info.value) == (
            f"app {app.name!r} declares no store 'nope'; its stores: main_db; "
            "made at run time: acme"
        )
    # A session of it (already listed both).
    with pytest.raises(NotFound, match=r"has no store 'nope'; its stores: main_db, acme$"):
        app.session("nope")


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_locks_another_thread_held_at_the_fork_do_not_hang_the_child(app: App) -> None:
    # A thread of the parent is making an engine (or a scoped session) when another forks:
    # the child has the locks, held by a thread it does not have.
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with app.site._engines_lock, app._lock, Site._default_lock:
            held.set()
            assert release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)

        def child() -> object:
            signal.alarm(10)  # a child that hangs is killed, and the test fails
            with app.server_engine("tenants").connect() as conn:
                one = conn.execute(text("SELECT 1")).scalar_one()
            app.bind(app.site)
            Site.set_default(app.site)
            return one

        assert in_child(child) == 1
    finally:
        release.set()
        thread.join(30)
