"""Item 14: ``storekeeper secret rotate`` re-encrypts the catalog's service URLs under a new key.

Each test fills a real catalog (SQLite, or PostgreSQL through ``STOREKEEPER_CATALOG`` on the
suite's server) with URLs sealed under the old key, as plain text, and as storekeeper 0.1 sealed
them (``enc:v1:``), then runs the command in a real process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import make_url, update

from conftest import CLI, write_config
from storekeeper.catalog import tables
from storekeeper.cli import main
from storekeeper.errors import ConfigError
from storekeeper.secret import key_id, new_key, seal, unseal
from storekeeper.site import Site

OLD = "the old passphrase"
NEW = new_key()
URLS = {
    "pg": "postgresql+psycopg://app:s3cret@db.example:5432",
    "legacy": "postgresql+psycopg://old:l3gacy@db.example:5432",
    "plain": "postgresql+psycopg://bare:pl4in@db.example:5432",
}
SECRETS = ["s3cret", "l3gacy", "pl4in", OLD, NEW]


def legacy_v1(value: str, passphrase: str) -> str:
    key = base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())
    return "enc:v1:" + Fernet(key).encrypt(value.encode()).decode()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_env(request: pytest.FixtureRequest, project: Path) -> Iterator[dict[str, str]]:
    """The environment naming the catalog under test (empty for the default SQLite one)."""
    if request.param == "sqlite":
        yield {}
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    name = f"rot{uuid.uuid4().hex[:12]}_catalog"
    admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {"STOREKEEPER_CATALOG": make_url(postgres_url).set(database=name).render_as_string(False)}
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def filled(
    project: Path, catalog_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A catalog with one URL of each kind; returns the environment that names it."""
    write_config(project, 'default_service = "local"\n')
    for key, value in catalog_env.items():
        monkeypatch.setenv(key, value)
    site = Site.load()
    try:
        site.add_service("plain", URLS["plain"])
        monkeypatch.setenv("STOREKEEPER_SECRET_KEY", OLD)
        site.add_service("pg", URLS["pg"])
        site.add_service("legacy", URLS["legacy"])
        monkeypatch.delenv("STOREKEEPER_SECRET_KEY")
        with site.catalog.engine.begin() as conn:
            conn.execute(
                update(tables.services)
                .where(tables.services.c.name == "legacy")
                .values(url=legacy_v1(URLS["legacy"], OLD))
            )
    finally:
        site.close()
    return catalog_env


def rotate(
    project: Path, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``storekeeper secret rotate ARGS`` in a real process, with ``env`` and ``stdin``."""
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    full.update(env)
    return subprocess.run(
        [*CLI, "secret", "rotate", *args],
        cwd=project,
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The catalog's stored URL column, by service name."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    site = Site.load()
    try:
        with site.catalog.engine.connect() as conn:
            rows = conn.execute(tables.services.select()).all()
        return {row.name: row.url for row in rows}
    finally:
        site.close()


def read_with(key: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The catalog's services as a site reads them with ``key``."""
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", key)
    site = Site.load()
    try:
        return {
            n: s.url.render_as_string(False) for n, s in site.services().items() if n != "local"
        }
    finally:
        site.close()
        monkeypatch.delenv("STOREKEEPER_SECRET_KEY")


def test_rotate_rewrites_every_service_url_under_the_new_key(
    project: Path, filled: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stored(filled, monkeypatch)
    assert before["legacy"].startswith("enc:v1:") and before["plain"] == URLS["plain"]
    assert read_with(OLD, monkeypatch) == URLS, "today's values, enc:v1 too, are read"
    result = rotate(
        project,
        {**filled, "STOREKEEPER_SECRET_KEY": NEW, "OLD_KEY": OLD},
        "--old-key-env",
        "OLD_KEY",
    )
    assert result.returncode == 0, result.stderr
    assert "3 service URLs" in result.stdout and key_id(seal("x", NEW)) in result.stdout
    assert not any(s in result.stdout + result.stderr for s in SECRETS)

    after = stored(filled, monkeypatch)
    assert set(after) == set(URLS)
    for name, value in after.items():
        assert value.startswith("enc:v2:") and key_id(value) == key_id(seal("x", NEW))
        assert unseal(value, NEW) == URLS[name]
        with pytest.raises(ConfigError, match="does not decrypt"):
            unseal(value, OLD)
    # The v2 value was rewrapped, its data left as it was.
    assert after["pg"].split(":")[-1] == before["pg"].split(":")[-1]
    # And the site reads them with the new key.
    assert read_with(NEW, monkeypatch) == URLS


@pytest.mark.parametrize("catalog_env", ["sqlite"], indirect=True)
def test_rotate_with_a_wrong_old_key_exits_2_and_changes_nothing(
    project: Path, filled: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = stored(filled, monkeypatch)
    result = rotate(project, {"STOREKEEPER_SECRET_KEY": NEW}, stdin="not the old key\n")
    assert result.returncode == 2, result.stderr
    assert "old key does not decrypt" in result.stderr
    assert "'legacy'" in result.stderr and "'pg'" in result.stderr
    assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
    assert not any(s in result.stdout + result.stderr for s in [*SECRETS, "not the old key"])
    assert stored(filled, monkeypatch) == before


@pytest.mark.parametrize("catalog_env", ["sqlite"], indirect=True)
def test_rotate_reads_the_old_key_from_a_file_or_stdin_and_needs_a_new_key(
    project: Path,
    filled: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = stored(filled, monkeypatch)
    # In process first (fast): the refusals, then the old key from a file.
    monkeypatch.setattr(sys, "stdin", io.StringIO(OLD))
    assert main(["secret", "rotate"]) == 2
    assert "set STOREKEEPER_SECRET_KEY to the new key" in capsys.readouterr().err
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", NEW)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["secret", "rotate"]) == 2
    assert "--old-key-file" in capsys.readouterr().err
    assert main(["secret", "rotate", "--old-key-env", "NO_SUCH_VARIABLE"]) == 2
    assert "'NO_SUCH_VARIABLE'" in capsys.readouterr().err
    assert stored(filled, monkeypatch) == before

    key_file = project / "old.key"
    key_file.write_text(OLD + "\n")
    assert main(["secret", "rotate", "--old-key-file", str(key_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["key_id"] == key_id(seal("x", NEW))
    assert {r["service"]: r["before"] for r in report["rotated"]} == {
        "legacy": "enc:v1",
        "pg": f"key {key_id(before['pg'])}",
        "plain": "plain",
    }
    # Then to a third key in a real process, the old key (now NEW) on standard input.
    third = new_key()
    by_stdin = rotate(project, {"STOREKEEPER_SECRET_KEY": third}, stdin=NEW + "\n")
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert {unseal(v, third) for v in stored(filled, monkeypatch).values()} == set(URLS.values())
