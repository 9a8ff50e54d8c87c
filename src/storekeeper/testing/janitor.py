"""The test databases of a run: each store built once as a template, cloned per worker.

Names (all short enough for PostgreSQL's 63 bytes, hashed where a store's name is long):

- a clone, one per store per worker of a run: ``test_<run>_<worker>_<app>_<store>``;
- a template, keyed by what it is built from (tables, initializer, migrations):
  ``test_<run>_tpl_<fingerprint>`` for one run, or ``test_tpl_<fingerprint>`` with
  ``--storekeeper-keepdb``, shared by the runs that keep it.

So two runs at once on one server never touch each other's clones, and a run drops no
template another run clones from. Every database the plugin makes carries a note saying so
(``storekeeper test: run <run>``, followed by ``app.store`` on a template; or
``storekeeper test: keep <app.store> <fingerprint>`` on a kept template): it creates, drops or
clones nothing whose name does not start with ``test_``, drops nothing without its note, and
uses no service marked ``production = true``. A store's template is built when a test first
asks for the store (a fixture, or its engine).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from ..backends import Backend, Service, backend_for
from ..config import Config
from ..declare import App, Store
from ..errors import ConfigError, NotAssigned, StorekeeperError
from ..migrate import store_scripts
from ..naming import MAX_DATABASE_NAME_BYTES, TEST_PREFIX, physical_name
from ..provision import resolve_initializer, sync
from ..site import Site, place

log = logging.getLogger("storekeeper.testing")

#: Every note the plugin keeps with a database it made starts with this.
MARK = "storekeeper test: "


def run_mark(run: str, target: str = "") -> str:
    """The note on the databases a run made (and drops at its end); a template's names its
    store (``app.store``)."""
    return f"{MARK}run {run}" + (f" {target}" if target else "")


def made_by_run(note: str | None, run: str) -> bool:
    """Whether ``note`` is the note of a database ``run`` made."""
    mark = run_mark(run)
    return note is not None and (note == mark or note.startswith(mark + " "))


def keep_mark(target: str, built_from: str) -> str:
    """The note on the template of ``target`` (``app.store``) kept between runs
    (``--storekeeper-keepdb``)."""
    return f"{MARK}keep {target} {built_from}"


def test_database_name(run: str, worker: str, physical: str) -> str:
    """The database of the store ``physical`` for ``worker`` of ``run``; a physical name too
    long to fit is replaced by its hash."""
    name = f"{TEST_PREFIX}{run}_{worker}_{physical}"
    if len(name.encode()) > MAX_DATABASE_NAME_BYTES:
        digest = hashlib.sha256(physical.encode()).hexdigest()[:16]
        name = f"{TEST_PREFIX}{run}_{worker}_{digest}"
    return name


test_database_name.__test__ = False  # type: ignore[attr-defined]  # not a test to collect


def template_database_name(run: str, built_from: str, *, keep: bool) -> str:
    """The template built from ``built_from`` (a fingerprint): kept, or this run's."""
    return f"{TEST_PREFIX}tpl_{built_from[:16]}" if keep else f"{TEST_PREFIX}{run}_tpl_{built_from}"


def check_test_database(name: str) -> str:
    """Return ``name`` if the test plugin may create, drop or clone it (``test_...``)."""
    if not name.startswith(TEST_PREFIX):
        raise ConfigError(
            f"refusing to touch database {name!r}: the test plugin only creates, drops or clones "
            f"databases whose names start with {TEST_PREFIX!r}"
        )
    return name


def made_by_plugin(backend: Backend, name: str) -> bool:
    """Whether database ``name`` carries the note of a database the plugin made."""
    note = backend.note(name)
    return note is not None and note.startswith(MARK)


def drop_test_database(backend: Backend, name: str) -> None:
    """Drop ``name`` (if it exists) when its name starts with ``test_`` and it carries the
    plugin's note; otherwise refuse and change nothing."""
    check_test_database(name)
    if not backend.exists(name):
        return
    if not made_by_plugin(backend, name):
        raise ConfigError(
            f"refusing to drop database {name!r} on service {backend.service.name!r}: its name "
            "starts with 'test_', but it is not marked as made by storekeeper's test plugin "
            "(another tool's, or a real one); drop it yourself if it is not needed"
        )
    backend.drop(name)


def sweep_run(backends: Iterable[Backend], run: str) -> list[str]:
    """Drop every database that ``run`` made on ``backends``; returns their names."""
    dropped: list[str] = []
    for backend in backends:
        for name in backend.list(prefix=TEST_PREFIX):
            if not made_by_run(backend.note(name), run):
                continue
            try:
                backend.drop(name)
            except StorekeeperError as exc:  # a clone a worker is dropping right now
                log.warning("could not drop %s: %s", name, exc)
                continue
            dropped.append(name)
    return dropped


def check_test_service(service: Service) -> Service:
    """Return ``service`` unless it is marked ``production = true``."""
    if service.production:
        raise ConfigError(
            f"refusing to run tests on service {service.name!r}: it is marked production = true; "
            "give the test environment a service of its own ([env.test] in storekeeper.toml, "
            "or --storekeeper-server)"
        )
    return service


