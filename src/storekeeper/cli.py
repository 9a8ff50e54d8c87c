"""The ``storekeeper`` command: parses arguments, calls the library, prints.

Exit codes: 0 done, 1 failed while working, 2 bad input. Everything printed goes through
:func:`storekeeper.secret.mask`. Heavy imports happen inside commands so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import TYPE_CHECKING, Any, TextIO

from .errors import BadInput, StorekeeperError
from .secret import mask

if TYPE_CHECKING:
    from pathlib import Path

    from .backends import Service
    from .declare import App
    from .migrate import MigrateResult, Revision, Scripts
    from .migrate.commands import RevisionState
    from .provision import StoreResult, SyncReport
    from .site import Site

DEMO_APP = "gauges.stores:app"


# output ---------------------------------------------------------------------------------


def say(text: str = "", *, file: TextIO | None = None) -> None:
    """Print ``text`` with every secret masked."""
    print(mask(text), file=file or sys.stdout, flush=True)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain text table."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit_json(data: object) -> None:
    """Print ``data`` as JSON (secrets masked)."""
    say(json.dumps(data, indent=2, default=str))


def human_size(size: int | None) -> str | None:
    """Bytes as a short human-readable size."""
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # pragma: no cover


# context --------------------------------------------------------------------------------


class Context:
    """What every command needs: the site and the apps, loaded on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._site: Site | None = None
        self._apps: list[App] | None = None

    @property
    def site(self) -> Site:
        if self._site is None:
            from .site import Site

            env = getattr(self.args, "env", None)
            self._site = Site.load(getattr(self.args, "config", None), env=env or True)
            lock_timeout = getattr(self.args, "lock_timeout", None)
            if lock_timeout is not None:
                from .config import Sourced

                self._site.config.lock_timeout = Sourced(lock_timeout, "--lock-timeout")
            Site.set_default(self._site)
        return self._site

    @property
    def apps(self) -> list[App]:
        if self._apps is None:
            from .discover import load_apps

            site = self.site
            self._apps = load_apps(
                getattr(self.args, "app", None) or [], site.config.apps, site.config.root
            )
            for app in self._apps:
                app.bind(site)
        return self._apps

    def select(self, names: Sequence[str]) -> list[App]:
        from .discover import select

        return select(self.apps, names)

    def close(self) -> None:
        if self._site is not None:
            self._site.close()


# commands -------------------------------------------------------------------------------


def cmd_service_add(ctx: Context) -> int:
    a = ctx.args
    service = ctx.site.add_service(a.name, a.url, replace=a.replace)
    verb = "updated" if a.replace else "added"
    say(f"service {service.name!r} {verb}: {service.display_url}")
    return 0


def cmd_service_list(ctx: Context) -> int:
    services = ctx.site.services()
    if ctx.args.json:
        emit_json(
            [
                {
                    "name": s.name,
                    "url": s.display_url,
                    "dialect": s.url.get_backend_name(),
                    "source": s.source,
                }
                for s in services.values()
            ]
        )
        return 0
    say(
        table(
            [
                (s.name, s.url.get_backend_name(), s.display_url, s.source)
                for s in services.values()
            ],
            ["service", "dialect", "url", "source"],
        )
    )
    return 0


def cmd_service_remove(ctx: Context) -> int:
    ctx.site.remove_service(ctx.args.name, force=ctx.args.force)
    say(f"service {ctx.args.name!r} removed")
    return 0


def cmd_service_test(ctx: Context) -> int:
    from .errors import ServiceUnavailable

    site = ctx.site
    service = site.service(ctx.args.name)
    try:
        description = site.backend(service).ping()
    except ServiceUnavailable as exc:
        # Its message ends by suggesting this very command; say where the URL can be fixed.
        message = str(exc).replace(f" (storekeeper service test {service.name})", "")
        raise ServiceUnavailable(f"{message}; {_where_to_fix(service)}") from None
    say(f"ok: service {service.name!r} reached: {description}")
    return 0


