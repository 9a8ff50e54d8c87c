"""Backups of one store (storekeeper.backup): taken, listed, verified and restored on real
PostgreSQL and SQLite, and through the ``storekeeper`` command in real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, String, create_engine, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from conftest import run_cli, write_app, write_config
from storekeeper import App, Store
from storekeeper.backup import Backup, backup, backups, restore
from storekeeper.errors import BadInput, ServiceUnavailable, StorekeeperError
from storekeeper.site import Site


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _init(engine: Engine, first_time: bool) -> None:
    if first_time:
        with Session(engine) as session:
            session.add_all([Item(name="first"), Item(name="second")])
            session.commit()


def _app(site: Site, name: str) -> App:
    app = App(name, stores=[Store("main_db", metadata=Base.metadata, initializer=_init)])
    app.bind(site)
    app.sync()
    return app


def _engine(site: Site, database: str) -> Engine:
    backend = site.backend(site.service("main"))
    return create_engine(backend.database_url(database), poolclass=NullPool)


def _state(site: Site, database: str) -> tuple[list[str], str | None, list[str]]:
    """Rows, Alembic revision and the items table's columns of ``database``."""
    engine = _engine(site, database)
    try:
        with engine.connect() as conn:
            names = list(conn.execute(text("SELECT name FROM items ORDER BY id")).scalars())
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            columns = [c["name"] for c in inspect(conn).get_columns("items")]
        return names, revision, columns
    finally:
        engine.dispose()


def _stamp(site: Site, database: str, revision: str) -> None:
    engine = _engine(site, database)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS alembic_version (version_num TEXT)"))
            conn.execute(text("DELETE FROM alembic_version"))
            conn.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        engine.dispose()


def _change(site: Site, database: str) -> None:
    """Change rows and schema, and move the revision on, as a migration and the app would."""
    engine = _engine(site, database)
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM items WHERE name = 'first'"))
            conn.execute(text("INSERT INTO items (id, name) VALUES (10, 'later')"))
            conn.execute(text("ALTER TABLE items ADD COLUMN extra INTEGER"))
            conn.execute(text("UPDATE alembic_version SET version_num = 'bbb'"))
    finally:
        engine.dispose()


def _taken_then_changed(site: Site, app_name: str, **options: Any) -> tuple[App, str, Backup]:
    """App ``app_name`` synced, its store stamped ``aaa`` and backed up (with ``options``),
    then changed (:func:`_change`): the app, the store's database, the backup."""
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    taken = backup(app, "main_db", **options)
    _change(site, database)
    return app, database, taken


def _unchanged(site: Site, app_name: str, database: str) -> None:
    """The store is as :func:`_change` left it, and no database was made beside it."""
    backend = site.backend(site.service("main"))
    assert backend.list(prefix=f"{app_name}_") == [database]
    assert _state(site, database) == (["second", "later"], "bbb", ["id", "name", "extra"])


def test_round_trip_in_place_keeps_the_old_database(site: Site, app_name: str) -> None:
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    taken = backup(app, "main_db", note="before the change")
    assert (taken.revision, taken.note, taken.backend) == (
        "aaa",
        "before the change",
        site.backend(site.service("main")).dialect,
    )
    assert Path(taken.path).is_file() and len(taken.sha256) == 64
    manifest = json.loads(Path(taken.path).with_suffix(".json").read_text())
    assert manifest["store"] == "main_db" and manifest["sha256"] == taken.sha256
    assert [b.id for b in backups(app, "main_db")] == [taken.id]
    assert any(e.action == "backup" for e in site.catalog.history(app_name, "main_db"))

    _change(site, database)
    assert _state(site, database) == (["second", "later"], "bbb", ["id", "name", "extra"])

    report = restore(app, "main_db", taken.id)
    assert report.in_place and report.kept_as is not None
    assert report.kept_as.startswith(f"{database}_pre_restore_")
    assert _state(site, database) == (["first", "second"], "aaa", ["id", "name"])
    # The database it replaced is kept, as it was just before the restore.
    assert _state(site, report.kept_as) == (["second", "later"], "bbb", ["id", "name", "extra"])
    # The store is used as before through the app.
    with app.session("main_db") as session:
        assert session.scalars(text("SELECT count(*) FROM items")).one() == 2


def test_restore_as_a_new_store_touches_nothing_else(site: Site, app_name: str) -> None:
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    taken = backup(app, "main_db")
    _change(site, database)
    report = restore(app, "main_db", taken.path, as_name="inspect")
    assert (report.database, report.in_place, report.kept_as) == (
        f"{app_name}_inspect",
        False,
        None,
    )
    assert _state(site, f"{app_name}_inspect") == (["first", "second"], "aaa", ["id", "name"])
    assert _state(site, database) == (["second", "later"], "bbb", ["id", "name", "extra"])
    backend = site.backend(site.service("main"))
    assert backend.list(prefix=f"{app_name}_") == sorted([database, f"{app_name}_inspect"])


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_a_damaged_backup_is_refused_with_nothing_changed(
    site: Site, app_name: str, damage: str
) -> None:
    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    _stamp(site, database, "aaa")
    taken = backup(app, "main_db")
    _change(site, database)
    path = Path(taken.path)
    data = path.read_bytes()
    if damage == "corrupted":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="checksum") as caught:
        restore(app, "main_db", taken.id)
    assert str(path) in str(caught.value)
    backend = site.backend(site.service("main"))
    assert backend.list(prefix=f"{app_name}_") == [database]
    assert _state(site, database) == (["second", "later"], "bbb", ["id", "name", "extra"])


