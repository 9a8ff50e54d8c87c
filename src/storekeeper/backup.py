"""Backups of one store: taken with the backend's own tool, listed from their manifests, restored
into a new database (or file copy) before it replaces the store.

A backup is two files in ``<backups>/<app>/<store>/`` (``backups`` is ``var/backups`` under the
project's root unless the configuration names another folder, globally or per service): the
dump (``<id>.dump`` from ``pg_dump --format=custom``, or ``<id>.sqlite3`` from SQLite's online
backup API) and its manifest ``<id>.json``. Both are written under a temporary name and
renamed, the manifest last, and only manifests are listed: a half-written backup is never seen.

Each backup is recorded in the catalog too, with its pin: a pinned backup is never pruned.
Retention (:mod:`storekeeper.retention`) is applied after each backup and by :func:`prune`,
which also drops the databases restores set aside once they are older than
``keep_pre_restore`` days. Before ``upgrade``, ``downgrade`` and a ``sync`` that migrates an
existing store, :func:`before_migrating` takes a backup pinned as ``pre-upgrade``; it stays
pinned until a later pre-upgrade backup of the same store is taken.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from .backends.postgresql import PostgresBackend, find_program
from .backends.sqlite import SqliteBackend
from .discover import select
from .errors import BadInput, NotFound, ProvisionError, StorekeeperError
from .migrate.commands import BeforeMigrating, is_known, script_directory
from .migrate.scripts import store_scripts
from .naming import (
    beside,
    check_identifier,
    physical_name,
    pre_restore_prefix,
)
from .naming import pre_restore_copies as copies_kept
from .retention import Policy, policy_for, pre_restore_expired, to_prune
from .secret import mask
from .site import place

if TYPE_CHECKING:
    from .backends.base import Backend
    from .declare import App
    from .site import Site

log = logging.getLogger("storekeeper")

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Backup:
    """One backup of a store, as its manifest describes it."""

    id: str
    app: str
    store: str
    database: str
    backend: str
    server_version: str
    revision: str | None
    taken_at: str
    size: int
    sha256: str
    tool: str
    format: str
    note: str
    path: str
    #: From the catalog: whether the backup is pinned (never pruned), and why.
    pinned: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What a manifest holds: every field of :class:`Backup` but where it is and its pin.
_NOT_IN_MANIFEST = ("path", "pinned", "reason")

#: The pin reason of the backups taken before migrating a store.
PRE_UPGRADE = "pre-upgrade"


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: the backup it used, the database it wrote, the one it kept aside."""

    app: str
    store: str
    backup: str
    database: str
    revision: str | None
    kept_as: str | None
    in_place: bool
    #: When the backup was taken at an older revision than its store's migrations' head:
    #: saying so, and (restored in place) the ``upgrade`` that brings it up.
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did to one store: the backups it removed, how many it kept, and the
    databases set aside by restores that it dropped."""

    app: str
    store: str
    removed: list[Backup] = field(default_factory=list)
    kept: int = 0
    dropped: list[str] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "store": self.store,
            "removed": [b.id for b in self.removed],
            "kept": self.kept,
            "dropped": list(self.dropped),
            "policy": self.policy.as_dict(),
        }


def backup_folder(app: App, store: str) -> Path:
    """Where the backups of ``app.store`` go: ``<backups>/<app>/<store>``, ``<backups>`` being
    its service's ``backups`` folder, else the global one, else ``<root>/var/backups``."""
    check_identifier(store, "store")
    service = place(app, store).service.name
    return Path(app.site.config.backups_folder(service).value) / app.name / store


