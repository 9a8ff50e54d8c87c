"""The migration verbs, per store, as plain functions; the command line only calls them.

Each store (or kind) has its own Alembic script directory (:mod:`.scripts`). A verb that
touches a database opens its own pool-less connection under the store's lock (the same lock
``sync`` holds), so two runs never migrate one store at once, and every migration runs in its
own transaction: a failing one leaves the store at the last good revision.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..backends.base import unreachable
from ..errors import BadInput, BadRevision, MigrationError, NotFound, StorekeeperError
from ..naming import physical_name
from ..secret import mask
from ..site import server_service
from .binding import ATTRIBUTE, Binding
from .scripts import Scripts, kind_scripts, store_scripts
from .scripts import init as init_directory

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import Connection, MetaData

    from ..backends import Backend, Service
    from ..declare import App

#: The default upgrade target: the newest revision.
HEAD = "head"

#: ``before(app, store, action)``: called once just before the first migration step of a
#: store that ``upgrade`` or ``downgrade`` will move (with the store's lock held); what it
#: returns (the id of the backup it took) is kept in :attr:`MigrateResult.backup`. If it
#: raises, the store is not migrated.
BeforeMigrating = Callable[["App", str, str], "str | None"]


@dataclass(frozen=True)
class Revision:
    """One migration of a script directory."""

    revision: str
    down_revisions: tuple[str, ...]
    message: str
    is_head: bool
    path: str
    #: What the user should know about it (how to adopt a store made before its migrations).
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class MigrateResult:
    """What one ``upgrade``, ``downgrade`` or ``stamp`` did to one store."""

    app: str
    store: str
    database: str | None
    action: str
    before: str | None = None
    after: str | None = None
    applied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ok: bool = True
    error: str = ""
    #: For a failure: 2 when it was bad input (an unknown revision...), else 1.
    exit_code: int = 0
    #: The id of the backup taken automatically just before the first migration step.
    backup: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the store's revision moved."""
        return self.before != self.after

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "changed": self.changed}


# script directories ---------------------------------------------------------------------


def scripts_for(app: App, name: str) -> Scripts:
    """The script directory behind ``name``: a store's (declared or made at run time), else a
    kind's; ``KIND:*`` always means the kind's."""
    if name.endswith(":*"):
        return kind_scripts(app, name[:-2])
    if name in {s.name for s in app.stores} or app.site.runtime_store(app.name, name):
        return store_scripts(app, name)
    if name in {k.name for k in app.kinds}:
        return kind_scripts(app, name)
    raise NotFound(
        f"app {app.name!r} has no store or kind {name!r}; its stores: "
        f"{', '.join(app.list_stores()) or 'none'}; its kinds: "
        f"{', '.join(k.name for k in app.kinds) or 'none'}"
    )


def init(app: App, name: str) -> Path:
    """Create the Alembic script directory of store or kind ``name``; returns its path."""
    return init_directory(scripts_for(app, name))


_DIRECTORIES: dict[str, tuple[tuple[tuple[str, int], ...], ScriptDirectory]] = {}


def script_directory(scripts: Scripts) -> ScriptDirectory:
    """Alembic's view of ``scripts`` (raises :class:`NotFound` with the ``--init`` command when
    it is missing); reused while no file in ``versions/`` changes, since a fan-out over many
    stores of one kind would otherwise parse every migration again for each store."""
    path = scripts.require()
    versions = path / "versions"
    key: tuple[tuple[str, int], ...] = ()
    if versions.is_dir():
        with os.scandir(versions) as files:
            key = tuple(
                sorted((e.name, e.stat().st_mtime_ns) for e in files if e.name.endswith(".py"))
            )
    cached = _DIRECTORIES.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    from alembic.script import ScriptDirectory  # lazy: Alembic loads only when a migration runs

    directory = ScriptDirectory.from_config(alembic_config(scripts))
    _DIRECTORIES[str(path)] = (key, directory)
    return directory


def alembic_config(scripts: Scripts, binding: Binding | None = None) -> Config:
    """An Alembic ``Config`` for ``scripts`` (its ``alembic.ini`` when there is one), carrying
    ``binding`` to ``env.py``."""
    from alembic.config import Config  # lazy: Alembic loads only when a migration runs

    path = scripts.require()
    ini = path / "alembic.ini"
    # What Alembic prints through the config stays out of stdout; callers report what was done.
    config = Config(str(ini) if ini.is_file() else None, stdout=io.StringIO())
    config.set_main_option("script_location", str(path))
    if binding is not None:
        config.attributes[ATTRIBUTE] = binding
    return config


