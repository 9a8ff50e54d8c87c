"""The verbs of the command lines: one table that ``storekeeper`` and ``flask stores`` are
both built from.

Each verb is a function taking the running :class:`Face` and its options: it checks what it
was given, calls the core, and renders the core's report with :mod:`storekeeper.report`. A
face decides only how its users name things: its targets (``APP.STORE`` for ``storekeeper``,
``[STORE]`` of its one app for ``flask stores``), its command names (``flask stores init``,
``storekeeper revision --init``) and how the hints in messages spell its commands. Options,
messages and exit codes (0 done, 1 failed while working, 2 bad input) are the same in both.

click is imported here, so only the faces import this module. Each verb imports the core it
calls inside its body: ``storekeeper --help`` then loads click alone, not SQLAlchemy or Alembic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from . import report
from .errors import BadInput, StorekeeperError
from .report import say

if TYPE_CHECKING:
    from .backends import Service
    from .declare import App
    from .migrate.fanout import StoreRef
    from .provision import SyncReport
    from .site import Site

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# faces ----------------------------------------------------------------------------------


class Face:
    """What a command line gives the verbs: its site and apps, and how it names things."""

    #: How a user types the face's commands, like ``storekeeper`` or ``flask stores``.
    prog: str

    def __init__(self) -> None:
        self.lock_timeout: str | None = None

    @property
    def site(self) -> Site:
        """The site the verbs work on."""
        raise NotImplementedError

    @property
    def apps(self) -> list[App]:
        """Every app the face serves."""
        raise NotImplementedError

    def select(self, names: Sequence[str]) -> list[App]:
        """The apps called ``names`` (all when empty)."""
        from .discover import select

        return select(self.apps, names)

    def spell(self, text: str) -> str:
        """``text`` with the library's hints spelled as this face's commands."""
        return text

    def close(self) -> None:
        """Let go of what the command opened."""

    def _apply_lock_timeout(self, site: Site) -> None:
        if self.lock_timeout is not None:
            from .config import Sourced

            site.config.lock_timeout = Sourced(self.lock_timeout, "--lock-timeout")

    def run(self, call: Callable[[], int]) -> int:
        """Run ``call`` (a verb, with what the face read from its arguments): its exit code,
        with storekeeper's errors said in one line (no traceback unless STOREKEEPER_DEBUG)."""
        with report.spelling(self.spell):
            try:
                return call()
            except StorekeeperError as exc:
                self.error(str(exc))
                return exc.exit_code
            except KeyboardInterrupt:
                report.warn("interrupted")
                return 130
            except Exception as exc:
                if os.environ.get("STOREKEEPER_DEBUG"):
                    import traceback

                    report.warn(traceback.format_exc())
                self.error(
                    f"unexpected {type(exc).__name__}: {exc} (set STOREKEEPER_DEBUG=1 for the "
                    "traceback)"
                )
                return 1

    def error(self, message: str) -> None:
        """Say on standard error that something went wrong: ``error: MESSAGE``, the same in
        every face (the exit code says how: 1 failed while working, 2 bad input).

        Usage errors that click finds itself (an unknown option, a missing argument) are not
        said here: click prints them as ``Error: ...`` with a usage line, exit 2, and does so
        the same way in both faces; that is click's convention, left as it is."""
        report.warn(f"error: {message}")


# options shared by both faces ------------------------------------------------------------


def _seconds(text: str) -> str:
    from .config import check_lock_timeout

    try:
        return check_lock_timeout(text, "--lock-timeout")
    except BadInput:
        raise click.BadParameter(
            f"{text!r} is not a number of seconds (0 or more), like 300"
        ) from None


