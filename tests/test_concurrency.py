"""Two ``storekeeper sync`` runs at once: one works, the other waits; the initializer's first
time runs once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from conftest import CLI, run_cli, write_app, write_app_config, write_config
from storekeeper import App, ConfigError, LockTimeout, config, migrate
from storekeeper.cli import main
from storekeeper.config import Sourced
from storekeeper.site import Site

pytestmark = pytest.mark.slow

# The app of write_app, with its initializer wrapped to log when each call starts and ends,
# so the log shows whether the two runs' initializers overlapped.
TRACED_APP = """
import os

from storekeeper import App, ServerSetting, Store

from {name} import Base, init_main as _init_main


def init_main(engine, first_time):
    with open(os.environ["INIT_LOG"], "a") as log:
        log.write(f"start-{{first_time}}\\n")
    _init_main(engine, first_time)
    with open(os.environ["INIT_LOG"], "a") as log:
        log.write(f"end-{{first_time}}\\n")


app = App(
    "{name}",
    stores=[Store("main_db", metadata=Base.metadata, initializer=init_main)],
    servers=[ServerSetting("tenants")],
)
"""


def test_two_syncs_at_once_create_and_initialize_the_store_once(
    project: Path, site: Site, app_name: str, service_url: str
) -> None:
    write_app(project, app_name)
    (project / f"{app_name}_traced.py").write_text(TRACED_APP.format(name=app_name))
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{app_name}_traced:app"]
        [services]
        main = "{service_url}"
        """,
    )
    log = project / "shared-init.log"
    # The initializer sleeps, so the second process arrives while the first still works.
    env = {"INIT_SLEEP": "0.5", "INIT_LOG": str(log)}
    start = threading.Barrier(2)

    def sync() -> subprocess.CompletedProcess[str]:
        start.wait()
        return run_cli("sync", app_name, cwd=project, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(sync) for _ in range(2)]
        results = [run.result() for run in runs]

    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    actions = sorted(
        line.split(": ", 1)[1].split(",")[0]
        for r in results
        for line in r.stderr.splitlines()
        if line.startswith("[1/1]")
    )
    assert actions == ["created", "up to date"]

    lines = log.read_text().split()
    # The first time ran once; the waiting run found the store made and initialized.
    assert [line for line in lines if not line.startswith(("start", "end"))] == ["True", "False"]
    # One worked, the other waited: the two initializer calls did not overlap.
    assert [line for line in lines if line.startswith(("start", "end"))] == [
        "start-True",
        "end-True",
        "start-False",
        "end-False",
    ]

    url = site.backend(site.service("main")).database_url(f"{app_name}_main_db")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM items")).scalar_one() == 2
    finally:
        engine.dispose()


# Many stores made at once in one process, and in several: no lock may starve the work it
# protects (the admin pool of a PostgreSQL service keeps 3 connections, 7 at most).

RACE_MODULE = '''
"""The initializer of the stores the race tests make: one line per call in RACE_LOG."""
import os


def init_counted(engine, first_time):
    with open(os.environ["RACE_LOG"], "a") as log:
        log.write(f"{{engine.url.database}} {{first_time}}\\n")
'''