def _where_to_fix(service: Service) -> str:
    """Where the URL of ``service`` comes from, and how to change it there."""
    from .config import BUILTIN

    if service.source == "catalog":
        return (
            "the URL comes from the catalog: change it with: storekeeper service add "
            f"{service.name} URL --replace"
        )
    if service.source.startswith("env "):
        return f"the URL comes from environment variable {service.source[4:]}: change it there"
    if service.source == BUILTIN:
        return (
            f"{service.name!r} is the built-in service; put another in its place with: "
            f"storekeeper service add {service.name} URL"
        )
    return f"the URL comes from services.{service.name} in {service.source}: change it there"


def cmd_assign(ctx: Context) -> int:
    app, setting = _setting_target(ctx, ctx.args.target)
    service = ctx.site.assign(app.name, setting, ctx.args.service)
    say(f"{app.name}.{setting} -> {service.name} ({service.display_url})")
    return 0


def _setting_target(ctx: Context, target: str) -> tuple[App, str]:
    """``APP.SETTING`` split as ``sync`` and ``upgrade`` split targets: the app name up to the
    first dot, then one of that app's settings; errors name the target as typed."""
    from .errors import InvalidName, NotFound
    from .naming import check_identifier

    app_name, dot, setting = target.partition(".")
    if not dot or not app_name or not setting:
        raise InvalidName(f"expected APP.SETTING (like 'my_app.example_db'), got {target!r}")
    try:
        check_identifier(app_name, "app")
    except InvalidName as exc:
        raise InvalidName(f"{target!r}: {exc}") from None
    apps = {a.name: a for a in ctx.apps}
    if app_name not in apps:
        raise NotFound(
            f"unknown app {app_name!r} in {target!r} (known: {', '.join(apps) or 'none found'}); "
            "a target is an app's name, a dot and one of its stores or server settings, like "
            "'my_app.example_db'"
        )
    app = apps[app_name]
    if setting not in app.setting_names():
        raise NotFound(
            f"{target!r}: app {app_name!r} has no store or server setting {setting!r}; it has: "
            f"{', '.join(app.setting_names()) or 'none'}"
        )
    return app, setting


def _confirm_refresh(apps: list[App], stores: list[str] | None, assume_yes: bool) -> None:
    targets = [
        f"{a.name}.{s.name}" for a in apps for s in a.stores if stores is None or s.name in stores
    ]
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(
            f"--refresh drops and recreates {', '.join(targets)}; there is no terminal to "
            "confirm on, so pass --yes"
        )
    try:
        answer = input(f"Drop and recreate {', '.join(targets)}? All their data is lost. [y/N] ")
    except EOFError:  # Ctrl-D: no answer, as flask stores sync says too
        print()
        raise BadInput(
            "refresh not confirmed (no answer); nothing was changed; pass --yes to refresh "
            "without the question"
        ) from None
    if answer.strip().lower() not in ("y", "yes"):
        raise BadInput("refresh not confirmed; nothing was changed")


def _describe(result: StoreResult) -> str:
    if not result.ok:
        return f"FAILED: {result.error}"
    parts = [result.action]
    if result.tables_added:
        parts.append(f"tables added: {', '.join(result.tables_added)}")
    if result.initialized:
        parts.append("initialized (first time)" if result.first_time else "initializer ran")
    return ", ".join(parts)


def cmd_sync(ctx: Context) -> int:
    try:
        report = _sync(ctx)
    except Exception as exc:
        if ctx.args.json:  # a script reading the output gets one JSON document, always
            error = (
                str(exc)
                if isinstance(exc, StorekeeperError)
                else f"unexpected {type(exc).__name__}: {exc}"
            )
            emit_json({"changed": False, "stores": [], "failed": [], "error": error})
        raise
    if ctx.args.json:
        emit_json(
            {
                "changed": report.changed,
                "stores": [r.as_dict() for r in report.results],
                "failed": [f"{r.app}.{r.store}" for r in report.failed],
            }
        )
        return report.exit_code
    if not report.results:
        say("no stores to sync")
        return 0
    print_synced(report.results)
    for r in report.failed:
        label = f"{r.app}.{r.store}"
        say(f"error: {r.error if label in r.error else f'{label}: {r.error}'}", file=sys.stderr)
    counts: dict[str, int] = {}
    for r in report.results:
        if r.ok:
            counts[r.action] = counts.get(r.action, 0) + 1
    done = ", ".join(f"{n} {action}" for action, n in counts.items())
    if report.failed:
        say(f"sync: {done + ', ' if done else ''}{len(report.failed)} failed")
    elif report.changed:
        say(f"synced: {done}")
    else:
        say(f"no changes: all {len(report.results)} stores are up to date")
    return report.exit_code