class _Marking(Backend):
    """A backend whose every new database carries the run's note (mixed into the dialect's
    own backend class by :class:`TestSite`)."""

    mark: str = ""

    def create(self, name: str, *, spatial: bool = False) -> None:
        super().create(check_test_database(name), spatial=spatial)  # type: ignore[safe-super]
        self.set_note(name, self.mark)

    def clone(self, template: str, name: str, *args: Any, **kwargs: Any) -> None:
        super().clone(template, check_test_database(name), *args, **kwargs)  # type: ignore[safe-super]
        self.set_note(name, self.mark)

    def seal_template(self, name: str, mark: str = "") -> None:
        super().seal_template(name, mark or self.mark)  # type: ignore[safe-super]

    def unseal_template(self, name: str) -> None:
        super().unseal_template(name)  # type: ignore[safe-super]
        self.set_note(name, self.mark)


_MARKING: dict[type[Backend], type[Backend]] = {}


def _marking_class(plain: type[Backend]) -> type[Backend]:
    found = _MARKING.get(plain)
    if found is None:
        found = _MARKING[plain] = type(f"Marking{plain.__name__}", (_Marking, plain), {})
    return found


class TestSite(Site):
    """A site for one worker of one test run: every store lives in a ``test_`` database of
    the run (:func:`test_database_name`), or in the database :attr:`names` gives for its
    physical name (templates), and every database made through it carries the run's note.

    ``on_engine`` (set by the janitor) is called with a database's URL before an engine on
    it is made, so a store's test database is ready when code first uses it.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(self, config: Config, *, run: str, worker: str) -> None:
        super().__init__(config, database_format=TEST_PREFIX + "{name}")
        self.run = run
        self.worker = worker
        self.mark = run_mark(run)
        self.names: dict[str, str] = {}
        self.on_engine: Any = None

    def database_name(self, physical: str) -> str:
        return self.names.get(physical) or test_database_name(self.run, self.worker, physical)

    def backend(self, service: Service) -> Backend:
        key = (service.name, service.url.render_as_string(hide_password=False))
        backend = self._backends.get(key)
        if backend is None:
            backend = _marking_class(type(backend_for(service)))(service)
            backend.mark = self.mark  # type: ignore[attr-defined]
            self._backends[key] = backend
        return backend

    def backends(self) -> list[Backend]:
        """The backends this site has used."""
        return list(self._backends.values())

    def engine(self, url: URL, backend: Backend, **options: Any) -> Engine:
        if self.on_engine is not None:
            self.on_engine(url)
        return super().engine(url, backend, **options)

    def async_engine(self, url: URL, backend: Backend, **options: Any) -> AsyncEngine:
        if self.on_engine is not None:
            self.on_engine(url)
        return super().async_engine(url, backend, **options)


def fingerprint(app: App, store: Store, dialect: str, extra: Iterable[Path] = ()) -> str:
    """What a store's template is built from: its tables' DDL, its initializer's source, and
    ``extra`` files (migrations); any change gives another fingerprint."""
    from sqlalchemy.dialects import registry

    compiler_dialect = registry.load(dialect)()
    digest = hashlib.sha256(f"{app.name}.{store.name} on {dialect}\n".encode())
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
    scripts = store_scripts(app, store.name)
    if not scripts.exists or scripts.path is None:
        return []
    return sorted(
        path
        for path in scripts.path.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def twin(app: App, site: Site) -> App:
    """Another app with ``app``'s declarations, bound to ``site``: to build or check a store
    without rebinding the app the tests use."""
    return App(
        app.name,
        stores=app.stores,
        servers=app.servers,
        kinds=app.kinds,
        description=app.description,
        migrations=app.migrations,
        module=app.module,
        _home=app.home,
    ).bind(site)


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


class StoreBuilder:
    """Builds the templates and this worker's clones when first asked, and removes what the
    run made afterwards."""

    def __init__(
        self, apps: list[App], config: Config, *, worker: str, run_id: str, keepdb: bool
    ) -> None:
        self.apps = apps
        self.worker = worker
        self.run_id = run_id
        self.keepdb = keepdb
        self.template_site = TestSite(config, run=run_id, worker="tpl")
        self.site = TestSite(config, run=run_id, worker=worker)
        self.stores: list[StoreUnderTest] = []
        self._ready: dict[str, StoreUnderTest] = {}
        self._lazy: dict[str, tuple[App, Store]] = {}
        self._previous: dict[int, Site | None] = {}
        self._lock = threading.RLock()
        self._bound = False
        #: ``(name, URL)`` of each service this janitor built a template on.
        self.made_on: list[tuple[str, str]] = []

    def targets(self) -> dict[str, tuple[App, Store]]:
        """Every store under test by ``app.store``: the declared ones with a service (an
        unassigned required store is an error)."""
        found: dict[str, tuple[App, Store]] = {}
        for app in self.apps:
            view = twin(app, self.site)
            for store in app.stores:
                try:
                    place(view, store.name)
                except NotAssigned:
                    if store.required:
                        raise
                    continue
                found[f"{app.name}.{store.name}"] = (app, store)
        return found

    def bind(self) -> dict[str, tuple[App, Store]]:
        """Bind the apps to this worker's site (nothing is built yet); returns the targets."""
        with self._lock:
            targets = self.targets()
            if not self._bound:
                for app in self.apps:
                    self._previous.setdefault(id(app), app._site)
                    app.bind(self.site)
                for target, (app, store) in targets.items():
                    if target not in self._ready:
                        self._lazy[self._key(app, store.name)] = (app, store)
                self.site.on_engine = self._on_engine
                self._bound = True
            return targets

    def _key(self, app: App, store: str) -> str:
        where = place(app, store)
        url = self.site.backend(where.service).database_url(where.database)
        return url.render_as_string(hide_password=False)

    def _on_engine(self, url: URL) -> None:
        if self._lazy:
            found = self._lazy.get(url.render_as_string(hide_password=False))
            if found is not None:
                self.ensure(*found)

    def prepare(self) -> list[StoreUnderTest]:
        """Build (or reuse) every store's template and clone it for this worker."""
        for app, store in self.bind().values():
            self.ensure(app, store)
        return self.stores

    def ensure(self, app: App, store: Store) -> StoreUnderTest:
        """``store``'s template built (or reused) and cloned for this worker."""
        target = f"{app.name}.{store.name}"
        with self._lock:
            ready = self._ready.get(target)
            if ready is None:
                ready = self._prepare_store(app, store)
                made_on = (ready.service.name, ready.service.url.render_as_string(False))
                if made_on not in self.made_on:
                    self.made_on.append(made_on)
                self._ready[target] = ready
                self.stores.append(ready)
                self._lazy.pop(self._key(app, store.name), None)
            return ready

    def _prepare_store(self, app: App, store: Store) -> StoreUnderTest:
        where = place(app, store.name)
        service = check_test_service(where.service)
        database = check_test_database(where.database)
        backend = self.template_site.backend(service)
        built_from = fingerprint(
            app, store, service.url.get_backend_name(), migration_files(app, store)
        )
        template = template_database_name(self.run_id, built_from, keep=self.keepdb)
        target = f"{app.name}.{store.name}"
        mark = keep_mark(target, built_from) if self.keepdb else run_mark(self.run_id, target)
        built = False
        # Not the template's own lock: sync takes that one while building it.
        with backend.lock(f"{template}_build"):
            if backend.template_mark(template) != mark:
                self._build(app, store, backend, template, mark)
                built = True
        self.fresh_clone(service, template, database)
        log.info("%s.%s: %s from template %s", app.name, store.name, database, template)
        return StoreUnderTest(app, store.name, service, template, database, built)

    def fresh_clone(self, service: Service, template: str, database: str) -> None:
        """Replace ``database`` by a fresh clone of ``template`` (both ``test_`` names)."""
        # No lock: a clone's name is this worker's of this run, nobody else makes it.
        backend = self.site.backend(service)
        drop_test_database(backend, database)
        backend.clone(check_test_database(template), database)

    def _build(self, app: App, store: Store, backend: Backend, template: str, mark: str) -> None:
        log.info("%s.%s: building template %s", app.name, store.name, template)
        drop_test_database(backend, template)
        self.template_site.names[physical_name(app.name, store.name)] = template
        builder = twin(app, self.template_site)
        try:
            sync([builder], stores=[store.name], first_time=True)
        except StorekeeperError as exc:
            raise type(exc)(
                f"building the test template of {app.name}.{store.name}: {exc}"
            ) from exc
        finally:
            self.template_site.dispose_engine(backend.database_url(template))
        backend.seal_template(template, mark)

    def _drop_runtime_stores(self) -> None:
        # Stores the tests made at run time (recorded in this worker's catalog).
        for record in self.site.catalog.runtime_stores():
            app = next((a for a in self.apps if a.name == record.app), None)
            if app is None:
                continue
            where = place(app, record.name)
            self.site.dispose_engine(self.site.backend(where.service).database_url(where.database))
            drop_test_database(self.site.backend(where.service), where.database)
            self.site.remove_runtime_store(record.app, record.name)

    def backends(self) -> list[Backend]:
        """A backend for each service this worker made databases on."""
        return list({b.service.url: b for b in self.site.backends()}.values())

    def finish(self, *, sweep: bool = False) -> None:
        """Drop this worker's clones and the stores tests made at run time (with ``sweep``,
        also everything else the run made: its templates); close connections; give the apps
        back their sites."""
        try:
            self.site.on_engine = None
            self._drop_runtime_stores()
            for ready in self.stores:
                backend = self.site.backend(ready.service)
                self.site.dispose_engine(backend.database_url(ready.database))
                drop_test_database(backend, ready.database)
            if sweep and self.stores:
                sweep_run(self.backends(), self.run_id)
        finally:
            self.site.close()
            self.template_site.close()
            for app in self.apps:
                if id(app) in self._previous:
                    app.bind(self._previous[id(app)])


#: The name :class:`StoreBuilder` had before (kept working): it builds more than it cleans.
Janitor = StoreBuilder
