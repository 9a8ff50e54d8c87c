"""storekeeper's pytest plugin: each test a clean, migrated database for the price of a
savepoint.

Loaded automatically (entry point ``pytest11``) and idle until a test asks for one of its
fixtures: ``storekeeper_app``, ``storekeeper_apps``, ``store_engine``, ``dbsession``. Then the
first test asking for a store builds its ``test_`` template, clones it for the worker, and the
apps are bound to the clones, so code under test that calls ``app.session(...)`` uses the test
databases.

Where the test databases live: by default each store on its own backend (a throwaway
PostgreSQL server of this run for a store on a PostgreSQL service, SQLite files under
``.pytest_cache`` for a SQLite one; a service marked ``tests = true`` as it is); with an
``[env.test]`` overlay, its services (``config``); or every store on the one place
``--storekeeper-server`` (ini ``storekeeper_server``) gives: ``sqlite``, ``postgresql`` (a
throwaway cluster) or a database URL. The run's header says where, one line per service.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..config import Sourced
from ..errors import StorekeeperError
from ..site import Site

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from ..config import Config
    from ..declare import App, Store
    from .janitor import StoreBuilder, StoreUnderTest

SERVER_CHOICES = "sqlite, postgresql, config or a database URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("storekeeper", "storekeeper: test databases")
    group.addoption(
        "--storekeeper-server",
        metavar="WHERE",
        help=f"where test databases live: {SERVER_CHOICES} (default: config when storekeeper."
        "toml has [env.test], else each store on its own backend, PostgreSQL on a throwaway "
        "server)",
    )
    group.addoption(
        "--storekeeper-keepdb",
        action="store_true",
        help="reuse the test templates while migrations, models and initializers are unchanged",
    )
    group.addoption(
        "--storekeeper-app",
        action="append",
        metavar="MODULE:ATTR",
        help="an app to test (repeatable); default: configured and installed apps",
    )
    group.addoption(
        "--storekeeper-check-migrations",
        action="store_true",
        help="add a test checking every store's migrations: one head, up from empty, each "
        "revision down and up again, models match at head",
    )
    parser.addini("storekeeper_server", f"where test databases live: {SERVER_CHOICES}")
    parser.addini("storekeeper_apps", "apps to test, as MODULE:ATTR lines", type="linelist")
    parser.addini("storekeeper_store", "the store dbsession uses by default, as APP.STORE")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "storekeeper(store): the store ('app.store') that dbsession and storekeeper_app use",
    )
    mode = _server_option(config)  # a bad value is one usage error at start
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller chose the run's id and server
    config.stash[_RUN] = uuid.uuid4().hex[:8]
    if mode == "postgresql":
        _throwaway_url(config)
    elif not mode and getattr(config.option, "dist", "no") != "no":
        # The controller of xdist workers starts the throwaway server they share, when the
        # stores' own services need one (without workers, the first test that needs it does).
        loaded = _loaded(config)
        if "test" not in loaded.overlays and any(
            how == "postgresql" for how, _ in _own_backends(config, loaded)[0].values()
        ):
            _throwaway_url(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker shares the controller's run id and throwaway server."""
    node.workerinput["storekeeper_run"] = node.config.stash[_RUN]
    node.workerinput["storekeeper_server_url"] = node.config.stash.get(_SERVER_URL, "")


_RUN = pytest.StashKey[str]()
_SERVER_URL = pytest.StashKey[str]()


def _throwaway_url(config: pytest.Config) -> str:
    """The URL of this run's throwaway PostgreSQL server, started on first use (an xdist
    worker uses its controller's)."""
    url = config.stash.get(_SERVER_URL, "")
    workerinput = getattr(config, "workerinput", None)
    if not url and workerinput is not None:
        url = str(workerinput["storekeeper_server_url"])
    if not url:
        from .server import PostgresServer

        server = PostgresServer().start()
        config.add_cleanup(server.stop)
        url = server.url
    config.stash[_SERVER_URL] = url
    return url


