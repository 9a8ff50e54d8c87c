"""The ``storekeeper`` command: services, assignments, sync and status, as a user runs them.

Most tests call :func:`storekeeper.cli.main` in process (fast); ``--help``, tracebacks and
entry point discovery run a real ``python -m storekeeper`` process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from conftest import CLI, run_cli, write_app, write_config
from storekeeper.cli import main
from storekeeper.site import Site

if TYPE_CHECKING:
    from storekeeper.testing.server import PostgresServer

SECRET = "s3cretpw"
SQLITE_ONLY = pytest.mark.parametrize("dialect", ["sqlite"])


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in process; returns exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure(project: Path, app_name: str, service_url: str, default: str = "main") -> None:
    """storekeeper.toml naming app ``app_name`` (written as a module) and service ``main``."""
    spec = write_app(project, app_name)
    write_config(
        project,
        f"""
        default_service = "{default}"
        apps = ["{spec}"]
        [services]
        main = "{service_url}"
        """,
    )


@pytest.fixture
def app(project: Path, service_url: str, app_name: str) -> str:
    """A configured app with one store ``main_db`` on service ``main``; returns its name."""
    configure(project, app_name, service_url)
    return app_name


def store_url(site: Site, app: str, service: str = "main") -> Any:
    return site.backend(site.service(service)).database_url(f"{app}_main_db")


def store_exists(site: Site, app: str) -> bool:
    return site.backend(site.service("main")).exists(f"{app}_main_db")


def count_items(site: Site, app: str, service: str = "main") -> int:
    engine = create_engine(store_url(site, app, service), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM items")).scalar_one())
    finally:
        engine.dispose()


def init_log(project: Path) -> list[str]:
    path = project / "init.log"
    return path.read_text().split() if path.exists() else []


# services -------------------------------------------------------------------------------


@SQLITE_ONLY
def test_service_passwords_are_masked_in_every_output(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{closed_port()}/x"
    outputs = []
    code, out, err = cli(capsys, "service", "add", "pg", url)
    assert code == 0, err
    assert "service 'pg' added" in out
    outputs.append(out + err)

    code, out, err = cli(capsys, "service", "list")
    assert code == 0
    assert "pg" in out and "postgresql+psycopg://app:***@127.0.0.1" in out
    outputs.append(out + err)

    listed = {s["name"]: s for s in cli_json(capsys, "service", "list")}
    assert listed["pg"]["url"].startswith("postgresql+psycopg://app:***@")
    assert listed["pg"]["source"] == "catalog"
    assert listed["pg"]["dialect"] == "postgresql"

    code, out, err = cli(capsys, "config", "show")
    assert code == 0
    assert "pg  postgresql+psycopg://app:***@" in out
    outputs.append(out + err)

    shown = cli_json(capsys, "config", "show")
    assert shown["services"]["pg"]["url"].startswith("postgresql+psycopg://app:***@")
    assert shown["services"]["pg"]["source"] == "catalog"

    code, out, err = cli(capsys, "service", "remove", "pg")
    assert code == 0
    assert "service 'pg' removed" in out
    outputs.append(out + err)
    assert "pg" not in {s["name"] for s in cli_json(capsys, "service", "list")}

    for text_ in outputs:
        assert SECRET not in text_
    assert SECRET not in json.dumps(listed) and SECRET not in json.dumps(shown)


@SQLITE_ONLY
def test_service_test_reaches_our_server_and_prints_its_version(
    project: Path, site: Site, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conninfo = make_url(postgres_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(conninfo.render_as_string(hide_password=False)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        version = row[0]
    assert cli(capsys, "service", "add", "pg", postgres_url)[0] == 0
    code, out, err = cli(capsys, "service", "test", "pg")
    assert code == 0, err
    assert out.startswith("ok")
    assert f"PostgreSQL {version}" in out
    password = make_url(postgres_url).password
    if password:
        assert password not in out + err


@SQLITE_ONLY
def test_service_test_on_a_closed_port_exits_1_with_a_clear_message(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{port}/postgres"
    assert cli(capsys, "service", "add", "dead", url)[0] == 0
    code, out, err = cli(capsys, "service", "test", "dead")
    assert code == 1
    assert out == ""
    assert "cannot connect to service 'dead'" in err
    assert f"127.0.0.1:{port}" in err
    assert "refused" in err.lower()
    assert SECRET not in out + err


@SQLITE_ONLY
def test_a_failing_service_test_suggests_where_to_fix_the_url_not_itself(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{closed_port()}/postgres"
    assert cli(capsys, "service", "add", "dead", dead)[0] == 0
    code, out, err = cli(capsys, "service", "test", "dead")
    assert out == ""
    assert code == 1
    assert "cannot connect to service 'dead'" in err
    assert "storekeeper service test" not in err
    assert "storekeeper service add dead URL --replace" in err

    with (project / "storekeeper.toml").open("a") as fh:
        fh.write(f'filed = "{dead}"\n')
    code, _, err = cli(capsys, "service", "test", "filed")
    assert code == 1
    assert "storekeeper service test" not in err
    assert "services.filed in storekeeper.toml" in err

    monkeypatch.setenv("STOREKEEPER_SERVICE_FROM_ENV", dead)
    code, _, err = cli(capsys, "service", "test", "from_env")
    assert code == 1
    assert "storekeeper service test" not in err
    assert "environment variable STOREKEEPER_SERVICE_FROM_ENV" in err
    assert SECRET not in err


@SQLITE_ONLY
def test_service_test_with_a_wrong_password_exits_1_without_echoing_it(
    project: Path,
    site: Site,
    postgres_server: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "Wr0ng-passw0rd-42"
    url = make_url(postgres_server.url).set(password=wrong)
    assert url.host and url.port, "our cluster must check passwords on TCP"
    assert cli(capsys, "service", "add", "ours", url.render_as_string(hide_password=False))[0] == 0
    code, out, err = cli(capsys, "service", "test", "ours")
    assert code == 1
    assert "password authentication failed" in err
    assert wrong not in out + err
    right = make_url(postgres_server.url).password
    assert right and right not in out + err


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Bad Name", "'Bad Name'"),
        ("x;drop", "'x;drop'"),
        ("", "service name is empty"),
    ],
)
def test_service_add_with_a_bad_name_exits_2_and_adds_nothing(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str], name: str, shown: str
) -> None:
    before = cli_json(capsys, "service", "list")
    code, _, err = cli(capsys, "service", "add", name, "sqlite:///stores")
    assert code == 2
    assert shown in err
    assert "Traceback" not in err
    assert cli_json(capsys, "service", "list") == before


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"mysql://app:{SECRET}@db.example/shop", "'mysql'"),
        ("not a url", "'not a url'"),
    ],
)
def test_service_add_with_an_unsupported_url_exits_2_and_adds_nothing(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str], url: str, shown: str
) -> None:
    before = cli_json(capsys, "service", "list")
    code, out, err = cli(capsys, "service", "add", "shop", url)
    assert code == 2
    assert shown in err
    assert "'shop'" in err
    assert "postgresql" in err and "sqlite" in err  # what would be valid
    assert SECRET not in out + err
    assert cli_json(capsys, "service", "list") == before


@SQLITE_ONLY
def test_adding_an_existing_service_needs_replace(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "service", "add", "extra", "sqlite:///one")[0] == 0
    code, _, err = cli(capsys, "service", "add", "extra", "sqlite:///two")
    assert code == 2
    assert "'extra' already exists" in err and "--replace" in err
    urls = {s["name"]: s["url"] for s in cli_json(capsys, "service", "list")}
    assert urls["extra"].endswith("/one")

    code, out, _ = cli(capsys, "service", "add", "extra", "sqlite:///two", "--replace")
    assert code == 0 and "updated" in out
    urls = {s["name"]: s["url"] for s in cli_json(capsys, "service", "list")}
    assert urls["extra"].endswith("/two")


@SQLITE_ONLY
def test_removing_an_assigned_service_needs_force(
    project: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "service", "add", "extra", "sqlite:///extra")[0] == 0
    assert cli(capsys, "assign", f"{app}.main_db", "extra")[0] == 0

    code, _, err = cli(capsys, "service", "remove", "extra")
    assert code == 2
    assert f"{app}.main_db" in err and "--force" in err
    assert "extra" in {s["name"] for s in cli_json(capsys, "service", "list")}

    code, _, _ = cli(capsys, "service", "remove", "extra", "--force")
    assert code == 0
    assert "extra" not in {s["name"] for s in cli_json(capsys, "service", "list")}


@SQLITE_ONLY
def test_removing_an_unknown_or_file_service_exits_2(
    project: Path, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "service", "remove", "ghost")
    assert code == 2
    assert "'ghost'" in err
    code, _, err = cli(capsys, "service", "remove", "main")
    assert code == 2
    assert "'main'" in err and "storekeeper.toml" in err


# assign ---------------------------------------------------------------------------------


def test_assign_then_sync_places_the_store_on_that_service(
    project: Path,
    app: str,
    site: Site,
    dialect: str,
    service_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = "sqlite:///other_stores" if dialect == "sqlite" else service_url
    assert cli(capsys, "service", "add", "other", other)[0] == 0
    code, out, err = cli(capsys, "assign", f"{app}.main_db", "other")
    assert code == 0, err
    assert f"{app}.main_db -> other" in out

    code, _, err = cli(capsys, "sync", app)
    assert code == 0, err
    (row,) = cli_json(capsys, "status", app)
    assert row["service"] == "other"
    assert row["database"] == f"{app}_main_db"
    assert row["exists"] is True
    assert count_items(site, app, "other") == 2
    if dialect == "sqlite":
        assert (project / "other_stores" / f"{app}_main_db.sqlite").is_file()
        assert not store_exists(site, app)

    shown = cli_json(capsys, "config", "show")
    assert shown["assignments"][f"{app}.main_db"] == {"service": "other", "source": "catalog"}


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("target", "service", "shown"),
    [
        ("nosuchapp.main_db", "main", "unknown app 'nosuchapp'"),
        ("{app}.nope", "main", "no store or server setting 'nope'"),
        ("{app}.main_db", "ghost", "unknown service 'ghost'"),
        ("nodot", "main", "'nodot'"),
        ("{app}.Bad", "main", "'Bad'"),
        ("my.{app}.main_db", "main", "unknown app 'my' in 'my.{app}.main_db'"),
        ("{app}.main_db.x", "main", "'{app}.main_db.x': app '{app}' has no store or server"),
    ],
)
def test_assign_bad_input_exits_2_and_assigns_nothing(
    project: Path,
    app: str,
    capsys: pytest.CaptureFixture[str],
    target: str,
    service: str,
    shown: str,
) -> None:
    code, _, err = cli(capsys, "assign", target.format(app=app), service)
    assert code == 2
    assert shown.format(app=app) in err
    assert "Traceback" not in err
    assert cli_json(capsys, "config", "show")["assignments"] == {}


def test_an_unassigned_required_store_without_default_service_gives_the_assign_command(
    project: Path, site: Site, app_name: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(project, app_name, service_url, default="")
    code, _, err = cli(capsys, "sync", app_name)
    assert code == 2
    assert f"storekeeper assign {app_name}.main_db" in err
    assert not store_exists(site, app_name)
    assert init_log(project) == []

    assert cli(capsys, "assign", f"{app_name}.main_db", "main")[0] == 0
    code, _, err = cli(capsys, "sync", app_name)
    assert code == 0, err
    assert store_exists(site, app_name)


# sync -----------------------------------------------------------------------------------


def test_sync_creates_then_reports_no_changes(
    project: Path, app: str, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "sync", app)
    assert code == 0, err
    assert f"[1/1] {app}.main_db: created" in err
    assert "synced: 1 created" in out
    assert count_items(site, app) == 2

    code, out, err = cli(capsys, "sync", app)
    assert code == 0, err
    assert f"[1/1] {app}.main_db: up to date" in err
    assert "no changes" in out
    assert init_log(project) == ["True", "False"]
    assert count_items(site, app) == 2


def test_sync_json_says_whether_anything_changed(
    project: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = cli_json(capsys, "sync", app)
    assert first["changed"] is True
    (store,) = first["stores"]
    assert store["app"] == app and store["store"] == "main_db"
    assert store["action"] == "created" and store["first_time"] is True
    assert store["tables_added"] == ["items"]

    second = cli_json(capsys, "sync", app)
    assert second["changed"] is False
    assert second["stores"][0]["action"] == "up to date"
    assert second["stores"][0]["first_time"] is False


@SQLITE_ONLY
def test_refresh_without_yes_and_no_terminal_exits_2_and_changes_nothing(
    project: Path,
    app: str,
    site: Site,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli(capsys, "sync", app)[0] == 0
    with open(os.devnull) as not_a_terminal:
        monkeypatch.setattr(sys, "stdin", not_a_terminal)
        code, _, err = cli(capsys, "sync", app, "--refresh")
    assert code == 2
    assert "--yes" in err and f"{app}.main_db" in err
    assert count_items(site, app) == 2
    assert init_log(project) == ["True"]


def test_refresh_yes_recreates_the_store(
    project: Path, app: str, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "sync", app)[0] == 0
    engine = create_engine(store_url(site, app), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (name) VALUES ('third')"))
    engine.dispose()
    assert count_items(site, app) == 3

    code, _, err = cli(capsys, "sync", app, "--refresh", "--yes")
    assert code == 0, err
    assert f"{app}.main_db: recreated" in err
    assert count_items(site, app) == 2
    assert init_log(project) == ["True", "True"]


def test_first_time_runs_the_initializer_as_new(
    project: Path, app: str, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "sync", app)[0] == 0
    code, _, err = cli(capsys, "sync", app, "--first-time")
    assert code == 0, err
    assert "initialized (first time)" in err
    assert init_log(project) == ["True", "True"]
    assert count_items(site, app) == 4  # the initializer added its rows again


@SQLITE_ONLY
def test_sync_of_an_unknown_app_exits_2_listing_the_known_ones(
    project: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "sync", "nosuchapp")
    assert code == 2
    assert "unknown app 'nosuchapp'" in err
    assert app in err and "gauges" in err
    assert init_log(project) == []


@SQLITE_ONLY
def test_sync_of_an_unknown_store_exits_2(
    project: Path, app: str, site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "sync", app, "--store", "nope")
    assert code == 2
    assert "'nope'" in err and "main_db" in err
    assert not store_exists(site, app)


FAILING_APP = '''
"""An app whose initializer fails after the tables are made."""
from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storekeeper import App, Store


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


def init_main(engine, first_time):
    raise RuntimeError("the river is dry")


app = App("{name}", stores=[Store("main_db", metadata=Base.metadata, initializer=init_main)])
'''


def test_an_initializer_that_raises_exits_1_and_leaves_no_store(
    project: Path, site: Site, app_name: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / f"{app_name}_failing.py").write_text(FAILING_APP.format(name=app_name))
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{app_name}_failing:app"]
        [services]
        main = "{service_url}"
        """,
    )
    code, _, err = cli(capsys, "sync", app_name)
    assert code == 1
    assert "the river is dry" in err
    assert f"{app_name}.main_db" in err and "dropped again" in err
    assert "Traceback" not in err
    assert not store_exists(site, app_name)
    (row,) = cli_json(capsys, "status", app_name)
    assert row["exists"] is False