def _sync(ctx: Context) -> SyncReport:
    """Check the arguments, then sync every chosen store, going on past failures."""
    a = ctx.args
    apps = ctx.select(a.apps)
    stores = a.store or None
    if stores:
        for app in apps:
            for name in stores:
                app.store(name)
    if a.refresh:
        _confirm_refresh(apps, stores, a.yes)
    total = sum(len(stores) if stores else len(app.stores) for app in apps)
    done = 0

    def progress(result: StoreResult) -> None:
        nonlocal done
        done += 1
        say(f"[{done}/{total}] {result.app}.{result.store}: {_describe(result)}", file=sys.stderr)

    from .provision import sync

    # stdout is the command's answer (a table, or JSON); what initializers print is not.
    with stdout_to_stderr():
        return sync(
            apps,
            stores=stores,
            refresh=a.refresh,
            first_time=a.first_time,
            progress=progress,
            continue_on_error=True,
        )


def print_synced(results: Sequence[StoreResult]) -> None:
    """The table of what ``sync`` did, store by store."""
    say(
        table(
            [
                (
                    f"{r.app}.{r.store}",
                    r.service,
                    f"{r.seconds:.2f}",
                    r.action if r.ok else "FAILED",
                )
                for r in results
            ],
            ["store", "service", "seconds", "result"],
        )
    )


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to standard output meanwhile to standard error instead: Python's
    ``sys.stdout`` and, in a real process, file descriptor 1 (child processes, C code)."""
    try:
        sys.stdout.flush()
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # closed or replaced streams (tests, embedding)
        out_fd = err_fd = -1
    saved = os.dup(out_fd) if out_fd >= 0 else -1
    if saved >= 0:
        os.dup2(err_fd, out_fd)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        if saved >= 0:
            os.dup2(saved, out_fd)
            os.close(saved)


def cmd_status(ctx: Context) -> int:
    from .provision import status

    rows = status(ctx.select(ctx.args.apps))
    if ctx.args.json:
        emit_json([r.as_dict() for r in rows])
        return 0
    print_status(rows)
    return 0


def _revision_cell(row: Any) -> str | None:
    """``rev (head)``, ``rev (behind head)``... or ``None`` for a store without migrations."""
    state = getattr(row, "migration_state", None)
    if state is None:
        return None
    at = row.revision or "base"
    if state == "at head":
        return f"{at} (head)"
    return f"{at} ({state}, head {row.head or 'base'})"


def print_status(rows: Sequence[Any]) -> None:
    """The status table (also the end of ``storekeeper demo``); a revision column when some
    store has migrations."""
    if not rows:
        say("no stores: no apps found (name them with --app MODULE:ATTR or in storekeeper.toml)")
        return
    migrated = any(getattr(r, "migration_state", None) for r in rows)
    headers = ["app", "store", "service", "database", "exists", "size"]
    headers += ["revision", "last sync"] if migrated else ["last sync"]
    say(
        table(
            [
                (
                    r.app,
                    r.store,
                    r.service or "unassigned",
                    r.database,
                    "yes" if r.exists else ("no" if r.exists is False else "?"),
                    human_size(r.size),
                    *([_revision_cell(r)] if migrated else []),
                    r.last_sync or "never",
                )
                for r in rows
            ],
            headers,
        )
    )
    for r in rows:
        if r.problem:
            say(f"  {r.app}.{r.store}: {r.problem}")


# migrations -----------------------------------------------------------------------------


def _one_target(ctx: Context, target: str) -> tuple[App, str]:
    """``APP.NAME`` (a store or a kind, ``APP.KIND:*`` for the kind) of one loaded app."""
    app_name, dot, name = target.partition(".")
    if not dot or not name:
        raise BadInput(
            f"expected APP.STORE or APP.KIND:* (like 'my_app.example_db'), got {target!r}"
        )
    (app,) = ctx.select([app_name])
    return app, name


def cmd_revision(ctx: Context) -> int:
    from . import migrate

    a = ctx.args
    app, name = _one_target(ctx, a.target)
    if a.init:
        scripts = migrate.scripts_for(app, name)
        existed = scripts.exists
        print_init(scripts, migrate.init(app, name), existed=existed)
        if a.message is None:
            say(f"next: storekeeper revision {a.target} -m 'first tables' --autogenerate")
            return 0
    if a.message is None:
        raise BadInput("a revision needs a message: -m 'what it changes'")
    made = migrate.revision(
        app,
        name,
        a.message,
        autogenerate=a.autogenerate,
        merge=a.merge,
        rev_id=a.rev_id,
        empty=a.empty,
    )
    if a.json:
        emit_json(made.as_dict() if made else None)
        return 0
    print_revision(made)
    return 0


def print_init(scripts: Scripts, path: Path, *, existed: bool) -> None:
    """The line saying where the script directory is, and whether it was just made."""
    say(f"{scripts.label}: script directory {path} " + ("already exists" if existed else "created"))


def print_revision(made: Revision | None) -> None:
    """The line saying where a new migration was written (or that autogenerate found nothing
    to write), and its notes on stderr."""
    if made is None:
        say(
            "no changes detected: the models match what the migrations build; nothing written "
            "(--empty writes an empty migration all the same)"
        )
        return
    say(f"new revision {made.revision} ({made.message}) in {made.path}")
    for note in made.notes:
        say(f"note: {note}", file=sys.stderr)


def _progress(result: Any, done: int, total: int) -> None:
    outcome = "ok" if result.ok else "FAILED"
    line = (
        f"[{done}/{total}] {result.app}.{result.store}: {result.before or 'base'} -> "
        f"{result.after or 'base'} ({result.seconds:.2f} s) {outcome}"
    )
    if sys.stderr.isatty():
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done == total else ""
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr
        )
        if not result.ok:
            say(f"\n{line}", file=sys.stderr)
        return
    say(line, file=sys.stderr)


def _run_many(ctx: Context, action: str, to: str) -> int:
    from .migrate.fanout import migrate_many, resolve_targets

    a = ctx.args
    every = getattr(a, "all", False)
    if not a.targets and not every:
        raise BadInput(
            f"name the stores to {action}: APP, APP.STORE, APP.KIND:* or APP.GLOB, or --all"
        )
    refs = resolve_targets(ctx.apps, a.targets, every=every)
    report = migrate_many(
        refs,
        action=action,
        to=to,
        jobs=a.jobs,
        continue_on_error=a.continue_on_error,
        progress=_progress,
    )
    if a.json:
        emit_json(
            {
                "stores": [r.as_dict() for r in report.results],
                "failed": [f"{r.app}.{r.store}" for r in report.failed],
                "not_run": report.not_run,
            }
        )
        return report.exit_code
    if not report.results:
        say(f"no stores to {action}")
        return 0
    print_migrated(report.results)
    for r in report.failed:
        say(f"error: {r.app}.{r.store}: {r.error}", file=sys.stderr)
    if report.not_run:
        say(
            f"not run after the failure ({len(report.not_run)}): {', '.join(report.not_run)}; "
            "pass --continue-on-error to go on past failures",
            file=sys.stderr,
        )
    ok = len(report.results) - len(report.failed)
    say(f"{action}: {ok} ok, {len(report.failed)} failed, {len(report.not_run)} not run")
    return report.exit_code


def print_migrated(results: Sequence[MigrateResult]) -> None:
    """The table of what ``upgrade``, ``downgrade`` or ``stamp`` did, store by store."""
    say(
        table(
            [
                (
                    f"{r.app}.{r.store}",
                    r.before or "base",
                    r.after or "base",
                    f"{r.seconds:.2f}",
                    ("ok" if r.changed else "up to date") if r.ok else "FAILED",
                )
                for r in results
            ],
            ["store", "from", "to", "seconds", "result"],
        )
    )


def cmd_upgrade(ctx: Context) -> int:
    return _run_many(ctx, "upgrade", ctx.args.to)


def cmd_downgrade(ctx: Context) -> int:
    return _run_many(ctx, "downgrade", ctx.args.to)


def cmd_stamp(ctx: Context) -> int:
    return _run_many(ctx, "stamp", ctx.args.to)


def cmd_current(ctx: Context) -> int:
    from .migrate.fanout import current_many, resolve_targets

    rows = current_many(resolve_targets(ctx.apps, ctx.args.targets, every=not ctx.args.targets))
    if ctx.args.json:
        emit_json([r.as_dict() for r in rows])
        return 0
    print_current(rows)
    return 0


def print_current(rows: Sequence[RevisionState]) -> None:
    """The table of each store's revision against its head."""
    if not rows:
        say("no stores with migrations")
        return
    say(
        table(
            [(r.store, r.revision or "base", r.head or "base", r.state) for r in rows],
            ["store", "revision", "head", "state"],
        )
    )


