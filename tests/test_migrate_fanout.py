"""Migrating many stores from the command line, in real processes: a fan-out over a kind's
stores with one broken store, two upgrades of one store at once, and plain ``alembic``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli
from storekeeper import App, migrate
from test_migrate import (
    extend_upgrade,
    first_revision,
    query,
    schema,
    set_body,
)

pytestmark = pytest.mark.slow


def test_a_fan_out_over_20_stores_with_one_broken_migrates_the_other_19(
    project: Path, cli_v1: App, app_name: str
) -> None:
    migrate.init(cli_v1, "tenant")
    migrate.revision(cli_v1, "tenant", "items", autogenerate=True, rev_id="k1")
    names = [f"t{i:02d}" for i in range(20)]
    for name in names:
        cli_v1.create_store(name, kind="tenant")
    # One store already has the table the next migration creates: it will fail there.
    engine = cli_v1.engine("t07")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    k2 = migrate.revision(cli_v1, "tenant", "notes", rev_id="k2")
    set_body(k2.path, 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True))')

    run = run_cli(
        "upgrade", f"{app_name}.tenant:*", "--jobs", "2", "--continue-on-error", cwd=project
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[1:21]}
    assert set(rows) == {f"{app_name}.{n}" for n in names}
    for name in names:
        expected = ["k1", "k1", "FAILED"] if name == "t07" else ["k1", "k2", "ok"]
        row = rows[f"{app_name}.{name}"]
        assert [row[0], row[1], row[3]] == expected
    assert "upgrade: 19 ok, 1 failed, 0 not run" in run.stdout
    assert (
        f"error: {app_name}.t07: store {app_name}.t07: migration k2 ('notes') failed: "
        in run.stderr
    )
    assert "the store stays at revision k1" in run.stderr
    # Progress on stderr, one line per store.
    assert sum(line.startswith("[") for line in run.stderr.splitlines()) == 20
    for name in names:
        assert migrate.current(cli_v1, name) == (("k1",) if name == "t07" else ("k2",))

    # Run again: the broken one still fails, the others have nothing to do.
    again = run_cli("upgrade", f"{app_name}.t0*", "--json", cwd=project)
    assert again.returncode == 1
    assert '"failed": [\n    "' + f"{app_name}.t07" in again.stdout
    assert f'"not_run": [\n    "{app_name}.t08"' in again.stdout


MIGRATION_WITH_LOG = """
op.execute("CREATE TABLE IF NOT EXISTS applied_log (rev VARCHAR(10))")
op.execute("INSERT INTO applied_log VALUES ('{rev}')")
import time; time.sleep(0.5)
"""


def test_two_upgrades_of_one_store_at_once_apply_each_migration_once(
    project: Path, cli_v1: App, app_name: str
) -> None:
    first_revision(cli_v1)
    cli_v1.sync()
    for rev in ("r2", "r3"):
        made = migrate.revision(cli_v1, "main_db", rev, rev_id=rev)
        set_body(made.path, MIGRATION_WITH_LOG.format(rev=rev))
    start = threading.Barrier(2)

    def upgrade() -> subprocess.CompletedProcess[str]:
        start.wait()
        return run_cli("upgrade", f"{app_name}.main_db", cwd=project)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [r.result() for r in [pool.submit(upgrade) for _ in range(2)]]
    for run in runs:
        assert run.returncode == 0, run.stderr
    results = sorted(run.stdout.splitlines()[1].rsplit("  ", 1)[-1].strip() for run in runs)
    assert results == ["ok", "up to date"]
    assert query(cli_v1, "SELECT rev FROM applied_log ORDER BY rev") == ["r2", "r3"]
    assert migrate.current(cli_v1, "main_db") == ("r3",)


def test_plain_alembic_works_on_a_store_and_a_kind(
    project: Path, cli_v1: App, app_name: str
) -> None:
    migrate.init(cli_v1, "main_db")
    migrate.revision(cli_v1, "main_db", "items", autogenerate=True, rev_id="r1")
    migrate.init(cli_v1, "tenant")
    migrate.revision(cli_v1, "tenant", "items", autogenerate=True, rev_id="k1")
    cli_v1.sync()
    cli_v1.create_store("acme", kind="tenant")
    migrate.downgrade(cli_v1, "main_db", "base")
    migrate.downgrade(cli_v1, "acme", "base")
    alembic = [str(Path(sys.executable).with_name("alembic"))]

    run = subprocess.run(
        [*alembic, "-c", "migrations/main_db/alembic.ini", "upgrade", "head"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    assert "Running upgrade  -> r1" in run.stderr
    assert migrate.current(cli_v1, "main_db") == ("r1",)
    offline = subprocess.run(
        [*alembic, "-c", "migrations/main_db/alembic.ini", "upgrade", "base:head", "--sql"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE items" in offline.stdout

    ini = "migrations/kinds/tenant/alembic.ini"
    run = subprocess.run(
        [*alembic, "-c", ini, "upgrade", "head"], cwd=project, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "name one with alembic -x store=APP.STORE" in run.stderr
    run = subprocess.run(
        [*alembic, "-c", ini, "-x", f"store={app_name}.acme", "upgrade", "head"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert migrate.current(cli_v1, "acme") == ("k1",)


MAKE_STORE = """
import sys
from storekeeper.site import Site
sys.path.insert(0, ".")
from {module} import app