def heads(app: App, name: str) -> list[str]:
    """The head revisions of the migrations of store or kind ``name`` (one, unless branched)."""
    return list(script_directory(scripts_for(app, name)).get_heads())


def history(app: App, name: str) -> list[Revision]:
    """The migrations of store or kind ``name``, newest first."""
    directory = script_directory(scripts_for(app, name))
    tops = set(directory.get_heads())
    return [
        Revision(
            s.revision,
            _down_revisions(s),
            (s.doc or "").strip(),
            s.revision in tops,
            str(s.path),
        )
        for s in directory.walk_revisions()
    ]


def _down_revisions(script: Any) -> tuple[str, ...]:
    down = script.down_revision
    if down is None:
        return ()
    return (down,) if isinstance(down, str) else tuple(down)


def revisions(app: App, name: str) -> list[str]:
    """The revision ids of store or kind ``name`` from the first to the head (a single line of
    migrations), for stepping through them one by one."""
    scripts = scripts_for(app, name)
    directory = script_directory(scripts)
    _single_head(directory, scripts)
    return [r.revision for r in reversed(list(directory.walk_revisions()))]


def _single_head(directory: ScriptDirectory, scripts: Scripts) -> str | None:
    tops = directory.get_heads()
    if len(tops) > 1:
        raise MigrationError(
            f"{scripts.label} has several head revisions: {', '.join(sorted(tops))}; merge "
            f"them first: storekeeper revision {scripts.target} --merge -m 'merge heads'"
        )
    return tops[0] if tops else None


def _revision_list(directory: ScriptDirectory) -> str:
    names = [s.revision for s in directory.walk_revisions()]
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"


# connections ----------------------------------------------------------------------------


@contextlib.contextmanager
def database_connection(backend: Backend, database: str, label: str) -> Iterator[Connection]:
    """A pool-less connection to ``database`` that exists, closed (and its engine disposed)
    afterwards, so nothing stays connected to it."""
    if not backend.exists(database):
        raise MigrationError(
            f"store {label} has no database {database!r} on service "
            f"{backend.service.name!r} yet; create it first (storekeeper sync, or "
            "app.create_store for a store made at run time)"
        )
    engine = backend.migration_engine(database)
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:
            raise unreachable(backend.service, exc) from None
        with connection:
            yield connection
    finally:
        engine.dispose()


@contextlib.contextmanager
def store_connection(app: App, store: str, *, lock: bool = True) -> Iterator[Connection]:
    """A connection to store ``store`` of ``app``, under its lock unless ``lock`` is false."""
    placement = app.placement(store)
    backend = app.site.backend(placement.service)
    held = backend.lock(placement.database) if lock else contextlib.nullcontext()
    with held, database_connection(backend, placement.database, f"{app.name}.{store}") as conn:
        yield conn


def current_heads(connection: Connection) -> tuple[str, ...]:
    """The revisions recorded in the store behind ``connection`` (empty at base)."""
    # lazy: Alembic loads only when a migration runs
    from alembic.runtime.migration import MigrationContext

    try:
        return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        # Reading autobegins a transaction; Alembic must find none, or it would run every
        # migration inside it instead of one transaction each.
        connection.rollback()


def untracked_tables(connection: Connection, metadata: MetaData | None) -> list[str]:
    """The tables of ``metadata`` that the database behind ``connection`` already has while
    it records no revision: a store made by ``create_all`` before it had migrations (empty
    when it has a revision, or none of those tables)."""
    if metadata is None or current_heads(connection):
        return []
    try:
        found = inspect(connection)
        return sorted(
            t.fullname for t in metadata.sorted_tables if found.has_table(t.name, t.schema)
        )
    finally:
        connection.rollback()


def _roots(directory: ScriptDirectory) -> list[str]:
    return sorted(s.revision for s in directory.walk_revisions() if not s.down_revision)


def stamp_hint(directory: ScriptDirectory, label: str) -> str:
    """How to record, without running them, the migrations a store's schema already has."""
    roots, tops = _roots(directory), list(directory.get_heads())
    if len(roots) == 1 and tops == roots:
        return f"storekeeper stamp {label} --to {roots[0]}"
    return (
        f"storekeeper stamp {label} --to REV, REV being the revision whose schema it has (the "
        f"first is {', '.join(roots)}, the head {', '.join(tops)})"
    )


