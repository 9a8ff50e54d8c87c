"""Backups when things go wrong: client programs missing or too old, a backup from a newer
server, a full disk, an unwritable folder, ``kill -9`` in the middle of a backup and of a
restore, a store in use while it is restored. Each: the message checked, nothing changed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import storekeeper.backup as core
from conftest import write_app
from storekeeper.backends.pg_tools import client_program, server_major
from storekeeper.backup import backup, backup_folder, backups, restore
from storekeeper.errors import BadInput, ProvisionError, ServiceUnavailable
from storekeeper.site import Site
from test_backup import (
    _app,
    _change,
    _engine,
    _stamp,
    _state,
    _state_rows,
    _taken_then_changed,
    _unchanged,
)

postgres_only = pytest.mark.parametrize("dialect", ["postgresql"])


def _fake_program(folder: Path, name: str, version: str) -> None:
    folder.mkdir(parents=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version} (Debian {version}-1)'\n")
    path.chmod(0o755)


def test_the_client_of_the_servers_version_is_chosen_else_a_newer_one(tmp_path: Path) -> None:
    for version in ("12.9", "15.4", "17.1"):
        _fake_program(tmp_path / version, "pg_dump", version)
    search = [str(tmp_path / v) for v in ("17.1", "12.9", "15.4")]
    assert client_program("pg_dump", 150004, search).major == 15
    assert client_program("pg_dump", 120000, search).major == 12
    assert client_program("pg_dump", 160002, search).path == str(tmp_path / "17.1" / "pg_dump")
    with pytest.raises(ServiceUnavailable) as caught:
        client_program("pg_dump", 180000, search)
    message = str(caught.value)
    assert "pg_dump 17" in message and "older than the PostgreSQL 18 server" in message
    assert "apt-get install postgresql-client-18" in message


def test_a_missing_client_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="apt-get install postgresql-client\\)"):
        client_program("pg_restore", 150000, [str(tmp_path)])


@postgres_only
def test_the_real_clients_match_the_test_servers_major_version(site: Site) -> None:
    backend = site.backend(site.service("main"))
    for name in ("pg_dump", "pg_restore"):
        assert client_program(name, backend.server_version).major == server_major(
            backend.server_version
        )


@postgres_only
def test_a_backup_from_a_newer_server_is_refused_with_nothing_changed(
    site: Site, app_name: str
) -> None:
    app, database, taken = _taken_then_changed(site, app_name)
    assert taken.tool_version.startswith("pg_dump (PostgreSQL)")
    manifest = Path(taken.path).with_name(f"{taken.id}.json")
    data = json.loads(manifest.read_text())
    newer = server_major(int(data["server_version"])) + 1
    data["server_version"] = str(newer * 10000 + 1)
    manifest.write_text(json.dumps(data))
    with pytest.raises(BadInput, match=f"taken from PostgreSQL {newer}, newer than"):
        restore(app, "main_db", taken.id)
    _unchanged(site, app_name, database)


@postgres_only
def test_large_stores_use_the_directory_format_with_jobs_and_a_damaged_one_is_refused(
    site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    assert backup(app, "main_db").format == "custom"
    monkeypatch.setattr(core, "DIRECTORY_FORMAT_FROM", 0)  # every store counts as large
    taken = backup(app, "main_db")
    assert (taken.format, taken.jobs) == ("directory", min(4, os.cpu_count() or 1))
    assert Path(taken.path).is_dir() and (Path(taken.path) / "toc.dat").is_file()
    manifest = json.loads(Path(taken.path).with_name(f"{taken.id}.json").read_text())
    assert "NAME\\0SIZE\\0SHA256" in manifest["sha256_of"]
    _change(site, database)
    restore(app, "main_db", taken.id)
    assert _state(site, database) == (["first", "second"], "aaa", ["id", "name"])

    data_file = next(p for p in Path(taken.path).iterdir() if p.name != "toc.dat")
    data_file.write_bytes(data_file.read_bytes()[:-1])
    _change(site, database)
    with pytest.raises(BadInput, match="does not match its manifest's checksum"):
        restore(app, "main_db", taken.id)
    assert _state(site, database) == (["second", "later"], "bbb", ["id", "name", "extra"])


# the disk ------------------------------------------------------------------------------------


@contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[None]:
    """A real file system of its own at ``folder`` (``size=...``, ``ro``): a tmpfs mount."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _fill(site: Site, database: str, rows: int) -> None:
    engine = _engine(site, database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (id, name) WITH RECURSIVE g(v) AS (SELECT 1 UNION ALL "
                "SELECT v + 1 FROM g WHERE v < :n) SELECT 100 + v, hex(randomblob(24)) FROM g"
                if site.backend(site.service("main")).dialect == "sqlite"
                else "INSERT INTO items (id, name) SELECT 100 + g, md5(random()::text) "
                "FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
    engine.dispose()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system")


@needs_root
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_full_disk_removes_the_partial_backup_and_says_where(
    site: Site, app_name: str, encrypted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if encrypted:
        from storekeeper.secret import new_key

        monkeypatch.setenv("STOREKEEPER_SECRET_KEY", new_key())
    app = _app(site, app_name)
    _fill(site, f"{app_name}_main_db", 40_000)  # some 2 MB, compressed or not
    folder = backup_folder(app, "main_db")
    with _tmpfs(folder, "size=256k"):
        with pytest.raises(ProvisionError) as caught:
            backup(app, "main_db")
        message = str(caught.value)
        assert str(folder) in message
        assert "No space left on device" in message
        assert "partial backup was removed" in message
        assert list(folder.iterdir()) == []
        assert backups(app, "main_db") == []


@contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """``folder`` not writable: a read-only mount for root (whom mode bits do not stop), else
    mode r-x."""
    if os.geteuid() == 0:
        with _tmpfs(folder, "ro,size=64k"):
            yield
        return
    folder.mkdir(parents=True)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield
    finally:
        folder.chmod(0o755)


def test_an_unwritable_folder_is_said_so_with_nothing_made(site: Site, app_name: str) -> None:
    app = _app(site, app_name)
    folder = backup_folder(app, "main_db")
    with _unwritable(folder):
        with pytest.raises(ProvisionError, match="is not writable") as caught:
            backup(app, "main_db")
        assert str(folder) in str(caught.value)
        assert list(folder.iterdir()) == []
    assert not any(e.action == "backup" for e in site.catalog.history(app_name, "main_db"))


# kill -9 ---------------------------------------------------------------------------------------


def _cli(project: Path, *args: str) -> subprocess.Popen[str]:
    """``storekeeper ARGS`` in a process group of its own (so kill reaches pg_dump too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "storekeeper", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(site: Site, sql: str, proc: subprocess.Popen[str], **params: str) -> None:
    """Poll pg_stat_activity until ``sql`` finds a row (the handshake), failing if the
    process ends first."""
    backend = site.backend(site.service("main"))
    engine = _engine(site, "postgres")
    try:
        with engine.connect() as conn:
            while not conn.execute(text(sql), params).first():
                assert proc.poll() is None, proc.communicate()
                conn.rollback()
                time.sleep(0.002)
    finally:
        engine.dispose()
    assert backend  # the service is the test's own


def _project_app(project: Path, site: Site, app_name: str) -> object:
    import importlib

    spec = write_app(project, app_name)
    (project / "storekeeper.toml").write_text(
        (project / "storekeeper.toml")
        .read_text()
        .replace("[services]", f'apps = ["{spec}"]\n[services]')
    )
    sys.path.insert(0, str(project))
    try:
        return importlib.import_module(app_name).app.bind(site)
    finally:
        sys.path.remove(str(project))


@postgres_only
def test_kill_9_during_a_backup_leaves_no_backup_listed(
    project: Path, site: Site, app_name: str
) -> None:
    app = _project_app(project, site, app_name)
    app.sync()  # type: ignore[attr-defined]
    database = f"{app_name}_main_db"
    engine = _engine(site, database)
    with engine.connect() as holder:
        # pg_dump locks every table it dumps: it waits here, mid-backup, for this lock.
        holder.execute(text("LOCK TABLE items IN ACCESS EXCLUSIVE MODE"))
        proc = _cli(project, "backup", f"{app_name}.main_db")
        _wait_for(
            site,
            "SELECT 1 FROM pg_stat_activity WHERE datname = :d AND application_name = 'pg_dump' "
            "AND wait_event_type = 'Lock'",
            proc,
            d=database,
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        holder.rollback()
    engine.dispose()
    assert backups(app, "main_db") == []  # type: ignore[arg-type]
    folder = backup_folder(app, "main_db")  # type: ignore[arg-type]
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    left = [p.name for p in folder.iterdir()]
    assert left and all(n.startswith(".") and n.endswith(".partial") for n in left), left
    # The next backup is whole, and removes what the killed one left.
    taken = backup(app, "main_db")  # type: ignore[arg-type]
    assert [b.id for b in backups(app, "main_db")] == [taken.id]  # type: ignore[arg-type]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [Path(taken.path).name, f"{taken.id}.json"]
    )


@postgres_only
def test_kill_9_during_a_restore_leaves_the_store_as_it_was(
    project: Path, site: Site, app_name: str
) -> None:
    app = _project_app(project, site, app_name)
    app.sync()  # type: ignore[attr-defined]
    database = f"{app_name}_main_db"
    _fill(site, database, 300_000)  # pg_restore's COPY and index take a while
    taken = backup(app, "main_db")  # type: ignore[arg-type]
    engine = _engine(site, database)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items WHERE id > 2"))
    engine.dispose()

    proc = _cli(project, "restore", f"{app_name}.main_db", taken.id, "--yes")
    _wait_for(
        site,
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_restore' AND datname LIKE :d",
        proc,
        d=f"{database}_restoring_%",
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _state_rows(site, database) == ["first", "second"]  # as it was
    backend = site.backend(site.service("main"))
    assert database in backend.list(prefix=f"{app_name}_")

    # Run again, it restores fully and clears what the killed run left.
    report = restore(app, "main_db", taken.id)  # type: ignore[arg-type]
    assert len(_state_rows(site, database)) == 300_002
    assert sorted(backend.list(prefix=f"{app_name}_")) == sorted([database, report.kept_as])


# a store in use ---------------------------------------------------------------------------------


def test_restoring_a_store_in_use_ends_or_updates_the_other_connections(
    site: Site, app_name: str
) -> None:
    app, database, taken = _taken_then_changed(site, app_name)
    other = _engine(site, database)
    conn = other.connect()
    try:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 2
        conn.commit()
        if site.backend(site.service("main")).dialect == "postgresql":
            conn.execute(text("SELECT 1"))  # inside a transaction, idle: as an app's session
        restore(app, "main_db", taken.id)
        assert _state(site, database) == (["first", "second"], "aaa", ["id", "name"])
        if site.backend(site.service("main")).dialect == "postgresql":
            with pytest.raises(DBAPIError, match="terminat"):
                conn.execute(text("SELECT count(*) FROM items"))
        else:
            # SQLite: the other connection sees the restored file, whole.
            names = conn.execute(text("SELECT name FROM items ORDER BY id")).scalars()
            assert list(names) == ["first", "second"]
    finally:
        conn.close()
        other.dispose()


def test_a_manifest_of_the_first_slice_still_reads(site: Site, app_name: str) -> None:
    """Manifests written before encryption and formats (no encrypted, key_id, jobs,
    tool_version) are listed and restored as plain backups."""
    app = _app(site, app_name)
    taken = backup(app, "main_db")
    manifest = Path(taken.path).with_name(f"{taken.id}.json")
    data = json.loads(manifest.read_text())
    for key in ("encrypted", "key_id", "jobs", "tool_version", "sha256_of"):
        data.pop(key)
    manifest.write_text(json.dumps(data))
    (found,) = backups(app, "main_db")
    assert (found.encrypted, found.key_id, found.jobs) == (False, None, 1)
    assert restore(app, "main_db", found.id).in_place
