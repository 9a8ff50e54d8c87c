"""Migrations per store with ``storekeeper.migrate``, against real SQLite and PostgreSQL:
autogenerate, round trips, drift checks, sync and templates, and every refusal's message."""

from __future__ import annotations

import importlib
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from conftest import write_config
from storekeeper import App, BadRevision, MigrationError, NotFound, migrate
from storekeeper.migrate.templates import template_database
from storekeeper.provision import status
from storekeeper.site import Site

ITEM_V1 = """
class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
"""

# v2 changes a type, adds a column, an index and a table.
ITEM_V2 = """
class Item(Base):
    __tablename__ = "items"
    __table_args__ = (Index("ix_items_name", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    price: Mapped[int | None] = mapped_column(Integer)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(30))
"""

MODULE = '''
"""App {app}, models version {version}."""
import os

from sqlalchemy import Index, Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storekeeper import App, Kind, ServerSetting, Store


class Base(DeclarativeBase):
    pass

{models}

def init_main(engine, first_time):
    # Runs after the migrations: the table is there, at head.
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (name) VALUES (:n)"), {{"n": f"init-{{first_time}}"}})


app = App(
    "{app}",
    stores=[Store("main_db", metadata=Base.metadata, initializer=init_main)],
    servers=[ServerSetting("tenants")],
    kinds=[Kind("tenant", metadata=Base.metadata)],
)
'''


def declare(project: Path, site: Site, app: str, version: int) -> App:
    """Write and import module ``<app>_v<version>`` declaring app ``app``; bound to ``site``."""
    models = ITEM_V1 if version == 1 else ITEM_V2
    name = f"{app}_v{version}"
    (project / f"{name}.py").write_text(MODULE.format(app=app, version=version, models=models))
    module = importlib.import_module(name)
    declared: App = module.app
    return declared.bind(site)


def configure_cli(project: Path, app_name: str, service_url: str) -> None:
    """storekeeper.toml naming app ``app_name`` (models v1) and service ``main``, so the
    command line in a real process finds what the test declared."""
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{app_name}_v1:app"]
        [services]
        main = "{service_url}"
        """,
    )


@pytest.fixture
def v1(project: Path, site: Site, app_name: str, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.syspath_prepend(str(project))
    return declare(project, site, app_name, 1)


def set_body(path: str | Path, upgrade: str, downgrade: str = "pass") -> None:
    """Replace the (empty) bodies of a hand-written migration."""
    source = Path(path).read_text()
    source = source.replace(
        "def upgrade() -> None:\n    pass",
        "def upgrade() -> None:\n" + textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
    )
    source = source.replace(
        "def downgrade() -> None:\n    pass",
        "def downgrade() -> None:\n" + textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
    )
    Path(path).write_text(source)


def schema(app: App, store: str = "main_db") -> dict[str, Any]:
    """Tables, their columns with types and nullability, and indexes, as the database has
    them (Alembic's own table left out)."""
    engine = create_engine(app.url(store), poolclass=NullPool)
    try:
        found = inspect(engine)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                sorted((i["name"], tuple(i["column_names"])) for i in found.get_indexes(table)),
            )
            for table in sorted(found.get_table_names())
            if table != "alembic_version"
        }
    finally:
        engine.dispose()


def query(app: App, sql: str, store: str = "main_db") -> list[Any]:
    engine = create_engine(app.url(store), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).scalars())
    finally:
        engine.dispose()


def first_revision(app: App) -> str:
    migrate.init(app, "main_db")
    return migrate.revision(app, "main_db", "items", autogenerate=True, rev_id="r1").revision


# autogenerate, round trip, check ----------------------------------------------------------


def test_autogenerate_finds_an_added_table_column_index_and_type_change(
    project: Path, site: Site, app_name: str, v1: App, dialect: str
) -> None:
    path = migrate.init(v1, "main_db")
    assert (path / "env.py").read_text().strip().endswith("run()")
    r1 = migrate.revision(v1, "main_db", "items", autogenerate=True, rev_id="r1")
    assert "op.create_table(" in Path(r1.path).read_text()
    assert "'items'" in Path(r1.path).read_text()
    report = v1.sync()
    assert report.results[0].revision == "r1"

    v2 = declare(project, site, app_name, 2)
    r2 = migrate.revision(v2, "main_db", "tags, price, index, longer names", autogenerate=True)
    source = Path(r2.path).read_text()
    assert r2.down_revisions == ("r1",)
    assert re.search(r"op\.create_table\(\s*'tags'", source)
    assert re.search(r"add_column\((?:'items', )?sa\.Column\('price', sa\.Integer\(\)", source)
    assert re.search(r"create_index\((?:batch_op\.f\()?\(?'ix_items_name'", source)
    assert re.search(r"alter_column\((?:'items', )?'name'", source)
    assert "type_=sa.String(length=120)" in source
    if dialect == "sqlite":
        # SQLite cannot ALTER a column's type: batch mode copies the table.
        assert "with op.batch_alter_table('items'" in source

    # The store is behind the new migration until it is upgraded.
    assert migrate.check(v2, "main_db") == [
        f"database at revision r1, migrations' head is {r2.revision}: run storekeeper upgrade "
        f"{app_name}.main_db"
    ]
    migrate.upgrade(v2, "main_db")
    assert migrate.check(v2, "main_db") == []
    assert schema(v2)["items"][1] == [("ix_items_name", ("name",))]