def _server_option(config: pytest.Config) -> str:
    """The ``--storekeeper-server`` (or ini) value, checked; empty when not given."""
    value = config.getoption("storekeeper_server") or config.getini("storekeeper_server")
    mode = str(value or "").strip()
    if mode and mode not in ("sqlite", "postgresql", "config") and "://" not in mode:
        raise pytest.UsageError(f"--storekeeper-server {mode!r} is not one of {SERVER_CHOICES}")
    return mode


def _worker(config: pytest.Config) -> tuple[str, str]:
    """This process's worker name and the run's id."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return str(workerinput["workerid"]), str(workerinput["storekeeper_run"])
    return "main", config.stash[_RUN]


def _state_folder(config: pytest.Config) -> Path:
    """Where SQLite test stores and the test catalogs live: shared by a run's workers and kept
    between runs (for ``--storekeeper-keepdb``)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("storekeeper"))
    import hashlib

    key = hashlib.sha256(str(config.rootpath).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"storekeeper-tests-{key}"
    folder.mkdir(exist_ok=True)
    return folder


def _catalog_file(config: pytest.Config, run_id: str, worker: str) -> Path:
    """The test catalog of one worker of one run (removed when it ends)."""
    return _state_folder(config) / f"catalog-{run_id}-{worker}.sqlite"


def _loaded(config: pytest.Config) -> Config:
    from .. import config as config_mod

    return config_mod.load(env="test", cwd=config.invocation_params.dir)


def _own_backends(
    config: pytest.Config, loaded: Config
) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, str], Sourced]]:
    """With no ``[env.test]`` and no ``--storekeeper-server``, each store is tested on its own
    backend: for every service stores use, ``(how, URL)`` with ``how`` one of ``tests`` (a
    service marked ``tests = true``, used as it is), ``sqlite`` (files in ``.pytest_cache``) or
    ``postgresql`` (this run's throwaway server; URL empty here); and the assignments, the
    catalog's included (read, never created)."""
    from ..config import BUILTIN

    site = Site(dataclasses.replace(loaded))
    catalog = site.catalog.url
    if catalog.get_backend_name() == "sqlite" and not Path(catalog.database or "").is_file():
        site.close()
        site = Site(dataclasses.replace(loaded, catalog=Sourced("sqlite://", BUILTIN)))
    try:
        services = site.services()
        assignments = site.assignments()
    finally:
        site.close()
    used = {loaded.default_service.value, *(a.value for a in assignments.values())}
    plan: dict[str, tuple[str, str]] = {}
    for name, service in services.items():
        backend = service.url.get_backend_name()
        if name in loaded.test_services:
            plan[name] = ("tests", service.url.render_as_string(hide_password=False))
        elif backend == "sqlite":
            plan[name] = ("sqlite", f"sqlite:///{_state_folder(config)}/stores")
        elif name in used:
            plan[name] = (backend, "")
    return {name: plan[name] for name in sorted(plan)}, dict(assignments)


