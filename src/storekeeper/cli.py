"""The ``storekeeper`` command: parses arguments, calls the library, prints.

Exit codes: 0 done, 1 failed while working, 2 bad input. Everything printed goes through
:func:`storekeeper.secret.mask`. Heavy imports happen inside commands so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import report
from .errors import BadInput, StorekeeperError
from .report import emit_json, say, warn

if TYPE_CHECKING:
    from .backends import Service
    from .declare import App
    from .provision import SyncReport
    from .site import Site

DEMO_APP = "gauges.stores:app"


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
    report.print_services(ctx.site, as_json=ctx.args.json)
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


def cmd_sync(ctx: Context) -> int:
    try:
        synced = _sync(ctx)
    except Exception as exc:
        if ctx.args.json:  # a script reading the output gets one JSON document, always
            error = (
                str(exc)
                if isinstance(exc, StorekeeperError)
                else f"unexpected {type(exc).__name__}: {exc}"
            )
            report.sync_json(None, error)
        raise
    if ctx.args.json:
        report.sync_json(synced)
    else:
        report.print_sync(synced)
    return synced.exit_code


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
    progress = report.sync_progress(total)

    from .provision import sync

    # stdout is the command's answer (a table, or JSON); what initializers print is not.
    with report.stdout_to_stderr():
        return sync(
            apps,
            stores=stores,
            refresh=a.refresh,
            first_time=a.first_time,
            progress=progress,
            continue_on_error=True,
        )


def cmd_status(ctx: Context) -> int:
    from .provision import status

    rows = status(ctx.select(ctx.args.apps))
    if ctx.args.json:
        emit_json([r.as_dict() for r in rows])
        return 0
    report.print_status(rows)
    return 0


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
        report.print_init(scripts, migrate.init(app, name), existed=existed)
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
    report.print_revision(made)
    return 0


def _run_many(ctx: Context, action: str, to: str) -> int:
    from .migrate.fanout import migrate_many, resolve_targets

    a = ctx.args
    every = getattr(a, "all", False)
    if not a.targets and not every:
        raise BadInput(
            f"name the stores to {action}: APP, APP.STORE, APP.KIND:* or APP.GLOB, or --all"
        )
    refs = resolve_targets(ctx.apps, a.targets, every=every)
    shown = report.fanout_progress(len(refs), action)
    try:
        ran = migrate_many(
            refs,
            action=action,
            to=to,
            jobs=a.jobs,
            continue_on_error=a.continue_on_error,
            progress=report.migrate_progress(shown),
        )
    finally:
        shown.close()
    if a.json:
        report.fanout_json(ran)
    else:
        report.print_fanout(ran, action)
    return ran.exit_code


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
    report.print_current(rows)
    return 0


def cmd_history(ctx: Context) -> int:
    from . import migrate

    app, name = _one_target(ctx, ctx.args.target)
    revisions = migrate.history(app, name)
    if ctx.args.json:
        emit_json([r.as_dict() for r in revisions])
        return 0
    report.print_history(revisions, ctx.args.target)
    return 0


def cmd_heads(ctx: Context) -> int:
    from . import migrate

    app, name = _one_target(ctx, ctx.args.target)
    found = migrate.heads(app, name)
    if ctx.args.json:
        emit_json(found)
        return 0
    report.print_heads(found, ctx.args.target, f"storekeeper revision {ctx.args.target} --merge")
    return 0


def cmd_check(ctx: Context) -> int:
    from .migrate.fanout import check_many

    found = check_many(ctx.apps, ctx.args.targets)
    failures = report.check_failures(found)
    if ctx.args.json:
        report.check_json(found)
        return 1 if failures else 0
    report.print_check({label: c.differences for label, c in found.items()})
    for line in failures:
        warn(line)
    return 1 if failures else 0


def cmd_config_show(ctx: Context) -> int:
    report.print_config(ctx.site, ctx.apps, as_json=ctx.args.json)
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
    report.print_rotated(rotate_secrets(ctx.site.catalog, new, old), as_json=ctx.args.json)
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
    synced = sync([app], progress=lambda r: say(f"  {r.app}.{r.store}: {report.describe(r)}"))
    say("sync: changed" if synced.changed else "sync: no changes, everything is up to date")
    # The example ships its own query; the demo only prints what it returns.
    list_gauges = importlib.import_module("gauges.model").list_gauges
    say("")
    say("stream gages:")
    report.show_table(
        [(g.id, g.latitude, g.longitude, g.value) for g in list_gauges(app)],
        ["id", "latitude", "longitude", "value"],
    )
    say("")
    report.print_status(status([app]))
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