def test_upgrade_then_downgrade_returns_the_schema_to_where_it_was(
    project: Path, site: Site, app_name: str, v1: App
) -> None:
    first_revision(v1)
    v1.sync()
    before = schema(v1)
    v2 = declare(project, site, app_name, 2)
    migrate.revision(v2, "main_db", "v2", autogenerate=True, rev_id="r2")

    up = migrate.upgrade(v2, "main_db")
    assert (up.before, up.after, up.applied) == ("r1", "r2", ["r2"])
    assert set(schema(v2)) == {"items", "tags"}

    down = migrate.downgrade(v2, "main_db", "-1")
    assert (down.before, down.after, down.applied) == ("r2", "r1", ["r2"])
    assert schema(v2) == before
    assert query(v2, "SELECT name FROM items") == ["init-True"]  # the data stayed

    migrate.downgrade(v2, "main_db", "base")
    assert schema(v2) == {}
    assert migrate.current(v2, "main_db") == ()
    migrate.upgrade(v2, "main_db", "r1")
    assert schema(v2) == {k: v for k, v in before.items()}
    assert migrate.history(v2, "main_db")[0].revision == "r2"
    assert migrate.revisions(v2, "main_db") == ["r1", "r2"]


def test_check_passes_on_a_fresh_store_and_fails_after_a_model_change(
    project: Path, site: Site, app_name: str, v1: App
) -> None:
    first_revision(v1)
    v1.sync()
    assert migrate.check(v1, "main_db") == []

    v2 = declare(project, site, app_name, 2)
    drift = migrate.check(v2, "main_db")
    assert "table tags is in the models but not in the database" in drift
    assert "column items.price (INTEGER) is in the models but not in the database" in drift
    assert any(line.startswith("index ix_items_name on items(name)") for line in drift)
    assert any(
        line.startswith("column items.name: type VARCHAR(50) in the database, ")
        and "VARCHAR(120) in the models" in line
        for line in drift
    )
    # A kind is checked against what its migrations build, in a scratch database.
    migrate.init(v1, "tenant")
    migrate.revision(v1, "tenant", "items", autogenerate=True)
    assert migrate.check(v1, "tenant") == []
    assert "table tags is in the models but not in the database" in migrate.check(v2, "tenant")


# sync and templates -------------------------------------------------------------------------


def test_sync_migrates_a_new_store_instead_of_create_all_then_runs_the_initializer(
    project: Path, site: Site, app_name: str, v1: App
) -> None:
    migrate.init(v1, "main_db")
    r1 = migrate.revision(v1, "main_db", "items", autogenerate=True, rev_id="r1")
    # A migration that create_all would not do: a row only the migration writes.
    source = Path(r1.path).read_text()
    Path(r1.path).write_text(
        source.replace(
            "    # ### end Alembic commands ###\n\n\ndef downgrade",
            "    # ### end Alembic commands ###\n"
            "    op.execute(\"INSERT INTO items (name) VALUES ('from-r1')\")\n\n\ndef downgrade",
            1,
        )
    )
    result = v1.sync().results[0]
    assert (result.action, result.revision, result.migrations_applied) == ("created", "r1", ["r1"])
    assert result.tables_added == []
    # The migration ran, then the initializer, once each.
    assert query(v1, "SELECT name FROM items ORDER BY id") == ["from-r1", "init-True"]
    again = v1.sync().results[0]
    assert (again.action, again.migrations_applied, again.changed) == ("up to date", [], False)

    [row] = status([v1])
    assert (row.revision, row.head, row.migration_state) == ("r1", "r1", "at head")


def test_stores_of_a_kind_are_cloned_from_a_template_refreshed_when_the_head_changes(
    project: Path, site: Site, app_name: str, v1: App, dialect: str
) -> None:
    migrate.init(v1, "tenant")
    migrate.revision(v1, "tenant", "items", autogenerate=True, rev_id="k1")
    acme = v1.create_store("acme", kind="tenant")
    assert (acme.from_template, acme.revision, acme.action) == (True, "k1", "created")
    assert migrate.current(v1, "acme") == ("k1",)
    backend = site.backend(site.service("main"))
    template = template_database(v1, "tenant")
    assert template == f"{app_name}__tenant_template" and backend.exists(template)
    if dialect == "postgresql":
        # Sealed: nobody may connect, so clones never find it busy.
        engine = create_engine(backend.database_url(template), poolclass=NullPool)
        with pytest.raises(Exception, match="not currently accepting connections"):
            engine.connect()
        engine.dispose()

    k2 = migrate.revision(v1, "tenant", "notes", rev_id="k2")
    set_body(k2.path, 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))')
    beta = v1.create_store("beta", kind="tenant")
    assert (beta.from_template, beta.revision) == (True, "k2")
    assert "notes" in schema(v1, "beta")
    assert "notes" not in schema(v1, "acme")  # existing stores are upgraded, not recreated
    assert migrate.upgrade(v1, "acme").applied == ["k2"]