def find_tool(name: str) -> str:
    """The path of PostgreSQL client program ``name`` (``pg_dump``, ``pg_restore``)."""
    return find_program(
        name,
        install="install PostgreSQL's client package (Debian: apt-get install postgresql-client)",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection arguments and environment for a libpq program; the password goes in the
    environment, never on the command line."""
    args = [f"--dbname={url.database}"]
    if url.host:
        args.append(f"--host={url.host}")
    if url.port:
        args.append(f"--port={url.port}")
    if url.username:
        args.append(f"--username={url.username}")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return args, env


def _run_tool(argv: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ProvisionError(f"{what} failed: {mask(done.stderr.strip() or done.stdout.strip())}")


def _revision(backend: Backend, database: str) -> str | None:
    """The store's Alembic revision (``alembic_version``), or ``None`` when it has none."""
    engine = create_engine(backend.database_url(database), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return None if value is None else str(value)
    finally:
        engine.dispose()


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy database file ``source`` into ``target`` with the online backup API."""
    src, dst = sqlite3.connect(source, timeout=30), sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def backup(app: App, store: str, *, note: str = "", pin: str | None = None) -> Backup:
    """Back up store ``store`` of ``app``; returns the backup's manifest. With ``pin`` (a
    reason), the backup is pinned as it is recorded. The store's retention is applied
    afterwards (:func:`prune`, backups only)."""
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    database = placement.database
    if not backend.exists(database):
        raise NotFound(f"store {app.name}.{store} has no database yet: sync it first")
    folder = backup_folder(app, store)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot make backup folder {str(folder)!r}: {exc.strerror}") from None
    taken = _now()
    backup_id = taken.strftime("%Y%m%dT%H%M%S%fZ")
    revision = _revision(backend, database)
    if isinstance(backend, PostgresBackend):
        suffix, tool, fmt = ".dump", "pg_dump", "custom"
        version = str(backend.server_version)
    elif isinstance(backend, SqliteBackend):
        suffix, tool, fmt = ".sqlite3", "sqlite3 online backup", "sqlite3"
        version = sqlite3.sqlite_version
    else:  # pragma: no cover - every backend is one of the above
        raise ProvisionError(f"backups are not supported on {backend.dialect}")
    target = folder / f"{backup_id}{suffix}"
    partial = folder / f".{backup_id}{suffix}.partial"
    try:
        if isinstance(backend, PostgresBackend):
            args, env = _libpq(backend.database_url(database))
            _run_tool(
                [find_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={partial}", *args],
                env,
                f"pg_dump of store {app.name}.{store}",
            )
        else:
            assert isinstance(backend, SqliteBackend)
            _sqlite_copy(backend.path(database), partial)
        checksum = _sha256(partial)
        size = partial.stat().st_size
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    result = Backup(
        id=backup_id,
        app=app.name,
        store=store,
        database=database,
        backend=backend.dialect,
        server_version=version,
        revision=revision,
        taken_at=taken.isoformat(),
        size=size,
        sha256=checksum,
        tool=tool,
        format=fmt,
        note=note,
        path=str(target),
    )
    manifest = result.as_dict()
    for key in _NOT_IN_MANIFEST:
        manifest.pop(key)
    manifest["file"] = target.name
    _write_json(folder / f"{backup_id}.json", manifest)
    app.site.catalog.record(
        app.name, store, "backup", ok=True, detail=f"{backup_id} ({size} bytes) {note}".strip()
    )
    log.info("%s.%s: backed up as %s", app.name, store, target)
    return _recorded(app, result, pin)


def _load(manifest: Path) -> Backup:
    try:
        data = json.loads(manifest.read_text())
        fields = {k: data[k] for k in Backup.__dataclass_fields__ if k not in _NOT_IN_MANIFEST}
        return Backup(**fields, path=str(manifest.with_name(str(data["file"]))))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"backup manifest {str(manifest)!r} cannot be read: {exc}") from None


def backups(app: App, store: str) -> list[Backup]:
    """The backups of store ``store`` of ``app``, oldest first, with their pins: those in its
    backups folder, and those the catalog knows elsewhere (a folder the configuration no
    longer names) whose manifest is still there."""
    place(app, store)
    folder = backup_folder(app, store)
    records = {r.id: r for r in app.site.catalog.backup_records(app.name, store)}
    manifests = {m.stem: m for m in folder.glob("[!.]*.json")} if folder.is_dir() else {}
    for record in records.values():
        if record.id not in manifests and Path(record.manifest).is_file():
            manifests[record.id] = Path(record.manifest)
    found = []
    for backup_id in sorted(manifests):
        item = _load(manifests[backup_id])
        known = records.get(item.id)
        if known is not None:
            item = replace(item, pinned=known.pinned, reason=known.reason)
        found.append(item)
    return found


def _find(app: App, store: str, source: str | Path) -> Backup:
    """The backup ``source`` names: an id from :func:`backups`, or the path of a backup's
    file or manifest."""
    text_ = str(source)
    path = Path(text_)
    if path.suffix in (".json", ".dump", ".sqlite3") or os.sep in text_:
        manifest = path.with_suffix(".json")
        if not manifest.is_file():
            raise NotFound(f"no backup manifest {str(manifest)!r}")
        return _load(manifest)
    for item in backups(app, store):
        if item.id == text_:
            return item
    raise NotFound(
        f"store {app.name}.{store} has no backup {text_!r}; see `storekeeper backups "
        f"{app.name}.{store}`"
    )


def latest(app: App, store: str) -> Backup:
    """The newest backup of ``app.store``."""
    found = backups(app, store)
    if not found:
        raise NotFound(f"store {app.name}.{store} has no backups")
    return found[-1]


def _verify(app: App, store: str, item: Backup, *, force: bool = False) -> Path:
    if (item.app, item.store) != (app.name, store) and not force:
        raise BadInput(
            f"backup {item.id} is of store {item.app}.{item.store}, not {app.name}.{store} (so "
            "its manifest says): refused, nothing was changed; pass --force to restore it all "
            "the same"
        )
    path = Path(item.path)
    if not path.is_file():
        raise BadInput(f"backup file {str(path)!r} is missing")
    if path.stat().st_size != item.size or _sha256(path) != item.sha256:
        raise BadInput(
            f"backup file {str(path)!r} does not match its manifest's checksum (corrupted or "
            "truncated): refused, nothing was changed"
        )
    return path


_beside = beside  # the rule lives in naming.py, where status and prune read the names too


def _pg_restore(backend: PostgresBackend, path: Path, database: str, what: str) -> None:
    backend.create(database)
    try:
        args, env = _libpq(backend.database_url(database))
        _run_tool(
            [find_tool("pg_restore"), "--no-owner", "--exit-on-error", *args, str(path)],
            env,
            what,
        )
    except BaseException:
        backend.drop(database)
        raise


def restore(
    app: App,
    store: str,
    source: str | Path,
    *,
    as_name: str | None = None,
    force: bool = False,
) -> RestoreReport:
    """Restore backup ``source`` (an id or a path) of ``app.store``.

    With ``as_name`` into a new store database ``<app>_<as_name>`` beside it, touching nothing
    else; else in place of the store, keeping the database it replaces as
    ``<database>_pre_restore_<yyyymmddHHMMSS>``. A backup of another store (as its manifest
    says) is refused unless ``force``. A backup taken at an older revision than the store's
    migrations' head is restored as it is, and the report's ``hint`` says so.
    """
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    item = _find(app, store, source)
    path = _verify(app, store, item, force=force)
    if item.backend != backend.dialect:
        raise BadInput(
            f"backup {item.id} is a {item.backend} backup; the store is {backend.dialect}"
        )
    stamp = _now().strftime("%Y%m%d%H%M%S")
    what = f"restoring backup {item.id} of store {app.name}.{store}"
    if as_name is not None:
        check_identifier(as_name, "store")
        target = app.site.database_name(physical_name(app.name, as_name))
        if backend.exists(target):
            raise BadInput(f"database {target!r} already exists: pick another name for --as")
        if isinstance(backend, PostgresBackend):
            _pg_restore(backend, path, target, what)
        else:
            assert isinstance(backend, SqliteBackend)
            _sqlite_copy(path, backend.path(target))
        app.site.catalog.record(
            app.name, store, "restore", ok=True, detail=f"{item.id} as {target}"
        )
        hint = _older_revision(app, store, item, None)
        return RestoreReport(app.name, store, item.id, target, item.revision, None, False, hint)
    database = placement.database
    kept = _beside(database, f"_pre_restore_{stamp}")
    with backend.lock(database, doing=f"restoring store {app.name}.{store}"):
        if isinstance(backend, PostgresBackend):
            fresh = _beside(database, f"_restoring_{stamp}")
            _pg_restore(backend, path, fresh, what)
            app.site.dispose_engine(backend.database_url(database))
            app.forget(store)
            try:
                if backend.exists(database):
                    backend.swap(database, fresh, kept)
                else:
                    kept = ""
                    backend.rename(fresh, database)
            except BaseException:
                # The swap is one transaction: the store's own database is still in place.
                backend.drop(fresh)
                raise
        else:
            assert isinstance(backend, SqliteBackend)
            live = backend.path(database)
            if backend.exists(kept):
                raise ProvisionError(
                    f"{what}: database {kept!r} already exists; nothing was changed"
                )
            if live.is_file():
                _sqlite_copy(live, backend.path(kept))
            else:
                kept = ""
            _sqlite_copy(path, live)
    app.site.catalog.record(
        app.name, store, "restore", ok=True, detail=f"{item.id}; kept {kept or 'nothing'}"
    )
    log.info("%s.%s: restored %s", app.name, store, item.id)
    hint = _older_revision(app, store, item, f"storekeeper upgrade {app.name}.{store}")
    return RestoreReport(
        app.name, store, item.id, database, item.revision, kept or None, True, hint
    )


# pins, retention, the backups taken before migrating -----------------------------------


def _recorded(app: App, item: Backup, pin: str | None) -> Backup:
    """Record ``item`` in the catalog (pinned with reason ``pin``); a pre-upgrade pin lets go
    of the store's earlier pre-upgrade pins; then apply the store's retention."""
    catalog = app.site.catalog
    manifest = str(Path(item.path).with_suffix(".json"))
    taken = datetime.fromisoformat(item.taken_at)
    catalog.add_backup(
        app.name, item.store, item.id, taken, manifest, pinned=pin is not None, reason=pin or ""
    )
    if pin == PRE_UPGRADE:
        earlier = [
            r.id
            for r in catalog.backup_records(app.name, item.store)
            if r.pinned and r.reason == PRE_UPGRADE and r.id != item.id
        ]
        catalog.set_pinned(app.name, item.store, earlier, False)
    try:
        prune(app, item.store, databases=False)
    except (StorekeeperError, OSError) as exc:
        # The backup is taken; a retention that could not run is said, not made its failure.
        log.warning("%s.%s: retention after the backup failed: %s", app.name, item.store, exc)
    return replace(item, pinned=pin is not None, reason=pin or "")


def _set_pin(app: App, store: str, source: str | Path, pinned: bool, reason: str) -> Backup:
    item = _find(app, store, source)
    catalog = app.site.catalog
    if not catalog.backup_records(app.name, store, item.id):
        # A backup the catalog does not know (taken before it recorded backups): add it.
        manifest = str(Path(item.path).with_suffix(".json"))
        catalog.add_backup(
            app.name, store, item.id, datetime.fromisoformat(item.taken_at), manifest
        )
    catalog.set_pinned(app.name, store, [item.id], pinned, reason)
    catalog.record(
        app.name, store, "pin" if pinned else "unpin", ok=True, detail=f"{item.id} {reason}".strip()
    )
    return replace(item, pinned=pinned, reason=reason if pinned else "")


def pin(app: App, store: str, source: str | Path, *, reason: str = "pinned by hand") -> Backup:
    """Pin backup ``source`` (an id or a path) of ``app.store``: retention never prunes it."""
    return _set_pin(app, store, source, True, reason or "pinned by hand")


def unpin(app: App, store: str, source: str | Path) -> Backup:
    """Unpin backup ``source`` of ``app.store``: retention counts it again."""
    return _set_pin(app, store, source, False, "")


def locate(apps: Sequence[App], source: str) -> tuple[App, str]:
    """The app and store whose backup ``source`` is: an id (looked up in the catalog, then in
    the stores' backup folders) or the path of a backup's file or manifest."""
    by_name = {a.name: a for a in apps}
    path = Path(source)
    owners: set[tuple[str, str]] = set()
    if path.suffix in (".json", ".dump", ".sqlite3") or os.sep in source:
        manifest = path.with_suffix(".json")
        if not manifest.is_file():
            raise NotFound(f"no backup manifest {str(manifest)!r}")
        item = _load(manifest)
        owners.add((item.app, item.store))
    elif apps:
        records = apps[0].site.catalog.backup_records(backup_id=source)  # one site's catalog
        owners = {(r.app, r.store) for r in records}
        if not owners:
            for app in apps:
                for store in app.list_stores():
                    try:
                        folder = backup_folder(app, store)
                    except StorekeeperError:  # not placed (unassigned): it has no backups
                        continue
                    if (folder / f"{source}.json").is_file():
                        owners.add((app.name, store))
    owners = {o for o in owners if o[0] in by_name}
    if not owners:
        raise NotFound(f"no backup {source!r}; see `storekeeper backups`")
    if len(owners) > 1:
        raise BadInput(
            f"backup id {source!r} is taken by several stores ("
            f"{', '.join(sorted(f'{a}.{s}' for a, s in owners))}): give the path of its manifest"
        )
    ((app_name, store),) = owners
    return by_name[app_name], store


def pre_restore_copies(app: App, store: str) -> list[tuple[str, datetime]]:
    """The databases (SQLite: files) restores of ``app.store`` set aside, oldest first, with
    when each was set aside."""
    placement = place(app, store)
    database = placement.database
    names = app.site.backend(placement.service).list(prefix=pre_restore_prefix(database))
    return copies_kept(database, names)


def _remove_files(item: Backup) -> None:
    """Delete a backup: its manifest first (a backup half deleted is never listed), then its
    dump (a file, or a folder of them)."""
    Path(item.path).with_suffix(".json").unlink(missing_ok=True)
    dump = Path(item.path)
    if dump.is_dir():
        shutil.rmtree(dump)
    else:
        dump.unlink(missing_ok=True)


def prune(
    app: App, store: str, *, databases: bool = True, now: datetime | None = None
) -> PruneReport:
    """Apply the retention of ``app.store`` (:mod:`storekeeper.retention`): remove the unpinned
    backups its rules do not keep and, when ``databases``, drop the databases its restores set
    aside more than ``keep_pre_restore`` days ago."""
    placement = place(app, store)
    policy = policy_for(app.site.config, placement.service.name, app.name, store)
    found = backups(app, store)
    doomed = to_prune(
        found, policy, when=lambda b: datetime.fromisoformat(b.taken_at), pinned=lambda b: b.pinned
    )
    for item in doomed:
        _remove_files(item)
        app.site.catalog.remove_backup(app.name, store, item.id)
        app.site.catalog.record(app.name, store, "prune", ok=True, detail=f"removed {item.id}")
        log.info("%s.%s: pruned backup %s", app.name, store, item.id)
    dropped: list[str] = []
    if databases:
        now = now or _now()
        backend = app.site.backend(placement.service)
        for name, when in pre_restore_copies(app, store):
            if pre_restore_expired(when, policy, now):
                with backend.sole_use(name):
                    backend.drop(name)
                dropped.append(name)
                app.site.catalog.record(app.name, store, "prune", ok=True, detail=f"dropped {name}")
    return PruneReport(app.name, store, doomed, len(found) - len(doomed), dropped, policy)


def _older_revision(app: App, store: str, item: Backup, upgrade: str | None) -> str | None:
    """What to say when ``item`` was taken at a revision older than the head of the store's
    migrations (``None`` when it was not, or the store has none): with ``upgrade``, the
    command that brings the store up."""
    scripts = store_scripts(app, store)
    if not scripts.exists:
        return None
    directory = script_directory(scripts)
    tops = set(directory.get_heads())
    at = set(item.revision.split(",")) if item.revision else set()
    if at == tops or not all(is_known(directory, rev) for rev in at):
        return None
    head = ",".join(sorted(tops)) or "base"
    said = (
        f"backup {item.id} was taken at revision {item.revision or 'base'}, older than the head "
        f"of the store's migrations ({head})"
    )
    return f"{said}: bring it up with {upgrade}" if upgrade else said


def before_migrating(app: App, store: str, action: str) -> str:
    """Back up ``app.store`` before ``action`` migrates it, pinned as ``pre-upgrade`` (which
    unpins its earlier pre-upgrade backups); returns the backup's id."""
    return backup(app, store, note=f"automatic, before {action}", pin=PRE_UPGRADE).id


def auto_backup(site: Site, *, enabled: bool = True) -> BeforeMigrating | None:
    """The hook that backs a store up before migrating it (:func:`before_migrating`), or
    ``None`` when not ``enabled`` (``--no-backup``) or the configuration turns it off
    (``auto_backup = false``, or the ``test`` environment unless it sets one)."""
    if not enabled or not site.config.auto_backups:
        return None
    return before_migrating


def stores_named(apps: Sequence[App], targets: Sequence[str]) -> list[tuple[App, str]]:
    """The stores ``targets`` name, each once, in order: ``APP.STORE``, ``APP`` (its stores),
    ``APP.KIND:*`` (the stores made from that kind), ``APP.GLOB``; every store when none."""
    chosen: list[tuple[App, str]] = []
    if not targets:
        chosen = [(app, name) for app in apps for name in app.list_stores()]
    for target in targets:
        app_name, dot, rest = target.partition(".")
        (app,) = select(list(apps), [check_identifier(app_name, "app")])
        names = app.list_stores()
        if not dot:
            picked = names
        elif rest.endswith(":*"):
            kind = app.kind(check_identifier(rest[:-2], "kind")).name
            records = app.site.catalog.runtime_stores(app.name)
            picked = [r.name for r in records if r.kind == kind]
        elif set("*?[") & set(rest):
            picked = [n for n in names if fnmatch.fnmatchcase(n, rest)]
            if not picked:
                raise NotFound(
                    f"{target!r} matches no store of app {app_name!r}; its stores: "
                    f"{', '.join(names) or 'none'}"
                )
        else:
            if rest not in names:
                raise NotFound(
                    f"app {app_name!r} has no store {rest!r}; its stores: "
                    f"{', '.join(names) or 'none'}"
                )
            picked = [rest]
        chosen += [(app, name) for name in picked]
    unique: dict[tuple[str, str], tuple[App, str]] = {}
    for app, name in chosen:
        unique.setdefault((app.name, name), (app, name))
    return list(unique.values())
