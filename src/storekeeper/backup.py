"""Backups of one store: taken with the backend's own tool, listed from their manifests, restored
into a new database (or file copy) before it replaces the store.

A backup is two files in ``<backups>/<app>/<store>/`` (``backups`` is ``var/backups`` under the
project's root unless the configuration names another folder, globally or per service): the
dump (``<id>.dump`` from ``pg_dump --format=custom``, or ``<id>.sqlite3`` from SQLite's online
backup API) and its manifest ``<id>.json``. Both are written under a temporary name and
renamed, the manifest last, and only manifests are listed: a half-written backup is never seen.

Large PostgreSQL stores (from :data:`DIRECTORY_FORMAT_FROM` bytes) are dumped with
``pg_dump --format=directory --jobs N`` into a folder ``<id>.dir``; the manifest says which
format and how many jobs, and ``pg_restore`` gets the same ``--jobs``. With a master key
(``STOREKEEPER_SECRET_KEY``, or ``encrypt=True``) the backup is encrypted at rest
(:mod:`storekeeper.backup_crypto`): ``pg_dump --format=custom`` is streamed through the
encryption into ``<id>.dump.enc``, so no plain copy ever reaches the disk (SQLite's online
backup needs a file: its plain copy is a temporary file in the backup folder, removed once
encrypted).

The manifest's SHA-256 is taken over the backup as stored: the file's bytes (for an encrypted
backup its ciphertext, so a backup is verified without the key), or for the directory format
over the lines ``NAME\0SIZE\0SHA256\n`` of its files in name order.

Each backup is recorded in the catalog too, with its pin: a pinned backup is never pruned.
Retention (:mod:`storekeeper.retention`) is applied after each backup and by :func:`prune`,
which also drops the databases restores set aside once they are older than
``keep_pre_restore`` days. Before ``upgrade``, ``downgrade`` and a ``sync`` that migrates an
existing store, :func:`before_migrating` takes a backup pinned as ``pre-upgrade``; it stays
pinned until a later pre-upgrade backup of the same store is taken.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import URL, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from . import backup_crypto as crypto
from .backends.pg_tools import INSTALL, ClientProgram, client_program, server_major
from .backends.postgresql import PostgresBackend, find_program
from .backends.sqlite import SqliteBackend
from .discover import select
from .errors import BadInput, ConfigError, NotFound, ProvisionError, StorekeeperError
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
from .secret import mask, secret_key
from .site import place

if TYPE_CHECKING:
    from .backends.base import Backend
    from .declare import App
    from .migrate.fanout import StoreRef
    from .site import Site

log = logging.getLogger("storekeeper")

_CHUNK = 1 << 20
#: From this database size (bytes) up, PostgreSQL backups use ``pg_dump --format=directory``
#: with parallel jobs, and restores ``pg_restore --jobs``.
DIRECTORY_FORMAT_FROM = 1 << 30
#: PostgreSQL formats :func:`backup` takes: ``auto`` chooses by size.
FORMATS = ("auto", "custom", "directory")


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
    #: Whether the backup is encrypted, and the id of the master key that wraps its data key.
    encrypted: bool = False
    key_id: str | None = None
    #: pg_dump's ``--jobs`` (1 but for the directory format), and what ``--version`` said.
    jobs: int = 1
    tool_version: str = ""
    #: The data key wrapped by the master key (kept in the manifest only, never shown).
    wrapped_key: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("wrapped_key")
        return data


#: What a manifest holds: every field of :class:`Backup` but where it is and its pin.
_NOT_IN_MANIFEST = ("path", "pinned", "reason", "wrapped_key")

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


def find_tool(name: str, server_version: int | None = None) -> str:
    """The path of PostgreSQL client program ``name`` (``pg_dump``, ``pg_restore``); with a
    server's ``server_version_num``, one that works with that server (see
    :func:`storekeeper.backends.pg_tools.client_program`)."""
    if server_version is not None:
        return client_program(name, server_version).path
    return find_program(name, install=INSTALL)


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_sha256(folder: Path) -> tuple[str, int]:
    """The SHA-256 of a directory-format dump (over ``NAME\\0SIZE\\0SHA256\\n`` of each file,
    in name order) and its size."""
    digest, total = hashlib.sha256(), 0
    for path in sorted(folder.iterdir()):
        size = path.stat().st_size
        total += size
        digest.update(f"{path.name}\0{size}\0{_sha256(path)}\n".encode())
    return digest.hexdigest(), total


def _measure(path: Path) -> tuple[str, int]:
    """The checksum and size of a backup as stored (a file, or a directory-format folder)."""
    if path.is_dir():
        return _tree_sha256(path)
    return _sha256(path), path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _jobs_for(size: int) -> int:
    """pg_dump/pg_restore ``--jobs`` for a store of ``size`` bytes."""
    return max(1, min(4, os.cpu_count() or 1)) if size >= DIRECTORY_FORMAT_FROM else 1


def _chosen_format(backend: PostgresBackend, database: str, fmt: str, encrypted: bool) -> str:
    if fmt not in FORMATS:
        raise BadInput(f"unknown backup format {fmt!r}; use {', '.join(FORMATS)}")
    if encrypted:
        if fmt == "directory":
            raise BadInput(
                "an encrypted backup is streamed through the encryption in pg_dump's custom "
                "format: the directory format would write the plain dump to disk first"
            )
        return "custom"
    if fmt != "auto":
        return fmt
    return "directory" if (backend.size(database) or 0) >= DIRECTORY_FORMAT_FROM else "custom"


@contextmanager
def _writing(folder: Path, partial: Path, what: str) -> Iterator[None]:
    """Remove ``partial`` when the work in the block fails; say where a write failed."""
    try:
        yield
    except BaseException as exc:
        # The partial file, and what was made beside it (SQLite's journal, the plain copy).
        for made in folder.glob(f"{glob.escape(partial.name)}*"):
            _remove(made)
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise ProvisionError(
                f"{what}: writing into {str(folder)!r} failed: {exc} (No space left on "
                "device); the partial backup was removed"
            ) from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise ProvisionError(
                f"{what}: writing into {str(folder)!r} failed: {exc.strerror}; the partial "
                "backup was removed"
            ) from None
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ProvisionError(
                f"{what}: backup folder {str(folder)!r} is not writable: {exc.strerror}"
            ) from None
        if isinstance(exc, ProvisionError):
            raise ProvisionError(
                f"{exc} (writing into {str(folder)!r}; the partial backup was removed)"
            ) from None
        raise


def _copy_hashed(source: IO[bytes], out: IO[bytes], digest: Any) -> None:
    """Copy ``source`` into ``out`` a chunk at a time, hashing what is written."""
    while chunk := source.read(_CHUNK):
        out.write(chunk)
        digest.update(chunk)


def _stream_tool(
    argv: list[str],
    env: dict[str, str],
    out: IO[bytes],
    data_key: bytes | None,
    digest: Any,
    what: str,
) -> None:
    """Run ``argv`` (pg_dump to standard output), writing what it writes into ``out`` (encrypted
    with ``data_key`` when one is given) and hashing it as it goes."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            if data_key is None:
                _copy_hashed(proc.stdout, out, digest)
            else:
                crypto.encrypt_stream(proc.stdout, out, data_key, on_write=digest.update)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.wait() != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()
            raise ProvisionError(f"{what} failed: {mask(said)}")