def cmd_history(ctx: Context) -> int:
    from . import migrate

    app, name = _one_target(ctx, ctx.args.target)
    revisions = migrate.history(app, name)
    if ctx.args.json:
        emit_json([r.as_dict() for r in revisions])
        return 0
    print_history(revisions, ctx.args.target)
    return 0


def print_history(revisions: Sequence[Revision], target: str) -> None:
    """The migrations of ``target``, newest first, one line each."""
    if not revisions:
        say(f"{target}: no revisions yet")
    for r in revisions:
        down = ",".join(r.down_revisions) or "<base>"
        say(f"{down} -> {r.revision}{' (head)' if r.is_head else ''}, {r.message}")


def cmd_heads(ctx: Context) -> int:
    from . import migrate

    app, name = _one_target(ctx, ctx.args.target)
    found = migrate.heads(app, name)
    if ctx.args.json:
        emit_json(found)
        return 0
    print_heads(found, ctx.args.target, f"storekeeper revision {ctx.args.target} --merge")
    return 0


def print_heads(found: Sequence[str], target: str, merge: str) -> None:
    """The head revisions of ``target``; when there are several, how to join them with
    ``merge`` (the command that writes a merge migration, without its message)."""
    say("\n".join(found) if found else f"{target}: no revisions yet")
    if len(found) > 1:
        say(f"several heads: merge them with {merge} -m 'merge heads'", file=sys.stderr)