def _adoption_error(directory: ScriptDirectory, tables: Sequence[str], label: str) -> str:
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    # With one revision, stamping it is the whole way out; with more, upgrade after it.
    then = "" if _roots(directory) == list(directory.get_heads()) else f"; then upgrade {label}"
    return (
        f"store {label} has tables ({shown}) but no migration history: they were made before "
        "it had migrations (by create_all), and running its migrations would make them "
        f"again. When its schema is that of a revision, record it without running anything: "
        f"{stamp_hint(directory, label)}{then}"
    )


# running migrations ---------------------------------------------------------------------


def _revisions_text(revs: Sequence[str]) -> str | None:
    return ",".join(sorted(revs)) or None


def is_known(directory: ScriptDirectory, rev: str) -> bool:
    """Whether the migrations of ``directory`` have revision ``rev``."""
    # lazy: Alembic loads only when a migration runs
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        directory.get_revision(rev)
    except (CommandError, RevisionError):
        return False
    return True


def _check_known(
    directory: ScriptDirectory, scripts: Scripts, at: Sequence[str], label: str
) -> None:
    for rev in at:
        if not is_known(directory, rev):
            head = ", ".join(directory.get_heads()) or "none"
            raise MigrationError(
                f"store {label} is at revision {rev}, which its "
                f"migrations ({scripts.path}) do not have (their head: {head}): the database "
                "is ahead of this code, or was migrated from another branch; deploy the code "
                f"that has {rev}, or stamp the store"
            ) from None


#: Alembic's relative targets: ``[BRANCH@][SYMBOL]+N`` or ``-N``, where SYMBOL is ``head``,
#: ``heads``, ``base`` or a revision (``-1``, ``+2``, ``head-1``, ``base+1``, ``ae10+2``).
#: Alembic tries this at the start of a target; it must match the whole of it here, or the
#: target is a revision id (Alembic forbids ``-``, ``+``, ``@`` and ``:`` in those).
_RELATIVE = re.compile(r"(?:(?P<branch>[^@]+)@)?(?P<symbol>\w+)?(?P<steps>[+-]\d+)")
_SYMBOLS = ("head", "heads", "base")
#: What Alembic refuses in a revision id (``Script.verify_rev_id``).
_NOT_IN_IDS = "-+@:"


def _unknown(directory: ScriptDirectory, scripts: Scripts, label: str, what: str) -> BadRevision:
    return BadRevision(
        f"unknown revision {what} for {label}; its revisions: {_revision_list(directory)} "
        f"(see storekeeper history {scripts.target if scripts.kind else label})"
    )


def _has(directory: ScriptDirectory, revs: str) -> bool:
    """Whether Alembic finds ``revs`` (a revision id, a prefix of one, ``branch@rev``)."""
    # lazy: Alembic loads only when a migration runs
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        directory.get_revisions(revs)
    except (CommandError, RevisionError):
        return False
    return True


def _check_target(
    directory: ScriptDirectory,
    scripts: Scripts,
    action: str,
    to: str,
    at: Sequence[str] | None,
    label: str,
) -> None:
    """Refuse a target revision the migrations lack, several heads for ``head``, a relative
    move the wrong way, and a relative downgrade below base (when ``at``, the store's
    revisions, is known)."""
    if to in _SYMBOLS:
        if to == "head" and action != "downgrade":
            _single_head(directory, scripts)
        return
    relative = _RELATIVE.fullmatch(to)
    if relative is None:
        if not to.strip() or (set(to) & set(_NOT_IN_IDS) and to.count("@") != 1):
            raise _unknown(directory, scripts, label, repr(to))
        if not _has(directory, to):
            raise _unknown(directory, scripts, label, repr(to))
        return
    symbol, steps = relative["symbol"], int(relative["steps"])
    if symbol is not None and symbol not in _SYMBOLS and not _has(directory, symbol):
        raise _unknown(directory, scripts, label, f"{symbol!r} in {to!r}")
    if symbol is None and action == "upgrade" and steps < 0:
        raise BadRevision(
            f"upgrade goes up: {to!r} would move {label} down; use storekeeper downgrade --to {to}"
        )
    if symbol is None and action == "downgrade" and steps > 0:
        raise BadRevision(
            f"downgrade goes down: {to!r} would move {label} up; use storekeeper upgrade --to {to}"
        )
    if symbol is None and action == "downgrade" and at is not None:
        depth = min((len(list(directory.iterate_revisions(r, "base"))) for r in at), default=0)
        if -steps > depth:
            raise BadRevision(
                f"cannot downgrade {label} by {-steps} revision(s): it is at "
                f"{_revisions_text(at) or 'base'}, {depth} revision(s) above base; "
                "--to base undoes them all"
            )