def config_for_tests(config: pytest.Config, worker: str, run_id: str) -> Config:
    """The configuration the tests run with: the ``test`` overlay (mode ``config``), or every
    store on one server (``--storekeeper-server``), or each store on its own backend; and a
    catalog of their own."""
    loaded = _loaded(config)
    mode = _server_option(config) or ("config" if "test" in loaded.overlays else "")
    own = _own_backends(config, loaded) if not mode else None
    # A catalog of the run's own: two runs at once share no record of stores made at run time.
    loaded.catalog = Sourced(f"sqlite:///{_catalog_file(config, run_id, worker)}", "pytest plugin")
    if mode == "config":
        return loaded
    if own is not None:
        plan, assignments = own
        loaded.services = {}
        loaded.assignments = assignments
        loaded.env_services = {
            name: Sourced(
                url or _throwaway_url(config),
                "pytest plugin" + (" (tests = true)" if how == "tests" else f" ({how})"),
            )
            for name, (how, url) in plan.items()
        }
        loaded.production_services &= loaded.test_services
        return loaded
    if mode == "sqlite":
        url = f"sqlite:///{_state_folder(config)}/stores"
    elif mode == "postgresql":
        url = _throwaway_url(config)
    else:
        url = mode
    source = f"pytest plugin ({mode.split('://')[0]})"
    loaded.services = {}
    loaded.env_services = {"test": Sourced(url, source)}
    loaded.assignments = {}
    loaded.default_service = Sourced("test", source)
    loaded.production_services = set()
    return loaded


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Where each service's test databases live, one line per service (only in a project
    that has storekeeper apps)."""
    from ..secret import mask

    if not _has_apps(config):
        return []
    try:
        loaded = _loaded(config)
        mode = _server_option(config) or ("config" if "test" in loaded.overlays else "")
        if mode == "config":
            site = Site(dataclasses.replace(loaded, catalog=Sourced("sqlite://", "header")))
            try:
                return [
                    f"storekeeper: service {s.name} ({s.url.get_backend_name()}): "
                    f"{s.display_url} ([env.test])"
                    for s in site.services().values()
                ]
            finally:
                site.close()
        if mode:
            where = {
                "sqlite": f"SQLite files in {_state_folder(config) / 'stores'}",
                "postgresql": "a throwaway PostgreSQL server started for this run",
            }.get(mode) or mask(mode)
            return [f"storekeeper: every store on {where} (--storekeeper-server)"]
        plan, _ = _own_backends(config, loaded)
    except Exception as exc:  # the header never stops a run; the first test that needs it does
        return [f"storekeeper: cannot tell where test databases live: {mask(str(exc))}"]
    lines = []
    for name, (how, url) in plan.items():
        backend = (url or "postgresql").split(":")[0].split("+")[0]
        if how == "tests":
            where = f"{mask(url)} (tests = true)"
        elif how == "sqlite":
            where = f"SQLite files in {url.removeprefix('sqlite:///')}"
        else:
            where = "a throwaway PostgreSQL server started for this run"
        lines.append(f"storekeeper: service {name} ({backend}): {where}")
    return lines


def _has_apps(config: pytest.Config) -> bool:
    """Whether this project tests storekeeper apps (configured, given, or installed)."""
    from importlib.metadata import entry_points

    if config.getoption("storekeeper_app") or config.getini("storekeeper_apps"):
        return True
    try:
        if _loaded(config).apps:
            return True
    except StorekeeperError:
        return True
    return bool(entry_points(group="storekeeper.apps"))


def _apps(config: pytest.Config, loaded: Config) -> list[App]:
    from ..discover import load_apps

    specs = config.getoption("storekeeper_app") or config.getini("storekeeper_apps") or []
    return load_apps(list(specs), loaded.apps, loaded.root)


class Stores:
    """The run's test stores on this worker, with one connection per store held for the
    whole run, in which each test's transaction begins and is rolled back."""

    def __init__(
        self, janitor: StoreBuilder, stores: dict[str, tuple[App, Store]], default: str
    ) -> None:
        self.janitor = janitor
        #: The stores under test by ``app.store``; each is built when first asked for.
        self.stores = stores
        self.default = default
        self._connections: dict[str, Connection] = {}
        self._engines: dict[str, Engine] = {}

    def choose(self, request: pytest.FixtureRequest) -> StoreUnderTest:
        """The store a test asked for (an indirect parameter or the marker), else the ini
        default, else the only one."""
        marker = request.node.get_closest_marker("storekeeper")
        wanted = (
            getattr(request, "param", None)
            or (marker.args[0] if marker and marker.args else None)
            or self.default
        )
        if not wanted:
            if len(self.stores) == 1:
                return self.get(next(iter(self.stores)))
            raise pytest.UsageError(self.several(f"test {request.node.nodeid} does not"))
        return self.get(str(wanted))

    def several(self, who: str) -> str:
        """The message for tests that do not say which of several stores they use."""
        return (
            f"storekeeper: several stores are under test ({', '.join(self.stores)}) and {who} "
            "say which one dbsession uses: mark them with @pytest.mark.storekeeper('app.store'), "
            "or set the ini option storekeeper_store = app.store"
        )

    def get(self, target: str) -> StoreUnderTest:
        """The test store named ``app.store``."""
        if target not in self.stores:
            raise pytest.UsageError(
                f"no test store {target!r}; the stores under test are: "
                + (", ".join(self.stores) or "none (no apps found)")
            )
        app, store = self.stores[target]
        try:
            return self.janitor.ensure(app, store)
        except StorekeeperError as exc:
            # One clear error for the run, not the same one for every test.
            pytest.exit(f"storekeeper: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)

    def connection(self, ready: StoreUnderTest) -> Connection:
        """This worker's connection to ``ready``'s database (made again if a test broke it)."""
        conn = self._connections.get(ready.target)
        if conn is not None and (conn.closed or conn.invalidated):
            conn.close()
            conn = None
        if conn is None:
            conn = self._engine(ready).connect()
            self._connections[ready.target] = conn
        return conn

    def _engine(self, ready: StoreUnderTest) -> Engine:
        engine = self._engines.get(ready.target)
        if engine is None:
            engine = _held_connection_engine(ready.app.engine(ready.store))
            self._engines[ready.target] = engine
        return engine

    def session(self, ready: StoreUnderTest) -> Iterator[Session]:
        """A session in a transaction that is rolled back after the test; the test may commit
        (a savepoint is released), and sessions the app opens meanwhile join it."""
        conn = self.connection(ready)
        outer = conn.begin()
        session = ready.app.joining_sessionmaker(ready.store, conn)()
        try:
            with ready.app.sessions_joining(ready.store, conn):
                yield session
        finally:
            try:
                # Rolling back the outer transaction first ends the savepoints with it.
                if outer.is_active:
                    outer.rollback()
                session.close()
            except Exception:
                # The test broke the connection (closed or killed it): the next test gets a
                # new one; nothing it did was committed.
                self._connections.pop(ready.target, None)
                conn.invalidate()

    async def async_session(self, ready: StoreUnderTest) -> AsyncIterator[AsyncSession]:
        """The same on asyncio: a connection of the test's own event loop, a transaction
        rolled back after the test, and the app's async sessions joined to it meanwhile."""
        from sqlalchemy.ext.asyncio import async_sessionmaker

        engine = _async_test_engine(ready)
        try:
            async with engine.connect() as conn:
                outer = await conn.begin()
                maker = async_sessionmaker(
                    bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
                )
                session = maker()
                try:
                    with ready.app.async_sessions_joining(ready.store, maker):
                        yield session
                finally:
                    if outer.is_active:
                        await outer.rollback()
                    await session.close()
        finally:
            await engine.dispose()

    def close(self) -> None:
        """Close the held connections and the engines made for them."""
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


def _async_test_engine(ready: StoreUnderTest) -> AsyncEngine:
    """An asyncio engine on ``ready``'s database for one test (its connections belong to the
    test's event loop), made to run savepoints on SQLite and not to auto-prepare statements."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..backends.sqlite import take_over_transactions

    url = ready.app.async_engine(ready.store).url
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, connect_args={"prepare_threshold": None})
    engine = create_async_engine(url, connect_args={"timeout": 30})
    take_over_transactions(engine.sync_engine)
    return engine


def _held_connection_engine(engine: Engine) -> Engine:
    """An engine on the same database for the connection a worker holds for the run."""
    from sqlalchemy import create_engine

    from ..backends.sqlite import take_over_transactions

    if engine.dialect.name != "sqlite":
        # psycopg prepares a statement run five times, and after every ROLLBACK deallocates
        # them all: one more round trip per test, with nothing gained in return.
        return create_engine(engine.url, connect_args={"prepare_threshold": None})
    # SQLite: SQLAlchemy must control the transactions itself, so SAVEPOINT works inside
    # them (pysqlite's own transaction handling defeats it).
    test_engine = create_engine(engine.url, connect_args={"timeout": 30})
    return take_over_transactions(test_engine, foreign_keys=True)


_STORES = pytest.StashKey["Stores"]()


def _stores(config: pytest.Config) -> Stores:
    """This worker's test stores, prepared on first use (by a fixture or the migration
    check) and removed when the run ends."""
    stores = config.stash.get(_STORES, None)
    if stores is not None:
        return stores
    from .janitor import StoreBuilder

    worker, run_id = _worker(config)
    try:
        loaded = config_for_tests(config, worker, run_id)
        janitor = StoreBuilder(
            _apps(config, loaded),
            loaded,
            worker=worker,
            run_id=run_id,
            keepdb=bool(config.getoption("storekeeper_keepdb")),
        )
        targets = janitor.bind()
    except StorekeeperError as exc:
        # One clear error for the run, not the same one for every test.
        pytest.exit(f"storekeeper: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    stores = config.stash[_STORES] = Stores(
        janitor, targets, str(config.getini("storekeeper_store") or "")
    )
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # Sent to the controller when the worker's session ends (before its cleanup runs):
        # the services this worker built templates on, for the controller to sweep.
        workeroutput["storekeeper_services"] = janitor.made_on
    config.add_cleanup(
        lambda: _finish(janitor, _catalog_file(config, run_id, worker), workeroutput)
    )
    config.add_cleanup(stores.close)
    return stores


def _finish(janitor: StoreBuilder, catalog: Path, workeroutput: Any) -> None:
    """End of the run in this process: drop what it made. The process that owns the run (no
    xdist, or its controller) also drops what the run's workers shared: its templates."""
    try:
        janitor.finish(sweep=workeroutput is None)
    except StorekeeperError as exc:
        # The run's outcome stands; say once what could not be cleaned up.
        sys.stderr.write(f"storekeeper: cleaning up after the run: {exc}\n")
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            catalog.with_name(catalog.name + suffix).unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: remember the services a worker made databases on, to sweep at the end."""
    services = getattr(node, "workeroutput", {}).get("storekeeper_services", [])
    node.config.stash.setdefault(_SWEEP, set()).update(tuple(s) for s in services)


def pytest_unconfigure(config: pytest.Config) -> None:
    services = config.stash.get(_SWEEP, set())
    if not services or hasattr(config, "workerinput"):
        return
    from sqlalchemy import make_url

    from ..backends import Service, backend_for
    from .janitor import sweep_run

    backends = [backend_for(Service(name, make_url(url))) for name, url in sorted(services)]
    try:
        sweep_run(backends, config.stash[_RUN])
    except StorekeeperError as exc:
        sys.stderr.write(f"storekeeper: cleaning up after the run: {exc}\n")
    finally:
        for backend in backends:
            backend.close()


_SWEEP = pytest.StashKey[set[tuple[str, str]]]()


@pytest.fixture(scope="session")
def _storekeeper_stores(request: pytest.FixtureRequest) -> Stores:
    return _stores(request.config)


@pytest.fixture(scope="session")
def storekeeper_migration_problems(_storekeeper_stores: Stores) -> list[str]:
    """What the migration checks find in every store under test that has migrations (empty
    when all are sound): ``assert storekeeper_migration_problems == []``."""
    from .checks import check_migrations

    return check_migrations(_storekeeper_stores.janitor)


class MigrationsUnsound(Exception):
    """The migration checks found problems."""


class MigrationCheck(pytest.Item):
    """The test that ``--storekeeper-check-migrations`` adds to a run (one per run, also
    under xdist, which gives it to one worker)."""

    def runtest(self) -> None:
        from .checks import check_migrations

        problems = check_migrations(_stores(self.config).janitor)
        if problems:
            raise MigrationsUnsound(problems)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, MigrationsUnsound):
            lines = excinfo.value.args[0]
            return f"{len(lines)} problem(s) in the migrations:\n" + "\n".join(
                f"  {line}" for line in lines
            )
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, "storekeeper: migration checks"


#: The fixtures that use one chosen store.
_CHOOSING = frozenset({"dbsession", "async_dbsession", "storekeeper_app"})


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    _every_test_can_choose(config, items)
    if config.getoption("storekeeper_check_migrations"):
        items.insert(0, MigrationCheck.from_parent(session, name="storekeeper_migrations"))


def _every_test_can_choose(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With several stores under test, a test using ``dbsession`` (or another fixture of one
    store) must say which: one usage error for the run, before any test runs."""
    if config.getini("storekeeper_store"):
        return
    unchosen = []
    for item in items:
        uses = _CHOOSING & set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if uses and not item.get_closest_marker("storekeeper") and not uses & set(params):
            unchosen.append((item, uses))
    if not unchosen:
        return
    stores = _stores(config)
    several_apps = len(stores.janitor.apps) > 1
    unchosen = [
        (item, uses)
        for item, uses in unchosen
        if len(stores.stores) > 1 and (uses - {"storekeeper_app"} or several_apps)
    ]
    if unchosen:
        raise pytest.UsageError(
            stores.several(f"{len(unchosen)} test(s), like {unchosen[0][0].nodeid}, do not")
        )