def cmd_check(ctx: Context) -> int:
    from .migrate.fanout import check_many

    found = check_many(ctx.apps, ctx.args.targets)
    drifted = {label: c for label, c in found.items() if c.differences}
    if ctx.args.json:
        emit_json(
            {
                "ok": not drifted,
                "differences": {label: c.differences for label, c in found.items()},
                "next": {label: c.next for label, c in drifted.items()},
            }
        )
        return 1 if drifted else 0
    print_check({label: c.differences for label, c in found.items()})
    for label, c in drifted.items():
        advice = CHECK_ADVICE[c.action or "revision"].format(c.next)
        say(f"check failed for {label}: {advice}", file=sys.stderr)
    return 1 if drifted else 0


#: What ``check`` says to do about a drift, by :attr:`storekeeper.migrate.Checked.action`.
CHECK_ADVICE = {
    "revision": "write a migration ({}) or fix the models",
    "upgrade": "its database is behind its migrations: {}",
    "stamp": "record the revision its schema has: {}",
}


def print_check(found: dict[str, list[str]]) -> None:
    """Each store's or kind's differences between models and schema, or that they agree."""
    for label, differences in found.items():
        if differences:
            say(f"{label}: models and schema differ:")
            for line in differences:
                say(f"  - {line}")
        else:
            say(f"{label}: ok, models and schema agree")


