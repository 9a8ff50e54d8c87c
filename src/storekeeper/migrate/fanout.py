"""Migrating many stores: naming them (a store, an app, a kind's stores, a glob, all) and
running them one after another or in parallel worker processes.

Alembic keeps its ``context`` and ``op`` in process-wide globals, so two migrations in one
process at once would corrupt each other: parallel runs use separate processes (forked, so
they inherit the apps as loaded). Each store is migrated under its own lock, so two runs never
migrate one store at once, and every migration is its own transaction, so an interrupted run
leaves each store at a good revision and can simply be run again.
"""

from __future__ import annotations

import fnmatch
import functools
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from ..discover import select
from ..errors import BadInput, MigrationError, NotFound, StorekeeperError, exit_code_of
from ..naming import check_identifier
from .commands import (
    HEAD,
    BeforeMigrating,
    Checked,
    MigrateResult,
    RevisionState,
    _check_target,
    checked,
    migrate_store,
    record_migration,
    revision_state,
    script_directory,
)
from .scripts import store_scripts

if TYPE_CHECKING:
    from ..declare import App

#: ``progress(result, done, total)`` after each store.
Progress = Callable[[MigrateResult, int, int], None]

_GLOB = set("*?[")
R = TypeVar("R")


@dataclass(frozen=True)
class StoreRef:
    """One store of one app, as a fan-out names it."""

    app: App
    store: str

    @property
    def label(self) -> str:
        """``app.store``."""
        return f"{self.app.name}.{self.store}"


@dataclass
class FanoutReport:
    """What a run over many stores did, store by store."""

    results: list[MigrateResult] = field(default_factory=list)
    #: Stores not attempted because an earlier one failed (without ``continue_on_error``).
    not_run: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[MigrateResult]:
        """The stores that failed."""
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        """0 when all went well; 2 when every failure was bad input; else 1."""
        return exit_code_of(r.exit_code for r in self.failed)


def _with_migrations(app: App, names: Sequence[str]) -> list[StoreRef]:
    return [StoreRef(app, n) for n in names if store_scripts(app, n).exists]


def resolve_targets(
    apps: Sequence[App],
    targets: Sequence[str],
    *,
    every: bool = False,
    with_migrations: bool = True,
) -> list[StoreRef]:
    """The stores ``targets`` name, in order, each once.

    A target is ``APP.STORE``, ``APP`` (its stores that have migrations), ``APP.KIND:*`` (the
    stores made from that kind), or ``APP.PATTERN`` with ``*``, ``?`` or ``[...]`` matched
    against the app's store names; ``every`` adds every store that has migrations. Without
    ``with_migrations`` (backups) every store counts, migrations or not.
    """

    def kept(app: App, names: Sequence[str]) -> list[StoreRef]:
        if with_migrations:
            return _with_migrations(app, names)
        return [StoreRef(app, n) for n in names]

    chosen: list[StoreRef] = []
    if every:
        for app in apps:
            chosen += kept(app, app.list_stores())
    for target in targets:
        app_name, dot, rest = target.partition(".")
        check_identifier(app_name, "app")
        (app,) = select(list(apps), [app_name])
        if not dot:
            found = kept(app, app.list_stores())
            if not found and with_migrations:
                raise NotFound(
                    f"app {app_name!r} has no store with migrations; create a script "
                    f"directory with: storekeeper revision {app_name}.STORE --init"
                )
            if not found:
                raise NotFound(f"app {app_name!r} has no stores")
            chosen += found
        elif rest.endswith(":*"):
            kind = app.kind(check_identifier(rest[:-2], "kind")).name
            records = app.site.catalog.runtime_stores(app.name)
            chosen += [StoreRef(app, r.name) for r in records if r.kind == kind]
        elif _GLOB & set(rest):
            names = [n for n in app.list_stores() if fnmatch.fnmatchcase(n, rest)]
            if not names:
                raise NotFound(
                    f"{target!r} matches no store of app {app_name!r}; its stores: "
                    f"{', '.join(app.list_stores()) or 'none'}"
                )
            chosen += kept(app, names)
        elif with_migrations:
            store_scripts(app, check_identifier(rest, "store")).require()
            chosen.append(StoreRef(app, rest))
        else:
            if check_identifier(rest, "store") not in app.list_stores():
                raise NotFound(
                    f"app {app_name!r} has no store {rest!r}; its stores: "
                    f"{', '.join(app.list_stores()) or 'none'}"
                )
            chosen.append(StoreRef(app, rest))
    unique: dict[str, StoreRef] = {}
    for ref in chosen:
        unique.setdefault(ref.label, ref)
    return list(unique.values())


def attempt(
    ref: StoreRef, action: str, to: str, before: BeforeMigrating | None = None
) -> MigrateResult:
    """Migrate one store under its lock (``before`` called just before its first step); a
    failure is returned in the result, not raised."""
    started = time.perf_counter()
    app = ref.app
    try:
        return migrate_store(app, ref.store, action=action, to=to, before=before)
    except StorekeeperError as exc:
        result = MigrateResult(app.name, ref.store, None, action, ok=False, error=str(exc))
        result.exit_code = exc.exit_code
        if isinstance(exc, MigrationError):
            result.before, result.after = exc.before, exc.after
            result.backup = exc.backup
    except Exception as exc:  # a worker must report, never die with the run half-told
        error = f"unexpected {type(exc).__name__}: {exc}"
        result = MigrateResult(app.name, ref.store, None, action, ok=False, error=error)
        result.exit_code = 1
    result.seconds = time.perf_counter() - started
    return result


