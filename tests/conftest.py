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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@pytest.fixture
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at its lowest cost: the same hashes and checks, a thousand times faster than
    the page's parameters (about a second a hash on a loaded machine, and most tests log in).
    The tests that do not ask for it use the real parameters
    (tests/test_admin.py's log_in helper logs in to the page)."""
    from argon2 import PasswordHasher

    monkeypatch.setattr(
        "storekeeper.admin.security._HASHER",
        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )


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


# migrations written by hand, and one that waits for the test ------------------------------

MIGRATION = '''"""{revision}"""
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
'''


def write_migration(scripts: Path, revision: str, down: str | None, body: str) -> None:
    """Write migration ``revision`` (after ``down``) into the script directory ``scripts``;
    ``body`` is its ``upgrade()``'s lines, indented by four spaces."""
    (scripts / "versions" / f"{revision}.py").write_text(
        MIGRATION.format(revision=revision, down=down, body=body)
    )


class Gate:
    """A handshake with code running elsewhere (a migration in a server's thread), by two
    FIFOs in ``folder``: :attr:`body` (lines for a migration's ``upgrade()``) says it has
    begun by opening ``entered``, then waits until :meth:`release` opens ``release``."""

    def __init__(self, folder: Path) -> None:
        self.entered, self.released = folder / "entered", folder / "release"
        os.mkfifo(self.entered)
        os.mkfifo(self.released)
        self.body = (
            f"    with open({str(self.entered)!r}, 'w') as said:\n"
            "        said.write('in')\n"
            f"    with open({str(self.released)!r}) as gate:\n"
            "        gate.read()\n"
        )

    def wait_entered(self, timeout: float = 60) -> None:
        """Block until the code has opened ``entered`` (it is inside, waiting)."""
        import threading

        done = threading.Event()

        def read() -> None:
            with open(self.entered) as fifo:
                fifo.read()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(timeout), f"nothing reached the gate in {timeout} s"

    def release(self) -> None:
        """Let the code go on (nothing happens when nobody waits at the gate)."""
        try:
            fd = os.open(self.released, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody waiting: nothing to let go
            return
        os.close(fd)


# the admin page in a real browser -------------------------------------------------------

#: Debian's Chromium (`make chromium` installs it); Playwright never downloads a browser here.
CHROMIUM = "/usr/bin/chromium"
#: A quiet, sandbox-free headless Chromium that calls no Google service.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def serve_asgi(asgi_app: Any) -> Iterator[str]:
    """Serve ``asgi_app`` with uvicorn in a thread on a free loopback port; yields its base URL.

    The socket is bound and listening before the thread starts, so the first request is
    queued by the kernel until uvicorn takes it: no waiting for the server to come up.
    """
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(asgi_app, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="admin-uvicorn", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Callable[..., Any]]:
    """Opens a Chromium of its own (a new, empty user data folder: no cookie, no cache) for
    each call, ``chromium(**context_options)`` → a Playwright ``BrowserContext``; all are
    closed at the end of the module."""
    import tempfile

    from playwright.sync_api import sync_playwright

    opened: list[Any] = []
    folders: list[tempfile.TemporaryDirectory[str]] = []
    with sync_playwright() as playwright:

        def open_browser(**options: Any) -> Any:
            folder = tempfile.TemporaryDirectory(prefix="storekeeper-chromium-")
            folders.append(folder)
            context = playwright.chromium.launch_persistent_context(
                folder.name,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 800},
                **options,
            )
            context.set_default_timeout(20_000)
            opened.append(context)
            return context

        try:
            yield open_browser
        finally:
            for context in opened:
                context.close()
            for folder in folders:
                folder.cleanup()


@pytest.fixture
def page(chromium: Callable[..., Any]) -> Iterator[Any]:
    """A page of a Chromium of its own (no cookie of another test's)."""
    context = chromium()
    yield context.pages[0] if context.pages else context.new_page()
    context.close()