def cmd_config_show(ctx: Context) -> int:
    site = ctx.site
    cfg = site.config
    services = site.services()
    assignments = site.assignments()
    apps = ctx.apps
    if ctx.args.json:
        emit_json(
            {
                "file": str(cfg.file) if cfg.file else None,
                "root": str(cfg.root),
                "environment": cfg.env,
                "catalog": {"url": site.catalog.display_url, "source": cfg.catalog.source},
                "default_service": {
                    "value": cfg.default_service.value,
                    "source": cfg.default_service.source,
                },
                "lock_timeout": {
                    "value": cfg.lock_timeout_seconds,
                    "source": cfg.lock_timeout.source,
                },
                "services": {
                    n: {"url": s.display_url, "source": s.source, "production": s.production}
                    for n, s in services.items()
                },
                "assignments": {
                    f"{a}.{s}": {"service": v.value, "source": v.source}
                    for (a, s), v in sorted(assignments.items())
                },
                "apps": [a.name for a in apps],
            }
        )
        return 0
    say(f"config file      {cfg.file or 'none (built-in defaults)'}")
    say(f"root             {cfg.root}")
    say(f"environment      {cfg.env or 'none'}")
    say(f"catalog          {site.catalog.display_url}   [{cfg.catalog.source}]")
    default = cfg.default_service
    say(f"default service  {default.value or '(none)'}   [{default.source}]")
    say(f"lock timeout     {cfg.lock_timeout.value} s   [{cfg.lock_timeout.source}]")
    say("services:")
    for s in services.values():
        flag = "  production" if s.production else ""
        say(f"  {s.name}  {s.display_url}   [{s.source}]{flag}")
    say("assignments:")
    if not assignments:
        say("  (none: stores use the default service)")
    for (app, setting), v in sorted(assignments.items()):
        say(f"  {app}.{setting} -> {v.value}   [{v.source}]")
    say("apps:")
    for each in apps:
        say(
            f"  {each.name}: stores {', '.join(s.name for s in each.stores) or '-'}"
            + (f"; servers {', '.join(each.list_servers())}" if each.servers else "")
        )
    if not apps:
        say("  (none found)")
    return 0


def _old_key(args: argparse.Namespace) -> str | None:
    """The old key of ``secret rotate``: from a file, a variable, or standard input (prompted
    on a terminal); never from the command line, where other users can read it."""
    if args.old_key_file:
        from pathlib import Path

        try:
            return Path(args.old_key_file).expanduser().read_text().strip() or None
        except OSError as exc:
            raise BadInput(f"--old-key-file {args.old_key_file!r}: {exc.strerror}") from None
    if args.old_key_env:
        value = os.environ.get(args.old_key_env)
        if not value:
            raise BadInput(f"--old-key-env {args.old_key_env!r}: that variable is not set")
        return value
    if sys.stdin is None:
        return None
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("old key (the one the catalog is sealed with): ").strip() or None
    return sys.stdin.read().strip() or None


def cmd_secret_rotate(ctx: Context) -> int:
    from .catalog.rotate import rotate_secrets
    from .secret import ENV_KEY, secret_key

    new = secret_key()
    if new is None:
        raise BadInput(
            f"set {ENV_KEY} to the new key (a passphrase, or one from storekeeper secret "
            "new-key); give the old one with --old-key-file, --old-key-env or on standard input"
        )
    old = _old_key(ctx.args)
    report = rotate_secrets(ctx.site.catalog, new, old)
    if ctx.args.json:
        emit_json(report.as_dict())
        return 0
    if report.rotated:
        say(table([(r.service, r.before) for r in report.rotated], ["service", "was"]))
    count = len(report.rotated)
    say(f"rotated {count} service URL{'' if count == 1 else 's'} to key id {report.key_id}")
    return 0


def cmd_secret_new_key(ctx: Context) -> int:
    from .secret import new_key

    print(new_key())
    return 0


