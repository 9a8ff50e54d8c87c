"""Provisioning from code: stores made at run time, initializer faults, spatial stores."""

from __future__ import annotations

import inspect
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import (
    App,
    BadInput,
    InitializerError,
    InvalidName,
    Kind,
    LockTimeout,
    NotAssigned,
    NotFound,
    ProvisionError,
    ServerSetting,
    ServiceUnavailable,
    Store,
)
from storekeeper.config import Sourced
from storekeeper.migrate.fanout import resolve_targets
from storekeeper.provision import create_store
from storekeeper.site import Site


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


CALLS: list[tuple[str, bool]] = []


def init_tenant(engine: Engine, first_time: bool) -> None:
    CALLS.append((engine.url.database or "", first_time))
    if first_time:
        with Session(engine) as session:
            session.add(Note(text="welcome"))
            session.commit()


def broken_init(engine: Engine, first_time: bool) -> None:
    raise RuntimeError("the river is dry")


def make_app(name: str, site: Site, **store: object) -> App:
    app = App(
        name,
        stores=[Store("main_db", metadata=Base.metadata, **store)],  # type: ignore[arg-type]
        servers=[ServerSetting("tenants")],
        kinds=[Kind("tenant", metadata=Base.metadata, initializer=init_tenant)],
    )
    return app.bind(site)


@pytest.fixture
def app(site: Site, app_name: str) -> Iterator[App]:
    CALLS.clear()
    site.assign(app_name, "tenants", "main")
    yield make_app(app_name, site)


def notes(app: App, store: str) -> list[str]:
    with app.session(store) as session:
        return list(session.scalars(select(Note.text).order_by(Note.id)))


def test_a_store_made_at_run_time_is_recorded_listed_used_and_dropped(app: App, site: Site) -> None:
    made = app.create_store("acme", kind="tenant")
    assert (made.action, made.first_time, made.initialized) == ("created", True, True)
    assert made.tables_added == ["notes"]
    assert app.store_exists("acme")
    assert app.list_stores() == ["main_db", "acme"]
    assert app.list_servers() == ["tenants"]
    assert notes(app, "acme") == ["welcome"]
    (record,) = site.catalog.runtime_stores(app.name)
    assert (record.name, record.service, record.server_setting, record.kind) == (
        "acme",
        "main",
        "tenants",
        "tenant",
    )

    # Another process (here: another site on the same catalog) knows the store.
    other = Site(site.config)
    try:
        twin = make_app(app.name, other)
        assert twin.list_stores() == ["main_db", "acme"]
        assert notes(twin, "acme") == ["welcome"]
    finally:
        other.close()

    # Made again: kept as it is, its initializer told it is not the first time.
    again = app.create_store("acme", kind="tenant", first_time=False)
    assert (again.action, again.first_time) == ("up to date", False)
    assert CALLS[-1][1] is False
    assert notes(app, "acme") == ["welcome"]

    assert app.drop_store("acme") is True
    assert not app.store_exists("acme")
    assert app.list_stores() == ["main_db"]
    assert site.catalog.runtime_stores(app.name) == []
    with pytest.raises(NotFound, match="has no store 'acme'"):
        app.drop_store("acme")
    assert [e.action for e in site.catalog.history(app.name, "acme")][:2] == ["drop", "sync"]


def test_refresh_recreates_a_run_time_store_empty_and_first_time(app: App) -> None:
    app.create_store("acme", kind="tenant")
    with app.session("acme") as session:
        session.add(Note(text="later"))
    assert notes(app, "acme") == ["welcome", "later"]
    again = app.create_store("acme", kind="tenant", refresh=True)
    assert (again.action, again.first_time) == ("recreated", True)
    assert notes(app, "acme") == ["welcome"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "../x"}, InvalidName, "invalid store name '../x'"),
        ({"name": "/etc/x"}, InvalidName, "invalid store name '/etc/x'"),
        ({"name": "Acme"}, InvalidName, "invalid store name 'Acme'"),
        ({"name": "select"}, InvalidName, "reserved word"),
        ({"name": "main_db"}, BadInput, "'main_db' is a declared store"),
        ({"name": "acme", "kind": "nope"}, NotFound, "declares no kind 'nope'; its kinds: tenant"),
        ({"name": "acme", "server": "nope"}, NotFound, "no server setting 'nope'"),
    ],
)
def test_bad_run_time_stores_are_refused_and_nothing_is_made(
    app: App, site: Site, kwargs: dict[str, str], error: type[Exception], message: str
) -> None:
    before = site.backend(site.service("main")).list(prefix=app.name)
    with pytest.raises(error, match=message):
        app.create_store(**kwargs)  # type: ignore[arg-type]
    assert site.backend(site.service("main")).list(prefix=app.name) == before
    assert site.catalog.runtime_stores(app.name) == []


