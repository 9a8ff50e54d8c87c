"""Encrypted backups (storekeeper.backup_crypto and storekeeper.backup): the chunked stream
refuses damage, truncation and reordering; a backup round-trips encrypted on PostgreSQL and
SQLite; a wrong or missing key is a clear error with nothing changed; ``secret rotate``
rewraps every backup's data key."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import run_cli, write_app, write_app_config
from storekeeper import backup_crypto as crypto
from storekeeper.backup import backup, backups, restore
from storekeeper.catalog import tables
from storekeeper.errors import BadInput, ConfigError
from storekeeper.secret import key_id, new_key, sealing_key_id
from storekeeper.site import Site
from test_backup import _app, _change, _stamp, _state, _taken_then_changed, _unchanged

KEY = new_key()


def _sealed(data: bytes, chunk_size: int = 16) -> tuple[bytes, bytes]:
    data_key = os.urandom(32)
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), out, data_key, chunk_size=chunk_size)
    return data_key, out.getvalue()


def _opened(sealed: bytes, data_key: bytes) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(sealed), out, data_key, "backup file 'x'")
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 100])
def test_the_stream_round_trips_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    data_key, sealed = _sealed(data)
    # Random bytes of a few bytes may turn up in any ciphertext by chance: look from 8 up.
    assert size < 8 or data not in sealed
    assert _opened(sealed, data_key) == data


def _chunks(sealed: bytes, chunk_size: int = 16) -> tuple[bytes, list[bytes]]:
    header, body = sealed[:12], sealed[12:]
    step = chunk_size + 16
    return header, [body[i : i + step] for i in range(0, len(body), step)]


@pytest.mark.parametrize(
    "damage",
    ["bit flipped", "cut at a chunk boundary", "cut mid-chunk", "chunks swapped", "chunk added"],
)
def test_damage_truncation_and_reordering_are_refused(damage: str) -> None:
    data_key, sealed = _sealed(bytes(range(70)))  # four full chunks, then a final one of 6
    header, chunks = _chunks(sealed)
    assert len(chunks) == 5
    if damage == "bit flipped":
        bad = bytearray(sealed)
        bad[20] ^= 1
        broken = bytes(bad)
    elif damage == "cut at a chunk boundary":
        broken = header + b"".join(chunks[:3])
    elif damage == "cut mid-chunk":
        broken = sealed[:-5]
    elif damage == "chunks swapped":
        broken = header + b"".join([chunks[1], chunks[0], *chunks[2:]])
    else:
        broken = sealed + chunks[1]
    with pytest.raises(BadInput, match="backup file 'x' is damaged, truncated or reordered"):
        _opened(broken, data_key)


def test_not_an_encrypted_backup_is_said_so() -> None:
    with pytest.raises(BadInput, match="not an encrypted storekeeper backup"):
        _opened(b"PGDMP plain dump", os.urandom(32))


class _Reads(io.BytesIO):
    """A file that remembers the largest read asked of it."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return super().read(size)


def test_neither_side_reads_more_than_a_chunk_at_a_time() -> None:
    data_key = os.urandom(32)
    source = _Reads(os.urandom(5 * 1000 + 7))
    out = io.BytesIO()
    crypto.encrypt_stream(source, out, data_key, chunk_size=1000)
    assert source.largest == 1000
    sealed = _Reads(out.getvalue())
    plain = io.BytesIO()
    crypto.decrypt_stream(sealed, plain, data_key, "x")
    assert sealed.largest == 1000 + 16
    assert plain.getvalue() == source.getvalue()


# encrypted backups of real stores ----------------------------------------------------------