app.bind(Site.load())
result = app.create_store(sys.argv[1], kind="tenant")
print(result.from_template, result.revision)
"""


def test_two_processes_making_stores_of_a_kind_build_its_template_once(
    project: Path, cli_v1: App, app_name: str
) -> None:
    migrate.init(cli_v1, "tenant")
    made = migrate.revision(cli_v1, "tenant", "items", autogenerate=True, rev_id="k1")
    # The migration notes each database it runs in: only the template should appear.
    extend_upgrade(
        made.path,
        first="""
        import time
        with open("migrated.log", "a") as log:
            log.write(op.get_bind().engine.url.database + "\\n")
        time.sleep(0.5)
        """,
    )
    (project / "make_store.py").write_text(MAKE_STORE.format(module=f"{app_name}_v1"))
    start = threading.Barrier(2)

    def make(name: str) -> subprocess.CompletedProcess[str]:
        start.wait()
        return subprocess.run(
            [sys.executable, "make_store.py", name],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(make, ["one", "two"]))
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["True", "k1"]
    migrated = (project / "migrated.log").read_text().split()
    assert len(migrated) == 1 and migrated[0].rpartition("/")[2].startswith(
        f"{app_name}__tenant_template"
    )
    assert migrate.current(cli_v1, "one") == migrate.current(cli_v1, "two") == ("k1",)


def activity(app: App) -> list[tuple[object, ...]]:
    """What every other connection of a PostgreSQL store's server is doing (nothing on SQLite)."""
    engine = app.engine("main_db")
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.exec_driver_sql(
                "SELECT pid, datname, state, wait_event_type, wait_event, left(query, 200)"
                " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            )
        ]


def test_an_interrupted_upgrade_leaves_a_good_revision_and_can_be_run_again(
    project: Path, cli_v1: App, app_name: str
) -> None:
    first_revision(cli_v1)
    cli_v1.sync()
    fast = migrate.revision(cli_v1, "main_db", "fast", rev_id="r2")
    set_body(fast.path, 'op.create_table("fast", sa.Column("id", sa.Integer, primary_key=True))')
    slow = migrate.revision(cli_v1, "main_db", "slow", rev_id="r3")
    set_body(
        slow.path,
        """
        import os, time
        op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))
        open(os.path.join(os.getcwd(), "r3.started"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists("r3.go") and time.monotonic() < deadline:
            time.sleep(0.05)
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "storekeeper", "upgrade", f"{app_name}.main_db"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (project / "r3.started").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C in the middle of r3
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    # r2 was committed on its own; r3's table went with its transaction.
    assert migrate.current(cli_v1, "main_db") == ("r2",)
    assert "slow" not in schema(cli_v1) and "fast" in schema(cli_v1)

    (project / "r3.go").touch()
    try:
        again = run_cli("upgrade", f"{app_name}.main_db", cwd=project, timeout=90)
    except subprocess.TimeoutExpired as hung:
        # A rare hang seen once in CI: say what the server was doing when it happened.
        raise AssertionError(f"second upgrade hung; server activity: {activity(cli_v1)}") from hung
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1].split()[1:3] == ["r2", "r3"]
    assert migrate.current(cli_v1, "main_db") == ("r3",)
