"""A site: one deployment's configuration and catalog, which apps attach to.

It answers "which service holds this store?" by merging, lowest first, the built-in ``local``
service, the configuration file (and its environment overlay), the catalog, and environment
variables; and it keeps one engine per database per process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import config as config_mod
from . import forks
from .backends import Backend, Service, backend_for, parse_service_url
from .catalog import Catalog, RuntimeStore
from .config import BUILTIN, Config, Sourced
from .errors import BadInput, NotAssigned, NotFound, StorekeeperError
from .naming import check_identifier, format_database_name, physical_name
from .secret import mask, masked_repr

if TYPE_CHECKING:
    from sqlalchemy import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .declarations import ServerSetting, Store
    from .declare import App

LOCAL_SERVICE = "local"
LOCAL_URL = "sqlite:///var/stores"

_SITES: weakref.WeakSet[Site] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Connections opened by the parent must never be used by the child: give every engine a
    # fresh pool without closing the parent's sockets (SQLAlchemy's documented recipe). A
    # lock that another thread of the parent held would never be released in the child.
    Site._default_lock = threading.Lock()
    for site in list(_SITES):
        site.forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass(frozen=True)
class Placement:
    """Where a store lives: its service, database name, and the assignment that chose it."""

    service: Service
    database: str
    assignment: Sourced

    def __repr__(self) -> str:
        return masked_repr(self)


def place(app: App, name: str) -> Placement:
    """Where store ``name`` of ``app`` lives; raises :class:`NotAssigned` or :class:`NotFound`."""
    site = app.site
    check_identifier(name, "store")
    declared = {s.name for s in app.stores}
    if name in declared:
        service = site.require_assignment(app.name, name)
        chosen = site.assignment(app.name, name)
        assert chosen is not None
        return Placement(service, site.database_name(physical_name(app.name, name)), chosen)
    record = site.runtime_store(app.name, name)
    if record is not None:
        return Placement(
            site.service(record.service),
            site.database_name(physical_name(app.name, name)),
            Sourced(record.service, "made at run time"),
        )
    known = app.list_stores()
    raise NotFound(
        f"app {app.name!r} has no store {name!r}; its stores: {', '.join(known) or 'none'}"
    )


def server_service(app: App, setting: str) -> Service:
    """The service plugged into server setting ``setting`` of ``app``."""
    app.server(setting)
    return app.site.require_assignment(app.name, setting, what="server setting")


class Site:
    """The configuration and catalog in force, and the engines made from them."""

    _default: ClassVar[Site | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: Config, *, database_format: str = "{name}") -> None:
        self.config = config
        #: How a store's physical name becomes its database name here (``"test_{name}"``
        #: for the test plugin's sites); checked on use.
        self.database_format = database_format
        self.catalog = Catalog(config.catalog.value, config.root)
        self._backends: dict[tuple[str, str], Backend] = {}
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        # Async connections belong to the event loop that opened them: one engine per
        # database per loop (a web server has one loop; test clients may start several).
        self._async_engines: dict[asyncio.AbstractEventLoop | None, dict[str, AsyncEngine]] = {}
        self._services: dict[str, Service] | None = None
        self._assignments: dict[tuple[str, str], Sourced] | None = None
        self._runtime: dict[tuple[str, str], RuntimeStore] | None = None
        _SITES.add(self)

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: str | bool | None = True) -> Site:
        """A site from the configuration file found from the working folder (or ``path``)."""
        return cls(config_mod.load(path, env=env))

    @classmethod
    def default(cls) -> Site:
        """The process-wide site that apps use until bound to another (loaded once)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls.load()
            return cls._default

    @classmethod
    def set_default(cls, site: Site | None) -> None:
        """Replace the process-wide site (tests and the CLI use this)."""
        with cls._default_lock:
            cls._default = site

    def __repr__(self) -> str:
        return (
            f"Site(root={str(self.config.root)!r}, env={self.config.env!r}, "
            f"catalog={self.catalog.display_url!r})"
        )

    def database_name(self, physical: str) -> str:
        """The database that holds the store whose physical name is ``physical`` on this site."""
        if self.database_format == "{name}":
            return physical
        return format_database_name(self.database_format, physical)

    # services -------------------------------------------------------------------------

    def services(self) -> dict[str, Service]:
        """Every known service by name, after applying the precedence."""
        if self._services is None:
            merged: dict[str, Sourced] = {LOCAL_SERVICE: Sourced(LOCAL_URL, BUILTIN)}
            merged.update(self.config.services)
            merged.update({n: Sourced(u, "catalog") for n, u in self.catalog.services().items()})
            merged.update(self.config.env_services)
            self._services = {
                name: Service(
                    name,
                    parse_service_url(src.value, self.config.root, what=f"URL of service {name!r}"),
                    src.source,
                    name in self.config.production_services,
                )
                for name, src in sorted(merged.items())
            }
        return self._services

    def service(self, name: str) -> Service:
        """The service called ``name``; :class:`NotFound` lists the known ones."""
        check_identifier(name, "service")
        services = self.services()
        if name not in services:
            known = ", ".join(services) or "none"
            raise NotFound(
                f"unknown service {name!r} (known: {known}); add it with: "
                f"storekeeper service add {name} URL"
            )
        return services[name]

    def backend(self, service: Service) -> Backend:
        """The backend for ``service`` (one per service and URL)."""
        key = (service.name, service.url.render_as_string(hide_password=False))
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = backend_for(service)
        backend.lock_timeout = self.config.lock_timeout_seconds
        return backend

    def add_service(self, name: str, url: str, *, replace: bool = False) -> Service:
        """Check and add a service to the catalog; returns it as it will be used."""
        check_identifier(name, "service")
        parsed = parse_service_url(url, self.config.root, what=f"URL of service {name!r}")
        service = Service(name, parsed, "catalog")
        backend_for(service)
        if self.catalog.add_service(name, url.strip(), replace=replace) and not replace:
            raise BadInput(
                f"service {name!r} already exists; use --replace to change its URL, or "
                f"storekeeper service remove {name}"
            )
        self._services = None
        self.catalog.record(
            "",
            "",
            "service update" if replace else "service add",
            detail=f"{name}: {service.display_url}",
        )
        return self.service(name)

    def update_service(self, name: str, url: str) -> Service:
        """Change the URL of catalog service ``name``; a URL given without a password keeps
        the password the service had (forms never show it, so they leave it out)."""
        check_identifier(name, "service")
        old = self.service(name)
        if old.source != "catalog":
            raise BadInput(
                f"service {name!r} comes from {old.source}, not the catalog; change it there"
            )
        parsed = parse_service_url(url, self.config.root, what=f"URL of service {name!r}")
        if parsed.password is None and old.url.password is not None:
            url = with_password(url, old.url.password)
        return self.add_service(name, url, replace=True)

    def ping_url(self, name: str, url: str) -> str:
        """Connect to the server at ``url`` (a service not saved yet, or saved) and say its
        version; raises :class:`BadInput` for a bad URL and
        :class:`~storekeeper.errors.ServiceUnavailable` when it cannot be reached."""
        check_identifier(name, "service")
        parsed = parse_service_url(url, self.config.root, what=f"URL of service {name!r}")
        backend = backend_for(Service(name, parsed, "catalog"))
        try:
            return backend.ping()
        finally:
            backend.close()

    def refresh(self) -> None:
        """Read services, assignments and stores made at run time from the catalog again on
        next use (a long-running face, like the admin page, sees what the CLI changed)."""
        self._services = None
        self._assignments = None
        self._runtime = None

    def remove_service(self, name: str, *, force: bool = False) -> None:
        """Remove a service from the catalog; refuses while assignments use it."""
        check_identifier(name, "service")
        users = self.catalog.users_of(name)
        if users and not force:
            raise BadInput(
                f"service {name!r} is still used by {', '.join(users)}; assign those to another "
                "service first, or pass --force"
            )
        if not self.catalog.remove_service(name):
            source = self.services().get(name)
            if source is not None:
                raise BadInput(
                    f"service {name!r} comes from {source.source}, not the catalog; remove it there"
                )
            self.service(name)
        self._services = None
        self.catalog.record("", "", "service remove", detail=name)

    # assignments ----------------------------------------------------------------------

    def assignments(self) -> dict[tuple[str, str], Sourced]:
        """Every explicit assignment after the precedence (file, overlay, then catalog).

        Read from the catalog once per site; changes made through this site are seen at once.
        """
        if self._assignments is None:
            merged = dict(self.config.assignments)
            merged.update({k: Sourced(v, "catalog") for k, v in self.catalog.assignments().items()})
            self._assignments = merged
        return self._assignments

    def assign(self, app: str, setting: str, service: str) -> Service:
        """Plug ``service`` into ``app.setting`` in the catalog (checked to exist)."""
        check_identifier(app, "app")
        check_identifier(setting, "store or setting")
        found = self.service(service)
        self.catalog.assign(app, setting, service)
        self._assignments = None
        self.catalog.record(app, setting, "assign", detail=f"{app}.{setting} -> {service}")
        return found

    def unassign(self, app: str, setting: str) -> bool:
        """Remove the catalog's assignment of ``app.setting`` (the store then uses what the
        configuration file or the default service says); returns whether there was one."""
        check_identifier(app, "app")
        check_identifier(setting, "store or setting")
        removed = self.catalog.unassign(app, setting)
        self._assignments = None
        if removed:
            self.catalog.record(app, setting, "unassign", detail=f"{app}.{setting}")
        return removed

    def runtime_store(self, app: str, name: str) -> RuntimeStore | None:
        """The catalog's record of a store made at run time, if there is one."""
        if self._runtime is None:
            self._runtime = {(r.app, r.name): r for r in self.catalog.runtime_stores()}
        record = self._runtime.get((app, name))
        if record is None:
            # Another process may have made it since this site read the catalog.
            self._runtime = {(r.app, r.name): r for r in self.catalog.runtime_stores()}
            record = self._runtime.get((app, name))
        return record

    def runtime_stores(self, app: str | None = None) -> list[RuntimeStore]:
        """Stores made at run time (of ``app``, or all), read from the catalog once until
        :meth:`refresh` or a change through this site."""
        if self._runtime is None:
            self._runtime = {(r.app, r.name): r for r in self.catalog.runtime_stores()}
        return [r for r in self._runtime.values() if app is None or r.app == app]

    def add_runtime_store(
        self, app: str, name: str, service: str, server: str | None, kind: str | None
    ) -> None:
        """Record a store made at run time."""
        self.catalog.add_runtime_store(app, name, service, server, kind)
        self._runtime = None

    def remove_runtime_store(self, app: str, name: str) -> bool:
        """Forget a store made at run time."""
        removed = self.catalog.remove_runtime_store(app, name)
        self._runtime = None
        return removed

    def assignment(self, app: str, setting: str) -> Sourced | None:
        """The service plugged into ``app.setting``, or the default service, or ``None``."""
        explicit = self.assignments().get((app, setting))
        if explicit is not None:
            return explicit
        default = self.config.default_service
        if default.value:
            return Sourced(default.value, f"default_service ({default.source})")
        return None

    def require_assignment(self, app: str, setting: str, what: str = "store") -> Service:
        """The service of ``app.setting``; :class:`NotAssigned` says how to assign one."""
        chosen = self.assignment(app, setting)
        if chosen is None:
            names = ", ".join(self.services()) or "NAME"
            raise NotAssigned(
                f"{what} {app}.{setting} is not assigned to a service and there is no default "
                f"service; run: storekeeper assign {app}.{setting} SERVICE (services: {names})"
            )
        return self.service(chosen.value)

    # engines --------------------------------------------------------------------------

    def engine(self, url: URL, backend: Backend, **options: Any) -> Engine:
        """The one engine of this process for database ``url`` (made on first use)."""
        key = _engine_key(url)
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        with self._engines_lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = forks.create_engine(url, **{**backend.engine_options(), **options})
                backend.prepare_engine(engine)
                self._engines[key] = engine
        return engine

    def dispose_engine(self, url: URL) -> None:
        """Close and forget the engine of database ``url`` (before it is dropped)."""
        key = _engine_key(url)
        engine = self._engines.pop(key, None)
        if engine is not None:
            engine.dispose()
        for engines in self._async_engines.values():
            async_engine = engines.pop(key, None)
            if async_engine is not None:
                # Its connections may belong to another loop: drop them, the drop ends them.
                _let_go([async_engine])

    def async_engine(self, url: URL, backend: Backend, **options: Any) -> AsyncEngine:
        """The asyncio engine for database ``url`` in the running event loop (made on first use).

        Outside a running loop the engine is shared by every caller without a loop.
        """
        loop = running_loop()
        key = _engine_key(url)
        engines = self._async_engines.get(loop)
        engine = engines.get(key) if engines is not None else None
        if engine is not None:
            return engine
        with self._engines_lock:
            self._forget_closed_loops()
            engines = self._async_engines.setdefault(loop, {})
            engine = engines.get(key)
            if engine is None:
                engine = forks.create_async_engine(
                    backend.async_url(url), **{**backend.engine_options(), **options}
                )
                backend.prepare_engine(engine.sync_engine)
                engines[key] = engine
        return engine

    def _forget_closed_loops(self) -> None:
        # Connections of a closed loop cannot be closed any more; let them be collected.
        for loop in [lp for lp in self._async_engines if lp is not None and lp.is_closed()]:
            _let_go(self._async_engines.pop(loop).values())

    async def dispose_async_engines(self) -> None:
        """Close the pooled connections of the running loop's asyncio engines (at shutdown;
        the engines stay usable and open new connections if used again)."""
        for engine in list(self._async_engines.get(running_loop(), {}).values()):
            await engine.dispose()

    def async_engines(self) -> Iterable[AsyncEngine]:
        """The asyncio engines made so far, in every loop (for pool checks and monitoring)."""
        return [e for engines in list(self._async_engines.values()) for e in engines.values()]

    def forget_connections(self) -> None:
        """After a fork: new pools for every engine, without touching the parent's sockets."""
        self._engines_lock = threading.Lock()
        for engine in list(self._engines.values()):
            engine.dispose(close=False)
        # The parent's event loops do not run in the child: forget their engines whole.
        self._let_go_of_async_engines()
        for backend in self._backends.values():
            admin = getattr(backend, "_admin", None)
            if admin is not None:
                admin.dispose(close=False)
        if self.catalog._engine is not None:
            self.catalog._engine.dispose(close=False)

    def _let_go_of_async_engines(self) -> None:
        """Forget the asyncio engines of every loop, dropping their connections unclosed."""
        _let_go(self.async_engines())
        self._async_engines.clear()

    def close(self) -> None:
        """Close every connection this site holds."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        # Async connections are closed by awaiting dispose_async_engines() in their loop (the
        # integrations' shutdown hooks do); here, outside any loop, they can only be dropped.
        self._let_go_of_async_engines()
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        self.catalog.close()

    def engines(self) -> Iterable[Engine]:
        """The engines made so far (for pool checks and monitoring)."""
        return list(self._engines.values())

    # reports --------------------------------------------------------------------------

    def service_list(self) -> list[ServiceInfo]:
        """``service list``: every service, its dialect, URL (password masked) and source."""
        return [
            ServiceInfo(s.name, s.url.get_backend_name(), s.display_url, s.source, s.production)
            for s in self.services().values()
        ]


def without_password(url: URL) -> str:
    """``url`` as text with no password at all (for a form that must not send it back)."""
    from sqlalchemy import URL as URLType

    bare = URLType.create(
        url.drivername, url.username, None, url.host, url.port, url.database, url.query
    )
    return bare.render_as_string(hide_password=False)


def with_password(url: str, password: str) -> str:
    """``url`` (text) with ``password`` put in it, percent-encoded as URLs need."""
    from sqlalchemy import make_url

    return make_url(url.strip()).set(password=password).render_as_string(hide_password=False)


# reports: what the site says about itself (URLs as masked strings, never URL objects) ---


@dataclass(frozen=True)
class ServiceStatus:
    """One service as the admin page shows it: where it is, whether it answers, what is on it."""

    name: str
    dialect: str
    host: str | None
    port: int | None
    #: The URL with its password masked; the URL without its password, for an edit form.
    url: str
    url_without_password: str
    source: str
    production: bool
    #: ``None`` when not asked (``ping=False``).
    reachable: bool | None
    version: str | None
    error: str
    #: ``app.store`` of every store placed on it (assigned, by default, or made at run time).
    stores: tuple[str, ...]
    #: ``app.setting`` of the explicit assignments that name it.
    assigned: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _ping(site: Site, service: Service) -> tuple[bool, str | None, str]:
    from .errors import StorekeeperError

    try:
        return True, site.backend(service).ping(), ""
    except StorekeeperError as exc:
        return False, None, str(exc)
    except Exception as exc:  # a driver's surprise: the page still shows the others
        return False, None, mask(f"{type(exc).__name__}: {exc}", service.url.password)


def service_report(
    site: Site, apps: Sequence[App], *, ping: bool = True, wait: float = 10.0
) -> list[ServiceStatus]:
    """Every service: host, port, masked URL, the stores on it, and (``ping``) its version or
    why it cannot be reached. Services are pinged at once, each given ``wait`` seconds."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout

    services = site.services()
    on: dict[str, list[str]] = {name: [] for name in services}
    for app in apps:
        for name in app.list_stores():
            try:
                where = place(app, name).service.name
            except StorekeeperError:
                continue
            on.setdefault(where, []).append(f"{app.name}.{name}")
    assigned: dict[str, list[str]] = {}
    for (app_name, setting), chosen in site.assignments().items():
        assigned.setdefault(chosen.value, []).append(f"{app_name}.{setting}")
    answers: dict[str, tuple[bool | None, str | None, str]] = {
        n: (None, None, "") for n in services
    }
    if ping and services:
        pool = ThreadPoolExecutor(max_workers=min(8, len(services)))
        futures = {n: pool.submit(_ping, site, s) for n, s in services.items()}
        for name, future in futures.items():
            try:
                answers[name] = future.result(timeout=wait)
            except Timeout:
                answers[name] = (False, None, f"no answer from service {name!r} in {wait:g} s")
        pool.shutdown(wait=False, cancel_futures=True)
    rows = []
    for name, s in services.items():
        reachable, version, error = answers[name]
        rows.append(
            ServiceStatus(
                name,
                s.url.get_backend_name(),
                s.url.host,
                s.url.port,
                s.display_url,
                without_password(s.url),
                s.source,
                s.production,
                reachable,
                version,
                error,
                tuple(sorted(on.get(name, []))),
                tuple(sorted(assigned.get(name, []))),
            )
        )
    return rows


