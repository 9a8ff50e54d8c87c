"""The catalog: a versioned schema, secrets sealed at rest, SQLite or PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, make_url

from conftest import write_app, write_config
from storekeeper.catalog import Catalog, tables
from storekeeper.cli import main
from storekeeper.errors import ConfigError
from storekeeper.site import Site

PG_URL_WITH_SECRET = "postgresql+psycopg://app:s3cretpw@db.example:5432"


def test_a_new_catalog_records_the_current_schema_version(project: Path) -> None:
    site = Site.load()
    try:
        assert len(tables.STEPS) == tables.SCHEMA_VERSION
        # Reading makes nothing; opening it makes the catalog.
        assert site.services()["local"].source == "built-in"
        assert not (project / "var").exists()
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
    finally:
        site.close()
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
        rows = conn.execute("SELECT key, value FROM storekeeper_meta").fetchall()
    assert rows == [("schema_version", str(tables.SCHEMA_VERSION))]


def test_a_catalog_newer_than_the_code_says_to_upgrade_storekeeper(project: Path) -> None:
    site = Site.load()
    site.add_service("main", "sqlite:///stores")
    site.close()
    newer = str(tables.SCHEMA_VERSION + 1)
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
        conn.execute("UPDATE storekeeper_meta SET value = ? WHERE key = 'schema_version'", (newer,))

    site = Site.load()
    try:
        with pytest.raises(ConfigError, match="upgrade storekeeper") as info:
            site.services()
        assert f"schema version {newer}" in str(info.value)
    finally:
        site.close()
    # Nothing was changed by the refusal.
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
        assert conn.execute("SELECT value FROM storekeeper_meta").fetchall() == [(newer,)]


def test_a_version_6_catalog_gets_the_store_states_replicas_column(project: Path) -> None:
    site = Site.load()
    site.catalog.record_state("shop", "orders", present=True, size=10)
    site.close()
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:  # as version 6 left it
        conn.execute("ALTER TABLE storekeeper_store_state DROP COLUMN replicas")
        conn.execute("UPDATE storekeeper_meta SET value = '6' WHERE key = 'schema_version'")
    site = Site.load()
    try:
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
        kept = site.catalog.store_states()[("shop", "orders")]
        assert (kept.size, kept.replicas) == (10, None)
        found = {"service": "pg_r1", "state": "down", "lag": None, "replayed": None}
        problem = f"cannot connect to {PG_URL_WITH_SECRET}"
        site.catalog.record_state("shop", "orders", replicas=[{**found, "problem": problem}])
        (replica,) = site.catalog.store_states()[("shop", "orders")].replicas or []
        assert replica == {**found, "problem": replica["problem"]}
        assert "s3cretpw" not in replica["problem"] and "db.example" in replica["problem"]
    finally:
        site.close()
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
        (raw,) = conn.execute("SELECT replicas FROM storekeeper_store_state").fetchone()
    assert "s3cretpw" not in raw


def test_with_a_secret_key_urls_are_encrypted_at_rest(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "correct horse battery staple")
    site = Site.load()
    try:
        site.add_service("pg", PG_URL_WITH_SECRET)
        raw = site.catalog.raw_service_urls()
        assert len(raw) == 1
        assert "s3cretpw" not in raw[0]
        assert "db.example" not in raw[0]
    finally:
        site.close()

    site = Site.load()
    try:
        assert site.service("pg").url.password == "s3cretpw"
        assert site.service("pg").url.host == "db.example"
    finally:
        site.close()


def test_without_a_secret_key_urls_are_stored_as_given(project: Path) -> None:
    site = Site.load()
    try:
        site.add_service("pg", PG_URL_WITH_SECRET)
        assert site.catalog.raw_service_urls() == [PG_URL_WITH_SECRET]
    finally:
        site.close()


def test_a_different_secret_key_is_a_config_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "the first key")
    site = Site.load()
    site.add_service("pg", PG_URL_WITH_SECRET)
    site.close()

    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "another key")
    site = Site.load()
    try:
        with pytest.raises(ConfigError, match="does not decrypt") as info:
            site.services()
        assert "s3cretpw" not in str(info.value)
    finally:
        site.close()


def test_an_unset_key_with_an_encrypted_catalog_says_to_set_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "the first key")
    site = Site.load()
    site.add_service("pg", PG_URL_WITH_SECRET)
    site.close()

    monkeypatch.delenv("STOREKEEPER_SECRET_KEY")
    site = Site.load()
    try:
        with pytest.raises(ConfigError, match="STOREKEEPER_SECRET_KEY is not set; set it"):
            site.services()
    finally:
        site.close()


def _conninfo(url: str, database: str) -> str:
    """A libpq URL for psycopg from a SQLAlchemy URL."""
    return (
        make_url(url)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_postgresql_catalog_from_storekeeper_catalog_works(
    project: Path,
    postgres_url: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Named after the app so the app_name fixture drops it after the test.
    catalog_db = f"{app_name}_catalog"
    with psycopg.connect(_conninfo(postgres_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{catalog_db}"')
    catalog_url = make_url(postgres_url).set(database=catalog_db)
    monkeypatch.setenv("STOREKEEPER_CATALOG", catalog_url.render_as_string(hide_password=False))
    spec = write_app(project, app_name)
    write_config(project, f'default_service = ""\napps = ["{spec}"]\n')

    assert main(["service", "add", "pg", postgres_url]) == 0
    assert main(["assign", f"{app_name}.main_db", "pg"]) == 0
    assert main(["sync", app_name]) == 0
    assert main(["config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert "env STOREKEEPER_CATALOG" in out

    with psycopg.connect(_conninfo(postgres_url, catalog_db)) as conn:
        assert conn.execute("SELECT name FROM storekeeper_services").fetchall() == [("pg",)]
        assert conn.execute(
            "SELECT app, setting, service FROM storekeeper_assignments"
        ).fetchall() == [(app_name, "main_db", "pg")]
        assert conn.execute(
            "SELECT value FROM storekeeper_meta WHERE key = 'schema_version'"
        ).fetchall() == [(str(tables.SCHEMA_VERSION),)]
        synced = conn.execute(
            "SELECT ok FROM storekeeper_events WHERE app = %s AND action = 'sync'", (app_name,)
        ).fetchall()
        assert synced == [(True,)]
    with psycopg.connect(_conninfo(postgres_url, f"{app_name}_main_db")) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    # And nothing went to the SQLite catalog of the built-in default.
    assert not (project / "var" / "catalog.sqlite").exists()


def _postgres_catalog_url(postgres_url: str, app_name: str) -> str:
    """A new database for a catalog on the suite's PostgreSQL (dropped with the app's)."""
    catalog_db = f"{app_name}_catalog"
    with psycopg.connect(_conninfo(postgres_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{catalog_db}"')
    return make_url(postgres_url).set(database=catalog_db).render_as_string(hide_password=False)


def _until_a_writer_waits_for_a_lock(postgres_url: str, database: str) -> None:
    """Return once a session on ``database`` waits for a lock another transaction holds."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
    deadline = time.monotonic() + 30
    with psycopg.connect(_conninfo(postgres_url, database), autocommit=True) as conn:
        while conn.execute(query, (database,)).fetchone() == (0,):
            assert time.monotonic() < deadline, "the second writer never waited for the first"
            time.sleep(0.005)


