"""Backing up many stores at once (storekeeper.backup.backup_many and ``storekeeper backup
TARGETS --jobs N``): the targets of ``upgrade``, worker processes, a failed store isolated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, write_app_config
from storekeeper import App, Kind, Store
from storekeeper.backup import backup_many, backups
from storekeeper.migrate.fanout import resolve_targets
from storekeeper.site import Site
from test_backup import Base, _init

APP = """
from storekeeper import App, Kind, Store
from test_backup import Base, _init

app = App(
    "{name}",
    stores=[Store("main_db", metadata=Base.metadata, initializer=_init)],
    kinds=[Kind("tenant", metadata=Base.metadata, initializer=_init)],
)
"""


def _tenants(site: Site, app_name: str, count: int) -> App:
    app = App(
        app_name,
        stores=[Store("main_db", metadata=Base.metadata, initializer=_init)],
        kinds=[Kind("tenant", metadata=Base.metadata, initializer=_init)],
    ).bind(site)
    app.sync()
    for i in range(count):
        app.create_store(f"t{i}", kind="tenant")
    return app


def test_backup_many_in_workers_backs_up_each_store_of_a_kind(site: Site, app_name: str) -> None:
    app = _tenants(site, app_name, 3)
    refs = resolve_targets([app], [f"{app_name}.tenant:*"], with_migrations=False)
    assert [r.store for r in refs] == ["t0", "t1", "t2"]
    seen: list[tuple[str, int, int]] = []
    run = backup_many(
        refs, jobs=2, note="nightly", progress=lambda r, d, t: seen.append((r.store, d, t))
    )
    assert run.exit_code == 0 and run.failed == []
    assert sorted(s for s, _, _ in seen) == ["t0", "t1", "t2"]
    assert [d for _, d, _ in seen] == [1, 2, 3]
    for store in ("t0", "t1", "t2"):
        (taken,) = backups(app, store)
        assert taken.note == "nightly" and Path(taken.path).exists()
        # Written in the catalog's history by the process that started the workers.
        assert any(e.action == "backup" and e.ok for e in site.catalog.history(app_name, store))
    assert backups(app, "main_db") == []


def test_a_glob_an_app_and_all_name_every_store_migrations_or_not(
    site: Site, app_name: str
) -> None:
    app = _tenants(site, app_name, 2)
    labels = lambda refs: [r.label for r in refs]  # noqa: E731
    glob = resolve_targets([app], [f"{app_name}.t*"], with_migrations=False)
    assert labels(glob) == [f"{app_name}.t0", f"{app_name}.t1"]
    whole = resolve_targets([app], [app_name], with_migrations=False)
    assert labels(whole) == [f"{app_name}.main_db", f"{app_name}.t0", f"{app_name}.t1"]
    assert labels(resolve_targets([app], [], every=True, with_migrations=False)) == labels(whole)


# The command line over the core's fan-out: once, on PostgreSQL.
@pytest.mark.parametrize("dialect", ["postgresql"])
def test_cli_backup_over_many_isolates_a_failed_store_and_exits_1(
    project: Path, service_url: str, app_name: str
) -> None:
    (project / f"{app_name}.py").write_text(APP.format(name=app_name))
    write_app_config(project, app_name, service_url)
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    assert run_cli("sync", cwd=project, env=env).returncode == 0
    site = Site.load()
    try:
        import sys
        from importlib import import_module

        sys.path.insert(0, str(project))
        app = import_module(app_name).app.bind(site)
        for name in ("t0", "t1", "t2"):
            app.create_store(name, kind="tenant")
        # One tenant loses its database: its backup fails, the others go on.
        backend = site.backend(site.service("main"))
        backend.drop(f"{app_name}_t1")
    finally:
        site.close()

    ran = run_cli(
        "backup", f"{app_name}.tenant:*", "--jobs", "2", "--note", "n", cwd=project, env=env
    )
    assert ran.returncode == 1, ran.stderr
    assert "backup: 2 ok, 1 failed" in ran.stdout
    assert f"error: {app_name}.t1: store {app_name}.t1 has no database yet" in ran.stderr
    for line in ran.stdout.splitlines():
        if f"{app_name}.t0" in line or f"{app_name}.t2" in line:
            assert (line.split()[-1] == "ok" and "custom" in line) or "sqlite3" in line
    as_json = run_cli("backup", f"{app_name}.t0", "--json", cwd=project, env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["stores"][0]["backup"]["store"] == "t0"
    listed = run_cli("backups", f"{app_name}.t0", "--json", cwd=project, env=env)
    assert len(json.loads(listed.stdout)) == 2

    nothing = run_cli("backup", cwd=project, env=env)
    assert nothing.returncode == 2 and "name the stores to back up" in nothing.stderr
    unknown = run_cli("backup", f"{app_name}.nope", cwd=project, env=env)
    assert unknown.returncode == 2 and "has no store 'nope'" in unknown.stderr