# Who writes a partial file: its name ends .<host>.<pid>.partial, so that the next backup on
# this host can tell one left by a process that was killed (and remove it) from one being written.
_WRITER = socket.gethostname().replace(".", "_") or "host"


def _sweep(folder: Path) -> None:
    """Remove the partial files in ``folder`` left by backups killed on this host."""
    for path in folder.glob(f".*.{glob.escape(_WRITER)}.*.partial*"):
        pid = path.name.split(".partial")[0].rsplit(".", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:
            pass  # alive, another user's


def _dump_postgres(
    backend: PostgresBackend,
    database: str,
    partial: Path,
    fmt: str,
    jobs: int,
    data_key: bytes | None,
    what: str,
) -> tuple[ClientProgram, str | None]:
    """pg_dump ``database`` into ``partial``; the SHA-256 of what was written, taken as it was
    written (custom format: streamed from pg_dump's output, so the file is not read again),
    or ``None`` for the directory format (a folder pg_dump writes itself)."""
    tool = client_program("pg_dump", backend.server_version)
    args, env = _libpq(backend.database_url(database))
    argv = [tool.path, f"--format={fmt}", "--no-owner", *args]
    if fmt == "directory":
        argv.append(f"--jobs={jobs}")
        _run_tool([*argv, f"--file={partial}"], env, what)
        return tool, None
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        _stream_tool(argv, env, out, data_key, digest, what)
        out.flush()
        os.fsync(out.fileno())
    return tool, digest.hexdigest()


def _dump_sqlite(source: Path, partial: Path, data_key: bytes | None) -> str | None:
    """Copy SQLite file ``source`` into ``partial`` (encrypted when ``data_key``)."""
    if data_key is None:
        _sqlite_copy(source, partial)
        return None
    plain = partial.with_name(f"{partial.name}.plain")
    try:
        _sqlite_copy(source, plain)
        digest = hashlib.sha256()
        with plain.open("rb") as src, partial.open("wb") as out:
            crypto.encrypt_stream(src, out, data_key, on_write=digest.update)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest()
    finally:
        plain.unlink(missing_ok=True)


def backup(
    app: App,
    store: str,
    *,
    note: str = "",
    pin: str | None = None,
    encrypt: bool | None = None,
    format: str = "auto",
) -> Backup:
    """Back up store ``store`` of ``app``; returns the backup's manifest. With ``pin`` (a
    reason), the backup is pinned as it is recorded. The store's retention is applied
    afterwards (:func:`prune`, backups only).

    ``encrypt``: ``None`` encrypts when ``STOREKEEPER_SECRET_KEY`` is set, ``True`` always
    (an error without a key), ``False`` never. ``format`` (PostgreSQL): ``custom``,
    ``directory``, or ``auto``: directory from :data:`DIRECTORY_FORMAT_FROM` bytes.
    """
    taken = take_backup(app, store, note=note, encrypt=encrypt, format=format)
    return record_backup(app, taken, pin)


def record_backup(app: App, taken: Backup, pin: str | None = None) -> Backup:
    """Write backup ``taken`` in the catalog: its history, and its backups (pinned with reason
    ``pin``); then apply the store's retention. Returns the backup with its pin."""
    how = f"{taken.format}{', encrypted' if taken.encrypted else ''}"
    app.site.catalog.record(
        app.name,
        taken.store,
        "backup",
        ok=True,
        detail=f"{taken.id} ({taken.size} bytes, {how}) {taken.note}".strip(),
    )
    app.site.catalog.record_state(
        app.name,
        taken.store,
        revision=taken.revision,
        backed_up_at=datetime.fromisoformat(taken.taken_at),
    )
    return _recorded(app, taken, pin)


def take_backup(
    app: App,
    store: str,
    *,
    note: str = "",
    encrypt: bool | None = None,
    format: str = "auto",
) -> Backup:
    """:func:`backup` without writing it in the catalog's history (a fan-out's workers leave
    that to the process that started them)."""
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    database = placement.database
    if not backend.exists(database):
        raise NotFound(f"store {app.name}.{store} has no database yet: sync it first")
    encrypted = bool(secret_key()) if encrypt is None else encrypt
    data_key, wrapped = crypto.new_data_key() if encrypted else (None, None)
    folder = backup_folder(app, store)
    what = f"backup of store {app.name}.{store}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot make backup folder {str(folder)!r}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ProvisionError(f"{what}: backup folder {str(folder)!r} is not writable")
    taken = _now()
    backup_id = taken.strftime("%Y%m%dT%H%M%S%fZ")
    revision = _revision(backend, database)
    jobs, version_text = 1, ""
    if isinstance(backend, PostgresBackend):
        fmt = _chosen_format(backend, database, format, encrypted)
        suffix, tool = (".dir" if fmt == "directory" else ".dump"), "pg_dump"
        version = str(backend.server_version)
        if fmt == "directory":
            jobs = max(1, min(4, os.cpu_count() or 1))
    elif isinstance(backend, SqliteBackend):
        suffix, tool, fmt = ".sqlite3", "sqlite3 online backup", "sqlite3"
        version = version_text = sqlite3.sqlite_version
    else:  # pragma: no cover - every backend is one of the above
        raise ProvisionError(f"backups are not supported on {backend.dialect}")
    if encrypted:
        suffix += ".enc"
    target = folder / f"{backup_id}{suffix}"
    _sweep(folder)
    partial = folder / f".{backup_id}{suffix}.{_WRITER}.{os.getpid()}.partial"
    with _writing(folder, partial, what):
        if isinstance(backend, PostgresBackend):
            program, streamed = _dump_postgres(
                backend,
                database,
                partial,
                fmt,
                jobs,
                data_key,
                f"pg_dump of store {app.name}.{store}",
            )
            version_text = program.version
        else:
            assert isinstance(backend, SqliteBackend)
            streamed = _dump_sqlite(backend.path(database), partial, data_key)
        if streamed is not None:
            checksum, size = streamed, partial.stat().st_size
        else:
            checksum, size = _measure(partial)
        partial.replace(target)
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
        encrypted=encrypted,
        key_id=crypto.key_id_of(wrapped) if wrapped else None,
        jobs=jobs,
        tool_version=version_text,
        wrapped_key=wrapped,
    )
    try:
        _write_json(folder / f"{backup_id}.json", _manifest(result))
    except BaseException:
        _remove(target)
        raise
    log.info("%s.%s: backed up as %s", app.name, store, target)
    return result