# Each catalog write, given the value it writes, and how to read back the value that won.
CATALOG_WRITES: dict[
    str, tuple[str, Callable[[Catalog, str], object], Callable[[Catalog], str]]
] = {
    "runtime store": (
        "storekeeper_stores",
        lambda c, v: c.add_runtime_store("app", "tenant_a", v, None, None),
        lambda c: c.runtime_stores("app")[0].service,
    ),
    "assignment": (
        "storekeeper_assignments",
        lambda c, v: c.assign("app", "main_db", v),
        lambda c: c.assignments()[("app", "main_db")],
    ),
    "service replaced": (
        "storekeeper_services",
        lambda c, v: c.add_service("pg", f"sqlite:///{v}", replace=True),
        lambda c: c.services()["pg"].removeprefix("sqlite:///"),
    ),
}


@pytest.mark.parametrize("write", list(CATALOG_WRITES))
@pytest.mark.parametrize("dialect", ["postgresql"])
def test_two_writers_racing_on_one_key_lose_no_write_on_a_postgresql_catalog(
    project: Path, postgres_url: str, app_name: str, write: str
) -> None:
    table, do, read = CATALOG_WRITES[write]
    url = _postgres_catalog_url(postgres_url, app_name)
    first, second = Catalog(url, project), Catalog(url, project)
    # The first writer stops inside its transaction, right after its INSERT, until released.
    inserted, release = threading.Event(), threading.Event()

    def pause(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().startswith(f"INSERT INTO {table}") and not inserted.is_set():
            inserted.set()
            assert release.wait(30)

    event.listen(first.engine, "after_cursor_execute", pause)
    errors: list[BaseException] = []

    def writer(catalog: Catalog, value: str) -> None:
        try:
            do(catalog, value)
        except BaseException as exc:
            errors.append(exc)

    one = threading.Thread(target=writer, args=(first, "first"))
    two = threading.Thread(target=writer, args=(second, "second"))
    try:
        one.start()
        assert inserted.wait(30)
        two.start()
        # The second writer is blocked by the first's uncommitted row: it writes last.
        _until_a_writer_waits_for_a_lock(postgres_url, make_url(url).database or "")
        release.set()
        one.join(30)
        two.join(30)
        assert errors == []
        assert read(Catalog(url, project)) == "second"
    finally:
        release.set()
        first.close()
        second.close()


def test_a_catalog_on_another_dialect_is_refused_by_name(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Catalog("mysql://app:s3cretpw@db.example/catalog", project)
    message = str(info.value)
    assert "SQLite or PostgreSQL" in message
    assert "mysql://app:***@db.example/catalog" in message
    assert "s3cretpw" not in message


def test_the_records_read_by_position_match_their_tables_columns() -> None:
    import dataclasses

    from storekeeper.catalog import RuntimeStore, StoreState

    for record, table in [(RuntimeStore, tables.stores), (StoreState, tables.store_state)]:
        assert [f.name for f in dataclasses.fields(record)] == [c.name for c in table.columns]