def _failed_migration(directory: ScriptDirectory, exc: BaseException) -> str | None:
    """Which migration file the traceback of ``exc`` went through: ``rev ('message')``."""
    files = {str(Path(s.path).resolve()): s for s in directory.walk_revisions()}
    tb = exc.__traceback__
    found = None
    while tb is not None:
        script = files.get(str(Path(tb.tb_frame.f_code.co_filename).resolve()))
        if script is not None:
            found = f"{script.revision} ({(script.doc or '').strip()!r})"
        tb = tb.tb_next
    return found


def failure_reason(exc: BaseException) -> str:
    """``Type: message`` of an error, on one line; for a database error, the driver's own
    message without SQLAlchemy's statement dump and link."""
    orig = getattr(exc, "orig", None)
    shown = orig if isinstance(orig, BaseException) else exc
    return f"{type(shown).__name__}: {' '.join(str(shown).split())}"


def _check_move(
    directory: ScriptDirectory,
    scripts: Scripts,
    connection: Connection,
    action: str,
    to: str,
    at: tuple[str, ...],
    label: str,
) -> None:
    """Refuse, before anything runs, a revision the scripts do not know, a move that cannot
    be, and an upgrade of a store whose tables were made without migrations."""
    try:
        _check_known(directory, scripts, at, label)
        _check_target(directory, scripts, action, to, at, label)
        if action == "upgrade" and directory.get_heads():
            tables = untracked_tables(connection, scripts.metadata)
            if tables:
                raise MigrationError(_adoption_error(directory, tables, label))
    except MigrationError as exc:
        exc.before = exc.after = _revisions_text(at)
        raise


def _migration_failed(
    directory: ScriptDirectory,
    connection: Connection,
    backend: Backend,
    exc: Exception,
    label: str,
    before: str | None,
) -> MigrationError:
    """The error for a migration that failed: which one, why (passwords masked), and the
    revision the store stays at."""
    with contextlib.suppress(Exception):
        connection.rollback()
    try:
        stays = _revisions_text(current_heads(connection)) or "base"
    except Exception:
        stays = "unknown (the connection failed)"
    which = _failed_migration(directory, exc) or "?"
    reason = mask(failure_reason(exc), backend.service.url.password)
    return MigrationError(
        f"store {label}: migration {which} failed: {reason}; the store stays at revision {stays}",
        before=before,
        after=None if stays == "base" else stays,
    )


def _will_move(directory: ScriptDirectory, action: str, to: str, at: tuple[str, ...]) -> bool:
    """Whether ``action`` to ``to`` runs a migration on a store at ``at`` (checked already);
    when unsure, yes: a backup too many costs little, one too few may cost the data."""
    if action == "stamp":
        return False
    if _RELATIVE.fullmatch(to):
        return True  # checked to move at least one step
    if to == "base":
        return bool(at)
    try:
        wanted = {s.revision for s in directory.get_revisions(to) if s is not None}
    except Exception:
        return True
    return wanted != set(at)


log = logging.getLogger("storekeeper")

#: Alembic keeps its ``context`` and ``op`` in module globals, set up and torn down by each
#: run: in one process (the admin page's worker threads) one migration runs at a time.
#: Taken after the store's lock, so a run waiting for a store's lock holds it up for nobody.
_ALEMBIC = threading.Lock()


def _new_turns_in_child() -> None:
    # A fork (upgrade --jobs N) copies the lock as it was: held, if another thread was
    # migrating. The child's own migrations start from a free one.
    global _ALEMBIC
    _ALEMBIC = threading.Lock()


os.register_at_fork(after_in_child=_new_turns_in_child)


@contextlib.contextmanager
def _alembic_turn(label: str) -> Iterator[None]:
    """This thread's turn to run Alembic; says so when it has to wait for another thread."""
    if not _ALEMBIC.acquire(blocking=False):
        log.warning(
            "%s: waiting for another migration in this process to finish (Alembic runs one "
            "at a time per process)",
            label,
        )
        _ALEMBIC.acquire()
    try:
        yield
    finally:
        _ALEMBIC.release()


