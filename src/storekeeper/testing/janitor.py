"""The test databases of a run: each store built once as a template, cloned per worker.

A store's template is ``test_<app>_<store>``: dropped (ending stray connections), created,
brought to head and initialized with ``first_time=True``, then sealed with a mark saying what
it was built from. Each worker (``main``, or pytest-xdist's ``gw0``, ``gw1``...) gets its own
clone, ``test_<app>_<store>_<worker>``, and the apps are bound to a site that places every
store there. Nothing here creates, drops or clones a database whose name does not start with
``test_``, or uses a service marked ``production = true``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.schema import CreateIndex, CreateTable

from ..backends import Backend, Service
from ..config import Config
from ..declare import App, Store
from ..errors import ConfigError, NotAssigned, StorekeeperError
from ..provision import place, resolve_initializer, sync
from ..site import Site

log = logging.getLogger("storekeeper.testing")

TEST_PREFIX = "test_"
TEMPLATE_FORMAT = TEST_PREFIX + "{name}"


def check_test_database(name: str) -> str:
    """Return ``name`` if the test plugin may create, drop or clone it (``test_...``)."""
    if not name.startswith(TEST_PREFIX):
        raise ConfigError(
            f"refusing to touch database {name!r}: the test plugin only creates, drops or clones "
            f"databases whose names start with {TEST_PREFIX!r}"
        )
    return name


def check_test_service(service: Service) -> Service:
    """Return ``service`` unless it is marked ``production = true``."""
    if service.production:
        raise ConfigError(
            f"refusing to run tests on service {service.name!r}: it is marked production = true; "
            "give the test environment a service of its own ([env.test] in storekeeper.toml, "
            "or --storekeeper-server)"
        )
    return service


def fingerprint(app: App, store: Store, dialect: str, extra: Iterable[Path] = ()) -> str:
    """What a store's template is built from: its tables' DDL, its initializer's source, and
    ``extra`` files (migrations); any change gives another fingerprint."""
    from sqlalchemy.dialects import registry

    compiler_dialect = registry.load(dialect)()
    digest = hashlib.sha256(f"{app.name}.{store.name}\n".encode())
    if store.metadata is not None:
        for table in store.metadata.sorted_tables:
            digest.update(str(CreateTable(table).compile(dialect=compiler_dialect)).encode())
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                digest.update(str(CreateIndex(index).compile(dialect=compiler_dialect)).encode())
    initializer = resolve_initializer(store.initializer, f"store {app.name}.{store.name}")
    if initializer is not None:
        digest.update(getattr(initializer, "__qualname__", repr(initializer)).encode())
        source = inspect.getsourcefile(initializer)
        if source and Path(source).is_file():
            digest.update(Path(source).read_bytes())
    for path in sorted(extra):
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def migration_files(app: App, store: Store) -> list[Path]:
    """The files of ``store``'s Alembic script directory (none when it has no migrations)."""
    from ..migrate import store_scripts

    scripts = store_scripts(app, store.name)
    if not scripts.exists or scripts.path is None:
        return []
    return sorted(
        path
        for path in scripts.path.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


@dataclass(frozen=True)
class StoreUnderTest:
    """One store as the tests see it: where its template and this worker's clone live."""

    app: App
    store: str
    service: Service
    template: str
    database: str
    built: bool

    @property
    def target(self) -> str:
        """``app.store``, as markers and ``store_engine`` name it."""
        return f"{self.app.name}.{self.store}"


class Janitor:
    """Builds the templates and this worker's clones, and removes the clones afterwards."""

    def __init__(
        self, apps: list[App], config: Config, *, worker: str, run_id: str, keepdb: bool
    ) -> None:
        self.apps = apps
        self.worker = worker
        self.run_id = run_id
        self.keepdb = keepdb
        self.template_site = Site(config, database_format=TEMPLATE_FORMAT)
        self.site = Site(config, database_format=f"{TEST_PREFIX}{{name}}_{worker}")
        self.stores: list[StoreUnderTest] = []
        self._previous: dict[int, Site | None] = {}

    def mark(self, app: App, store: Store, service: Service) -> str:
        """The mark a current template of ``store`` carries."""
        built_from = fingerprint(
            app, store, service.url.get_backend_name(), migration_files(app, store)
        )
        return built_from if self.keepdb else f"{built_from} run {self.run_id}"

    def prepare(self) -> list[StoreUnderTest]:
        """Build (or reuse) every store's template, clone it for this worker, and bind the apps
        to the worker's databases."""
        for app in self.apps:
            self._previous.setdefault(id(app), app._site)
            for store in app.stores:
                ready = self._prepare_store(app, store)
                if ready is not None:
                    self.stores.append(ready)
            app.bind(self.site)
        self._drop_runtime_stores()
        return self.stores

    def _prepare_store(self, app: App, store: Store) -> StoreUnderTest | None:
        app.bind(self.template_site)
        try:
            where = place(app, store.name)
        except NotAssigned:
            if store.required:
                raise
            return None
        service = check_test_service(where.service)
        template = check_test_database(where.database)
        backend = self.template_site.backend(service)
        mark = self.mark(app, store, service)
        built = False
        # Not the template's own lock: sync takes that one while building it.
        with backend.lock(f"{template}_build"):
            if backend.template_mark(template) != mark:
                self._build(app, store, backend, template, mark)
                built = True
        app.bind(self.site)
        database = check_test_database(place(app, store.name).database)
        self.fresh_clone(service, template, database)
        log.info("%s.%s: %s from template %s", app.name, store.name, database, template)
        return StoreUnderTest(app, store.name, service, template, database, built)

    def fresh_clone(self, service: Service, template: str, database: str) -> None:
        """Replace ``database`` by a fresh clone of ``template`` (both ``test_`` names)."""
        backend = self.site.backend(service)
        with backend.lock(check_test_database(database)):
            backend.drop(database)
            backend.clone(check_test_database(template), database)

    def _build(self, app: App, store: Store, backend: Backend, template: str, mark: str) -> None:
        log.info("%s.%s: building template %s", app.name, store.name, template)
        backend.drop(template)
        try:
            sync([app], stores=[store.name], first_time=True)
        except StorekeeperError as exc:
            raise type(exc)(
                f"building the test template of {app.name}.{store.name}: {exc}"
            ) from exc
        finally:
            self.template_site.dispose_engine(backend.database_url(template))
        backend.seal_template(template, mark)

    def _drop_runtime_stores(self) -> None:
        # Stores made at run time by an earlier run's tests (recorded in this worker's catalog).
        for record in self.site.catalog.runtime_stores():
            app = next((a for a in self.apps if a.name == record.app), None)
            if app is None:
                continue
            where = place(app, record.name)
            check_test_database(where.database)
            self.site.backend(where.service).drop(where.database)
            self.site.remove_runtime_store(record.app, record.name)

    def finish(self) -> None:
        """Drop this worker's clones and the stores tests made at run time; close connections;
        give the apps back their sites."""
        try:
            self._drop_runtime_stores()
            for ready in self.stores:
                self.site.dispose_engine(
                    self.site.backend(ready.service).database_url(ready.database)
                )
                self.site.backend(ready.service).drop(check_test_database(ready.database))
        finally:
            self.site.close()
            self.template_site.close()
            for app in self.apps:
                app.bind(self._previous.get(id(app)))