RACE_WORKER = """
import sys
import threading

from storekeeper.site import Site

import {app}_v1

app = {app}_v1.app.bind(Site.load())
prefix, threads, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
start = threading.Barrier(threads)
failures = []


def make(i):
    start.wait()
    try:
        app.create_store(f"{{prefix}}{{i}}", kind=kind, initializer="{app}_race:init_counted")
    except BaseException as exc:
        failures.append(repr(exc))


workers = [threading.Thread(target=make, args=(i,)) for i in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


@pytest.fixture
def kind_app(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> App:
    """App ``app_name`` with a kind ``tenant`` that has migrations (so making one of its stores
    clones the kind's template under two locks), and an initializer that logs each call."""
    from test_migrate import configure_cli, declare

    monkeypatch.syspath_prepend(str(project))
    configure_cli(project, app_name, service_url)
    (project / f"{app_name}_race.py").write_text(RACE_MODULE.format())
    monkeypatch.setenv("RACE_LOG", str(project / "race.log"))
    app = declare(project, site, app_name, 1)
    migrate.init(app, "tenant")
    migrate.revision(app, "tenant", "items", autogenerate=True, rev_id="k1")
    return app


def initialized(project: Path) -> list[str]:
    log = project / "race.log"
    return sorted(log.read_text().splitlines()) if log.exists() else []


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_32_stores_made_at_once_in_one_process_are_each_initialized_once(
    project: Path, kind_app: App, app_name: str
) -> None:
    kinds = [f"k{i:02d}" for i in range(16)]
    plain = [f"p{i:02d}" for i in range(16)]
    start = threading.Barrier(len(kinds) + len(plain))

    def make(name: str) -> str:
        start.wait()
        kind = "tenant" if name.startswith("k") else None
        made = kind_app.create_store(name, kind=kind, initializer=f"{app_name}_race:init_counted")
        return made.action

    with ThreadPoolExecutor(max_workers=len(kinds) + len(plain)) as pool:
        actions = list(pool.map(make, kinds + plain))

    assert actions == ["created"] * 32
    assert initialized(project) == sorted(f"{app_name}_{n} True" for n in kinds + plain)
    assert all(migrate.current(kind_app, n) == ("k1",) for n in kinds)
    assert sorted(kind_app.list_stores()) == sorted(["main_db", *kinds, *plain])


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_32_stores_made_at_once_by_4_processes_of_8_threads_are_each_initialized_once(
    project: Path, kind_app: App, app_name: str
) -> None:
    (project / "race_worker.py").write_text(RACE_WORKER.format(app=app_name))
    env = {**os.environ, "RACE_LOG": str(project / "race.log")}
    env = {k: v for k, v in env.items() if not k.startswith("STOREKEEPER_")}
    workers = [
        subprocess.Popen(
            # Two processes make stores of the kind, two plain stores.
            [sys.executable, "race_worker.py", f"w{w}_", "8", "tenant" if w < 2 else ""],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, out + err
    names = [f"w{w}_{i}" for w in range(4) for i in range(8)]
    assert initialized(project) == sorted(f"{app_name}_{n} True" for n in names)
    assert sorted(kind_app.list_stores()) == sorted(["main_db", *names])


# A store's lock held by another process: the waiter says who holds it, and gives up in time.

LOCK_HOLDER = """
import sys

from storekeeper.site import Site

site = Site.load()
backend = site.backend(site.service("main"))
with backend.lock(sys.argv[1], doing="a test holding the lock"):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@contextmanager
def lock_held_by_another_process(project: Path, database: str) -> Iterator[subprocess.Popen[str]]:
    """A real process holding the lock on ``database`` until the block ends (handshake: it
    prints ``held`` once it has the lock, and lets go when its stdin gets a line)."""
    (project / "lock_holder.py").write_text(LOCK_HOLDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    holder = subprocess.Popen(
        [sys.executable, "lock_holder.py", database],
        cwd=project,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.communicate("\n", timeout=30)


def test_a_sync_waiting_for_a_held_lock_names_the_holder_and_gives_up_after_lock_timeout(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(project))
    write_app(project, app_name)
    write_app_config(project, app_name, service_url)
    database = f"{app_name}_main_db"
    with lock_held_by_another_process(project, database) as holder:
        run = run_cli("sync", app_name, "--lock-timeout", "0.5", cwd=project)
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr
        who = f"pid {holder.pid} on {socket.gethostname()} since "
        waiting, gave_up = (
            [line for line in run.stderr.splitlines() if line.startswith(text)]
            for text in (
                f"waiting for the lock on '{database}'",
                # sync reports each store's failure under the store's name.
                f"error: {app_name}.main_db: gave up waiting",
            )
        )
        assert len(waiting) == 1 and who in waiting[0] and "giving up after 0.5 s" in waiting[0]
        assert len(gave_up) == 1 and who in gave_up[0]
        assert "doing: a test holding the lock (in: lock_holder.py " in gave_up[0]
        assert "--lock-timeout SECONDS" in gave_up[0]
        # Nothing was made while the lock was held elsewhere.
        assert not site.backend(site.service("main")).exists(database)

        # The same from code, with lock_timeout from the configuration file.
        (project / "storekeeper.toml").write_text(
            (project / "storekeeper.toml")
            .read_text()
            .replace('default_service = "main"', 'default_service = "main"\nlock_timeout = 0')
        )
        configured = Site.load()
        try:
            assert configured.config.lock_timeout == Sourced("0", "storekeeper.toml")
            app = importlib.import_module(app_name).app.bind(configured)
            with pytest.raises(LockTimeout, match=f"after 0 s: it is held by pid {holder.pid}"):
                app.sync()
        finally:
            configured.close()

    # Once the holder has let go, the same command works.
    assert run_cli("sync", app_name, "--lock-timeout", "0.5", cwd=project).returncode == 0


def test_a_waiting_sync_goes_on_when_the_holder_lets_go(
    project: Path, site: Site, app_name: str, service_url: str
) -> None:
    write_app(project, app_name)
    write_app_config(project, app_name, service_url)
    with lock_held_by_another_process(project, f"{app_name}_main_db") as holder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
        waiter = subprocess.Popen(
            [*CLI, "sync", app_name],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiter.stderr is not None
        # Handshake: the waiter says it waits (and for whom) before the holder lets go.
        line = waiter.stderr.readline()
        assert f"waiting for the lock on '{app_name}_main_db', held by pid {holder.pid}" in line
        assert "giving up after 300 s" in line
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert "created" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sync", "--lock-timeout", "-1"], "'-1' is not a number of seconds (0 or more)"),
        (["upgrade", "--lock-timeout", "soon"], "'soon' is not a number of seconds"),
    ],
)
def test_a_bad_lock_timeout_flag_is_refused_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["'soon'", "-3", "true", "inf"])
def test_a_bad_lock_timeout_in_the_configuration_names_the_value(project: Path, value: str) -> None:
    write_config(project, f"lock_timeout = {value}\n")
    with pytest.raises(ConfigError, match=r"storekeeper.toml: lock_timeout: .* is not a number"):
        config.load()