# status ---------------------------------------------------------------------------------


def test_status_shows_every_store_before_and_after_sync(
    project: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", app)
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "APP",
        "STORE",
        "SERVICE",
        "DATABASE",
        "EXISTS",
        "SIZE",
        "LAST",
        "SYNC",
        "LAST",
        "BACKUP",
    ]
    assert row.split()[:5] == [app, "main_db", "main", f"{app}_main_db", "no"]
    (before,) = cli_json(capsys, "status", app)
    assert before["exists"] is False and before["last_sync"] is None

    assert cli(capsys, "sync", app)[0] == 0
    code, out, _ = cli(capsys, "status", app)
    assert out.splitlines()[1].split()[4] == "yes"
    (after,) = cli_json(capsys, "status", app)
    assert after["exists"] is True
    assert after["size"] > 0
    assert after["last_sync"] is not None
    assert after["service"] == "main" and after["origin"] == "declared"


# real processes -------------------------------------------------------------------------


def test_help_exits_0(project: Path) -> None:
    result = run_cli("--help", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.lower().startswith("usage: storekeeper")
    for command in ("service", "assign", "sync", "status", "config", "demo"):
        assert command in result.stdout

    result = run_cli("service", "--help", cwd=project)
    assert result.returncode == 0, result.stderr
    for action in ("add", "list", "remove", "test"):
        assert action in result.stdout


def test_errors_in_a_real_process_print_a_message_not_a_traceback(project: Path) -> None:
    spec = write_app(project, "cli_errors_app")
    write_config(project, f'default_service = ""\napps = ["{spec}"]\n')
    dead = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{closed_port()}/x"
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("service", "add", "Bad Name", "sqlite:///x"), 2, "'Bad Name'"),
        (("service", "add", "shop", "mysql://u@h/db"), 2, "'mysql'"),
        (("assign", "nodot", "local"), 2, "'nodot'"),
        (("sync", "nosuchapp"), 2, "unknown app 'nosuchapp'"),
        (("sync", "cli_errors_app"), 2, "storekeeper assign cli_errors_app.main_db"),
        (("service", "add", "dead", dead), 0, ""),
        (("service", "test", "dead"), 1, "cannot connect to service 'dead'"),
        (("sync", "--bogus-option"), 2, "--bogus-option"),
    ]
    for args, code, shown in cases:
        result = run_cli(*args, cwd=project)
        assert result.returncode == code, (args, result.stderr)
        assert shown in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert SECRET not in result.stdout + result.stderr