def test_an_unassigned_server_setting_names_the_assign_command(site: Site, app_name: str) -> None:
    site.config.default_service = Sourced("", "production settings")
    app = make_app(app_name, site)
    with pytest.raises(NotAssigned, match=f"storekeeper assign {app_name}.tenants SERVICE"):
        app.create_store("acme")
    with pytest.raises(NotAssigned, match=f"storekeeper assign {app_name}.tenants SERVICE"):
        app.server_engine("tenants")


def test_a_failing_initializer_of_a_run_time_store_leaves_nothing(app: App, site: Site) -> None:
    with pytest.raises(InitializerError, match=r"the river is dry.*dropped again"):
        app.create_store("acme", initializer=broken_init)
    assert not app.store_exists("acme")
    assert site.catalog.runtime_stores(app.name) == []
    # The next try is a clean first time.
    made = app.create_store("acme", kind="tenant")
    assert (made.action, made.first_time) == ("created", True)


@pytest.mark.parametrize(
    ("initializer", "message"),
    [
        ("no_such_module_here:init", "cannot be imported: ModuleNotFoundError"),
        ("tests_missing.module.function", "cannot be imported"),
        (f"{__name__}:no_such_function", "has no function 'no_such_function'"),
        ("just_a_word", "is not 'module:function'"),
    ],
)
def test_an_initializer_that_does_not_import_is_refused_before_anything_is_made(
    site: Site, app_name: str, initializer: str, message: str
) -> None:
    app = make_app(app_name, site, initializer=initializer)
    with pytest.raises(InitializerError, match=message):
        app.sync()
    assert not app.store_exists("main_db")


def test_a_failing_initializer_leaves_an_existing_store_as_it_was(
    site: Site, app_name: str
) -> None:
    app = make_app(app_name, site)
    app.sync()
    with app.session("main_db") as session:
        session.add(Note(text="keep me"))
    failing = make_app(app_name, site, initializer=broken_init)
    with pytest.raises(InitializerError, match="existing database was left as it was"):
        failing.sync()
    assert notes(app, "main_db") == ["keep me"]


def test_a_string_initializer_is_imported_and_called(site: Site, app_name: str) -> None:
    CALLS.clear()
    app = make_app(app_name, site, initializer=f"{__name__}:init_tenant")
    report = app.sync()
    assert report.changed
    assert [(app.engine("main_db").url.database, True)] == CALLS
    assert notes(app, "main_db") == ["welcome"]
    assert not app.sync().changed
    assert CALLS[-1][1] is False


def test_a_spatial_store_needs_postgis(site: Site, app_name: str, dialect: str) -> None:
    app = make_app(app_name, site, spatial=True)
    backend = site.backend(site.service("main"))
    if dialect == "sqlite":
        with pytest.raises(ProvisionError, match="is spatial, but service 'main' is SQLite"):
            app.sync()
        assert not app.store_exists("main_db")
        return
    with backend.admin.connect() as conn:
        available = conn.execute(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'")
        ).scalar_one()
    if available:
        app.sync()
        with app.engine("main_db").connect() as conn:
            assert "postgis" in conn.execute(text("SELECT extname FROM pg_extension")).scalars()
    else:
        with pytest.raises(ProvisionError, match="PostGIS is not installed on service 'main'"):
            app.sync()
        assert not app.store_exists("main_db")


def test_sync_reports_per_store_progress(site: Site, app_name: str) -> None:
    app = App(
        app_name,
        stores=[Store(f"s{i}", metadata=Base.metadata) for i in range(3)],
    ).bind(site)
    seen: list[str] = []
    app.sync(progress=lambda r: seen.append(f"{r.store}:{r.action}"))
    assert seen == ["s0:created", "s1:created", "s2:created"]
    with app.session("s2") as session:
        assert session.scalar(select(func.count()).select_from(Note)) == 0