def test_an_encrypted_backup_round_trips_and_says_so(
    site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", KEY)
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    taken = backup(app, "main_db")
    assert taken.encrypted and taken.key_id == sealing_key_id(KEY)
    assert taken.path.endswith(".enc")
    stored = Path(taken.path).read_bytes()
    assert stored.startswith(crypto.MAGIC)
    assert b"PGDMP" not in stored and b"SQLite format 3" not in stored
    manifest = json.loads(Path(taken.path).with_name(f"{taken.id}.json").read_text())
    assert manifest["encryption"]["key_id"] == taken.key_id
    assert manifest["encryption"]["cipher"] == "AES-256-GCM"
    assert "ciphertext" in manifest["sha256_of"]
    assert "wrapped_key" not in taken.as_dict()  # not shown by `backups --json`
    # Nothing plain is left beside it.
    assert sorted(p.name for p in Path(taken.path).parent.iterdir()) == sorted(
        [Path(taken.path).name, f"{taken.id}.json"]
    )

    _change(site, database)
    restore(app, "main_db", taken.id)
    assert _state(site, database) == (["first", "second"], "aaa", ["id", "name"])
    beside = restore(app, "main_db", taken.id, as_name="look")
    assert _state(site, beside.database) == (["first", "second"], "aaa", ["id", "name"])


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_an_encrypted_backup_is_never_in_the_directory_format(
    site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory format would put the plain dump on disk first: refused, not silently
    changed (``auto`` streams the custom format through the encryption)."""
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", KEY)
    app = _app(site, app_name)
    with pytest.raises(BadInput, match="the directory format would write the plain dump"):
        backup(app, "main_db", format="directory")
    assert backups(app, "main_db") == []
    assert backup(app, "main_db").format == "custom"


def test_encrypt_without_a_key_is_refused(site: Site, app_name: str) -> None:
    app = _app(site, app_name)
    with pytest.raises(ConfigError, match="STOREKEEPER_SECRET_KEY is not set"):
        backup(app, "main_db", encrypt=True)
    assert backups(app, "main_db") == []


@pytest.mark.parametrize("given", ["another key", "no key"])
def test_a_wrong_or_missing_key_is_a_clear_error_with_nothing_changed(
    site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", KEY)
    app, database, taken = _taken_then_changed(site, app_name)
    if given == "another key":
        monkeypatch.setenv("STOREKEEPER_SECRET_KEY", new_key())
        expected = f"encrypted with key id {taken.key_id}, which STOREKEEPER_SECRET_KEY is not"
    else:
        monkeypatch.delenv("STOREKEEPER_SECRET_KEY")
        expected = f"encrypted \\(key id {taken.key_id}\\) but STOREKEEPER_SECRET_KEY is not set"
    with pytest.raises(ConfigError, match=expected) as caught:
        restore(app, "main_db", taken.id)
    assert "nothing was changed" in str(caught.value)
    _unchanged(site, app_name, database)


def test_a_tampered_ciphertext_with_a_matching_checksum_fails_and_changes_nothing(
    site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write the folder fixes the manifest's checksum too: the chunks'
    authentication still refuses the file, and the store is left as it was."""
    import hashlib

    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", KEY)
    app, database, taken = _taken_then_changed(site, app_name)
    path = Path(taken.path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    manifest_path = path.with_name(f"{taken.id}.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="damaged, truncated or reordered"):
        restore(app, "main_db", taken.id)
    _unchanged(site, app_name, database)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


# secret rotate ------------------------------------------------------------------------------


def _cli_project(project: Path, service_url: str, app_name: str) -> str:
    write_app_config(project, write_app(project, app_name).split(":")[0], service_url)
    assert run_cli("sync", cwd=project).returncode == 0
    return f"{app_name}.main_db"


def _rotate(project: Path, new: str, old: str) -> subprocess.CompletedProcess[str]:
    """``storekeeper secret rotate`` to key ``new``, the old key given in a variable."""
    return run_cli(
        "secret",
        "rotate",
        "--old-key-env",
        "OLD_KEY",
        cwd=project,
        env={"STOREKEEPER_SECRET_KEY": new, "OLD_KEY": old},
    )


# Rewrapping is the same on every backend: once, on SQLite, through the command line.
@pytest.mark.parametrize("dialect", ["sqlite"])
def test_secret_rotate_rewraps_every_backup_so_none_is_stranded(
    project: Path, service_url: str, app_name: str
) -> None:
    old, new = new_key(), new_key()
    target = _cli_project(project, service_url, app_name)
    made = run_cli(
        "backup", target, "--encrypt", "--json", cwd=project, env={"STOREKEEPER_SECRET_KEY": old}
    )
    assert made.returncode == 0, made.stderr
    taken = json.loads(made.stdout)["stores"][0]["backup"]
    assert taken["key_id"] == sealing_key_id(old)
    stored = Path(taken["path"]).read_bytes()

    rotated = _rotate(project, new, old)
    assert rotated.returncode == 0, rotated.stderr
    assert "rewrapped the data key of 1 encrypted backup" in rotated.stdout
    listed = json.loads(run_cli("backups", target, "--json", cwd=project).stdout)
    assert listed[0]["key_id"] == sealing_key_id(new)
    assert Path(taken["path"]).read_bytes() == stored  # the dump itself is not rewritten

    stale = run_cli(
        "restore", target, "--latest", "--yes", cwd=project, env={"STOREKEEPER_SECRET_KEY": old}
    )
    assert stale.returncode == 2 and f"key id {sealing_key_id(new)}" in stale.stderr
    done = run_cli(
        "restore", target, "--latest", "--yes", cwd=project, env={"STOREKEEPER_SECRET_KEY": new}
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_secret_rotate_refuses_when_a_backup_opens_with_neither_key(
    project: Path, service_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost, old, new = new_key(), new_key(), new_key()
    target = _cli_project(project, service_url, app_name)
    for key in (old, lost):
        made = run_cli(
            "backup", target, "--encrypt", cwd=project, env={"STOREKEEPER_SECRET_KEY": key}
        )
        assert made.returncode == 0, made.stderr
    added = run_cli(
        "service",
        "add",
        "extra",
        "sqlite:///extra",
        cwd=project,
        env={"STOREKEEPER_SECRET_KEY": old},
    )
    assert added.returncode == 0, added.stderr
    before = {p: p.read_text() for p in (project / "var" / "backups").rglob("*.json")}
    rotated = _rotate(project, new, old)
    assert rotated.returncode == 2
    assert f"key id {sealing_key_id(lost)}" in rotated.stderr
    assert "nothing was changed" in rotated.stderr
    assert {p: p.read_text() for p in (project / "var" / "backups").rglob("*.json")} == before
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", old)  # this process reads the catalog too
    site = Site.load()
    try:
        # The catalog's URLs were not moved either: still sealed with the old key.
        with site.catalog.engine.connect() as conn:
            urls = conn.execute(select(tables.services.c.url)).scalars().all()
        assert [key_id(u) for u in urls] == [sealing_key_id(old)]
    finally:
        site.close()