# The work of a parallel run, set before the workers fork so they inherit it (App objects
# hold locks and engines and are not sent between processes): the stores, and what to do to one.
_WORK: list[StoreRef] = []
_TASK: list[Callable[[StoreRef], object]] = []


def _work(index: int) -> object:
    return _TASK[0](_WORK[index])


def _preflight(refs: Sequence[StoreRef], action: str, to: str) -> None:
    """Check every script directory and the target once before touching any store."""
    seen: set[str] = set()
    for ref in refs:
        scripts = store_scripts(ref.app, ref.store)
        path = str(scripts.require())
        if path in seen:
            continue
        seen.add(path)
        _check_target(script_directory(scripts), scripts, action, to, None, scripts.target)


def migrate_many(
    refs: Sequence[StoreRef],
    *,
    action: str = "upgrade",
    to: str = HEAD,
    jobs: int = 1,
    continue_on_error: bool = False,
    progress: Progress | None = None,
    before: BeforeMigrating | None = None,
) -> FanoutReport:
    """``upgrade`` (or ``downgrade``, ``stamp``) every store of ``refs`` to ``to``.

    With ``jobs`` above 1, stores run in that many worker processes. Without
    ``continue_on_error`` the run stops starting new stores after the first failure (stores
    already running finish). Each result is recorded in the catalog. ``before`` is called
    just before each store's first migration step (the automatic backup: see
    :data:`~.commands.BeforeMigrating`); a store whose ``before`` fails is not migrated.
    """
    if jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {jobs}")
    if action not in ("upgrade", "downgrade", "stamp"):
        raise BadInput(f"unknown action {action!r}; use upgrade, downgrade or stamp")
    _preflight(refs, action, to)
    report = FanoutReport()
    total = len(refs)

    def done(ref: StoreRef, result: MigrateResult) -> None:
        report.results.append(result)
        record_migration(ref.app, result)
        if progress is not None:
            progress(result, len(report.results), total)

    report.not_run = run_each(
        refs,
        functools.partial(attempt, action=action, to=to, before=before),
        jobs=jobs,
        ok=lambda r: r.ok,
        continue_on_error=continue_on_error,
        done=done,
    )
    return report


def run_each(
    refs: Sequence[StoreRef],
    work: Callable[[StoreRef], R],
    *,
    jobs: int,
    ok: Callable[[R], bool],
    continue_on_error: bool,
    done: Callable[[StoreRef, R], None],
) -> list[str]:
    """Run ``work`` on every store of ``refs``: one after another in this process, or with
    ``jobs`` above 1 in that many forked workers. ``work`` reports a failure in its result (it
    never raises); ``done`` gets each result as it comes. Without ``continue_on_error`` no
    store is started after a failed one (``ok`` says which): returns those not run."""
    if jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(refs) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _in_turn(refs, work, ok, continue_on_error, done)
    return _in_workers(refs, work, min(jobs, len(refs)), ok, continue_on_error, done)


def _in_turn(
    refs: Sequence[StoreRef],
    work: Callable[[StoreRef], R],
    ok: Callable[[R], bool],
    continue_on_error: bool,
    done: Callable[[StoreRef, R], None],
) -> list[str]:
    """Work on the stores one after another in this process."""
    for index, ref in enumerate(refs):
        result = work(ref)
        done(ref, result)
        if not ok(result) and not continue_on_error:
            return [r.label for r in refs[index + 1 :]]
    return []


def _in_workers(
    refs: Sequence[StoreRef],
    work: Callable[[StoreRef], R],
    workers: int,
    ok: Callable[[R], bool],
    continue_on_error: bool,
    done: Callable[[StoreRef, R], None],
) -> list[str]:
    """Work on the stores in ``workers`` forked processes; after a failure (without
    ``continue_on_error``) the stores not started yet are cancelled."""
    _WORK[:] = refs
    _TASK[:] = [work]
    not_run: list[str] = []
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending: dict[Future[object], StoreRef] = {
            pool.submit(_work, i): ref for i, ref in enumerate(refs)
        }
        stopping = False
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                ref = pending.pop(future)
                if future.cancelled():
                    not_run.append(ref.label)
                    continue
                result = cast("R", future.result())
                done(ref, result)
                if not ok(result) and not continue_on_error and not stopping:
                    stopping = True
                    for other, other_ref in list(pending.items()):
                        if other.cancel():
                            del pending[other]
                            not_run.append(other_ref.label)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        _WORK.clear()
        _TASK.clear()
    pool.shutdown(wait=True)
    return not_run


def current_many(refs: Sequence[StoreRef]) -> list[RevisionState]:
    """The revision of each store of ``refs`` against its head."""
    return [revision_state(ref.app, ref.store) for ref in refs]


def check_many(apps: Sequence[App], targets: Sequence[str]) -> dict[str, Checked]:
    """:func:`~.commands.checked` over ``targets`` (as :func:`resolve_targets`, plus
    ``APP.KIND`` for a kind's models against its migrations; all stores when empty): what was
    found, by store or kind."""
    found: dict[str, Checked] = {}
    stores = []
    for target in targets:
        app_name, _, name = target.partition(".")
        app = select(list(apps), [app_name])[0] if name else None
        if app and name in {k.name for k in app.kinds} and name not in app.list_stores():
            found[f"kind {target}"] = checked(app, name)
        else:
            stores.append(target)
    if stores or not targets:
        for ref in resolve_targets(apps, stores, every=not targets):
            found[ref.label] = checked(ref.app, ref.store)
    return found
