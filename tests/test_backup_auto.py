"""The backup taken automatically before a store is migrated (``upgrade``, ``downgrade``, a
``sync`` that migrates an existing store), on real PostgreSQL and SQLite: pinned until a later
one is taken, reported with the migration, restorable; a store whose backup fails is not
migrated. Also: restoring another store's backup (``--force``) and an older revision's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import run_cli, write_config
from storekeeper import App, migrate
from storekeeper import backup as core
from storekeeper.config import load
from storekeeper.errors import BadInput
from storekeeper.migrate.fanout import StoreRef, migrate_many
from storekeeper.site import Site
from test_migrate import configure_cli, declare, first_revision, query, set_body

Declare = Callable[[str], App]


@pytest.fixture
def auto_site(project: Path, service_url: str, app_name: str) -> Iterator[Site]:
    """A site on the dialect under test that takes automatic backups under pytest too
    (``auto_backup = true``), with a second service ``other`` of the same dialect. (After
    ``app_name``, whose ``site`` writes a storekeeper.toml of its own.)"""
    other = "sqlite:///other_stores" if service_url.startswith("sqlite") else service_url
    write_config(
        project,
        f"""
        default_service = "main"
        auto_backup = true
        [services]
        main = "{service_url}"
        other = "{other}"
        """,
    )
    site = Site.load()
    Site.set_default(site)
    yield site
    site.close()


@pytest.fixture
def app_at_r1(project: Path, auto_site: Site, monkeypatch: pytest.MonkeyPatch) -> Iterator[Declare]:
    """``make(name)``: app ``name`` with one migration (r1, the items table), synced: a new
    store, so no backup yet. Its databases are dropped afterwards. The apps made share their
    migrations (``migrations/main_db`` of the project)."""
    monkeypatch.syspath_prepend(str(project))
    made: list[App] = []

    def make(name: str) -> App:
        app = declare(project, auto_site, name, 1)
        if not made:  # the apps of one project share its script directory (migrations/)
            first_revision(app)
        (synced,) = app.sync().results
        assert synced.backup is None  # made in this run: nothing to back up
        made.append(app)
        return app

    yield make
    for app in made:
        for service in ("main", "other"):
            backend = auto_site.backend(auto_site.service(service))
            for database in backend.list(prefix=f"{app.name}_"):
                backend.drop(database)


def test_the_test_environment_takes_no_automatic_backup_unless_configured(
    site: Site, project: Path
) -> None:
    assert site.config.env == "test"
    assert core.auto_backup(site) is None
    assert load(env=None).auto_backups  # anywhere else it is on
    write_config(project, "auto_backup = false\n")
    assert not load(env=None).auto_backups


def test_a_failing_upgrade_is_preceded_by_a_pinned_backup_that_restores_the_store(
    app_at_r1: Declare, auto_site: Site, app_name: str
) -> None:
    app = app_at_r1(app_name)
    r2 = migrate.revision(app, "main_db", "drop the old rows", rev_id="r2")
    set_body(r2.path, "op.execute('DELETE FROM items')")
    r3 = migrate.revision(app, "main_db", "broken", rev_id="r3")
    set_body(r3.path, "raise RuntimeError('boom in r3')")

    ran = migrate_many(
        [StoreRef(app, "main_db")], before=core.auto_backup(auto_site), continue_on_error=True
    )
    (result,) = ran.results
    assert not result.ok and "boom in r3" in result.error
    assert migrate.current(app, "main_db") == ("r2",)  # r2 ran: its rows are gone
    assert query(app, "SELECT name FROM items") == []
    (taken,) = core.backups(app, "main_db")
    assert result.backup == taken.id
    assert (taken.revision, taken.pinned, taken.reason) == ("r1", True, "pre-upgrade")
    assert taken.note == "automatic, before upgrade"
    history = auto_site.catalog.history(app_name, "main_db")
    assert any(e.action == "migrate" and taken.id in e.detail for e in history)

    restored = core.restore(app, "main_db", taken.id)
    assert migrate.current(app, "main_db") == ("r1",)
    assert query(app, "SELECT name FROM items") == ["init-True"]
    assert restored.hint == (
        f"backup {taken.id} was taken at revision r1, older than the head of the store's "
        f"migrations (r3): bring it up with storekeeper upgrade {app_name}.main_db"
    )


def test_a_pre_upgrade_backup_stays_pinned_until_the_next_one(
    app_at_r1: Declare, auto_site: Site, app_name: str, project: Path
) -> None:
    app = app_at_r1(app_name)
    write_config(
        project, (project / "storekeeper.toml").read_text() + "\n[retention]\nkeep_last = 1\n"
    )
    app.bind(site := Site.load())
    try:
        migrate.revision(app, "main_db", "second", rev_id="r2")
        migrate.revision(app, "main_db", "third", rev_id="r3")
        before = core.auto_backup(site)
        (first,) = migrate_many([StoreRef(app, "main_db")], to="r2", before=before).results
        # Ordinary backups after the migration: retention keeps one of them, and the pinned.
        ordinary = [core.backup(app, "main_db").id for _ in range(2)]
        listed = core.backups(app, "main_db")
        assert [(b.id, b.pinned) for b in listed] == [(first.backup, True), (ordinary[1], False)]

        (second,) = migrate_many([StoreRef(app, "main_db")], before=before).results
        assert second.ok and second.backup not in (None, first.backup)
        # The earlier pre-upgrade backup is unpinned now, so retention counted it and pruned it.
        listed = core.backups(app, "main_db")
        assert [(b.id, b.pinned) for b in listed] == [(ordinary[1], False), (second.backup, True)]
        # Nothing to migrate: no backup.
        (third,) = migrate_many([StoreRef(app, "main_db")], before=before).results
        assert third.ok and third.backup is None
    finally:
        site.close()


def test_a_store_whose_backup_fails_is_not_migrated_and_the_others_go_on(
    app_at_r1: Declare, auto_site: Site, app_name: str, project: Path
) -> None:
    blocked, fine = app_at_r1(f"{app_name}a"), app_at_r1(f"{app_name}b")
    migrate.revision(blocked, "main_db", "second", rev_id="r2")  # for both
    # The backups of the first go into a folder that cannot be made: a file is in its way.
    (project / "var" / "backups").mkdir(parents=True, exist_ok=True)
    (project / "var" / "backups" / blocked.name).write_text("not a folder")

    ran = migrate_many(
        [StoreRef(blocked, "main_db"), StoreRef(fine, "main_db")],
        before=core.auto_backup(auto_site),
        continue_on_error=True,
        jobs=2,
    )
    by_app = {r.app: r for r in ran.results}
    failed, done = by_app[blocked.name], by_app[fine.name]
    assert not failed.ok and failed.backup is None
    assert failed.error.startswith(
        f"store {blocked.name}.main_db: the automatic backup before upgrade failed, so it was "
        "not migrated (it stays at revision r1): cannot make backup folder"
    )
    assert "--no-backup" in failed.error
    assert (failed.before, failed.after) == ("r1", "r1")
    assert migrate.current(blocked, "main_db") == ("r1",)
    assert done.ok and done.backup is not None
    assert migrate.current(fine, "main_db") == ("r2",)
    assert ran.exit_code == 1


def test_sync_backs_up_an_existing_store_before_migrating_it(
    app_at_r1: Declare, app_name: str
) -> None:
    app = app_at_r1(app_name)
    migrate.revision(app, "main_db", "second", rev_id="r2")
    (synced,) = app.sync().results
    assert synced.migrations_applied == ["r2"] and synced.backup is not None
    (taken,) = core.backups(app, "main_db")
    assert (taken.id, taken.revision, taken.pinned) == (synced.backup, "r1", True)
    assert taken.note == "automatic, before sync"
    # At head: nothing to migrate, nothing backed up; and backup=False skips it.
    assert app.sync().results[0].backup is None
    migrate.revision(app, "main_db", "third", rev_id="r3")
    (skipped,) = app.sync(backup=False).results
    assert skipped.migrations_applied == ["r3"] and skipped.backup is None
    assert len(core.backups(app, "main_db")) == 1


def test_a_backup_of_another_store_is_restored_only_with_force(
    app_at_r1: Declare, app_name: str
) -> None:
    mine, theirs = app_at_r1(f"{app_name}m"), app_at_r1(f"{app_name}t")
    with theirs.session("main_db") as session:
        session.execute(text("INSERT INTO items (name) VALUES ('theirs')"))
    taken = core.backup(theirs, "main_db")
    with pytest.raises(BadInput) as refused:
        core.restore(mine, "main_db", taken.path)
    assert str(refused.value) == (
        f"backup {taken.id} is of store {theirs.name}.main_db, not {mine.name}.main_db (so its "
        "manifest says): refused, nothing was changed; pass --force to restore it all the same"
    )
    assert query(mine, "SELECT name FROM items") == ["init-True"]
    restored = core.restore(mine, "main_db", taken.path, force=True)
    assert restored.hint is None  # taken at r1, the head
    assert query(mine, "SELECT name FROM items ORDER BY id") == ["init-True", "theirs"]


# the command line, in real processes -------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_cli_upgrade_and_downgrade_back_up_first_unless_told_not_to(
    project: Path, site: Site, service_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(project))
    app = declare(project, site, app_name, 1)
    first_revision(app)
    configure_cli(project, app_name, service_url)
    target = f"{app_name}.main_db"
    assert run_cli("sync", cwd=project).returncode == 0
    migrate.revision(app, "main_db", "second", rev_id="r2")

    # A command run by a test is in the test environment too (PYTEST_CURRENT_TEST): none.
    quiet = run_cli("upgrade", target, cwd=project)
    assert quiet.returncode == 0, quiet.stderr
    assert "BACKUP" not in quiet.stdout
    assert not (project / "var" / "backups").exists()

    # Outside it, with nothing configured, the downgrade backs the store up first.
    outside = {"STOREKEEPER_ENV": ""}
    down = run_cli("downgrade", target, "--to", "r1", "--json", cwd=project, env=outside)
    assert down.returncode == 0, down.stderr
    (result,) = json.loads(down.stdout)["stores"]
    assert result["backup"] is not None and result["after"] == "r1"
    up = run_cli("upgrade", target, cwd=project, env=outside)
    assert up.returncode == 0, up.stderr
    header, row = up.stdout.splitlines()[:2]
    assert header.split()[-1] == "BACKUP" and row.split()[-1] != result["backup"]

    skipped = run_cli("downgrade", target, "--to", "r1", "--no-backup", cwd=project, env=outside)
    assert skipped.returncode == 0, skipped.stderr
    assert "BACKUP" not in skipped.stdout
    listed = core.backups(app, "main_db")
    # The later pre-upgrade backup unpinned the first.
    assert [(b.id, b.revision, b.pinned, b.reason) for b in listed] == [
        (result["backup"], "r2", False, ""),
        (row.split()[-1], "r1", True, "pre-upgrade"),
    ]