def _manifest(item: Backup) -> dict[str, Any]:
    """The manifest of ``item``, as written beside its file."""
    manifest = item.as_dict()
    for key in ("path", "pinned", "reason"):
        manifest.pop(key)
    manifest["file"] = Path(item.path).name
    manifest["sha256_of"] = (
        "the files of the dump folder: NAME\\0SIZE\\0SHA256\\n in name order"
        if item.format == "directory"
        else "the file as stored" + (" (its ciphertext)" if item.encrypted else "")
    )
    if item.wrapped_key:
        manifest["encryption"] = {
            "cipher": crypto.CIPHER,
            "chunk_size": crypto.CHUNK_SIZE,
            "key_id": item.key_id,
            "wrapped_key": item.wrapped_key,
        }
    return manifest


def _load(manifest: Path) -> Backup:
    try:
        data = json.loads(manifest.read_text())
        fields = {
            k: data[k]
            for k, f in Backup.__dataclass_fields__.items()
            if k not in _NOT_IN_MANIFEST and (k in data or f.default is MISSING)
        }
        wrapped = (data.get("encryption") or {}).get("wrapped_key")
        path = str(manifest.with_name(str(data["file"])))
        return Backup(**fields, path=path, wrapped_key=wrapped)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"backup manifest {str(manifest)!r} cannot be read: {exc}") from None