def test_a_backup_of_another_store_is_refused(site: Site, app_name: str) -> None:
    app = App(
        app_name,
        stores=[
            Store("main_db", metadata=Base.metadata, initializer=_init),
            Store("other_db", metadata=Base.metadata),
        ],
    ).bind(site)
    app.sync()
    taken = backup(app, "other_db")
    with pytest.raises(BadInput, match=f"of store {app_name}.other_db, not {app_name}.main_db"):
        restore(app, "main_db", taken.path)
    assert _state_rows(site, f"{app_name}_main_db") == ["first", "second"]


def _state_rows(site: Site, database: str) -> list[str]:
    engine = _engine(site, database)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT name FROM items ORDER BY id")).scalars())
    finally:
        engine.dispose()


# the command line, in real processes -------------------------------------------------------


def test_cli_backup_backups_restore(project: Path, service_url: str, app_name: str) -> None:
    spec = write_app(project, app_name)
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{spec}"]
        [services]
        main = "{service_url}"
        """,
    )
    target = f"{app_name}.main_db"
    assert run_cli("sync", cwd=project).returncode == 0

    made = run_cli("backup", target, "--note", "first one", "--json", cwd=project)
    assert made.returncode == 0, made.stderr
    run = json.loads(made.stdout)
    assert run["failed"] == []
    taken = run["stores"][0]["backup"]
    assert (taken["store"], taken["note"], taken["revision"]) == ("main_db", "first one", None)

    listed = run_cli("backups", target, cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert taken["id"] in listed.stdout and taken["sha256"][:12] in listed.stdout
    assert "first one" in listed.stdout
    as_json = json.loads(run_cli("backups", target, "--json", cwd=project).stdout)
    assert [b["id"] for b in as_json] == [taken["id"]]

    bad = run_cli("restore", target, "20000101T000000000000Z", "--yes", cwd=project)
    assert bad.returncode == 2
    assert "no backup '20000101T000000000000Z'" in bad.stderr
    neither = run_cli("restore", target, cwd=project)
    assert neither.returncode == 2 and "--latest" in neither.stderr

    # In place it asks first; no answer is a refusal with nothing changed.
    refused = run_cli("restore", target, "--latest", cwd=project)
    assert refused.returncode == 2, refused.stderr
    assert "restore not confirmed" in refused.stderr

    site = Site.load()
    try:
        database = f"{app_name}_main_db"
        backend = site.backend(site.service("main"))
        assert backend.list(prefix=f"{app_name}_") == [database]
        engine = _engine(site, database)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM items"))
        engine.dispose()

        done = run_cli("restore", target, "--latest", "--yes", "--json", cwd=project)
        assert done.returncode == 0, done.stderr
        restored = json.loads(done.stdout)
        assert restored["backup"] == taken["id"] and restored["in_place"] is True
        assert _state_rows(site, database) == ["first", "second"]
        assert restored["kept_as"] in backend.list(prefix=f"{app_name}_")

        beside = run_cli("restore", target, taken["id"], "--as", "look", cwd=project)
        assert beside.returncode == 0, beside.stderr
        assert f"{app_name}_look" in beside.stdout
        assert _state_rows(site, f"{app_name}_look") == ["first", "second"]
    finally:
        site.close()


def test_a_missing_client_program_names_the_debian_package() -> None:
    from storekeeper.backup import find_tool

    assert Path(find_tool("pg_dump")).name == "pg_dump"
    with pytest.raises(ServiceUnavailable, match="apt-get install postgresql-client"):
        find_tool("pg_no_such_program")


def test_a_long_store_name_keeps_its_old_database_under_a_name_the_server_allows(
    site: Site, app_name: str
) -> None:
    store = "s" * 45  # the database name is 59 bytes: no room for _pre_restore_<time>
    app = App(app_name, stores=[Store(store, metadata=Base.metadata, initializer=_init)])
    app.bind(site)
    app.sync()
    taken = backup(app, store)
    report = restore(app, store, taken.id)
    assert report.kept_as is not None and len(report.kept_as.encode()) <= 63
    assert "_pre_restore_" in report.kept_as
    backend = site.backend(site.service("main"))
    assert sorted(backend.list(prefix=f"{app_name}_")) == sorted(
        [f"{app_name}_{store}", report.kept_as]
    )
    assert _state_rows(site, report.kept_as) == ["first", "second"]


def test_a_taken_pre_restore_name_is_refused_with_nothing_changed(
    site: Site, app_name: str
) -> None:
    from datetime import UTC, datetime, timedelta

    app = _app(site, app_name)
    database = f"{app_name}_main_db"
    taken = backup(app, "main_db")
    engine = _engine(site, database)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items WHERE name = 'first'"))
    engine.dispose()
    backend = site.backend(site.service("main"))
    # Databases already there under every name the restore may pick in the next 20 seconds.
    now = datetime.now(UTC)
    taken_names = [
        f"{database}_pre_restore_{now + timedelta(seconds=s):%Y%m%d%H%M%S}" for s in range(20)
    ]
    for name in taken_names:
        backend.create(name)
    with pytest.raises(StorekeeperError, match="already exists"):
        restore(app, "main_db", taken.id)
    assert sorted(backend.list(prefix=f"{app_name}_")) == sorted([database, *taken_names])
    assert _state_rows(site, database) == ["second"]
