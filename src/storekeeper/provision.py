"""Provisioning: placing stores on services, ``sync``, and stores made at run time."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from .backends.base import LockHolder
from .config import Sourced
from .errors import (
    BadInput,
    InitializerError,
    MigrationError,
    NotAssigned,
    NotFound,
    ProvisionError,
    StorekeeperError,
    exit_code_of,
)
from .migrate.commands import (
    BeforeMigrating,
    migrate_database,
    revision_state,
    script_directory,
)
from .migrate.scripts import Scripts, kind_scripts, store_scripts
from .migrate.templates import clone_from_template
from .naming import check_identifier, physical_name, pre_restore_copies, pre_restore_prefix
from .replicas import ReplicaStatus, check_store_replicas, replica_status
from .secret import mask
from .site import Placement
from .site import place as place  # re-exported: its home was here before site.py
from .site import server_service as server_service

if TYPE_CHECKING:
    from sqlalchemy import Engine, MetaData

    from .backends import Backend
    from .declarations import Initializer, InitializerSpec
    from .declare import App


log = logging.getLogger("storekeeper")


@dataclass
class StoreResult:
    """What ``sync`` or ``create_store`` did to one store."""

    app: str
    store: str
    service: str | None
    database: str | None
    action: str
    first_time: bool = False
    initialized: bool = False
    tables_added: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: For a store with migrations: the revision it is at after the run, the migrations
    #: applied in it, and whether it was cloned from its kind's template.
    revision: str | None = None
    migrations_applied: list[str] = field(default_factory=list)
    from_template: bool = False
    #: A store that failed in a ``sync`` that goes on past failures: why, and the exit code
    #: its error calls for (2 for bad input, else 1).
    ok: bool = True
    error: str = ""
    exit_code: int = 0
    #: The id of the backup taken automatically before migrating the (existing) store.
    backup: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the database or its schema changed."""
        return (
            self.action in ("created", "recreated")
            or bool(self.tables_added)
            or bool(self.migrations_applied)
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "changed": self.changed}


# A store made at run time is described by the same record.
StoreInfo = StoreResult