def _manifests(folder: Path) -> list[Path]:
    return sorted(folder.glob("[!.]*.json")) if folder.is_dir() else []


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


_SUFFIXES = (".json", ".dump", ".sqlite3", ".dir", ".enc")


def _manifest_of(path: Path) -> Path:
    """The manifest beside a backup's file or folder (``<id>.dump.enc`` → ``<id>.json``)."""
    return path.with_name(f"{path.name.split('.')[0]}.json")


def _find(app: App, store: str, source: str | Path) -> Backup:
    """The backup ``source`` names: an id from :func:`backups`, or the path of a backup's
    file or manifest."""
    text_ = str(source)
    path = Path(text_)
    if path.suffix in _SUFFIXES or os.sep in text_:
        manifest = _manifest_of(path)
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
    if not path.exists():
        raise BadInput(f"backup file {str(path)!r} is missing")
    if _measure(path) != (item.sha256, item.size):
        raise BadInput(
            f"backup file {str(path)!r} does not match its manifest's checksum (corrupted or "
            "truncated): refused, nothing was changed"
        )
    return path


def _check_server(item: Backup, backend: Backend) -> None:
    """Refuse a PostgreSQL backup taken from a newer major version than the target server."""
    if not isinstance(backend, PostgresBackend):
        return
    theirs, ours = server_major(int(item.server_version)), server_major(backend.server_version)
    if theirs > ours:
        raise BadInput(
            f"backup {item.id} was taken from PostgreSQL {theirs}, newer than the store's "
            f"server (PostgreSQL {ours}) on service {backend.service.name!r}: a dump restores "
            "into the same or a newer server only; refused, nothing was changed"
        )