def leaky_init(engine: Engine, first_time: bool) -> None:
    raise RuntimeError(f"cannot use {engine.url.render_as_string(hide_password=False)}")


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_passwords_stay_out_of_errors_logs_and_history(
    site: Site, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    password = site.service("main").url.password
    assert password
    app = make_app(app_name, site, initializer=leaky_init)
    with pytest.raises(InitializerError) as failed:
        app.sync()
    assert "cannot use postgresql+psycopg://" in str(failed.value)

    url = site.service("main").url
    site.config.services["down"] = Sourced(
        url.set(port=1).render_as_string(hide_password=False), "test"
    )
    site._services = None
    site.assign(app_name, "main_db", "down")
    with pytest.raises(ServiceUnavailable) as down:
        make_app(app_name, site).sync()
    assert "cannot connect to service 'down'" in str(down.value)

    history = " ".join(e.detail for e in site.catalog.history(app_name))
    assert "cannot use" in history
    for shown in (str(failed.value), str(down.value), caplog.text, history):
        assert str(password) not in shown


# drop_store and the connections others hold ---------------------------------------------

HOLDER = """
import os
import sys

from sqlalchemy import create_engine, text

engine = create_engine(os.environ["HOLD_URL"])
conn = engine.connect()
conn.execute(text("SELECT count(*) FROM notes")).scalar()
if sys.argv[1] == "transaction":
    conn.execute(text("INSERT INTO notes (text) VALUES ('held')"))
else:
    conn.commit()
print("ready", flush=True)
sys.stdin.readline()
try:
    conn.execute(text("SELECT count(*) FROM notes")).scalar()
    conn.rollback()
    print("alive", flush=True)
except Exception as exc:
    print("ended", type(exc).__name__, flush=True)
"""


@contextmanager
def holders(app: App, store: str, tmp_path: Path) -> Iterator[Callable[[], list[str]]]:
    """Two real processes using ``store``: one with an idle connection, one in the middle of a
    transaction that wrote a row. Yields a function that lets them go on (each runs one
    more query) and returns what each saw: ``alive`` or ``ended ERROR``."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    env["HOLD_URL"] = app.url(store).render_as_string(hide_password=False)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), mode],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for mode in ("idle", "transaction")
    ]
    seen: list[str] = []

    def go_on() -> list[str]:
        if not seen:
            seen.extend(p.communicate("\n", timeout=60)[0].strip() for p in processes)
        return seen

    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield go_on
    finally:
        go_on()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_drop_store_ends_other_connections_first_on_postgresql(
    app: App, site: Site, tmp_path: Path
) -> None:
    app.create_store("acme", kind="tenant")
    with holders(app, "acme", tmp_path) as go_on:
        assert app.drop_store("acme") is True
        assert not app.store_exists("acme")
        assert [seen.split(" ")[0] for seen in go_on()] == ["ended", "ended"]
    assert site.catalog.runtime_stores(app.name) == []


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_drop_store_on_sqlite_waits_for_other_connections_to_close_then_drops(
    app: App, site: Site, tmp_path: Path
) -> None:
    app.create_store("acme", kind="tenant")
    waiting = threading.Event()

    class Handshake(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for the other connections" in record.getMessage():
                waiting.set()

    handler = Handshake()
    logging.getLogger("storekeeper").addHandler(handler)
    try:
        with holders(app, "acme", tmp_path) as go_on, ThreadPoolExecutor(1) as pool:
            dropped = pool.submit(app.drop_store, "acme")
            assert waiting.wait(60), dropped.exception(timeout=0) if dropped.done() else None
            # The file is still there while they use it, and their work still counts.
            assert not dropped.done() and app.store_exists("acme")
            assert go_on() == ["alive", "alive"]
            assert dropped.result(timeout=60) is True
    finally:
        logging.getLogger("storekeeper").removeHandler(handler)
    assert not app.store_exists("acme")
    assert site.catalog.runtime_stores(app.name) == []


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_drop_store_on_sqlite_gives_up_after_lock_timeout_and_changes_nothing(
    app: App, site: Site, tmp_path: Path
) -> None:
    app.create_store("acme", kind="tenant")
    site.config.lock_timeout = Sourced("0.2", "test")
    with holders(app, "acme", tmp_path) as go_on:
        with pytest.raises(LockTimeout, match=r"still open in another connection after 0.2 s"):
            app.drop_store("acme")
        assert go_on() == ["alive", "alive"]
    assert app.store_exists("acme")
    assert notes(app, "acme") == ["welcome"]  # the held transaction wrote nothing
    assert [r.name for r in site.catalog.runtime_stores(app.name)] == ["acme"]


def test_drop_store_takes_the_lock_first_and_changes_nothing_without_it(
    app: App, site: Site, tmp_path: Path
) -> None:
    app.create_store("acme", kind="tenant")
    engine = app.engine("acme")
    site.config.lock_timeout = Sourced("0", "test")
    backend = site.backend(site.service("main"))
    database = app.placement("acme").database
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with backend.lock(database, doing="a test"):
            held.set()
            release.wait(60)

    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(hold)
        assert held.wait(60)
        try:
            with pytest.raises(LockTimeout, match="doing: a test"):
                app.drop_store("acme")
            # Nothing was touched: the same engine, the store and its record are there.
            assert app.engine("acme") is engine
            assert notes(app, "acme") == ["welcome"]
            assert [r.name for r in site.catalog.runtime_stores(app.name)] == ["acme"]
        finally:
            release.set()
            holding.result(timeout=60)
    assert app.drop_store("acme") is True


LEAKED: list[Any] = []


def leaking_broken_init(engine: Engine, first_time: bool) -> None:
    # A connection left open (so the store cannot be dropped again at once), then a failure.
    LEAKED.append(sqlite3.connect(str(engine.url.database)))
    LEAKED[-1].execute("SELECT 1 FROM notes").fetchall()
    raise RuntimeError("the river is dry")


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_a_failing_cleanup_does_not_hide_the_initializers_error(
    app: App, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site.config.lock_timeout = Sourced("0", "test")
    try:
        with pytest.raises(InitializerError) as failed:
            app.create_store("acme", kind="tenant", initializer=leaking_broken_init)
    finally:
        for conn in LEAKED:
            conn.close()
        LEAKED.clear()
    message = str(failed.value)
    assert "initializer" in message and "RuntimeError: the river is dry" in message
    assert "failed too (LockTimeout: store database" in message
    assert "the next sync drops it and makes it again" in message
    assert "dropping half-made database" in caplog.text
    # The half-made store is still marked: made again as new once nothing holds it.
    made = app.create_store("acme", kind="tenant")
    assert (made.action, made.first_time) == ("created", True)
    assert notes(app, "acme") == ["welcome"]


# create_store on a store that exists -------------------------------------------------------


def test_create_store_again_decides_first_time_instead_of_claiming_it(app: App) -> None:
    assert app.create_store("acme", kind="tenant").first_time is True
    again = app.create_store("acme", kind="tenant")
    assert (again.action, again.first_time) == ("up to date", False)
    assert CALLS[-1][1] is False
    assert notes(app, "acme") == ["welcome"]  # the seed row was not added again
    # The library function decides the same way; True is the caller's word.
    assert create_store(app, "acme", kind="tenant").first_time is False
    assert app.create_store("acme", kind="tenant", first_time=True).first_time is True
    assert notes(app, "acme") == ["welcome", "welcome"]
    for function in (App.create_store, create_store):
        assert inspect.signature(function).parameters["first_time"].default is None


def test_create_store_again_without_kind_keeps_the_recorded_kind(site: Site, app_name: str) -> None:
    CALLS.clear()
    site.assign(app_name, "tenants", "main")
    app = App(
        app_name,
        servers=[ServerSetting("tenants")],
        kinds=[
            Kind("tenant", metadata=Base.metadata, initializer=init_tenant),
            Kind("other", metadata=Base.metadata),
        ],
    ).bind(site)
    app.create_store("acme", kind="tenant")
    again = app.create_store("acme")
    assert (again.action, again.first_time) == ("up to date", False)
    assert CALLS[-1][1] is False  # the kind's initializer ran, told it is not the first time
    assert [r.kind for r in site.catalog.runtime_stores(app_name)] == ["tenant"]
    assert [ref.store for ref in resolve_targets([app], [f"{app_name}.tenant:*"])] == ["acme"]

    with pytest.raises(BadInput, match=r"'acme' was made with kind 'tenant', not 'other'"):
        app.create_store("acme", kind="other")
    assert [r.kind for r in site.catalog.runtime_stores(app_name)] == ["tenant"]
    # Made anew, it may change kind.
    remade = app.create_store("acme", kind="other", refresh=True)
    assert remade.action == "recreated"
    assert [r.kind for r in site.catalog.runtime_stores(app_name)] == ["other"]
    app.create_store("acme", refresh=True)
    assert [r.kind for r in site.catalog.runtime_stores(app_name)] == ["other"]