@dataclass
class SyncReport:
    """Everything one ``sync`` did, store by store."""

    results: list[StoreResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything changed (a second sync of the same code reports ``False``)."""
        return any(r.changed for r in self.results)

    @property
    def failed(self) -> list[StoreResult]:
        """The stores that failed."""
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        """0 when every store synced; 2 when every failure was bad input; else 1."""
        return exit_code_of(r.exit_code for r in self.failed)


def resolve_initializer(spec: InitializerSpec, where: str) -> Initializer | None:
    """Turn ``"module:function"`` or ``"module.function"`` into the function it names."""
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InitializerError(f"initializer of {where} must be a callable or 'module:function'")
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise InitializerError(
            f"initializer {spec!r} of {where} is not 'module:function' or 'module.function'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise InitializerError(
            f"initializer {spec!r} of {where} cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise InitializerError(
            f"initializer {spec!r} of {where}: module {module_name!r} has no function {attr!r}"
        )
    return func  # type: ignore[no-any-return]


def _schema(engine: Engine, metadata: MetaData | None) -> list[str]:
    """Create the tables of ``metadata`` that are missing; returns their names."""
    if metadata is None or not metadata.tables:
        return []
    inspector = inspect(engine)
    missing = [
        t.fullname for t in metadata.sorted_tables if not inspector.has_table(t.name, t.schema)
    ]
    if missing:
        metadata.create_all(engine)
    return missing


@dataclass
class _Plan:
    app: App
    store: str
    placement: Placement
    metadata: MetaData | None
    initializer: Initializer | None
    initializer_name: str
    spatial: bool
    #: The store's migrations when it has a script directory (then no create_all), and the
    #: kind whose template a new store is cloned from.
    scripts: Scripts | None = None
    kind: str | None = None
    #: Called just before migrating an existing store (the automatic backup).
    before: BeforeMigrating | None = None


def _provision(
    plan: _Plan, *, refresh: bool, first_time: bool, runtime: tuple[str | None, str | None] | None
) -> StoreResult:
    """Create (or recreate) one store, bring its schema up and initialize it, under a lock.

    A database made here carries the backend's "unfinished" mark until everything succeeded:
    when a run is interrupted (Ctrl-C, SIGTERM, ``kill -9``) the next one finds the mark and
    makes the store again as new. A failure drops what this run made.
    """
    backend = plan.app.site.backend(plan.placement.service)
    database = plan.placement.database
    started = time.perf_counter()
    result = StoreResult(
        plan.app.name, plan.store, plan.placement.service.name, database, "up to date"
    )
    doing = f"{'creating' if runtime is not None else 'syncing'} store {plan.app.name}.{plan.store}"
    with backend.lock(database, doing=doing):
        existed = _clear_leftovers(plan, backend, result, refresh=refresh)
        step = "creating the database"
        try:
            # Each step is named before it runs: a failure says which one failed.
            for step in _build(plan, backend, result, existed, first_time, runtime, doing):
                log.debug("%s.%s: %s", plan.app.name, plan.store, step)
        except BaseException as exc:
            # Leave nothing half-made: the next sync is a clean first time. Should the drop
            # fail too, the mark is still there and the next sync drops it.
            failed = exc if isinstance(exc, Exception) else None
            undo_failed = None if existed else _undo(plan, backend, interrupted=failed is None)
            if failed is None:
                raise  # interrupted (Ctrl-C, SystemExit): as it is, after the cleanup
            raise _failure(plan, failed, step, existed, undo_failed) from exc
    result.seconds = time.perf_counter() - started
    _record_synced(plan, result)
    return result


def _clear_leftovers(plan: _Plan, backend: Backend, result: StoreResult, *, refresh: bool) -> bool:
    """Drop the store's database when an interrupted first run left it half-made, or when
    ``refresh`` asks; returns whether the database exists now."""
    database = plan.placement.database
    existed = backend.exists(database)
    if existed and backend.unfinished(database):
        log.warning(
            "%s.%s: database %r was left half-made by an interrupted first initialization; "
            "making it again",
            plan.app.name,
            plan.store,
            database,
        )
        _drop(plan, backend)
        return False
    if existed and refresh:
        _drop(plan, backend)
        result.action = "recreated"
        return False
    return existed


def _build(
    plan: _Plan,
    backend: Backend,
    result: StoreResult,
    existed: bool,
    first_time: bool,
    runtime: tuple[str | None, str | None] | None,
    doing: str,
) -> Iterator[str]:
    """The steps of making a store ready, each named (yielded) before it runs: the database,
    its schema (tables or migrations), the initializer, the catalog's record, the mark."""
    site, database = plan.app.site, plan.placement.database
    if not existed:
        yield (
            f"cloning the template of kind {plan.kind}"
            if plan.scripts is not None and plan.kind is not None
            else "creating the database"
        )
        _create(plan, backend, result, doing)
    engine = site.engine(backend.database_url(database), backend)
    if plan.scripts is None:
        yield "creating the tables"
        result.tables_added = _schema(engine, plan.metadata)
    elif not result.from_template:
        yield "migrating"
        hook = plan.before if existed else None

        def before(app: App, store: str, _action: str) -> str | None:
            assert hook is not None
            return hook(app, store, "sync")  # the backup says which command migrated

        try:
            migrated = migrate_database(
                backend, database, plan.scripts, store=plan.store, before=before if hook else None
            )
        except MigrationError as exc:
            result.backup = exc.backup
            raise
        result.revision, result.migrations_applied = migrated.after, migrated.applied
        result.backup = migrated.backup
    result.first_time = not existed or first_time
    if plan.initializer is not None:
        yield f"initializer {plan.initializer_name}"
        plan.initializer(engine, result.first_time)
        result.initialized = True
    if runtime is not None:
        yield "recording the store in the catalog"
        site.add_runtime_store(plan.app.name, plan.store, plan.placement.service.name, *runtime)
    if not existed:
        yield "marking the store's first initialization finished"
        backend.mark_finished(database)


def _record_synced(plan: _Plan, result: StoreResult) -> None:
    """Record in the catalog (and the log) what syncing the store did."""
    detail = result.action + (
        f", tables added: {', '.join(result.tables_added)}" if result.tables_added else ""
    )
    if result.migrations_applied or result.from_template:
        detail += f", at revision {result.revision or 'base'}" + (
            " (from the template)" if result.from_template else ""
        )
    site = plan.app.site
    site.catalog.record(plan.app.name, plan.store, "sync", ok=True, detail=detail)
    now = _utcnow()
    site.catalog.record_state(
        plan.app.name,
        plan.store,
        service=plan.placement.service.name,
        database=plan.placement.database,
        present=True,
        size=site.backend(plan.placement.service).size(plan.placement.database),
        revision=result.revision,
        checked_at=now,
        synced_at=now,
    )
    log.info(
        "%s.%s on service %s: %s", plan.app.name, plan.store, plan.placement.service.name, detail
    )


def _drop(plan: _Plan, backend: Backend, *, wait: float | None = None) -> None:
    """Drop the store's database (its lock held): this process's connections to it are closed,
    and other connections ended (PostgreSQL) or waited for (SQLite, ``wait`` seconds)."""
    _drop_database(plan.app, plan.store, backend, plan.placement.database, wait=wait)


def _drop_database(
    app: App, store: str, backend: Backend, database: str, *, wait: float | None = None
) -> bool:
    app.site.dispose_engine(backend.database_url(database))
    app.forget(store)
    with backend.sole_use(database, wait):
        existed = backend.exists(database)
        backend.drop(database)
    return existed


def _create(plan: _Plan, backend: Backend, result: StoreResult, doing: str) -> None:
    """Make the store's database (cloned from its kind's template, or empty) and mark it
    unfinished."""
    database = plan.placement.database
    if plan.scripts is not None and plan.kind is not None:
        result.revision = clone_from_template(plan.app, plan.kind, plan.placement.service, database)
        result.from_template = True
    else:
        backend.create(database, spatial=plan.spatial)
    if result.action != "recreated":
        result.action = "created"
    here = LockHolder.here(doing)
    when = f"{here.since:%Y-%m-%d %H:%M:%S} UTC" if here.since else "?"
    backend.mark_unfinished(database, f"pid {here.pid} on {here.host}, started {when}")


def _undo(plan: _Plan, backend: Backend, *, interrupted: bool) -> str | None:
    """Drop the database this run made; returns why that failed (logged), or ``None``.

    An interrupted run does not wait for other connections to close: its mark makes the next
    run drop the database."""
    try:
        _drop(plan, backend, wait=0 if interrupted else None)
    except Exception as exc:
        reason = mask(f"{type(exc).__name__}: {exc}", plan.placement.service.url.password)
        log.error(
            "%s.%s: dropping half-made database %r failed: %s",
            plan.app.name,
            plan.store,
            plan.placement.database,
            reason,
        )
        return reason
    return None


def _failure(
    plan: _Plan, exc: Exception, step: str, existed: bool, undo_failed: str | None
) -> StorekeeperError:
    """The error to raise for ``exc`` at ``step``: its own message first, then what became of
    the database; recorded in the catalog and logged."""
    app, database = plan.app, plan.placement.database
    reason = (
        str(exc)
        if isinstance(exc, MigrationError)
        else mask(f"{type(exc).__name__}: {exc}", plan.placement.service.url.password)
    )
    if not existed and undo_failed is None:
        undo = f"; database {database!r} made in this run was dropped again"
    elif not existed:
        undo = (
            f"; dropping database {database!r} made in this run failed too ({undo_failed}), "
            "so the next sync drops it and makes it again"
        )
    elif isinstance(exc, MigrationError):
        undo = ""  # its message says at which revision the store stays
    else:
        undo = "; the existing database was left as it was"
    try:
        app.site.catalog.record(app.name, plan.store, "sync", ok=False, detail=reason + undo)
    except Exception as record_failed:  # the store's own error matters more
        log.error("%s.%s: recording the failure failed: %s", app.name, plan.store, record_failed)
    log.error("%s.%s: %s failed: %s%s", app.name, plan.store, step, reason, undo)
    if isinstance(exc, MigrationError):
        failed = type(exc)(f"{reason}{undo}", before=exc.before, after=exc.after)
        failed.backup = exc.backup
        return failed
    error = InitializerError if step.startswith("initializer") else ProvisionError
    return error(f"store {app.name}.{plan.store}: {step} failed: {reason}{undo}")


def _initializer_name(spec: InitializerSpec) -> str:
    if isinstance(spec, str):
        return repr(spec)
    if spec is None:
        return "none"
    return repr(f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', spec)}")


def sync(
    apps: Sequence[App],
    *,
    stores: Iterable[str] | None = None,
    refresh: bool = False,
    first_time: bool = False,
    progress: Callable[[StoreResult], None] | None = None,
    continue_on_error: bool = False,
    before: BeforeMigrating | None = None,
) -> SyncReport:
    """For each declared store: create it if missing, create missing tables, run the initializer
    (``first_time`` true only when created in this run, or when ``first_time`` is given).
    ``before`` is called just before an existing store is migrated (the automatic backup; if
    it fails, that store is not migrated).

    Every store is checked first (names, assignments, initializers): bad input raises before
    anything is changed. ``stores`` limits the run to those store names. A store that fails
    raises its error, unless ``continue_on_error``: then every store is tried and each failure
    is a result with ``ok`` false (see :attr:`SyncReport.failed`).
    """
    wanted = list(stores) if stores is not None else None
    plans: list[_Plan | StoreResult] = []
    for app in apps:
        selected = [app.store(n) for n in wanted] if wanted is not None else list(app.stores)
        for store in selected:
            where = f"store {app.name}.{store.name}"
            try:
                placement = place(app, store.name)
            except NotAssigned:
                if store.required:
                    raise
                plans.append(StoreResult(app.name, store.name, None, None, "skipped: not assigned"))
                continue
            # A replica that is not one of this primary is bad input, refused before anything
            # is changed; one that is down is said, and reads skip it until it is back.
            for warning in check_store_replicas(app, store.name, placement):
                log.warning("%s", warning)
            scripts = store_scripts(app, store.name)
            plans.append(
                _Plan(
                    app,
                    store.name,
                    placement,
                    store.metadata,
                    resolve_initializer(store.initializer, where),
                    _initializer_name(store.initializer),
                    store.spatial,
                    scripts if scripts.exists else None,
                    before=before,
                )
            )
    report = SyncReport()
    for plan in plans:
        if isinstance(plan, StoreResult):
            result = plan
        elif continue_on_error:
            result = _attempt(plan, refresh=refresh, first_time=first_time)
        else:
            result = _provision(plan, refresh=refresh, first_time=first_time, runtime=None)
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def _attempt(plan: _Plan, *, refresh: bool, first_time: bool) -> StoreResult:
    """Provision one store of a ``sync``; a failure is returned in the result, not raised."""
    started = time.perf_counter()
    service = plan.placement.service
    try:
        return _provision(plan, refresh=refresh, first_time=first_time, runtime=None)
    except StorekeeperError as exc:
        error, code = str(exc), exc.exit_code
        backup = exc.backup if isinstance(exc, MigrationError) else None
    except Exception as exc:  # one store's surprise must not leave the others untried
        error = mask(f"unexpected {type(exc).__name__}: {exc}", service.url.password)
        code, backup = 1, None
    return StoreResult(
        plan.app.name,
        plan.store,
        service.name,
        plan.placement.database,
        "failed",
        seconds=time.perf_counter() - started,
        ok=False,
        error=error,
        exit_code=code,
        backup=backup,
    )


def create_store(
    app: App,
    name: str,
    *,
    server: str | None = None,
    kind: str | None = None,
    initializer: InitializerSpec = None,
    spatial: bool | None = None,
    refresh: bool = False,
    first_time: bool | None = None,
) -> StoreResult:
    """Make store ``name`` at run time and record it in the catalog (see :meth:`App.create_store`).

    The server is the one behind server setting ``server`` (or the app's only server setting,
    or the default service when it declares none). ``kind`` gives metadata, initializer and
    spatial; ``initializer``/``spatial`` override them. Existing stores are kept (and their
    initializer run with ``first_time`` false unless ``first_time=True``) unless ``refresh``.
    """
    check_identifier(name, "store")
    if name in {s.name for s in app.stores}:
        raise BadInput(
            f"{name!r} is a declared store of app {app.name!r}; use sync for it, or pick "
            "another name for a store made at run time"
        )
    database = app.site.database_name(physical_name(app.name, name))
    if server is None and len(app.servers) == 1:
        server = app.servers[0].name
    if server is not None:
        service = server_service(app, server)
    elif app.servers:
        raise BadInput(
            f"app {app.name!r} has several server settings; pass server= one of "
            f"{', '.join(app.list_servers())}"
        )
    else:
        service = app.site.require_assignment(app.name, name)
    kind = _recorded_kind(app, name, kind, refresh=refresh)
    declared_kind = app.kind(kind) if kind is not None else None
    where = f"store {app.name}.{name}"
    spec = (
        initializer
        if initializer is not None
        else (declared_kind.initializer if declared_kind else None)
    )
    plan = _Plan(
        app,
        name,
        Placement(service, database, Sourced(service.name, "made at run time")),
        declared_kind.metadata if declared_kind else None,
        resolve_initializer(spec, where),
        _initializer_name(spec),
        spatial if spatial is not None else bool(declared_kind and declared_kind.spatial),
    )
    if kind is not None:
        scripts = kind_scripts(app, kind)
        if scripts.exists:
            plan.scripts, plan.kind = scripts, kind
    result = _provision(plan, refresh=refresh, first_time=bool(first_time), runtime=(server, kind))
    app.forget(name)
    return result


def _recorded_kind(app: App, name: str, kind: str | None, *, refresh: bool) -> str | None:
    """The kind to make store ``name`` with: the one it was made with when ``kind`` is not
    given; a different one only when the store is made anew (``refresh``)."""
    if kind is not None:
        app.kind(kind)  # an unknown kind is refused first, naming the app's kinds
    record = app.site.runtime_store(app.name, name)
    if record is None:
        return kind
    if kind is None:
        return record.kind
    if kind != record.kind and not refresh:
        made = f"with kind {record.kind!r}" if record.kind else "without a kind"
        keep = f"kind={record.kind!r}" if record.kind else "no kind"
        raise BadInput(
            f"store {app.name}.{name}: {name!r} was made {made}, not {kind!r}; pass {keep} "
            f"(or leave kind out), or refresh=True to make it anew as a {kind!r}"
        )
    return kind


def drop_store(app: App, name: str) -> bool:
    """Drop store ``name``'s database; a store made at run time is also forgotten."""
    placement = place(app, name)
    site = app.site
    backend = site.backend(placement.service)
    # The lock first: nothing (engines, sessions, the file) is touched while another process
    # provisions or migrates the store, and nothing at all if the lock is not had in time.
    with backend.lock(placement.database, doing=f"dropping store {app.name}.{name}"):
        existed = _drop_database(app, name, backend, placement.database)
        site.remove_runtime_store(app.name, name)
    site.catalog.record(app.name, name, "drop", ok=True, detail="dropped" if existed else "absent")
    if name in {s.name for s in app.stores}:
        site.catalog.record_state(
            app.name, name, present=False, size=None, revision=None, checked_at=_utcnow()
        )
    else:
        site.catalog.forget_state(app.name, name)
    log.info("%s.%s on service %s: dropped", app.name, name, placement.service.name)
    return existed


def store_exists(app: App, name: str) -> bool:
    """Whether store ``name``'s database exists; ``False`` for a name the app does not know."""
    try:
        placement = place(app, name)
    except NotFound:
        return False
    return app.site.backend(placement.service).exists(placement.database)


@dataclass
class StoreStatus:
    """One row of ``storekeeper status``."""

    app: str
    store: str
    origin: str
    service: str | None
    database: str | None
    exists: bool | None
    size: int | None
    last_sync: str | None
    problem: str = ""
    #: For a store with migrations: its revision, its migrations' head, and how they compare
    #: (``at head``, ``behind``, ``unknown revision``); ``None`` without migrations.
    revision: str | None = None
    head: str | None = None
    migration_state: str | None = None
    #: The newest backup the catalog records (its id and when, UTC), and the databases (SQLite:
    #: files) restores set aside, ``<database>_pre_restore_<time>``: not backups, but kept
    #: until ``backups prune`` drops them after ``keep_pre_restore`` days.
    last_backup: str | None = None
    last_backup_at: str | None = None
    pre_restore: list[str] = field(default_factory=list)
    #: The store's read replicas: each one's state and lag.
    replicas: list[ReplicaStatus] = field(default_factory=list)
    #: When what this row says was read from the store itself (``None`` in a live
    #: ``status``, which reads it now; in a recorded one: never).
    checked_at: str | None = None
    #: The kind a store made at run time was made from.
    kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _when(at: dt.datetime | None) -> str | None:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else None


def _row(app: App, name: str, declared: set[str], last: dict[tuple[str, str], Any]) -> StoreStatus:
    record = None if name in declared else app.site.runtime_store(app.name, name)
    return StoreStatus(
        app.name,
        name,
        "declared" if name in declared else "run time",
        None,
        None,
        None,
        None,
        _when(last.get((app.name, name))),
        kind=record.kind if record else None,
    )


def _last_backup(row: StoreStatus, backed_up: dict[tuple[str, str], Any]) -> None:
    newest = backed_up.get((row.app, row.store))
    if newest is not None:
        row.last_backup, row.last_backup_at = newest.id, _when(newest.taken_at)


def status(
    apps: Sequence[App], *, record: bool = False, stores: Sequence[str] | None = None
) -> list[StoreStatus]:
    """Every store of ``apps`` (or those called ``stores``): where it lives, whether it
    exists, its size, its last sync, its last backup and the databases its restores set
    aside, read from the stores themselves. With ``record`` what
    was read is written to the catalog's store state (what :func:`recorded_status` gives;
    the admin page's refresh)."""
    rows: list[StoreStatus] = []
    if not apps:
        return rows
    site = apps[0].site
    last = site.catalog.last_events("sync")
    backed_up = site.catalog.last_backups()
    now = _utcnow()
    for app in apps:
        declared = {s.name for s in app.stores}
        for name in app.list_stores():
            if stores is not None and name not in stores:
                continue
            row = _row(app, name, declared, last)
            _last_backup(row, backed_up)
            try:
                placement = place(app, name)
                row.service, row.database = placement.service.name, placement.database
                backend = site.backend(placement.service)
                row.size = backend.size(placement.database)
                row.exists = row.size is not None
                database = placement.database
                copies = backend.list(prefix=pre_restore_prefix(database))
                row.pre_restore = [n for n, _ in pre_restore_copies(database, copies)]
                if row.exists and store_scripts(app, name).exists:
                    state = revision_state(app, name)
                    row.revision, row.head = state.revision, state.head
                    row.migration_state = state.state
                row.replicas = replica_status(app, name)
            except StorekeeperError as exc:
                row.problem = str(exc)
            if record:
                site.catalog.record_state(
                    app.name,
                    name,
                    service=row.service,
                    database=row.database,
                    present=row.exists,
                    size=row.size,
                    revision=row.revision,
                    problem=row.problem,
                    replicas=[r.as_dict() for r in row.replicas],
                    checked_at=now,
                )
            rows.append(row)
    if record:
        problems = sum(1 for r in rows if r.problem)
        said = f"{len(rows)} store(s) read" + (f", {problems} with problems" if problems else "")
        one = rows[0] if len(rows) == 1 else None
        site.catalog.record(
            one.app if one else "",
            one.store if one else "",
            "refresh",
            ok=not problems,
            detail=said,
        )
    return rows


def recorded_status(apps: Sequence[App]) -> list[StoreStatus]:
    """The rows of :func:`status` from what the catalog recorded about each store (by every
    sync, migration, backup, drop and refresh), without connecting to any store: fast for a
    page of a thousand stores. Heads come from the script directories (files)."""
    rows: list[StoreStatus] = []
    if not apps:
        return rows
    site = apps[0].site
    states = site.catalog.store_states()
    backed_up = site.catalog.last_backups()
    heads: dict[str, str | None] = {}
    scripts: dict[tuple[str, str | None], Scripts | None] = {}
    for app in apps:
        declared = {s.name for s in app.stores}
        made = [r.name for r in site.runtime_stores(app.name) if r.name not in declared]
        for name in [s.name for s in app.stores] + made:
            state = states.get((app.name, name))
            row = _row(app, name, declared, {})
            _last_backup(row, backed_up)
            try:
                placement = place(app, name)
                row.service, row.database = placement.service.name, placement.database
            except StorekeeperError as exc:
                row.problem = str(exc)
            if state is not None:
                row.exists, row.size, row.revision = state.present, state.size, state.revision
                row.problem = row.problem or state.problem
                row.last_sync = _when(state.synced_at)
                row.checked_at = _when(state.checked_at)
                row.replicas = [ReplicaStatus(**r) for r in state.replicas or ()]
                if state.service is not None and state.service != row.service and row.service:
                    row.problem = row.problem or (
                        f"last seen on service {state.service!r}, now assigned to "
                        f"{row.service!r}: refresh to read it there"
                    )
                    row.exists = row.size = row.revision = None
                    row.replicas = []
            # A kind's stores share their kind's script directory: looked at once.
            key = (app.name, name if name in declared else f"kind:{row.kind}")
            if key not in scripts:
                found = store_scripts(app, name)
                scripts[key] = found if found.exists else None
            _recorded_revision_state(scripts[key], row, heads)
            rows.append(row)
    return rows


def _recorded_revision_state(
    scripts: Scripts | None, row: StoreStatus, heads: dict[str, str | None]
) -> None:
    """Fill ``row``'s head and migration state from the script directory (read once per
    directory) and the recorded revision."""
    if scripts is None:
        return
    key = str(scripts.path)
    if key not in heads:
        try:
            heads[key] = ",".join(sorted(migrate_heads(scripts))) or None
        except StorekeeperError as exc:
            heads[key] = None
            row.problem = row.problem or str(exc)
    row.head = heads[key]
    if not row.exists:
        row.migration_state = "no database" if row.exists is False else None
    elif row.revision == row.head:
        row.migration_state = "at head"
    else:
        row.migration_state = "behind"


def migrate_heads(scripts: Scripts) -> list[str]:
    """The head revisions of a script directory, read from its files."""
    return list(script_directory(scripts).get_heads())