_beside = beside  # the rule lives in naming.py, where status and prune read the names too


def _feed_tool(
    argv: list[str], env: dict[str, str], path: Path, data_key: bytes, what: str
) -> None:
    """Run ``argv`` (pg_restore reading standard input), decrypting ``path`` into it."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None
        try:
            with path.open("rb") as src:
                crypto.decrypt_stream(src, proc.stdin, data_key, f"backup file {str(path)!r}")
            proc.stdin.close()
        except BrokenPipeError:
            # pg_restore stopped reading: its exit code and message say why.
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()
            raise ProvisionError(f"{what} failed: {mask(said)}")


def _pg_restore(
    backend: PostgresBackend,
    item: Backup,
    path: Path,
    database: str,
    data_key: bytes | None,
    what: str,
) -> None:
    tool = client_program("pg_restore", backend.server_version)
    backend.create(database)
    try:
        args, env = _libpq(backend.database_url(database))
        argv = [tool.path, "--no-owner", "--exit-on-error", *args]
        if data_key is not None:
            _feed_tool(argv, env, path, data_key, what)
        else:
            jobs = max(item.jobs, _jobs_for(item.size))
            if jobs > 1:
                argv.append(f"--jobs={jobs}")
            _run_tool([*argv, str(path)], env, what)
    except BaseException:
        backend.drop(database)
        raise


@contextmanager
def _plain_file(path: Path, data_key: bytes | None, beside: Path) -> Iterator[Path]:
    """``path`` itself, or (encrypted) a decrypted copy in a temporary file in folder
    ``beside``, removed afterwards."""
    if data_key is None:
        yield path
        return
    beside.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".restoring-", suffix=".sqlite3", dir=beside)
    plain = Path(name)
    try:
        with os.fdopen(handle, "wb") as out, path.open("rb") as src:
            crypto.decrypt_stream(src, out, data_key, f"backup file {str(path)!r}")
        yield plain
    finally:
        plain.unlink(missing_ok=True)


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
    says) is refused unless ``force``. An encrypted backup is decrypted with
    ``STOREKEEPER_SECRET_KEY``. Everything that can be checked (the checksum, the key, the
    server's version) is checked before anything is touched. A backup taken at an older
    revision than the store's migrations' head is restored as it is, and the report's
    ``hint`` says so.
    """
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    item = _find(app, store, source)
    path = _verify(app, store, item, force=force)
    if item.backend != backend.dialect:
        raise BadInput(
            f"backup {item.id} is a {item.backend} backup; the store is {backend.dialect}"
        )
    _check_server(item, backend)
    data_key = None
    if item.encrypted:
        if not item.wrapped_key:
            raise BadInput(f"backup {item.id} is encrypted but its manifest holds no wrapped key")
        data_key = crypto.open_data_key(item.wrapped_key, f"backup {item.id}")
    stamp = _now().strftime("%Y%m%d%H%M%S")
    what = f"restoring backup {item.id} of store {app.name}.{store}"
    if as_name is not None:
        check_identifier(as_name, "store")
        target = app.site.database_name(physical_name(app.name, as_name))
        if backend.exists(target):
            raise BadInput(f"database {target!r} already exists: pick another name for --as")
        if isinstance(backend, PostgresBackend):
            _pg_restore(backend, item, path, target, data_key, what)
        else:
            assert isinstance(backend, SqliteBackend)
            destination = backend.path(target)
            with _plain_file(path, data_key, destination.parent) as plain:
                _sqlite_copy(plain, destination)
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
            # Made only under this lock: one found now was left by a restore that was killed.
            for leftover in backend.list(prefix=fresh[: -len(stamp)]):
                backend.drop(leftover)
            _pg_restore(backend, item, path, fresh, data_key, what)
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
            with _plain_file(path, data_key, live.parent) as plain:
                if live.is_file():
                    _sqlite_copy(live, backend.path(kept))
                else:
                    kept = ""
                _sqlite_copy(plain, live)
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
    hint = _older_revision(app, store, item, f"storekeeper upgrade {app.name}.{store}")
    return RestoreReport(
        app.name, store, item.id, database, item.revision, kept or None, True, hint
    )


