"""Fixtures shared by the suite: real servers, an isolated project folder, a site per dialect.

PostgreSQL: ``STOREKEEPER_TEST_POSTGRES_URL`` when set, else a throwaway cluster started here
(:class:`storekeeper.testing.server.PostgresServer`). SQLite needs nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy.dialects.postgresql  # noqa: F401 - see below

from storekeeper.site import Site

# pytester restores sys.modules after each test; a dialect first imported inside one would be
# imported again by the next, and SQLAlchemy warns when its functions are registered twice.

if TYPE_CHECKING:
    from storekeeper.testing.server import PostgresServer

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "storekeeper"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster of our own, which checks passwords on TCP connections."""
    from storekeeper.testing.server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """URL (with password) of a PostgreSQL server the tests may create databases on:
    ``STOREKEEPER_TEST_POSTGRES_URL``, else our throwaway cluster."""
    given = os.environ.get("STOREKEEPER_TEST_POSTGRES_URL")
    if given:
        return given
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty project folder as the working folder, with no STOREKEEPER_* variables set."""
    for key in list(os.environ):
        if key.startswith("STOREKEEPER_") and key != "STOREKEEPER_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    Site.set_default(None)
    yield tmp_path
    Site.set_default(None)


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def service_url(dialect: str, request: pytest.FixtureRequest) -> str:
    """The URL of a service of the dialect under test."""
    if dialect == "sqlite":
        return "sqlite:///stores"
    return str(request.getfixturevalue("postgres_url"))


def write_config(project: Path, text: str) -> Path:
    """Write ``storekeeper.toml`` in ``project``."""
    path = project / "storekeeper.toml"
    path.write_text(textwrap.dedent(text))
    return path


def write_app_config(project: Path, app_name: str, service_url: str) -> Path:
    """Write a ``storekeeper.toml`` naming app module ``app_name`` (in ``project``) and a
    default service ``main`` at ``service_url``, as a user's project for the CLI has it."""
    return write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{app_name}:app"]
        [services]
        main = "{service_url}"
        """,
    )


@pytest.fixture
def site(project: Path, service_url: str) -> Iterator[Site]:
    """A site whose default service ``main`` is the dialect under test."""
    write_config(
        project,
        f"""
        default_service = "main"
        [services]
        main = "{service_url}"
        """,
    )
    site = Site.load()
    Site.set_default(site)
    yield site
    site.close()


@pytest.fixture
def app_name(site: Site) -> Iterator[str]:
    """A unique app name; its databases are dropped after the test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    backend = site.backend(site.service("main"))
    for database in backend.list(prefix=f"{name}_"):
        backend.drop(database)


APP_MODULE = '''
"""App {name}: one store with an items table; its initializer logs every call."""
import os
import time

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import App, ServerSetting, Store


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def init_main(engine, first_time):
    with open(os.environ.get("INIT_LOG", "init.log"), "a") as log:
        log.write(f"{{first_time}}\\n")
    time.sleep(float(os.environ.get("INIT_SLEEP", "0")))
    if first_time:
        with Session(engine) as session:
            session.add_all([Item(name="first"), Item(name="second")])
            session.commit()


app = App(
    "{name}",
    stores=[Store("main_db", metadata=Base.metadata, initializer=init_main)],
    servers=[ServerSetting("tenants")],
)
'''


def write_app(project: Path, name: str) -> str:
    """Write an importable module ``<name>.py`` declaring app ``name``; returns ``name:app``."""
    (project / f"{name}.py").write_text(APP_MODULE.format(name=name))
    return f"{name}:app"


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m storekeeper ARGS`` in a real process; output captured as text."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli_v1(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> App:
    """test_migrate's app ``app_name`` (models v1), configured for the command line too."""
    from test_migrate import configure_cli, declare

    monkeypatch.syspath_prepend(str(project))
    configure_cli(project, app_name, service_url)
    return declare(project, site, app_name, 1)


@pytest.fixture
def chat_app(site: Site, app_name: str) -> App:
    """The chat example's two stores (``chat_db``, ``scores_db``) under a unique app name,
    synced on the dialect under test; the integrations' tests share it."""
    from chat.model import ChatBase, GameBase, init_chat_db, init_scores_db
    from storekeeper import App, Store

    app = App(
        app_name,
        stores=[
            Store("chat_db", metadata=ChatBase.metadata, initializer=init_chat_db),
            Store("scores_db", metadata=GameBase.metadata, initializer=init_scores_db),
        ],
    ).bind(site)
    app.sync()
    return app


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of our own (never the machine's): the broker of the Celery tests."""
    from storekeeper.testing.redis import RedisServer

    with RedisServer() as server:
        yield server


if TYPE_CHECKING:
    # Below the fixtures that use them, so the module's head stays as the core tests need it.
    from storekeeper import App
    from storekeeper.testing.redis import RedisServer