def cmd_demo(ctx: Context) -> int:
    from .discover import import_app
    from .provision import status, sync

    try:
        app = import_app(DEMO_APP, origin="demo app")
    except BadInput:
        raise BadInput(
            "the demo app 'gauges' is not installed: run 'make demo' from a storekeeper "
            "checkout, or pip install -e examples/gauges"
        ) from None
    site = ctx.site
    app.bind(site)
    say(
        f"storekeeper demo: app {app.name!r} on service(s) "
        f"{', '.join(sorted({app.placement(s.name).service.name for s in app.stores}))}"
    )
    say(f"catalog: {site.catalog.display_url}")
    report = sync([app], progress=lambda r: say(f"  {r.app}.{r.store}: {_describe(r)}"))
    say("sync: changed" if report.changed else "sync: no changes, everything is up to date")
    # The example ships its own query; the demo only prints what it returns.
    list_gauges = importlib.import_module("gauges.model").list_gauges
    say("")
    say("stream gages:")
    say(
        table(
            [(g.id, g.latitude, g.longitude, g.value) for g in list_gauges(app)],
            ["id", "latitude", "longitude", "value"],
        )
    )
    say("")
    print_status(status([app]))
    return 0


# parser ---------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="configuration file (default: nearest storekeeper.toml)",
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        action="append",
        default=default,
        help="an app to use (repeatable); default: configured and installed apps",
    )
    parser.add_argument(
        "--env",
        metavar="NAME",
        default=default,
        help="configuration overlay to use, like test or production (default: STOREKEEPER_ENV)",
    )