def test_an_installed_app_is_found_without_configuration(tmp_path: Path) -> None:
    result = run_cli("status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    gauges = [r for r in rows if r["app"] == "gauges"]
    assert [(r["store"], r["service"]) for r in gauges] == [("stream_db", "local")]
    assert list(tmp_path.iterdir()) == []  # status only reads: not even a catalog


def test_app_option_names_a_module_without_configuration(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_app(project, "cli_option_app")
    code, out, err = cli(capsys, "--app", spec, "status")
    assert code == 0, err
    assert "cli_option_app" in out and "gauges" not in out
    code, _, err = cli(capsys, "--app", "cli_option_app:nothing", "status")
    assert code == 2
    assert "'cli_option_app:nothing'" in err
    assert err.startswith("error:")


# migrations -----------------------------------------------------------------------------


@pytest.fixture
def models(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """App ``app_name`` with models v1 (and v2 written beside), configured; returns its name."""
    from test_migrate import configure_cli, declare

    monkeypatch.syspath_prepend(str(project))
    declare(project, site, app_name, 1)
    declare(project, site, app_name, 2)
    configure_cli(project, app_name, service_url)
    return app_name


def test_migration_verbs_from_init_to_check(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = models
    code, out, err = cli(capsys, "revision", f"{app}.main_db", "--init")
    assert code == 0, err
    assert f"{app}.main_db: script directory " in out and out.rstrip().endswith(
        f"next: storekeeper revision {app}.main_db -m 'first tables' --autogenerate"
    )
    code, out, err = cli(
        capsys, "revision", f"{app}.main_db", "-m", "items", "--autogenerate", "--rev-id", "r1"
    )
    assert code == 0, err
    assert out.startswith("new revision r1 (items) in ")
    code, out, _ = cli(capsys, "current")
    assert out.splitlines()[1].split() == [f"{app}.main_db", "base", "r1", "no", "database"]
    assert cli(capsys, "sync")[0] == 0

    code, out, err = cli(capsys, "current")
    assert code == 0, err
    assert out.splitlines()[1].split() == [f"{app}.main_db", "r1", "r1", "at", "head"]
    code, out, _ = cli(capsys, "status")
    assert "REVISION" in out.splitlines()[0] and "r1 (head)" in out
    code, out, _ = cli(capsys, "check")
    assert (code, out.strip()) == (0, f"{app}.main_db: ok, models and schema agree")

    # The models change (v2), the migrations do not: check fails and says what differs.
    code, out, err = cli(capsys, "check", "--app", f"{app}_v2:app")
    assert code == 1
    assert f"{app}.main_db: models and schema differ:" in out
    assert "  - table tags is in the models but not in the database" in out
    assert "  - column items.price (INTEGER) is in the models but not in the database" in out
    assert "check failed for" in err and "--autogenerate" in err

    code, out, err = cli(capsys, "history", f"{app}.main_db")
    assert (code, out.strip()) == (0, "<base> -> r1 (head), items")
    code, out, _ = cli(capsys, "heads", f"{app}.main_db")
    assert out.strip() == "r1"
    code, out, err = cli(capsys, "downgrade", f"{app}.main_db", "--to", "base")
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == [f"{app}.main_db", "r1", "base"]
    code, out, err = cli(capsys, "stamp", f"{app}.main_db", "--to", "r1")
    assert code == 0, err


def test_migration_verbs_refuse_bad_input_with_exit_2(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = models
    code, _, err = cli(capsys, "upgrade", f"{app}.main_db")
    assert code == 2
    assert f"storekeeper revision {app}.main_db --init" in err
    first = ("revision", f"{app}.main_db", "--init", "-m", "items", "--autogenerate")
    assert cli(capsys, *first, "--rev-id", "r1")[0] == 0
    assert cli(capsys, "sync")[0] == 0

    for args, message in [
        ((), "name the stores to upgrade: APP, APP.STORE, APP.KIND:* or APP.GLOB, or --all"),
        ((f"{app}.nope",), f"app {app!r} declares no store 'nope'"),
        (("nope.main_db",), "unknown app 'nope'"),
        ((f"{app}.main_db", "--to", "zzz"), "unknown revision 'zzz'"),
        ((f"{app}.x*",), f"'{app}.x*' matches no store of app {app!r}"),
        ((f"{app}.main_db", "--jobs", "0"), "--jobs must be at least 1, got 0"),
    ]:
        code, _, err = cli(capsys, "upgrade", *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err
    code, _, err = cli(capsys, "downgrade", f"{app}.main_db", "--to", "-3")
    assert code == 2
    assert f"error: {app}.main_db: cannot downgrade {app}.main_db by 3 revision(s)" in err
    code, _, err = cli(capsys, "revision", f"{app}.main_db")
    assert (code, err.strip()) == (2, "error: a revision needs a message: -m 'what it changes'")
    code, _, err = cli(capsys, "revision", f"{app}.main_db", "-m", "m", "--merge")
    assert code == 2 and "has 1 head revision(s); there is nothing to merge" in err


# environments ---------------------------------------------------------------------------


def run_outside_pytest(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m storekeeper ARGS`` in a process that does not look like pytest's."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "PYTEST_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_an_undefined_environment_exits_2_naming_the_defined_ones(project: Path) -> None:
    write_config(
        project,
        """
        [env.production]
        default_service = ""
        [env.staging]
        """,
    )
    for args, env, named in [
        (("status", "--env", "prod"), {}, "'prod'"),
        (("sync",), {"STOREKEEPER_ENV": "prodution"}, "'prodution' (from STOREKEEPER_ENV)"),
        (("--env", "test", "config", "show"), {}, "'test'"),
    ]:
        result = run_outside_pytest(*args, cwd=project, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr, (args, result.stderr)
        assert "production, staging" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in project.iterdir()) == ["storekeeper.toml"]  # nothing made

    # Once the name is right, the production guard is in force.
    result = run_outside_pytest("--env", "production", "config", "show", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["environment"] == "production"
    assert shown["default_service"]["value"] == ""


# sync tries every store -----------------------------------------------------------------

THREE_STORES_APP = '''
"""Three stores; the middle one's initializer fails, the first one's prints."""
import os
import subprocess
import sys

from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storekeeper import App, Store


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


def chatty(engine, first_time):
    print("seeding a_db", first_time)
    sys.stdout.flush()
    subprocess.run(["echo", "a child process writes here too"], check=True)


def failing(engine, first_time):
    raise RuntimeError("the river is dry")


app = App(
    "{name}",
    stores=[
        Store("a_db", metadata=Base.metadata, initializer=chatty),
        Store("b_db", metadata=Base.metadata, initializer=failing),
        Store("c_db", metadata=Base.metadata),
    ],
)
'''


@pytest.fixture
def three_stores(project: Path, site: Site, app_name: str, service_url: str) -> str:
    """App ``app_name`` with stores a_db (prints), b_db (its initializer fails) and c_db."""
    (project / f"{app_name}_three.py").write_text(THREE_STORES_APP.format(name=app_name))
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{app_name}_three:app"]
        [services]
        main = "{service_url}"
        """,
    )
    return app_name


def exists(site: Site, database: str) -> bool:
    return site.backend(site.service("main")).exists(database)


@SQLITE_ONLY
def test_sync_tries_every_store_and_reports_each(
    project: Path, site: Site, three_stores: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = three_stores
    code, out, err = cli(capsys, "sync", app)
    assert code == 1, err
    assert exists(site, f"{app}_a_db") and exists(site, f"{app}_c_db")
    assert not exists(site, f"{app}_b_db")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert out.splitlines()[0].split()[:2] == ["STORE", "SERVICE"]
    assert rows[f"{app}.a_db"][-1] == "created"
    assert rows[f"{app}.b_db"][-1] == "FAILED"
    assert rows[f"{app}.c_db"][-1] == "created"
    assert out.rstrip().endswith("sync: 2 created, 1 failed")
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert f"{app}.b_db" in error and "the river is dry" in error
    assert "seeding a_db True" in err and "seeding a_db" not in out

    code, out, err = cli(capsys, "sync", app)
    assert code == 1
    assert out.rstrip().endswith("sync: 2 up to date, 1 failed")


@SQLITE_ONLY
def test_sync_json_is_valid_on_failure_and_initializer_output_goes_to_stderr(
    project: Path, site: Site, three_stores: str
) -> None:
    app = three_stores
    result = run_cli("sync", "--json", cwd=project)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == [f"{app}.b_db"]
    assert report["changed"] is True
    stores = {s["store"]: s for s in report["stores"] if s["app"] == app}
    assert [stores[n]["ok"] for n in ("a_db", "b_db", "c_db")] == [True, False, True]
    assert "the river is dry" in stores["b_db"]["error"]
    assert stores["a_db"]["error"] == "" and stores["a_db"]["action"] == "created"
    assert "seeding a_db True" in result.stderr
    assert "a child process writes here too" in result.stderr
    assert exists(site, f"{app}_c_db")

    # Bad input stops before any store: still one JSON document, and exit 2.
    result = run_cli("sync", "nosuchapp", "--json", cwd=project)
    assert result.returncode == 2
    assert "unknown app 'nosuchapp'" in json.loads(result.stdout)["error"]
    assert "unknown app 'nosuchapp'" in result.stderr