# bad input and faults -----------------------------------------------------------------------


def test_a_missing_script_directory_gives_the_init_command(v1: App, app_name: str) -> None:
    with pytest.raises(NotFound) as caught:
        migrate.upgrade(v1, "main_db")
    message = str(caught.value)
    assert f"{app_name}.main_db has no migrations" in message
    assert f"storekeeper revision {app_name}.main_db --init" in message
    with pytest.raises(NotFound, match=rf"storekeeper revision {app_name}\.tenant:\* --init"):
        migrate.heads(v1, "tenant")
    with pytest.raises(NotFound, match="has no store or kind 'nope'"):
        migrate.heads(v1, "nope")


def test_an_unknown_revision_is_refused_and_changes_nothing(v1: App) -> None:
    first_revision(v1)
    v1.sync()
    with pytest.raises(
        BadRevision, match=r"unknown revision 'zzz' for .*\.main_db; its revisions: r1"
    ):
        migrate.upgrade(v1, "main_db", "zzz")
    with pytest.raises(BadRevision, match="unknown revision 'zzz'"):
        migrate.downgrade(v1, "main_db", "zzz")
    assert migrate.current(v1, "main_db") == ("r1",)


def test_a_downgrade_past_base_is_refused(v1: App, app_name: str) -> None:
    first_revision(v1)
    v1.sync()
    with pytest.raises(BadRevision) as caught:
        migrate.downgrade(v1, "main_db", "-2")
    assert str(caught.value) == (
        f"cannot downgrade {app_name}.main_db by 2 revision(s): it is at r1, 1 revision(s) "
        "above base; --to base undoes them all"
    )
    assert migrate.current(v1, "main_db") == ("r1",)


def test_several_heads_are_named_and_a_merge_joins_them(v1: App, app_name: str) -> None:
    first_revision(v1)
    v1.sync()
    for rev in ("ra", "rb"):
        made = migrate.revision(v1, "main_db", f"branch {rev}", rev_id=rev)
        # Both branch off r1, as two developers' migrations do.
        source = Path(made.path).read_text()
        Path(made.path).write_text(
            re.sub(r"down_revision: (.*) = .*", r"down_revision: \1 = 'r1'", source)
        )
    with pytest.raises(MigrationError) as caught:
        migrate.upgrade(v1, "main_db")
    message = str(caught.value)
    assert "several head revisions: ra, rb" in message
    assert f"storekeeper revision {app_name}.main_db --merge" in message
    assert migrate.current(v1, "main_db") == ("r1",)

    merged = migrate.revision(v1, "main_db", "merge heads", merge=True, rev_id="rm")
    assert set(merged.down_revisions) == {"ra", "rb"}
    assert migrate.upgrade(v1, "main_db").after == "rm"


def test_a_migration_that_fails_halfway_leaves_the_store_at_the_last_good_revision(
    v1: App, app_name: str
) -> None:
    first_revision(v1)
    v1.sync()
    r2 = migrate.revision(v1, "main_db", "half done", rev_id="r2")
    set_body(
        r2.path,
        """
        op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("INSERT INTO items (name) VALUES ('from-r2')")
        raise RuntimeError("boom in r2")
        """,
    )
    with pytest.raises(MigrationError) as caught:
        migrate.upgrade(v1, "main_db")
    assert str(caught.value) == (
        f"store {app_name}.main_db: migration r2 ('half done') failed: RuntimeError: boom in "
        "r2; the store stays at revision r1"
    )
    assert migrate.current(v1, "main_db") == ("r1",)
    # Nothing of r2 stayed: its table and its row were rolled back with it.
    assert "half" not in schema(v1)
    assert query(v1, "SELECT name FROM items") == ["init-True"]

    # sync reports the same; a store it made in that run is dropped again.
    with pytest.raises(MigrationError, match=r"the store stays at revision r1$"):
        v1.sync()
    v1.drop_store("main_db")
    with pytest.raises(MigrationError) as caught:
        v1.sync()
    assert "migration r2 ('half done') failed: RuntimeError: boom in r2" in str(caught.value)
    assert f"database '{app_name}_main_db' made in this run was dropped again" in str(caught.value)
    assert not v1.store_exists("main_db")


def test_a_store_ahead_of_the_code_is_refused(v1: App, app_name: str) -> None:
    first_revision(v1)
    v1.sync()
    engine = create_engine(v1.url("main_db"), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'feedface0001'"))
    engine.dispose()
    with pytest.raises(MigrationError) as caught:
        migrate.upgrade(v1, "main_db")
    message = str(caught.value)
    assert f"store {app_name}.main_db is at revision feedface0001, which its migrations" in message
    assert "(their head: r1)" in message and "ahead of this code" in message
    state = migrate.commands.revision_state(v1, "main_db")
    assert (state.revision, state.head, state.state) == ("feedface0001", "r1", "unknown revision")