@dataclass(frozen=True)
class SettingStatus:
    """One store or server setting of an app, with the service plugged into it."""

    app: str
    name: str
    #: ``store`` or ``server``.
    kind: str
    description: str
    required: bool
    #: The service it uses (``None``: none), and where that choice comes from (``catalog``,
    #: a file, ``default_service (...)``).
    service: str | None
    source: str | None
    #: Whether the catalog holds an assignment for it (which the page can remove).
    in_catalog: bool

    @property
    def missing(self) -> bool:
        """Required, and no service to use: sync refuses it until it is assigned."""
        return self.required and self.service is None


@dataclass(frozen=True)
class AppStatus:
    """An app as the admin page's assignment form shows it."""

    name: str
    description: str
    #: Required-but-unassigned settings first, then the others in declared order.
    settings: tuple[SettingStatus, ...]
    #: Kinds, each with the stores made from it at run time.
    kinds: tuple[tuple[str, str, tuple[str, ...]], ...]


def app_report(site: Site, apps: Sequence[App]) -> list[AppStatus]:
    """Each app's stores and server settings with their services, and its kinds."""
    explicit = site.assignments()
    found = []
    for app in apps:
        settings = []
        items: list[tuple[Store | ServerSetting, str]] = [(s, "store") for s in app.stores]
        items += [(s, "server") for s in app.servers]
        for item, kind in items:
            chosen = site.assignment(app.name, item.name)
            source = explicit.get((app.name, item.name))
            settings.append(
                SettingStatus(
                    app.name,
                    item.name,
                    kind,
                    item.description,
                    item.required,
                    chosen.value if chosen else None,
                    chosen.source if chosen else None,
                    source is not None and source.source == "catalog",
                )
            )
        settings.sort(key=lambda s: not s.missing)  # stable: declared order within each
        made = site.catalog.runtime_stores(app.name)
        kinds = tuple(
            (k.name, k.description, tuple(r.name for r in made if r.kind == k.name))
            for k in app.kinds
        )
        found.append(AppStatus(app.name, app.description, tuple(settings), kinds))
    return found