# pins, retention, the backups taken before migrating -----------------------------------


def _recorded(app: App, item: Backup, pin: str | None) -> Backup:
    """Record ``item`` in the catalog (pinned with reason ``pin``); a pre-upgrade pin lets go
    of the store's earlier pre-upgrade pins; then apply the store's retention."""
    catalog = app.site.catalog
    manifest = str(_manifest_of(Path(item.path)))
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
        manifest = str(_manifest_of(Path(item.path)))
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
    if path.suffix in _SUFFIXES or os.sep in source:
        manifest = _manifest_of(path)
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
    _manifest_of(Path(item.path)).unlink(missing_ok=True)
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


# many stores at once -----------------------------------------------------------------------


@dataclass
class BackupResult:
    """What backing up one store of a fan-out did."""

    app: str
    store: str
    ok: bool
    backup: Backup | None = None
    error: str = ""
    #: The exit code the failure alone would give (1 failed while working, 2 bad input).
    exit_code: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backup"] = self.backup.as_dict() if self.backup else None
        return data


@dataclass
class BackupRun:
    """What :func:`backup_many` did, store by store."""

    results: list[BackupResult] = field(default_factory=list)

    @property
    def failed(self) -> list[BackupResult]:
        """The stores whose backup failed."""
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        """0 when every store was backed up, else 1."""
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stores": [r.as_dict() for r in self.results],
            "failed": [f"{r.app}.{r.store}" for r in self.failed],
        }


#: ``progress(result, done, total)`` after each store.
BackupProgress = Callable[[BackupResult, int, int], None]


def _attempt(ref: StoreRef, note: str, encrypt: bool | None, format: str) -> BackupResult:
    """Back up one store; a failure is returned in the result, not raised."""
    import time

    started = time.perf_counter()
    result = BackupResult(ref.app.name, ref.store, ok=False)
    try:
        result.backup = take_backup(ref.app, ref.store, note=note, encrypt=encrypt, format=format)
        result.ok = True
    except StorekeeperError as exc:
        result.error, result.exit_code = str(exc), exc.exit_code
    except Exception as exc:  # a worker must report, never die with the run half-told
        result.error, result.exit_code = f"unexpected {type(exc).__name__}: {exc}", 1
    result.seconds = time.perf_counter() - started
    return result


