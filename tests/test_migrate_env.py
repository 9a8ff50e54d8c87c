"""The ``env.py`` every script directory has, driven from outside: Alembic's own commands and
pytest-alembic handed a connection (or an engine, or a URL) of their own, which must be the
only database touched, and plain ``alembic`` told which store to run on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from storekeeper import App, BadInput, migrate
from storekeeper.site import Site
from test_migrate import query, schema, set_body

pytestmark = pytest.mark.slow

# pytest-alembic's four built-in tests, in an inner pytest run of the user's own project.
INNER_CONFTEST = """
import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool


@pytest.fixture
def alembic_config():
    return {{"file": {ini!r}}}


@pytest.fixture
def alembic_engine():
    return create_engine({url!r}, poolclass=NullPool)
"""

INNER_TESTS = """
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
"""


@pytest.fixture
def store_with_sentinel(cli_v1: App) -> App:
    """Store ``main_db`` at revision r2 (a table, then a data migration), with a sentinel row
    no migration wrote."""
    migrate.init(cli_v1, "main_db")
    migrate.revision(cli_v1, "main_db", "items", autogenerate=True, rev_id="r1")
    r2 = migrate.revision(cli_v1, "main_db", "seed", rev_id="r2")
    set_body(
        r2.path,
        "op.execute(\"INSERT INTO items (name) VALUES ('from-r2')\")",
        "op.execute(\"DELETE FROM items WHERE name = 'from-r2'\")",
    )
    cli_v1.sync()
    engine = create_engine(cli_v1.url("main_db"), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (name) VALUES ('sentinel')"))
    engine.dispose()
    return cli_v1


@pytest.fixture
def scratch_url(site: Site, app_name: str) -> Iterator[str]:
    """An empty database of the app's own (dropped with the app's databases afterwards)."""
    backend = site.backend(site.service("main"))
    name = f"{app_name}_scratch"
    backend.create(name)
    yield backend.database_url(name).render_as_string(hide_password=False)


def assert_store_untouched(app: App) -> None:
    assert migrate.current(app, "main_db") == ("r2",)
    assert sorted(query(app, "SELECT name FROM items ORDER BY id")) == [
        "from-r2",
        "init-True",
        "sentinel",
    ]


def scratch_state(url: str) -> tuple[list[str], list[str]]:
    """The scratch database's tables and its recorded revision(s)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = sorted(inspect(conn).get_table_names())
            revs = (
                list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
                if "alembic_version" in tables
                else []
            )
        return tables, revs
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_env_py_honours_a_given_connection_so_pytest_alembic_runs_on_a_scratch_database(
    project: Path, store_with_sentinel: App, scratch_url: str
) -> None:
    app = store_with_sentinel
    ini = project / "migrations" / "main_db" / "alembic.ini"
    (project / "conftest.py").write_text(INNER_CONFTEST.format(ini=str(ini), url=scratch_url))
    (project / "test_alembic_scratch.py").write_text(INNER_TESTS)
    (project / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_alembic_scratch.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert "4 passed" in inner.stdout

    # The store was never touched: its tables, its revision and the sentinel row are there.
    assert_store_untouched(app)
    assert set(schema(app)) == {"items"}
    # The scratch database got the migrations (pytest-alembic's last test upgrades to head).
    tables, revs = scratch_state(scratch_url)
    assert (tables, revs) == (["alembic_version", "items"], ["r2"])


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_env_py_runs_only_on_a_given_connection_engine_or_url(
    project: Path, store_with_sentinel: App, scratch_url: str
) -> None:
    app = store_with_sentinel
    engine = create_engine(scratch_url, poolclass=NullPool)
    try:
        for given in ("connection", "engine", "url", "sqlalchemy.url"):
            config = Config(str(project / "migrations" / "main_db" / "alembic.ini"))
            with engine.connect() as conn:
                if given == "sqlalchemy.url":
                    config.set_main_option("sqlalchemy.url", scratch_url.replace("%", "%%"))
                else:
                    config.attributes[given] = {
                        "connection": conn,
                        "engine": engine,
                        "url": scratch_url,
                    }[given]
                command.upgrade(config, "head")
                assert scratch_state(scratch_url) == (["alembic_version", "items"], ["r2"]), given
                # Downgrading the scratch database to base must not drop the store's tables.
                command.downgrade(config, "base")
                assert scratch_state(scratch_url) == (["alembic_version"], []), given
            assert_store_untouched(app)
    finally:
        engine.dispose()


def test_a_store_directory_without_a_target_is_not_called_a_kinds(
    cli_v1: App, app_name: str
) -> None:
    path = migrate.init(cli_v1, "main_db")
    # No alembic.ini at all, as a program that builds its own Config has.
    config = Config()
    config.set_main_option("script_location", str(path))
    with pytest.raises(BadInput) as caught:
        command.upgrade(config, "head")
    message = str(caught.value)
    assert "shared by the stores of a kind" not in message
    assert f"{path}" in message
    assert "names no store" in message
    assert "storekeeper_target" in message and "-x store=APP.STORE" in message
    # A kind's directory is the one shared by its stores.
    kind_path = migrate.init(cli_v1, "tenant")
    config = Config(str(kind_path / "alembic.ini"))
    with pytest.raises(BadInput, match=rf"shared by the stores of kind {app_name}\.tenant"):
        command.upgrade(config, "head")


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_sqlalchemy_url_in_alembic_ini_never_turns_storekeepers_commands_away(
    project: Path, store_with_sentinel: App, scratch_url: str
) -> None:
    app = store_with_sentinel
    ini = project / "migrations" / "main_db" / "alembic.ini"
    with ini.open("a") as file:
        file.write(f"sqlalchemy.url = {scratch_url.replace('%', '%%')}\n")
    assert migrate.downgrade(app, "main_db", "-1").after == "r1"
    assert migrate.upgrade(app, "main_db").after == "r2"
    assert_store_untouched(app)
    assert scratch_state(scratch_url) == ([], [])
    # Plain Alembic on that file: the URL it names is the database it runs on.
    command.upgrade(Config(str(ini)), "head")
    assert scratch_state(scratch_url) == (["alembic_version", "items"], ["r2"])
    assert_store_untouched(app)