@dataclass(frozen=True)
class ServiceInfo:
    """One service as ``service list`` and ``config show`` report it."""

    name: str
    dialect: str
    #: The URL with its password masked.
    url: str
    source: str
    production: bool = False

    def as_dict(self) -> dict[str, Any]:
        """As ``service list --json`` prints it."""
        return {"name": self.name, "url": self.url, "dialect": self.dialect, "source": self.source}


@dataclass(frozen=True)
class AssignmentInfo:
    """An explicit assignment: ``APP.SETTING`` plugged into a service."""

    app: str
    setting: str
    service: str
    source: str


@dataclass(frozen=True)
class AppInfo:
    """An app as ``config show`` reports it: its stores and server settings."""

    name: str
    stores: tuple[str, ...]
    servers: tuple[str, ...]


@dataclass(frozen=True)
class ConfigReport:
    """``config show``: the effective configuration and where each value came from."""

    file: str | None
    root: str
    environment: str | None
    #: The catalog's URL, password masked.
    catalog: str
    catalog_source: str
    default_service: str | None
    default_service_source: str
    #: The lock timeout as it was given (text), and as a number of seconds.
    lock_timeout: str
    lock_timeout_seconds: float
    lock_timeout_source: str
    services: tuple[ServiceInfo, ...]
    assignments: tuple[AssignmentInfo, ...]
    apps: tuple[AppInfo, ...]

    def as_dict(self) -> dict[str, Any]:
        """As ``config show --json`` prints it."""
        return {
            "file": self.file,
            "root": self.root,
            "environment": self.environment,
            "catalog": {"url": self.catalog, "source": self.catalog_source},
            "default_service": {
                "value": self.default_service,
                "source": self.default_service_source,
            },
            "lock_timeout": {
                "value": self.lock_timeout_seconds,
                "source": self.lock_timeout_source,
            },
            "services": {
                s.name: {"url": s.url, "source": s.source, "production": s.production}
                for s in self.services
            },
            "assignments": {
                f"{a.app}.{a.setting}": {"service": a.service, "source": a.source}
                for a in self.assignments
            },
            "apps": [a.name for a in self.apps],
        }


