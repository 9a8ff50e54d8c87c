"""Backups of one store: taken with the backend's own tool, listed from their manifests, restored
into a new database (or file copy) before it replaces the store.

A backup is two files in ``<root>/var/backups/<app>/<store>/``: the dump (``<id>.dump`` from
``pg_dump --format=custom``, or ``<id>.sqlite3`` from SQLite's online backup API) and its
manifest ``<id>.json``. Both are written under a temporary name and renamed, the manifest last,
and only manifests are listed: a half-written backup is never seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from .backends.postgresql import PostgresBackend, find_program
from .backends.sqlite import SqliteBackend
from .errors import BadInput, NotFound, ProvisionError
from .naming import MAX_DATABASE_NAME_BYTES, check_identifier, physical_name
from .secret import mask
from .site import place

if TYPE_CHECKING:
    from .backends.base import Backend
    from .declare import App

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup_folder(app: App, store: str) -> Path:
    """Where the backups of ``app.store`` go: ``<root>/var/backups/<app>/<store>``."""
    check_identifier(store, "store")
    return Path(app.site.config.root) / "var" / "backups" / app.name / store


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


def backup(app: App, store: str, *, note: str = "") -> Backup:
    """Back up store ``store`` of ``app``; returns the backup's manifest."""
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
    manifest.pop("path")
    manifest["file"] = target.name
    _write_json(folder / f"{backup_id}.json", manifest)
    app.site.catalog.record(
        app.name, store, "backup", ok=True, detail=f"{backup_id} ({size} bytes) {note}".strip()
    )
    app.site.catalog.record_state(app.name, store, revision=revision, backed_up_at=taken)
    log.info("%s.%s: backed up as %s", app.name, store, target)
    return result


def _load(manifest: Path) -> Backup:
    try:
        data = json.loads(manifest.read_text())
        fields = {k: data[k] for k in Backup.__dataclass_fields__ if k not in ("path",)}
        return Backup(**fields, path=str(manifest.with_name(str(data["file"]))))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"backup manifest {str(manifest)!r} cannot be read: {exc}") from None


def backups(app: App, store: str) -> list[Backup]:
    """The backups of store ``store`` of ``app``, oldest first."""
    place(app, store)
    folder = backup_folder(app, store)
    if not folder.is_dir():
        return []
    return [_load(m) for m in sorted(folder.glob("[!.]*.json"))]


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


def _verify(app: App, store: str, item: Backup) -> Path:
    if (item.app, item.store) != (app.name, store):
        raise BadInput(
            f"backup {item.id} is of store {item.app}.{item.store}, not {app.name}.{store}: refused"
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


def _beside(database: str, tag: str) -> str:
    """The name of a database kept beside ``database``: ``<database><tag>``, the database's part
    shortened so the whole fits PostgreSQL's 63 bytes."""
    room = MAX_DATABASE_NAME_BYTES - len(tag.encode())
    head = database.encode()[:room].decode(errors="ignore")
    return f"{head}{tag}"


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
    app: App, store: str, source: str | Path, *, as_name: str | None = None
) -> RestoreReport:
    """Restore backup ``source`` (an id or a path) of ``app.store``.

    With ``as_name`` into a new store database ``<app>_<as_name>`` beside it, touching nothing
    else; else in place of the store, keeping the database it replaces as
    ``<database>_pre_restore_<yyyymmddHHMMSS>``.
    """
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    item = _find(app, store, source)
    path = _verify(app, store, item)
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
        return RestoreReport(app.name, store, item.id, target, item.revision, None, False)
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
    app.site.catalog.record_state(
        app.name,
        store,
        present=True,
        size=backend.size(database),
        revision=item.revision,
        checked_at=_now(),
    )
    log.info("%s.%s: restored %s", app.name, store, item.id)
    return RestoreReport(app.name, store, item.id, database, item.revision, kept or None, True)