def _lock_timeout_flag(parser: argparse.ArgumentParser) -> None:
    def seconds(text: str) -> str:
        from .config import check_lock_timeout

        try:
            return check_lock_timeout(text, "--lock-timeout")
        except BadInput:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds (0 or more), like 300"
            ) from None

    parser.add_argument(
        "--lock-timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up waiting for a store's lock after this long, saying who holds it "
        "(default: lock_timeout in storekeeper.toml, else 300; 0: do not wait)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``storekeeper`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="storekeeper",
        description="An application's SQL databases, whole: declare, assign, sync, inspect.",
        epilog="Exit codes: 0 done, 1 failed while working, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"storekeeper {__version__}")
    _common(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    suppress = argparse.SUPPRESS

    def command(
        name: str, func: Callable[[Context], int], help: str, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, help=help, description=help)
        _common(p, suppress)
        p.set_defaults(func=func)
        return p

    service = sub.add_parser(
        "service",
        help="manage services (database servers)",
        description="Manage services: database servers with their "
        "connection facts, shared by many apps.",
    )
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    p = command("add", cmd_service_add, "add a service to the catalog", service_sub)
    p.add_argument("name", help="service name, like pg_main")
    p.add_argument("url", help="postgresql+psycopg://user:password@host:5432 or sqlite:///folder")
    p.add_argument("--replace", action="store_true", help="change the URL of an existing service")
    p = command("list", cmd_service_list, "list services (passwords masked)", service_sub)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("remove", cmd_service_remove, "remove a service from the catalog", service_sub)
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="remove even if assignments use it")
    p = command(
        "test", cmd_service_test, "connect to a service and report its version", service_sub
    )
    p.add_argument("name")

    p = command("assign", cmd_assign, "plug a service into a store or server setting")
    p.add_argument("target", metavar="APP.SETTING")
    p.add_argument("service", metavar="SERVICE")

    p = command(
        "sync",
        cmd_sync,
        "create missing stores, bring their schemas to head (migrations, or the tables), run "
        "their initializers",
    )
    p.add_argument("apps", nargs="*", metavar="APP", help="apps to sync (default: all)")
    p.add_argument("--store", action="append", metavar="STORE", help="only this store")
    p.add_argument("--refresh", action="store_true", help="drop and recreate the stores")
    p.add_argument(
        "--first-time",
        action="store_true",
        help="run initializers with first_time=True even for existing stores",
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before --refresh")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _lock_timeout_flag(p)

    p = command("status", cmd_status, "every store: its service, whether it exists, size")
    p.add_argument("apps", nargs="*", metavar="APP")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("revision", cmd_revision, "new migration for a store or kind (Alembic)")
    p.add_argument("target", metavar="APP.STORE", help="a store, or a kind as APP.KIND:*")
    p.add_argument("-m", "--message", help="what the migration changes")
    p.add_argument(
        "--autogenerate", action="store_true", help="fill it with what the models add or change"
    )
    p.add_argument("--init", action="store_true", help="create the Alembic script directory")
    p.add_argument(
        "--empty", action="store_true", help="with --autogenerate: write it even when empty"
    )
    p.add_argument("--merge", action="store_true", help="a migration joining several heads")
    p.add_argument("--rev-id", help="the revision id to use instead of a random one")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def fanout(name: str, func: Callable[[Context], int], help: str, to: str | None) -> None:
        p = command(name, func, help)
        p.add_argument(
            "targets",
            nargs="*",
            metavar="TARGET",
            help="APP, APP.STORE, APP.KIND:* (a kind's stores) or APP.GLOB (like app.tenant_*)",
        )
        if to is None:
            p.add_argument("--to", required=True, metavar="REV", help="revision, -1, or base")
        else:
            p.add_argument("--to", default=to, metavar="REV", help=f"revision (default: {to})")
        p.add_argument("--all", action="store_true", help="every store that has migrations")
        p.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="worker processes")
        p.add_argument(
            "--continue-on-error", action="store_true", help="go on with the other stores"
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _lock_timeout_flag(p)

    fanout("upgrade", cmd_upgrade, "migrate stores up to head (or --to REV)", "head")
    fanout("downgrade", cmd_downgrade, "migrate stores down to --to REV (or -1, base)", None)
    fanout("stamp", cmd_stamp, "record --to REV in stores without running migrations", None)

    for name, func, help in (
        ("current", cmd_current, "each store's revision against its head"),
        ("check", cmd_check, "fail when models and the migrated schema drift apart"),
    ):
        p = command(name, func, help)
        p.add_argument(
            "targets", nargs="*", metavar="TARGET", help="as for upgrade (default: all stores)"
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, func, help in (
        ("history", cmd_history, "the migrations of a store or kind, newest first"),
        ("heads", cmd_heads, "the head revision(s) of a store or kind"),
    ):
        p = command(name, func, help)
        p.add_argument("target", metavar="APP.STORE", help="a store, or a kind as APP.KIND:*")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    config = sub.add_parser(
        "config",
        help="show the effective configuration",
        description="Show the effective configuration.",
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = command(
        "show",
        cmd_config_show,
        "the effective configuration and where each value came from",
        config_sub,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    secret = sub.add_parser(
        "secret",
        help="the key that encrypts service URLs in the catalog",
        description="The master key (STOREKEEPER_SECRET_KEY) that encrypts service URLs at rest.",
    )
    secret_sub = secret.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    p = command(
        "rotate",
        cmd_secret_rotate,
        "re-encrypt every service URL in the catalog under STOREKEEPER_SECRET_KEY (the new key); "
        "the old key comes from --old-key-file, --old-key-env or standard input",
        secret_sub,
    )
    old = p.add_mutually_exclusive_group()
    old.add_argument("--old-key-file", metavar="PATH", help="a file holding the old key")
    old.add_argument("--old-key-env", metavar="NAME", help="a variable holding the old key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    command("new-key", cmd_secret_new_key, "print a new random key (a Fernet key)", secret_sub)

    command("demo", cmd_demo, "run the bundled stream gages app end to end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(args)
    try:
        code: int = args.func(ctx)
        return code
    except StorekeeperError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("STOREKEEPER_DEBUG"):
            import traceback

            say(traceback.format_exc(), file=sys.stderr)
        say(
            f"error: unexpected {type(exc).__name__}: {exc} (set STOREKEEPER_DEBUG=1 for the "
            "traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        ctx.close()