def migrate_database(
    backend: Backend,
    database: str,
    scripts: Scripts,
    *,
    action: str = "upgrade",
    to: str = HEAD,
    store: str | None = None,
    connection: Connection | None = None,
    before: BeforeMigrating | None = None,
) -> MigrateResult:
    """Move database ``database`` (of store ``store``, by default ``scripts.name``) to
    revision ``to`` with ``action`` (``upgrade``, ``downgrade`` or ``stamp``); the caller
    holds the store's lock. ``before`` is called just before the first migration step (see
    :data:`BeforeMigrating`).

    Raises :class:`BadRevision` for a revision or move that cannot be, and
    :class:`MigrationError` naming the failing migration (the store then stays at the last
    good revision).
    """
    store = store or scripts.name
    label = f"{scripts.app.name}.{store}"
    result = MigrateResult(scripts.app.name, store, database, action)
    started = time.perf_counter()
    directory = script_directory(scripts)
    if connection is None:
        with database_connection(backend, database, label) as conn:
            return migrate_database(
                backend,
                database,
                scripts,
                action=action,
                to=to,
                store=store,
                connection=conn,
                before=before,
            )
    at = current_heads(connection)
    result.before = _revisions_text(at)
    _check_move(directory, scripts, connection, action, to, at, label)
    if before is not None and _will_move(directory, action, to, at):
        result.backup = _backup_first(before, scripts.app, store, action, label, result.before)
    try:
        _run_move(directory, scripts, connection, backend, action, to, label, result)
    except MigrationError as exc:
        exc.backup = result.backup
        raise
    result.seconds = time.perf_counter() - started
    return result


def _backup_first(
    before: BeforeMigrating, app: App, store: str, action: str, label: str, at: str | None
) -> str | None:
    """Run the ``before`` hook (the automatic backup); if it fails, the store is not migrated."""
    try:
        return before(app, store, action)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, StorekeeperError) else failure_reason(exc)
        raise MigrationError(
            f"store {label}: the automatic backup before {action} failed, so it was not "
            f"migrated (it stays at revision {at or 'base'}): {reason}; fix that and run again, "
            "or pass --no-backup to migrate without a backup",
            before=at,
            after=at,
        ) from exc


def _run_move(
    directory: ScriptDirectory,
    scripts: Scripts,
    connection: Connection,
    backend: Backend,
    action: str,
    to: str,
    label: str,
    result: MigrateResult,
) -> None:
    """Run Alembic's ``action`` to ``to`` on ``connection``, the steps applied recorded in
    ``result``."""
    from alembic import command  # lazy: Alembic loads only when a migration runs
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    def applied(*, step: Any, **_: Any) -> None:
        result.applied.append(str(step.up_revision_id))

    move = {"upgrade": command.upgrade, "downgrade": command.downgrade, "stamp": command.stamp}
    binding = Binding(connection, scripts.metadata, on_version_apply=applied)
    try:
        with _alembic_turn(label):
            move[action](alembic_config(scripts, binding), to)
    except (CommandError, RevisionError) as exc:
        raise BadRevision(f"cannot {action} {label} to {to!r}: {exc}") from None
    except Exception as exc:
        raise _migration_failed(directory, connection, backend, exc, label, result.before) from exc
    result.after = _revisions_text(current_heads(connection))


def migrate_store(
    app: App,
    store: str,
    *,
    action: str = "upgrade",
    to: str = HEAD,
    before: BeforeMigrating | None = None,
) -> MigrateResult:
    """Move store ``store`` of ``app`` to ``to`` with ``action`` under the store's lock (the
    one ``sync`` holds), calling ``before`` just before the first step; the caller records
    the outcome (:func:`record_migration`)."""
    scripts = store_scripts(app, store)
    placement = app.placement(store)
    backend = app.site.backend(placement.service)
    with backend.lock(placement.database):
        return migrate_database(
            backend, placement.database, scripts, action=action, to=to, store=store, before=before
        )


def record_migration(app: App, result: MigrateResult) -> None:
    """Record what one migration of a store did (or why it failed) in the catalog."""
    detail = (
        f"{result.action} {result.before or 'base'} -> {result.after or 'base'}"
        if result.ok
        else result.error
    )
    if result.backup:
        detail += f" (backed up first as {result.backup})"
    catalog = app.site.catalog
    catalog.record(app.name, result.store, "migrate", ok=result.ok, detail=detail)
    if result.ok:
        now = datetime.now(UTC)
        catalog.record_state(
            app.name, result.store, revision=result.after, checked_at=now, migrated_at=now
        )


def _store_action(app: App, store: str, action: str, to: str) -> MigrateResult:
    store_scripts(app, store).require()
    try:
        result = migrate_store(app, store, action=action, to=to)
    except StorekeeperError as exc:
        failed = MigrateResult(app.name, store, None, action, ok=False, error=str(exc))
        record_migration(app, failed)
        raise
    record_migration(app, result)
    return result