@pytest.fixture
def storekeeper_apps(_storekeeper_stores: Stores) -> list[App]:
    """The apps under test, bound to this worker's test databases."""
    return list(_storekeeper_stores.janitor.apps)


@pytest.fixture
def storekeeper_app(_storekeeper_stores: Stores, request: pytest.FixtureRequest) -> App:
    """The app under test (the one of the chosen store), bound to the test databases."""
    apps = _storekeeper_stores.janitor.apps
    if len(apps) == 1:
        return apps[0]
    return _storekeeper_stores.choose(request).app


@pytest.fixture
def store_engine(_storekeeper_stores: Stores) -> Any:
    """``store_engine("app.store")``: the engine of a test store (committed data only)."""

    def engine(target: str) -> Engine:
        ready = _storekeeper_stores.get(target)
        return ready.app.engine(ready.store)

    return engine


@pytest.fixture
def dbsession(_storekeeper_stores: Stores, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A session on the chosen test store; everything the test does, commits included, is
    rolled back after it."""
    yield from _storekeeper_stores.session(_storekeeper_stores.choose(request))


def _async_dbsession_fixture() -> Any:
    """``async_dbsession`` through pytest-asyncio, or a fixture that says it is missing."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - depends on the installation

        @pytest.fixture(name="async_dbsession")
        def missing() -> None:
            raise pytest.UsageError(
                "async_dbsession needs pytest-asyncio: pip install pytest-asyncio, and mark "
                "async tests with @pytest.mark.asyncio (or set asyncio_mode = auto)"
            )

        return missing

    @pytest_asyncio.fixture(name="async_dbsession")
    async def fixture(
        _storekeeper_stores: Stores, request: pytest.FixtureRequest
    ) -> AsyncIterator[AsyncSession]:
        async for session in _storekeeper_stores.async_session(_storekeeper_stores.choose(request)):
            yield session

    return fixture


#: ``dbsession`` on asyncio: an ``AsyncSession`` whose test may commit freely; everything is
#: rolled back after the test, and ``app.async_session(...)`` in the code under test joins it.
async_dbsession = _async_dbsession_fixture()