def backup_many(
    refs: Sequence[StoreRef],
    *,
    jobs: int = 1,
    note: str = "",
    encrypt: bool | None = None,
    format: str = "auto",
    progress: BackupProgress | None = None,
) -> BackupRun:
    """Back up every store of ``refs`` (from
    :func:`storekeeper.migrate.fanout.resolve_targets` with ``with_migrations=False``), in
    ``jobs`` worker processes. A store that fails does not stop the others; each backup is
    written in the catalog's history."""
    from .migrate.fanout import run_each

    if format not in FORMATS:
        raise BadInput(f"unknown backup format {format!r}; use {', '.join(FORMATS)}")
    if encrypt:
        crypto.new_data_key()  # no key: one clear error before any store is touched
    run = BackupRun()

    def done(ref: StoreRef, result: BackupResult) -> None:
        run.results.append(result)
        if result.backup is not None:
            record_backup(ref.app, result.backup)
        else:
            ref.app.site.catalog.record(
                ref.app.name, ref.store, "backup", ok=False, detail=result.error
            )
        if progress is not None:
            progress(result, len(run.results), len(refs))

    run_each(
        refs,
        lambda ref: _attempt(ref, note, encrypt, format),
        jobs=jobs,
        ok=lambda r: r.ok,
        continue_on_error=True,
        done=done,
    )
    return run


# moving backups to a new master key --------------------------------------------------------


@dataclass
class KeyRotation:
    """The encrypted backups' manifests, each with its data key rewrapped by the new master
    key, ready to be written (:meth:`commit`)."""

    manifests: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def commit(self) -> list[str]:
        """Write every manifest (each replaced whole); returns the backups' ids."""
        for path, data in self.manifests:
            _write_json(path, data)
        return [str(data["id"]) for _, data in self.manifests]


def backup_folders(site: Site, apps: Sequence[App]) -> list[Path]:
    """Every folder that holds backups: those of the apps' stores, any under the configured
    backups folders (the backups of stores no longer declared too), and those the catalog
    knows."""
    found: set[Path] = set()
    for app in apps:
        for store in app.list_stores():
            try:
                found.add(backup_folder(app, store))
            except StorekeeperError:  # not placed (unassigned): it has no backups
                continue
    config = site.config
    roots = {Path(config.backups_folder(name).value) for name in (*config.service_backups, "")}
    for root in roots:
        if root.is_dir():
            found |= {m.parent for m in root.rglob("[!.]*.json")}
    found |= {Path(r.manifest).parent for r in site.catalog.backup_records()}
    return sorted(f for f in found if f.is_dir())


def plan_key_rotation(
    site: Site, apps: Sequence[App], new_key: str, old_key: str | None
) -> KeyRotation:
    """Rewrap the data key of every encrypted backup under ``new_key`` (opened with
    ``old_key``, or ``new_key`` for those already under it), in memory: raises
    :class:`~storekeeper.errors.ConfigError` naming the backups neither key opens, before
    anything is written."""
    plan, refused = KeyRotation(), []
    for folder in backup_folders(site, apps):
        for manifest in _manifests(folder):
            item = _load(manifest)
            if not item.wrapped_key:
                continue
            try:
                wrapped = crypto.rewrap_key(item.wrapped_key, old_key, new_key)
            except ConfigError:
                refused.append(f"{item.app}.{item.store} {item.id} (key id {item.key_id})")
                continue
            data = json.loads(manifest.read_text())
            data["key_id"] = crypto.key_id_of(wrapped)
            data["encryption"] = {**data["encryption"], "key_id": data["key_id"]}
            data["encryption"]["wrapped_key"] = wrapped
            plan.manifests.append((manifest, data))
    if refused:
        raise ConfigError(
            f"neither the old key nor the new one opens the data key of backup(s) "
            f"{', '.join(refused)}; nothing was changed: give the key they were taken with"
        )
    return plan
