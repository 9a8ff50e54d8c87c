"""A store's first initialization interrupted by Ctrl-C, SIGTERM or ``kill -9``, in real
processes: the next ``sync`` makes it again as new, with ``first_time`` true."""

from __future__ import annotations

import importlib
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import CLI, write_app_config
from storekeeper import App, migrate
from storekeeper.site import Site

pytestmark = pytest.mark.slow

# The initializer tells the test it has started (a line on the pipe INIT_READY_FD names), then
# blocks until the test interrupts the process. Without INIT_READY_FD it just fills the store.
APP = '''
"""App {name}: one store whose initializer can be made to block after it started."""
import os
import sys

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import App, Store


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def init_main(engine, first_time):
    if first_time:
        with Session(engine) as session:
            session.add(Item(name="seed"))
            session.commit()
    ready = os.environ.get("INIT_READY_FD")
    if ready:
        os.write(int(ready), b"started\\n")
        sys.stdin.readline()  # the test never writes: the process is interrupted here


app = App("{name}", stores=[Store("main_db", metadata=Base.metadata, initializer=init_main)])
'''


def interrupted_sync(project: Path, app_name: str, signum: int) -> subprocess.Popen[bytes]:
    """Run ``storekeeper sync`` in a real process and send it ``signum`` once its store's
    first initializer has started (and committed its seed row)."""
    ready, tell = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    env["INIT_READY_FD"] = str(tell)
    process = subprocess.Popen(
        [*CLI, "sync", app_name],
        cwd=project,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(tell,),
    )
    os.close(tell)
    try:
        readable, _, _ = select.select([ready], [], [], 120)
        assert readable, "the initializer did not start"
        assert os.read(ready, 100) == b"started\n"
    finally:
        os.close(ready)
    process.send_signal(signum)
    process.communicate(timeout=60)
    return process


@pytest.fixture
def blocking_app(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> App:
    """App ``app_name`` (module in the project folder, named in its storekeeper.toml)."""
    monkeypatch.syspath_prepend(str(project))
    (project / f"{app_name}.py").write_text(APP.format(name=app_name))
    write_app_config(project, app_name, service_url)
    app: App = importlib.import_module(app_name).app
    return app.bind(site)


def seeds(app: App) -> list[str]:
    with app.engine("main_db").connect() as conn:
        return list(conn.exec_driver_sql("SELECT name FROM items").scalars())


@pytest.mark.parametrize(
    ("dialect", "signum"),
    [
        ("postgresql", signal.SIGINT),
        ("postgresql", signal.SIGTERM),
        ("postgresql", signal.SIGKILL),
        ("sqlite", signal.SIGINT),
        ("sqlite", signal.SIGKILL),
    ],
    ids=[
        "postgresql-SIGINT",
        "postgresql-SIGTERM",
        "postgresql-SIGKILL",
        "sqlite-SIGINT",
        "sqlite-SIGKILL",
    ],
)
def test_an_interrupted_first_initialization_is_made_again_as_new_by_the_next_sync(
    project: Path, blocking_app: App, app_name: str, signum: int
) -> None:
    process = interrupted_sync(project, app_name, signum)
    backend = blocking_app.site.backend(blocking_app.placement("main_db").service)
    database = blocking_app.placement("main_db").database
    if signum == signal.SIGINT:
        # Ctrl-C: the run dropped what it made on its way out.
        assert process.returncode == 130
        assert not backend.exists(database)
    else:
        # No way out: the database stays, marked as not finished.
        assert process.returncode == -signum
        assert backend.exists(database) and backend.unfinished(database)

    [result] = blocking_app.sync().results
    assert (result.action, result.first_time, result.initialized) == ("created", True, True)
    assert seeds(blocking_app) == ["seed"]
    # Complete now: the sync after it finds the store as it is.
    [again] = blocking_app.sync().results
    assert (again.action, again.first_time) == ("up to date", False)
    assert seeds(blocking_app) == ["seed"]


BLOCKING_MIGRATION = """
import os, sys
if os.environ.get("INIT_READY_FD"):
    os.write(int(os.environ["INIT_READY_FD"]), b"started\\n")
    sys.stdin.readline()
"""


def test_a_first_migration_killed_halfway_is_made_again_as_new_by_the_next_sync(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_migrate import configure_cli, declare, extend_upgrade, first_revision

    monkeypatch.syspath_prepend(str(project))
    configure_cli(project, app_name, service_url)
    app = declare(project, site, app_name, 1)
    first_revision(app)
    second = migrate.revision(app, "main_db", "blocks", rev_id="r2")
    extend_upgrade(second.path, first=BLOCKING_MIGRATION)

    process = interrupted_sync(project, app_name, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert migrate.current(app, "main_db") == ("r1",)  # the first migration went through

    [result] = app.sync().results
    assert (result.action, result.first_time, result.migrations_applied) == (
        "created",
        True,
        ["r1", "r2"],
    )
    with app.engine("main_db").connect() as conn:
        assert list(conn.exec_driver_sql("SELECT name FROM items").scalars()) == ["init-True"]