def upgrade(app: App, store: str, to: str = HEAD) -> MigrateResult:
    """Upgrade store ``store`` of ``app`` to ``to`` (``head``, a revision, ``+1``)."""
    return _store_action(app, store, "upgrade", to)


def downgrade(app: App, store: str, to: str) -> MigrateResult:
    """Downgrade store ``store`` of ``app`` to ``to`` (a revision, ``-1``, ``base``)."""
    return _store_action(app, store, "downgrade", to)


def stamp(app: App, store: str, to: str) -> MigrateResult:
    """Record revision ``to`` in store ``store`` without running migrations."""
    return _store_action(app, store, "stamp", to)


def current(app: App, store: str) -> tuple[str, ...]:
    """The revision(s) store ``store`` of ``app`` is at (empty at base)."""
    store_scripts(app, store).require()
    with store_connection(app, store, lock=False) as connection:
        return current_heads(connection)


@dataclass(frozen=True)
class RevisionState:
    """Where a store's database is against where its migrations end."""

    store: str
    revision: str | None
    head: str | None
    #: ``at head``, ``behind``, ``unknown revision`` (ahead of the code, or another branch),
    #: or ``no database`` (not made yet)
    state: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def revision_state(app: App, store: str) -> RevisionState:
    """Store ``store``'s revision against its head (comma-joined when branched; ``None`` at
    base)."""
    directory = script_directory(store_scripts(app, store))
    tops = directory.get_heads()
    placement = app.placement(store)
    if not app.site.backend(placement.service).exists(placement.database):
        return RevisionState(f"{app.name}.{store}", None, _revisions_text(tops), "no database")
    at = current(app, store)
    if set(at) == set(tops):
        state = "at head"
    elif all(is_known(directory, rev) for rev in at):
        state = "behind"
    else:
        state = "unknown revision"
    return RevisionState(f"{app.name}.{store}", _revisions_text(at), _revisions_text(tops), state)


# scratch databases: autogenerate and check compare models with the migrations -----------


def _kind_service(app: App, kind: str) -> Service:
    """The service a kind's stores go to when no server is named (as ``create_store``)."""
    if len(app.servers) >= 1:
        return server_service(app, app.servers[0].name)
    return app.site.require_assignment(app.name, kind, what="kind")


def scripts_service(scripts: Scripts) -> Service:
    """The service whose dialect ``scripts`` is compared on: the store's, or for a kind the
    service its stores are made on."""
    if scripts.kind is not None:
        return _kind_service(scripts.app, scripts.kind)
    return scripts.app.placement(scripts.name).service


@contextlib.contextmanager
def scratch_database(scripts: Scripts) -> Iterator[Connection]:
    """A throwaway database with the migrations of ``scripts`` at head, dropped afterwards."""
    app = scripts.app
    backend = app.site.backend(scripts_service(scripts))
    base = physical_name(app.name, scripts.name)[:40].rstrip("_")
    name = app.site.database_name(f"{base}_scratch_{uuid.uuid4().hex[:8]}")
    spatial = False
    if scripts.kind is not None:
        spatial = app.kind(scripts.kind).spatial
    elif scripts.name in {s.name for s in app.stores}:
        spatial = app.store(scripts.name).spatial
    backend.create(name, spatial=spatial)
    try:
        with database_connection(backend, name, scripts.label) as connection:
            migrate_database(backend, name, scripts, connection=connection)
            yield connection
    finally:
        backend.drop(name)


def _check_rev_id(directory: ScriptDirectory, scripts: Scripts, rev_id: str) -> None:
    """Refuse a revision id Alembic could not target (or store), and one already taken."""
    bad = sorted(set(rev_id) & set(_NOT_IN_IDS))
    if bad or not rev_id.strip() or rev_id != rev_id.strip():
        raise BadInput(
            f"revision id {rev_id!r} cannot be used: "
            + (
                f"it has {', '.join(repr(c) for c in bad)}, which Alembic reads as part of a "
                "target (rev-1, rev+2, branch@rev)"
                if bad
                else "it is empty or has spaces around it"
            )
            + "; choose another --rev-id (letters, digits, _)"
        )
    if any(s.revision == rev_id for s in directory.walk_revisions()):
        raise BadRevision(
            f"revision id {rev_id!r} is taken in {scripts.label}; choose another --rev-id"
        )


