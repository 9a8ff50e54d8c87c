"""Backups of one store: taken with the backend's own tool, listed from their manifests, restored
into a new database (or file copy) before it replaces the store.

A backup is two files in ``<root>/var/backups/<app>/<store>/``: the dump (``<id>.dump`` from
``pg_dump --format=custom``, or ``<id>.sqlite3`` from SQLite's online backup API) and its
manifest ``<id>.json``. Both are written under a temporary name and renamed, the manifest last,
and only manifests are listed: a half-written backup is never seen.

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
"""

from __future__ import annotations

import contextlib
import errno
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
from dataclasses import MISSING, asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import URL, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from . import backup_crypto as crypto
from .backends.pg_tools import INSTALL, ClientProgram, client_program, server_major
from .backends.postgresql import PostgresBackend, find_program
from .backends.sqlite import SqliteBackend
from .errors import BadInput, ConfigError, NotFound, ProvisionError, StorekeeperError
from .naming import MAX_DATABASE_NAME_BYTES, check_identifier, physical_name
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


def _stream_tool(
    argv: list[str], env: dict[str, str], out: IO[bytes], data_key: bytes, digest: Any, what: str
) -> None:
    """Run ``argv`` (pg_dump to standard output), encrypting what it writes into ``out``."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
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
    """pg_dump ``database`` into ``partial``; the running SHA-256 when it was encrypted."""
    tool = client_program("pg_dump", backend.server_version)
    args, env = _libpq(backend.database_url(database))
    argv = [tool.path, f"--format={fmt}", "--no-owner", *args]
    if fmt == "directory":
        argv.append(f"--jobs={jobs}")
    if data_key is None:
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
    encrypt: bool | None = None,
    format: str = "auto",
) -> Backup:
    """Back up store ``store`` of ``app``; returns the backup's manifest.

    ``encrypt``: ``None`` encrypts when ``STOREKEEPER_SECRET_KEY`` is set, ``True`` always
    (an error without a key), ``False`` never. ``format`` (PostgreSQL): ``custom``,
    ``directory``, or ``auto``: directory from :data:`DIRECTORY_FORMAT_FROM` bytes.
    """
    taken = take_backup(app, store, note=note, encrypt=encrypt, format=format)
    record_backup(app, taken)
    return taken


def record_backup(app: App, taken: Backup) -> None:
    """Write backup ``taken`` in the catalog's history."""
    how = f"{taken.format}{', encrypted' if taken.encrypted else ''}"
    app.site.catalog.record(
        app.name,
        taken.store,
        "backup",
        ok=True,
        detail=f"{taken.id} ({taken.size} bytes, {how}) {taken.note}".strip(),
    )


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
    manifest.pop("path")
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
            if k not in ("path", "wrapped_key") and (k in data or f.default is MISSING)
        }
        wrapped = (data.get("encryption") or {}).get("wrapped_key")
        path = str(manifest.with_name(str(data["file"])))
        return Backup(**fields, path=path, wrapped_key=wrapped)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"backup manifest {str(manifest)!r} cannot be read: {exc}") from None


def _manifests(folder: Path) -> list[Path]:
    return sorted(folder.glob("[!.]*.json")) if folder.is_dir() else []


def backups(app: App, store: str) -> list[Backup]:
    """The backups of store ``store`` of ``app``, oldest first."""
    place(app, store)
    return [_load(m) for m in _manifests(backup_folder(app, store))]


_SUFFIXES = (".json", ".dump", ".sqlite3", ".dir", ".enc")


def _find(app: App, store: str, source: str | Path) -> Backup:
    """The backup ``source`` names: an id from :func:`backups`, or the path of a backup's
    file or manifest."""
    text_ = str(source)
    path = Path(text_)
    if path.suffix in _SUFFIXES or os.sep in text_:
        manifest = path.with_name(f"{path.name.split('.')[0]}.json")
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


def _beside(database: str, tag: str) -> str:
    """The name of a database kept beside ``database``: ``<database><tag>``, the database's part
    shortened so the whole fits PostgreSQL's 63 bytes."""
    room = MAX_DATABASE_NAME_BYTES - len(tag.encode())
    head = database.encode()[:room].decode(errors="ignore")
    return f"{head}{tag}"


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
    app: App, store: str, source: str | Path, *, as_name: str | None = None
) -> RestoreReport:
    """Restore backup ``source`` (an id or a path) of ``app.store``.

    With ``as_name`` into a new store database ``<app>_<as_name>`` beside it, touching nothing
    else; else in place of the store, keeping the database it replaces as
    ``<database>_pre_restore_<yyyymmddHHMMSS>``. An encrypted backup is decrypted with
    ``STOREKEEPER_SECRET_KEY``. Everything that can be checked (the checksum, the key, the
    server's version) is checked before anything is touched.
    """
    placement = place(app, store)
    backend = app.site.backend(placement.service)
    item = _find(app, store, source)
    path = _verify(app, store, item)
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
        return RestoreReport(app.name, store, item.id, target, item.revision, None, False)
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
    log.info("%s.%s: restored %s", app.name, store, item.id)
    return RestoreReport(app.name, store, item.id, database, item.revision, kept or None, True)


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
    """Every folder that holds backups: those of the apps' stores, and any under
    ``<root>/var/backups`` (the backups of stores no longer declared too)."""
    found = {backup_folder(app, store) for app in apps for store in app.list_stores()}
    root = Path(site.config.root) / "var" / "backups"
    if root.is_dir():
        found |= {m.parent for m in root.rglob("[!.]*.json")}
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