def config_report(site: Site, apps: Sequence[App]) -> ConfigReport:
    """The effective configuration of ``site`` serving ``apps``, each value with its source."""
    cfg = site.config
    return ConfigReport(
        file=str(cfg.file) if cfg.file else None,
        root=str(cfg.root),
        environment=cfg.env,
        catalog=site.catalog.display_url,
        catalog_source=cfg.catalog.source,
        default_service=cfg.default_service.value,
        default_service_source=cfg.default_service.source,
        lock_timeout=str(cfg.lock_timeout.value),
        lock_timeout_seconds=cfg.lock_timeout_seconds,
        lock_timeout_source=cfg.lock_timeout.source,
        services=tuple(site.service_list()),
        assignments=tuple(
            AssignmentInfo(app, setting, v.value, v.source)
            for (app, setting), v in sorted(site.assignments().items())
        ),
        apps=tuple(
            AppInfo(
                a.name,
                tuple(s.name for s in a.stores),
                tuple(a.list_servers()) if a.servers else (),
            )
            for a in apps
        ),
    )


def _engine_key(url: URL) -> str:
    """What engines are kept under: the whole URL (two passwords, two engines)."""
    return url.render_as_string(hide_password=False)


def _let_go(engines: Iterable[AsyncEngine]) -> None:
    """Give ``engines`` fresh pools without closing their connections: those belong to another
    event loop (or a parent process) and cannot be closed from here."""
    for engine in engines:
        engine.sync_engine.dispose(close=False)