def revision(
    app: App,
    name: str,
    message: str,
    *,
    autogenerate: bool = False,
    merge: bool = False,
    rev_id: str | None = None,
    empty: bool = False,
) -> Revision | None:
    """Write a new migration for store or kind ``name``; with ``autogenerate``, filled with
    what the models have and the migrations lack (types and server defaults compared); with
    ``merge``, one that joins the current heads. Returns the new revision, or ``None`` when
    autogenerate found nothing to do (unless ``empty``: then an empty one is written).

    A store whose database has the models' tables but no migration history (made by
    ``create_all`` before it had migrations) gets the migration a new database needs, and a
    note saying how to adopt the existing one (``storekeeper stamp``), with what differs
    between its tables and the models."""
    from alembic import command  # lazy: Alembic loads only when a migration runs
    from alembic.util import CommandError

    made: Any
    scripts = scripts_for(app, name)
    directory = script_directory(scripts)
    if not message or not message.strip():
        raise BadInput("a revision needs a message: -m 'what it changes'")
    if rev_id is not None:
        _check_rev_id(directory, scripts, rev_id)
    # Alembic says "Generating <path> ... done" on stdout; the caller reports what was made.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            if merge:
                tops = directory.get_heads()
                if len(tops) < 2:
                    raise BadRevision(
                        f"{scripts.label} has {len(tops)} head revision(s); there is nothing "
                        "to merge"
                    )
                made = command.merge(
                    alembic_config(scripts), "heads", message=message, rev_id=rev_id
                )
            elif autogenerate:
                made = _autogenerate(scripts, directory, message, rev_id, empty)
            else:
                _single_head(directory, scripts)
                made = command.revision(alembic_config(scripts), message=message, rev_id=rev_id)
        except CommandError as exc:
            raise BadRevision(f"cannot write a revision for {scripts.label}: {exc}") from None
    script = made[0] if isinstance(made, list) and made else made
    if not script:
        return None
    notes: tuple[str, ...] = ()
    if autogenerate and scripts.kind is None:
        notes = _adoption_notes(app, name, scripts, script.revision)
    return Revision(
        script.revision, _down_revisions(script), message.strip(), True, str(script.path), notes
    )


def _autogenerate(
    scripts: Scripts, directory: ScriptDirectory, message: str, rev_id: str | None, empty: bool
) -> Any:
    """Alembic's autogenerate against a scratch database at the migrations' head; writes
    nothing when it finds nothing, unless ``empty``."""
    from alembic import command  # lazy: Alembic loads only when a migration runs
    from alembic.util import CommandError

    if scripts.metadata is None:
        raise BadInput(
            f"{scripts.label} declares no metadata, so there is nothing to autogenerate "
            "from: give it metadata=Base.metadata, or write the migration by hand"
        )
    _single_head(directory, scripts)

    def unless_empty(_context: Any, _revision: Any, directives: list[Any]) -> None:
        if not empty and all(d.upgrade_ops.is_empty() for d in directives):
            directives[:] = []

    with scratch_database(scripts) as connection:
        binding = Binding(connection, scripts.metadata)
        try:
            return command.revision(
                alembic_config(scripts, binding),
                message=message,
                autogenerate=True,
                rev_id=rev_id,
                process_revision_directives=unless_empty,
            )
        except CommandError as exc:
            raise MigrationError(f"autogenerate for {scripts.label} failed: {exc}") from None


def _adoption_notes(app: App, store: str, scripts: Scripts, rev: str) -> tuple[str, ...]:
    """For a store made by ``create_all`` before it had migrations: how to adopt it, from a
    comparison of its real tables with the models (empty for any other store)."""
    label = f"{app.name}.{store}"
    try:
        placement = app.placement(store)
        if not app.site.backend(placement.service).exists(placement.database):
            return ()
        with store_connection(app, store, lock=False) as connection:
            tables = untracked_tables(connection, scripts.metadata)
            differences = compare(connection, scripts.metadata) if tables else []
    except (StorekeeperError, SQLAlchemyError):
        return ()  # the store cannot be looked at now; the revision is written all the same
    if not tables:
        return ()
    if not differences:
        return (
            f"{label} already has these tables, made before it had migrations, but no "
            f"migration history; its schema matches the models, so record this revision "
            f"without running it: storekeeper stamp {label} --to {rev}",
        )
    return (
        f"{label} already has tables but no migration history, and they differ from the "
        f"models: {'; '.join(differences)}. Record the revision whose schema it has without "
        f"running it, storekeeper stamp {label} --to REV (a first migration written while the "
        "models matched it), then let migrations make the rest",
    )


