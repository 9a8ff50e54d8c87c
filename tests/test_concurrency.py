"""Two ``storekeeper sync`` runs at once: one works, the other waits; the initializer's first
time runs once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from conftest import run_cli, write_app, write_config
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