def _lock_timeout(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _seconds(value)


OPTIONS: dict[str, Decorator] = {
    "json": click.option("--json", "as_json", is_flag=True, help="machine-readable output"),
    "recorded": click.option(
        "--recorded",
        is_flag=True,
        help="as last recorded in the catalog by sync, upgrade, backup and the admin page's "
        "refresh, without connecting to the stores",
    ),
    "lock_timeout": click.option(
        "--lock-timeout",
        metavar="SECONDS",
        callback=_lock_timeout,
        help="give up waiting for a store's lock after this long, saying who holds it "
        "(default: lock_timeout in storekeeper.toml, else 300; 0: do not wait)",
    ),
    "store": click.option(
        "--store", "stores", multiple=True, metavar="STORE", help="only this store (repeatable)"
    ),
    "refresh": click.option("--refresh", is_flag=True, help="drop and recreate the stores"),
    "first_time": click.option(
        "--first-time",
        is_flag=True,
        help="run initializers with first_time=True even for existing stores",
    ),
    "yes": click.option("--yes", "-y", is_flag=True, help="do not ask before --refresh"),
    "yes_restore": click.option(
        "--yes", "-y", "yes", is_flag=True, help="do not ask before restoring in place"
    ),
    "message": click.option("-m", "--message", help="what the migration changes"),
    "note": click.option("--note", metavar="TEXT", help="a note kept in the backup's manifest"),
    "latest": click.option("--latest", is_flag=True, help="the store's newest backup"),
    "as_name": click.option(
        "--as", "as_name", metavar="NAME", help="restore as a new store NAME beside it"
    ),
    "autogenerate": click.option(
        "--autogenerate", is_flag=True, help="fill it with what the models add or change"
    ),
    "init": click.option("--init", is_flag=True, help="create the Alembic script directory"),
    "empty": click.option(
        "--empty", is_flag=True, help="with --autogenerate: write it even when empty"
    ),
    "merge": click.option("--merge", is_flag=True, help="a migration joining several heads"),
    "rev_id": click.option("--rev-id", help="the revision id to use instead of a random one"),
    "to_head": click.option("--to", default="head", metavar="REV", help="revision (default: head)"),
    "to": click.option("--to", required=True, metavar="REV", help="revision, -1, or base"),
    "jobs": click.option("--jobs", "-j", type=int, default=1, metavar="N", help="worker processes"),
    "continue_on_error": click.option(
        "--continue-on-error", is_flag=True, help="go on with the other stores"
    ),
    "replace": click.option(
        "--replace", is_flag=True, help="change the URL of an existing service"
    ),
    "force": click.option("--force", is_flag=True, help="remove even if assignments use it"),
    "old_key_file": click.option(
        "--old-key-file", metavar="PATH", help="a file holding the old key"
    ),
    "old_key_env": click.option(
        "--old-key-env", metavar="NAME", help="a variable holding the old key"
    ),
}


# verbs ----------------------------------------------------------------------------------


def sync(
    face: Face,
    *,
    apps: Sequence[str],
    stores: Sequence[str],
    refresh: bool,
    yes: bool,
    first_time: bool,
    as_json: bool,
) -> int:
    """Create missing stores, bring their schemas to head, run their initializers (of the
    apps named, all when none)."""
    try:
        synced = _sync(face, face.select(apps), list(stores) or None, refresh, yes, first_time)
    except Exception as exc:
        if as_json:  # a script reading the output gets one JSON document, always
            error = (
                str(exc)
                if isinstance(exc, StorekeeperError)
                else f"unexpected {type(exc).__name__}: {exc}"
            )
            report.sync_json(None, error)
        raise
    if as_json:
        report.sync_json(synced)
    else:
        report.print_sync(synced)
    return synced.exit_code


def _sync(
    face: Face,
    apps: list[App],
    stores: list[str] | None,
    refresh: bool,
    yes: bool,
    first_time: bool,
) -> SyncReport:
    """Check the arguments, then sync every chosen store, going on past failures."""
    from .provision import sync

    if stores:
        for app in apps:
            for name in stores:
                app.store(name)
    if refresh and not yes:
        targets = [
            f"{a.name}.{s.name}" for a in apps for s in a.stores if not stores or s.name in stores
        ]
        confirm_refresh(targets)
    total = sum(len(stores) if stores else len(app.stores) for app in apps)
    # stdout is the command's answer (a table, or JSON); what initializers print is not.
    with report.stdout_to_stderr():
        return sync(
            apps,
            stores=stores,
            refresh=refresh,
            first_time=first_time,
            progress=report.sync_progress(total),
            continue_on_error=True,
        )


def confirm_refresh(targets: Sequence[str]) -> None:
    """Ask before ``--refresh`` drops ``targets`` (see :func:`confirm`)."""
    names = ", ".join(targets)
    confirm(f"Drop and recreate {names}? All their data is lost.", "refresh")


def confirm(question: str, doing: str) -> None:
    """Ask ``question`` before ``doing``, on standard error (standard output is the
    command's answer), and read the answer from standard input, a terminal or not (a script
    may pipe ``y``). Anything but y or yes, no answer (end of input) and Ctrl-C too, is bad
    input, exit 2: nothing was done, at the user's word."""
    err = sys.stderr
    err.write(f"{question} [y/N]: ")
    err.flush()
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except KeyboardInterrupt:
        answer = ""
    if not (answer.endswith("\n") and _on_terminal(sys.stdin)):
        err.write("\n")  # end the question's line (a terminal echoed the user's Enter)
        err.flush()
    skip = f"pass --yes to {doing} without the question"
    if not answer.strip():
        raise BadInput(f"{doing} not confirmed (no answer); nothing was changed; {skip}")
    if answer.strip().lower() not in ("y", "yes"):
        raise BadInput(f"{doing} not confirmed; nothing was changed; {skip}")


def _on_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def status(face: Face, *, apps: Sequence[str], as_json: bool, recorded: bool = False) -> int:
    """Every store of the apps named (all when none): its service, whether it exists, its
    size (and revision); with ``recorded``, as the catalog last recorded it (no connection
    to the stores: what the admin page shows)."""
    from .provision import recorded_status, status

    rows = (recorded_status if recorded else status)(face.select(apps))
    if as_json:
        report.emit_json([r.as_dict() for r in rows])
    else:
        report.print_status(rows)
    return 0


def revision(
    face: Face,
    *,
    target: str,
    message: str | None,
    autogenerate: bool,
    merge: bool,
    rev_id: str | None,
    empty: bool,
    init: bool,
    as_json: bool,
) -> int:
    """A new migration for a store or kind (with ``init``, its script directory first)."""
    from . import migrate

    app, name = one_target(face, target)
    if init:
        scripts = migrate.scripts_for(app, name)
        existed = scripts.exists
        report.print_init(scripts, migrate.init(app, name), existed=existed)
        if message is None:
            say(f"next: storekeeper revision {target} -m 'first tables' --autogenerate")
            return 0
    if message is None:
        raise BadInput("a revision needs a message: -m 'what it changes'")
    made = migrate.revision(
        app, name, message, autogenerate=autogenerate, merge=merge, rev_id=rev_id, empty=empty
    )
    if as_json:
        report.emit_json(made.as_dict() if made else None)
    else:
        report.print_revision(made)
    return 0


def one_target(face: Face, target: str) -> tuple[App, str]:
    """``APP.NAME`` (a store, or ``APP.KIND:*`` for a kind) of one of the face's apps."""
    app_name, dot, name = target.partition(".")
    if not dot or not name:
        raise BadInput(
            f"expected APP.STORE or APP.KIND:* (like 'my_app.example_db'), got {target!r}"
        )
    (app,) = face.select([app_name])
    return app, name


def _refs(face: Face, targets: Sequence[str], every: bool) -> list[StoreRef]:
    from .migrate.fanout import resolve_targets

    return resolve_targets(face.apps, targets, every=every)


def _move(action: str) -> Callable[..., int]:
    def move(
        face: Face,
        *,
        targets: Sequence[str],
        every: bool,
        to: str,
        jobs: int,
        continue_on_error: bool,
        as_json: bool,
    ) -> int:
        from .migrate.fanout import migrate_many

        if not targets and not every:
            raise BadInput(
                f"name the stores to {action}: APP, APP.STORE, APP.KIND:* or APP.GLOB, or --all"
            )
        refs = _refs(face, targets, every)
        shown = report.fanout_progress(len(refs), action)
        try:
            ran = migrate_many(
                refs,
                action=action,
                to=to,
                jobs=jobs,
                continue_on_error=continue_on_error,
                progress=report.migrate_progress(shown),
            )
        finally:
            shown.close()
        if as_json:
            report.fanout_json(ran)
        else:
            report.print_fanout(ran, action)
        return ran.exit_code

    move.__doc__ = f"``{action}`` over the stores named."
    return move


upgrade, downgrade, stamp = _move("upgrade"), _move("downgrade"), _move("stamp")


def current(face: Face, *, targets: Sequence[str], as_json: bool) -> int:
    """Each store's revision against its head."""
    from .migrate.fanout import current_many

    rows = current_many(_refs(face, targets, not targets))
    if as_json:
        report.emit_json([r.as_dict() for r in rows])
    else:
        report.print_current(rows)
    return 0


def history(face: Face, *, target: str, as_json: bool) -> int:
    """The migrations of a store or kind, newest first."""
    from . import migrate

    revisions = migrate.history(*one_target(face, target))
    if as_json:
        report.emit_json([r.as_dict() for r in revisions])
    else:
        report.print_history(revisions, target)
    return 0


def heads(face: Face, *, target: str, as_json: bool) -> int:
    """The head revision(s) of a store or kind."""
    from . import migrate

    found = migrate.heads(*one_target(face, target))
    if as_json:
        report.emit_json(found)
    else:
        report.print_heads(found, target, f"storekeeper revision {target} --merge")
    return 0


def check(face: Face, *, targets: Sequence[str], as_json: bool) -> int:
    """Fail (exit 1) when models and the migrated schema drift apart."""
    from .migrate.fanout import check_many

    found = check_many(face.apps, targets)
    failures = report.check_failures(found)
    if as_json:
        report.check_json(found)
        return 1 if failures else 0
    report.print_check({label: c.differences for label, c in found.items()})
    for line in failures:
        face.error(line)
    return 1 if failures else 0


def service_add(face: Face, *, name: str, url: str, replace: bool) -> int:
    """Add a service to the catalog (or, with ``replace``, change its URL)."""
    service = face.site.add_service(name, url, replace=replace)
    say(f"service {service.name!r} {'updated' if replace else 'added'}: {service.display_url}")
    return 0


def service_list(face: Face, *, as_json: bool) -> int:
    """The services, passwords masked."""
    report.print_services(face.site.service_list(), as_json=as_json)
    return 0


def service_remove(face: Face, *, name: str, force: bool) -> int:
    """Remove a service from the catalog."""
    face.site.remove_service(name, force=force)
    say(f"service {name!r} removed")
    return 0


def service_test(face: Face, *, name: str) -> int:
    """Connect to a service and say its version."""
    from .errors import ServiceUnavailable

    site = face.site
    service = site.service(name)
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


def assign(face: Face, *, target: str, service: str) -> int:
    """Plug a service into a store or server setting, ``APP.SETTING``."""
    app, setting = setting_target(face.apps, target)
    plugged = face.site.assign(app.name, setting, service)
    say(f"{app.name}.{setting} -> {plugged.name} ({plugged.display_url})")
    return 0


def setting_target(apps: Sequence[App], target: str) -> tuple[App, str]:
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
    by_name = {a.name: a for a in apps}
    if app_name not in by_name:
        raise NotFound(
            f"unknown app {app_name!r} in {target!r} (known: {', '.join(by_name) or 'none found'}"
            "); a target is an app's name, a dot and one of its stores or server settings, like "
            "'my_app.example_db'"
        )
    app = by_name[app_name]
    if setting not in app.setting_names():
        raise NotFound(
            f"{target!r}: app {app_name!r} has no store or server setting {setting!r}; it has: "
            f"{', '.join(app.setting_names()) or 'none'}"
        )
    return app, setting


def config_show(face: Face, *, as_json: bool) -> int:
    """The effective configuration and where each value came from."""
    from .site import config_report

    report.print_config(config_report(face.site, face.apps), as_json=as_json)
    return 0


def secret_rotate(
    face: Face, *, old_key_file: str | None, old_key_env: str | None, as_json: bool
) -> int:
    """Re-encrypt every service URL in the catalog under the new key."""
    from .catalog.rotate import rotate_secrets
    from .secret import ENV_KEY, secret_key

    new = secret_key()
    if new is None:
        raise BadInput(
            f"set {ENV_KEY} to the new key (a passphrase, or one from storekeeper secret "
            "new-key); give the old one with --old-key-file, --old-key-env or on standard input"
        )
    old = _old_key(old_key_file, old_key_env)
    report.print_rotated(rotate_secrets(face.site.catalog, new, old), as_json=as_json)
    return 0


def _old_key(old_key_file: str | None, old_key_env: str | None) -> str | None:
    """The old key of ``secret rotate``: from a file, a variable, or standard input (prompted
    on a terminal); never from the command line, where other users can read it."""
    if old_key_file and old_key_env:
        raise BadInput("give the old key with one of --old-key-file and --old-key-env, not both")
    if old_key_file:
        from pathlib import Path

        try:
            return Path(old_key_file).expanduser().read_text().strip() or None
        except OSError as exc:
            raise BadInput(f"--old-key-file {old_key_file!r}: {exc.strerror}") from None
    if old_key_env:
        value = os.environ.get(old_key_env)
        if not value:
            raise BadInput(f"--old-key-env {old_key_env!r}: that variable is not set")
        return value
    if sys.stdin is None:
        return None
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("old key (the one the catalog is sealed with): ").strip() or None
    return sys.stdin.read().strip() or None


def secret_new_key(face: Face) -> int:
    """Print a new random key (a Fernet key)."""
    from .secret import new_key

    print(new_key())
    return 0


def backup(face: Face, *, target: str, note: str | None, as_json: bool) -> int:
    """Back up one store with its backend's own tool; a manifest with its checksum beside it."""
    from .backup import backup

    app, store = one_target(face, target)
    taken = backup(app, store, note=note or "")
    if as_json:
        report.emit_json(taken.as_dict())
    else:
        report.print_backups([taken], target)
    return 0


def backups(face: Face, *, target: str, as_json: bool) -> int:
    """The backups of one store, oldest first."""
    from .backup import backups

    found = backups(*one_target(face, target))
    if as_json:
        report.emit_json([b.as_dict() for b in found])
    else:
        report.print_backups(found, target)
    return 0


def restore(
    face: Face,
    *,
    target: str,
    source: str | None,
    latest: bool,
    as_name: str | None,
    yes: bool,
    as_json: bool,
) -> int:
    """Restore a backup of one store: in its place (keeping the old database), or --as a new
    store beside it."""
    from . import backup as core

    if (source is None) == (not latest):
        raise BadInput("name one backup: BACKUP (an id from `backups`, or a path) or --latest")
    app, store = one_target(face, target)
    chosen = core.latest(app, store).id if latest else str(source)
    if as_name is None and not yes:
        confirm(
            f"Replace the data of {target} with backup {chosen}? Its current database is "
            "kept aside as _pre_restore_.",
            "restore",
        )
    restored = core.restore(app, store, chosen, as_name=as_name)
    if as_json:
        report.emit_json(restored.as_dict())
    else:
        report.print_restored(restored)
    return 0


def admin_serve(
    face: Face,
    *,
    host: str,
    port: int,
    allow_remote: bool,
    certfile: str | None,
    keyfile: str | None,
) -> int:
    """Serve the admin page (127.0.0.1 unless ``host``; beyond loopback only with
    ``allow_remote`` and TLS)."""
    from .admin import require_extra

    require_extra()
    from .admin.serve import check_bind, serve

    check_bind(host, allow_remote=allow_remote, certfile=certfile, keyfile=keyfile)
    return serve(
        face.site,
        face.apps,
        host=host,
        port=port,
        allow_remote=allow_remote,
        certfile=certfile,
        keyfile=keyfile,
    )


def admin_set_password(face: Face, *, user: str, password_stdin: bool) -> int:
    """Set the admin page's user and password (kept as an Argon2 hash in the catalog); every
    session of the page ends."""
    from .admin import require_extra

    require_extra()
    from .admin.security import set_password
    from .admin.serve import read_new_password

    set_password(face.site.catalog, user, read_new_password(password_stdin))
    say(f"admin password of {user!r} set in the catalog ({face.site.catalog.display_url})")
    return 0


# the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verb:
    """One verb of the table: its function, help, and the options both faces give it."""

    run: Callable[..., int]
    help: str
    options: Sequence[str] = ()
    #: What it acts on, which each face names its own way: ``apps`` (storekeeper's APP...,
    #: flask's one app), ``targets`` (APP.STORE... / [STORE]), ``moves`` (the same, plus
    #: ``--all``), ``target`` (APP.STORE / [STORE]), ``setting`` (APP.SETTING), or nothing.
    acts_on: str | None = None
    #: Arguments that both faces take the same way (``service add NAME URL``).
    arguments: Sequence[Decorator] = ()


_REVISION = ["message", "autogenerate", "merge", "rev_id", "empty", "json"]
_MOVE = ["jobs", "continue_on_error", "json", "lock_timeout"]

VERBS: dict[str, Verb] = {
    "sync": Verb(
        sync,
        "create missing stores, bring their schemas to head (migrations, or the tables), run "
        "their initializers",
        ["store", "refresh", "first_time", "yes", "json", "lock_timeout"],
        "apps",
    ),
    "status": Verb(
        status, "every store: its service, whether it exists, size", ["recorded", "json"], "apps"
    ),
    "revision": Verb(
        revision,
        "new migration for a store or kind (Alembic)",
        [*_REVISION, "init"],
        "target",
    ),
    "upgrade": Verb(
        upgrade, "migrate stores up to head (or --to REV)", ["to_head", *_MOVE], "moves"
    ),
    "downgrade": Verb(
        downgrade, "migrate stores down to --to REV (or -1, base)", ["to", *_MOVE], "moves"
    ),
    "stamp": Verb(
        stamp, "record --to REV in stores without running migrations", ["to", *_MOVE], "moves"
    ),
    "current": Verb(current, "each store's revision against its head", ["json"], "targets"),
    "check": Verb(
        check, "fail when models and the migrated schema drift apart", ["json"], "targets"
    ),
    "history": Verb(history, "the migrations of a store or kind, newest first", ["json"], "target"),
    "heads": Verb(heads, "the head revision(s) of a store or kind", ["json"], "target"),
    "backup": Verb(
        backup,
        "back up one store (a manifest with its checksum beside it)",
        ["note", "json"],
        "target",
    ),
    "backups": Verb(backups, "the backups of one store, oldest first", ["json"], "target"),
    "restore": Verb(
        restore,
        "restore a backup of one store (BACKUP: an id from `backups`, or a path; or --latest), "
        "keeping the database it replaces as <database>_pre_restore_<time>",
        ["latest", "as_name", "yes_restore", "json"],
        "target",
        arguments=[click.argument("source", required=False, metavar="[BACKUP]")],
    ),
    "assign": Verb(
        assign,
        "plug a service into a store or server setting",
        acts_on="setting",
        arguments=[click.argument("service", metavar="SERVICE")],
    ),
    "service add": Verb(
        service_add,
        "add a service to the catalog",
        ["replace"],
        arguments=[
            click.argument("name", metavar="NAME"),  # like pg_main
            # postgresql+psycopg://user:password@host:5432 or sqlite:///folder
            click.argument("url", metavar="URL"),
        ],
    ),
    "service list": Verb(service_list, "list services (passwords masked)", ["json"]),
    "service remove": Verb(
        service_remove,
        "remove a service from the catalog",
        ["force"],
        arguments=[click.argument("name", metavar="NAME")],
    ),
    "service test": Verb(
        service_test,
        "connect to a service and report its version",
        arguments=[click.argument("name", metavar="NAME")],
    ),
    "config show": Verb(
        config_show, "the effective configuration and where each value came from", ["json"]
    ),
    "secret rotate": Verb(
        secret_rotate,
        "re-encrypt every service URL in the catalog under STOREKEEPER_SECRET_KEY (the new "
        "key); the old key comes from --old-key-file, --old-key-env or standard input",
        ["old_key_file", "old_key_env", "json"],
    ),
    "secret new-key": Verb(secret_new_key, "print a new random key (a Fernet key)"),
}


#: The groups of verbs (``service add``...) and their help.
GROUPS = {
    "service": "manage services: database servers with their connection facts, shared by many apps",
    "config": "show the effective configuration",
    "secret": "the key (STOREKEEPER_SECRET_KEY) that encrypts service URLs in the catalog",
}


# The verb's keyword each option fills, where it is not the option's own name.
_KEYWORDS = {"json": "as_json", "to_head": "to", "store": "stores", "yes_restore": "yes"}


def with_options(
    verb: Verb, func: Callable[..., Any], fixed: Mapping[str, Any] | None = None
) -> Callable[..., Any]:
    """``func`` with the verb's own arguments and options (less those the face ``fixed``,
    by the verb's keywords), in the table's order in ``--help``."""
    fixed = fixed or {}
    for name in reversed([o for o in verb.options if _KEYWORDS.get(o, o) not in fixed]):
        func = OPTIONS[name](func)
    for argument in reversed(verb.arguments):
        func = argument(func)
    return func
