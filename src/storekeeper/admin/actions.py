"""The actions of the admin page on one store: the core's verbs, each returning the core's
own report, with who asked and from where recorded in the history.

:func:`run_action` is the one seam: a page (or a background worker showing progress) calls it
once per store and renders what it returns. It never raises for a store's failure: the
failure is in the :class:`ActionResult`, with the message the command line would print.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..catalog import acting
from ..errors import BadInput, NotFound, StorekeeperError
from ..secret import mask

if TYPE_CHECKING:
    from ..declare import App

#: What the page can do to a store, in the order its buttons show.
ACTIONS = ("sync", "upgrade", "backup", "restore", "drop", "refresh")
#: Actions that take more than a click: their own form on the store's page.
NEEDS_FORM = ("restore", "drop")


@dataclass
class ActionResult:
    """What one action did to one store: the core's report (a ``SyncReport``, ``FanoutReport``,
    ``Backup``, ``RestoreReport``, status row...) or why it failed."""

    action: str
    app: str
    store: str
    ok: bool
    #: One line saying what happened (or the error), as the command line says it.
    summary: str
    #: The core's own report, for a face to render (``None`` when the action failed early).
    report: Any = None
    #: The report as rows of (name, value), the same fields ``--json`` prints.
    rows: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: 2 for bad input (nothing was done), 1 for a failure while working, 0 done.
    exit_code: int = 0

    @property
    def target(self) -> str:
        return f"{self.app}.{self.store}"


def _rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in data.items():
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) or "-"
        out.append((key, "-" if value is None or value == "" else str(value)))
    return out


def find_app(apps: Sequence[App], name: str) -> App:
    """The app called ``name`` among ``apps``; :class:`NotFound` lists them."""
    for app in apps:
        if app.name == name:
            return app
    known = ", ".join(a.name for a in apps) or "none"
    raise NotFound(f"unknown app {name!r} (known: {known})")


def _check_store(app: App, store: str) -> None:
    """Refuse a store the app does not have (any more): nothing is done to it."""
    if store not in app.list_stores():
        raise NotFound(
            f"app {app.name!r} has no store {store!r} (any more); its stores: "
            f"{', '.join(app.list_stores()) or 'none'}"
        )


def _sync(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from ..provision import sync

    done = sync([app], stores=[store], continue_on_error=True)
    (result,) = done.results
    if not result.ok:
        return done, False, result.error, result.exit_code
    return (
        done,
        True,
        f"{result.action}" + (f", at revision {result.revision}" if result.revision else ""),
        0,
    )


def _upgrade(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from ..migrate.fanout import StoreRef, migrate_many

    to = (options.get("to") or "head").strip()
    ran = migrate_many([StoreRef(app, store)], action="upgrade", to=to, continue_on_error=True)
    (result,) = ran.results
    if not result.ok:
        return ran, False, result.error, result.exit_code
    if not result.changed:
        return ran, True, f"at {result.after or 'base'}, no change", 0
    return ran, True, f"upgraded {result.before or 'base'} -> {result.after or 'base'}", 0


def _backup(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from ..backup import backup

    taken = backup(app, store, note=options.get("note", "").strip())
    return taken, True, f"backed up as {taken.id} ({taken.size} bytes)", 0


def _restore(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from .. import backup as core

    chosen = (options.get("backup") or "").strip()
    if not chosen:
        raise BadInput("choose a backup to restore")
    in_place = options.get("in_place") == "yes"
    as_name = (options.get("as_name") or "").strip() or None
    if in_place:
        if options.get("confirm", "") != store:
            raise BadInput(
                f"to restore {app.name}.{store} in place, type the store's name ({store!r}) "
                "to confirm; nothing was changed"
            )
        as_name = None
    elif as_name is None:
        raise BadInput("give the name of the new store to restore into (--as), or restore in place")
    restored = core.restore(app, store, chosen, as_name=as_name)
    where = "in place" if restored.in_place else f"as database {restored.database}"
    kept = f"; kept {restored.kept_as}" if restored.kept_as else ""
    return restored, True, f"restored {restored.backup} {where}{kept}", 0


def _drop(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from ..provision import drop_store

    if options.get("confirm", "") != store:
        raise BadInput(
            f"to drop {app.name}.{store}, type the store's name ({store!r}) to confirm; "
            "nothing was changed"
        )
    existed = drop_store(app, store)
    return existed, True, "dropped" if existed else "had no database; nothing to drop", 0


def _refresh(app: App, store: str, options: Mapping[str, str]) -> tuple[Any, bool, str, int]:
    from ..provision import status

    rows = [r for r in status([app], record=True, stores=[store])]
    (row,) = rows
    if row.problem:
        return row, False, row.problem, 1
    state = "exists" if row.exists else "no database"
    return row, True, f"read from the store: {state}", 0


_RUN = {
    "sync": _sync,
    "upgrade": _upgrade,
    "backup": _backup,
    "restore": _restore,
    "drop": _drop,
    "refresh": _refresh,
}


def run_action(
    apps: Sequence[App],
    action: str,
    target: str,
    options: Mapping[str, str] | None = None,
    *,
    actor: str,
    client: str,
) -> ActionResult:
    """Run ``action`` (one of :data:`ACTIONS`) on store ``target`` (``APP.STORE``) with the
    core's verb, recorded in the history as done by ``actor`` from ``client``; returns what it
    did. Bad input (an unknown action, store or option, a missing confirmation) changes
    nothing; every failure is in the result, none is raised."""
    options = options or {}
    app_name, _, store = target.partition(".")
    started = time.perf_counter()
    result = ActionResult(action, app_name, store, False, "")
    try:
        if action not in _RUN:
            raise BadInput(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
        if not store:
            raise BadInput(f"expected APP.STORE, got {target!r}")
        app = find_app(apps, app_name)
        with acting(actor, client):
            _check_store(app, store)
            report, ok, summary, code = _RUN[action](app, store, options)
        result.report, result.ok, result.summary, result.exit_code = report, ok, summary, code
        result.rows = _report_rows(report)
    except StorekeeperError as exc:
        result.summary, result.exit_code = str(exc), exc.exit_code
    except Exception as exc:  # one store's surprise is told on the page, not a 500
        result.summary, result.exit_code = mask(f"unexpected {type(exc).__name__}: {exc}"), 1
    result.seconds = time.perf_counter() - started
    return result


def _report_rows(report: Any) -> list[tuple[str, str]]:
    """The fields of a core report, as ``--json`` prints them."""
    results = getattr(report, "results", None)
    if results:
        report = results[0]
    as_dict = getattr(report, "as_dict", None)
    if callable(as_dict):
        return _rows(as_dict())
    return []