def compare(connection: Connection, metadata: MetaData | None) -> list[str]:
    """What differs between the schema behind ``connection`` and ``metadata``, one readable
    line per difference (types and server defaults compared)."""
    # lazy: Alembic loads only when a migration runs
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    if metadata is None:
        return []
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": True, "target_metadata": metadata},
    )
    try:
        return [describe(diff) for diff in compare_metadata(context, metadata)]
    finally:
        connection.rollback()


@dataclass(frozen=True)
class Checked:
    """What :func:`check` found for one store or kind, and the command that resolves it."""

    #: Readable lines, one per difference (empty when models and schema agree).
    differences: list[str]
    #: What resolves it: ``revision`` (a migration for the models' change), ``upgrade`` (the
    #: database is behind its migrations), ``stamp`` (a store made before its migrations);
    #: ``None`` when all agree.
    action: str | None = None
    #: The command to run for ``action``, with the real target (``APP.KIND:*`` for a kind's
    #: migrations).
    next: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def checked(app: App, name: str) -> Checked:
    """Where models and schema drift apart, and what to run about it.

    For a store: its database must be at the migrations' head and match the models. For a
    kind: the models must match what its migrations build (in a scratch database).
    """
    scripts = scripts_for(app, name)
    directory = script_directory(scripts)
    new_migration = f"storekeeper revision {scripts.target} -m MSG --autogenerate"
    if scripts.kind is not None and scripts.name == name.removesuffix(":*"):
        # The kind itself, not one of its stores: no database of its own to look at.
        with scratch_database(scripts) as connection:
            differences = compare(connection, scripts.metadata)
        return Checked(differences, *(("revision", new_migration) if differences else ()))
    label = f"{app.name}.{name}"
    with store_connection(app, name, lock=False) as connection:
        at = current_heads(connection)
        _check_known(directory, scripts, at, label)
        tables = untracked_tables(connection, scripts.metadata)
        if tables:
            return Checked(
                [_adoption_error(directory, tables, label)], "stamp", stamp_hint(directory, label)
            )
        tops = directory.get_heads()
        if set(at) != set(tops):
            upgrade = f"storekeeper upgrade {label}"
            return Checked(
                [
                    f"database at revision {_revisions_text(at) or 'base'}, migrations' head is "
                    f"{_revisions_text(tops) or 'base'}: run {upgrade}"
                ],
                "upgrade",
                upgrade,
            )
        differences = compare(connection, scripts.metadata)
    return Checked(differences, *(("revision", new_migration) if differences else ()))


def check(app: App, name: str) -> list[str]:
    """Where models and schema drift apart, as readable lines (empty when they agree); see
    :func:`checked` for what to run about it."""
    return checked(app, name).differences


def _where(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def describe(diff: Any) -> str:
    """One of Alembic's ``compare_metadata`` differences as a sentence."""
    if isinstance(diff, list):
        return "; ".join(describe(d) for d in diff)
    op = diff[0]
    models, database = "in the models", "in the database"
    if op in ("add_table", "remove_table"):
        table = diff[1]
        side = (models, database) if op == "add_table" else (database, models)
        return f"table {_where(table.schema, table.name)} is {side[0]} but not {side[1]}"
    if op in ("add_column", "remove_column"):
        _, schema, table, column = diff
        side = (models, database) if op == "add_column" else (database, models)
        return (
            f"column {_where(schema, table)}.{column.name} ({column.type}) is {side[0]} but "
            f"not {side[1]}"
        )
    if op in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        item = diff[1]
        what = "index" if op.endswith("index") else "constraint"
        columns = ", ".join(c.name for c in getattr(item, "columns", ()))
        side = (models, database) if op.startswith("add") else (database, models)
        return f"{what} {item.name} on {item.table.name}({columns}) is {side[0]} but not {side[1]}"
    if op in ("add_fk", "remove_fk"):
        fk = diff[1]
        side = (models, database) if op == "add_fk" else (database, models)
        columns = ", ".join(c.name for c in fk.columns)
        return f"foreign key on {fk.parent.name}({columns}) is {side[0]} but not {side[1]}"
    if op.startswith("modify_"):
        _, schema, table, column, _kw, old, new = diff
        what = op.removeprefix("modify_").replace("_", " ")
        if what == "default":
            old = getattr(old, "arg", old)
            new = getattr(getattr(new, "arg", new), "text", getattr(new, "arg", new))
        return f"column {_where(schema, table)}.{column}: {what} {old} {database}, {new} {models}"
    return repr(diff)
