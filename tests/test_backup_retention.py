"""Retention, pins and where backups go (storekeeper.backup, storekeeper.retention): the
rules on their own, then on real PostgreSQL and SQLite stores, and through the ``storekeeper``
command in real processes."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import run_cli, write_app, write_config
from storekeeper import backup as core
from storekeeper.catalog import tables
from storekeeper.config import load
from storekeeper.discover import import_app
from storekeeper.errors import ConfigError
from storekeeper.provision import status
from storekeeper.retention import Policy, policy_for, to_prune
from storekeeper.site import Site
from test_backup import _app, _engine, _state_rows

# the rules on their own ---------------------------------------------------------------------


@dataclass
class Taken:
    name: str
    at: datetime
    pinned: bool = False


def _kept(items: list[Taken], policy: Policy) -> list[str]:
    pruned = to_prune(items, policy, when=lambda t: t.at, pinned=lambda t: t.pinned)
    return [t.name for t in items if t not in pruned]


def test_keep_last_daily_and_weekly_keep_what_any_rule_keeps_and_never_a_pinned_one() -> None:
    monday = datetime(2026, 11, 2, 9, tzinfo=UTC)  # an ISO week starts on a Monday
    items = [
        Taken("w1-mon", monday),
        Taken("w1-tue", monday + timedelta(days=1)),
        Taken("w2-mon-early", monday + timedelta(days=7)),
        Taken("w2-mon-late", monday + timedelta(days=7, hours=5)),
        Taken("w2-wed", monday + timedelta(days=9)),
        Taken("w3-thu", monday + timedelta(days=17)),
        Taken("w3-thu-late", monday + timedelta(days=17, hours=3)),
    ]
    assert _kept(items, Policy()) == [t.name for t in items]  # no rule set: keep everything
    assert _kept(items, Policy(keep_last=2)) == ["w3-thu", "w3-thu-late"]
    # The newest of each of the 3 newest days that have a backup.
    assert _kept(items, Policy(keep_daily=3)) == ["w2-mon-late", "w2-wed", "w3-thu-late"]
    # The newest of each of the 2 newest weeks that have one.
    assert _kept(items, Policy(keep_weekly=2)) == ["w2-wed", "w3-thu-late"]
    assert _kept(items, Policy(keep_last=1, keep_weekly=3)) == ["w1-tue", "w2-wed", "w3-thu-late"]
    # Rules count unpinned backups only; a pinned one is kept besides them.
    items[0].pinned = True
    items[-1].pinned = True
    assert _kept(items, Policy(keep_last=1)) == ["w1-mon", "w3-thu", "w3-thu-late"]
    assert _kept(items, Policy(keep_last=0)) == ["w1-mon", "w3-thu-late"]


def test_retention_comes_from_the_store_then_its_service_then_the_global_table(
    project: Path,
) -> None:
    write_config(
        project,
        """
        [retention]
        keep_last = 5
        keep_weekly = 4

        [retention."shop.orders_db"]
        keep_last = 1

        [services.pg]
        url = "postgresql+psycopg://u@db.example/x"
        backups = "/srv/backups"
        retention = { keep_last = 3, keep_daily = 2, keep_pre_restore = 1.5 }
        """,
    )
    config = load()
    orders = policy_for(config, "pg", "shop", "orders_db")
    assert (orders.keep_last, orders.keep_daily, orders.keep_weekly) == (1, 2, 4)
    assert orders.keep_pre_restore == 1.5
    assert orders.sources["keep_last"] == 'storekeeper.toml: [retention."shop.orders_db"]'
    assert orders.sources["keep_daily"] == "storekeeper.toml: services.pg.retention"
    assert orders.sources["keep_weekly"] == "storekeeper.toml: [retention]"
    elsewhere = policy_for(config, "local", "shop", "orders_db")
    assert (elsewhere.keep_last, elsewhere.keep_daily, elsewhere.keep_pre_restore) == (1, None, 7)
    other = policy_for(config, "local", "shop", "carts_db")
    assert (other.keep_last, other.keep_daily, other.keep_weekly) == (5, None, 4)
    assert config.backups_folder("pg").value == "/srv/backups"
    assert config.backups_folder("local").value == str(project / "var" / "backups")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[retention]\nkeep_last = -1", "keep_last = -1 is not a whole number, 0 or more"),
        ('[retention]\nkeep_daily = "7"', "keep_daily = '7' is not a whole number"),
        ("[retention]\nkeep_monthly = 3", "unknown key 'keep_monthly'"),
        ("[retention]\nkeep_pre_restore = true", "keep_pre_restore = True is not a number of"),
        ('[retention."no_dot"]\nkeep_last = 1', "expected APP.SETTING"),
        ('backups = ""', "backups must be a folder's path"),
        ('auto_backup = "no"', "auto_backup must be true or false"),
    ],
)
def test_bad_retention_settings_are_refused_by_name(
    project: Path, table: str, message: str
) -> None:
    write_config(project, table + "\n")
    with pytest.raises(ConfigError if "APP.SETTING" not in message else Exception) as caught:
        load()
    assert message in str(caught.value)
    assert "storekeeper.toml" in str(caught.value)


# on real stores ------------------------------------------------------------------------------


@pytest.fixture
def configure(project: Path, service_url: str) -> Iterator[Callable[..., Site]]:
    """``configure(extra, service_extra)``: a site whose default service ``main`` is the
    dialect under test, with ``extra`` added to its storekeeper.toml (and ``service_extra`` to
    the service's table)."""
    made: list[Site] = []

    def make(extra: str = "", service_extra: str = "") -> Site:
        write_config(
            project,
            f'default_service = "main"\n{textwrap.dedent(extra)}\n'
            f'[services.main]\nurl = "{service_url}"\n{service_extra}',
        )
        site = Site.load()
        Site.set_default(site)
        made.append(site)
        return site

    yield make
    for site in made:
        site.close()


def test_keep_last_prunes_after_each_backup_and_a_pinned_backup_stays(
    configure: Callable[..., Site], app_name: str
) -> None:
    site = configure("[retention]\nkeep_last = 2\n")
    app = _app(site, app_name)
    first = core.backup(app, "main_db", note="keep me")
    assert core.pin(app, "main_db", first.id, reason="before the audit").pinned
    taken = [core.backup(app, "main_db") for _ in range(3)]
    listed = core.backups(app, "main_db")
    assert [b.id for b in listed] == [first.id, taken[1].id, taken[2].id]
    assert (listed[0].pinned, listed[0].reason) == (True, "before the audit")
    assert not Path(taken[0].path).exists()
    assert not Path(taken[0].path).with_suffix(".json").exists()
    assert [r.id for r in site.catalog.backup_records(app_name, "main_db")] == [
        b.id for b in listed
    ]

    # Unpinned, it counts again: the next prune removes it as the oldest.
    assert not core.unpin(app, "main_db", first.id).pinned
    pruned = core.prune(app, "main_db")
    assert [b.id for b in pruned.removed] == [first.id] and pruned.kept == 2
    assert [b.id for b in core.backups(app, "main_db")] == [taken[1].id, taken[2].id]
    actions = [e.action for e in site.catalog.history(app_name, "main_db")]
    assert {"pin", "unpin", "prune"} <= set(actions)


def test_without_retention_every_backup_is_kept(
    configure: Callable[..., Site], app_name: str
) -> None:
    site = configure()
    app = _app(site, app_name)
    taken = [core.backup(app, "main_db").id for _ in range(3)]
    assert core.prune(app, "main_db").removed == []
    assert [b.id for b in core.backups(app, "main_db")] == taken


def test_keep_daily_keeps_the_newest_backup_of_each_day(
    configure: Callable[..., Site], app_name: str
) -> None:
    site = configure()
    app = _app(site, app_name)
    taken = [core.backup(app, "main_db") for _ in range(4)]
    # Three of them as if taken on earlier days (their manifests say when they were taken).
    for item, days_ago in zip(taken[:3], (3, 2, 2), strict=True):
        manifest = Path(item.path).with_suffix(".json")
        data = json.loads(manifest.read_text())
        data["taken_at"] = (
            datetime.fromisoformat(item.taken_at) - timedelta(days=days_ago)
        ).isoformat()
        manifest.write_text(json.dumps(data))
    app.bind(configure("[retention]\nkeep_daily = 2\n"))
    pruned = core.prune(app, "main_db")
    # Today's, and the newest of two days ago; three days ago is one day too many.
    assert [b.id for b in core.backups(app, "main_db")] == [taken[2].id, taken[3].id]
    assert sorted(b.id for b in pruned.removed) == sorted([taken[0].id, taken[1].id])


def test_backups_go_to_the_folder_of_their_service_and_stay_known_when_it_moves(
    configure: Callable[..., Site], app_name: str, project: Path
) -> None:
    site = configure('backups = "everything"\n')
    app = _app(site, app_name)
    first = core.backup(app, "main_db")
    assert Path(first.path).parent == project / "everything" / app_name / "main_db"

    # The service names a folder of its own: new backups go there, the older ones stay listed.
    by_service = project / "by_service"
    site = configure('backups = "everything"\n', f'backups = "{by_service}"\n')
    app.bind(site)
    second = core.backup(app, "main_db")
    assert Path(second.path).parent == by_service / app_name / "main_db"
    assert [b.id for b in core.backups(app, "main_db")] == [first.id, second.id]


def test_status_shows_the_last_backup_and_the_copies_restores_kept(
    configure: Callable[..., Site], app_name: str
) -> None:
    site = configure()
    app = _app(site, app_name)
    (row,) = status([app])
    assert (row.last_backup, row.pre_restore) == (None, [])
    core.backup(app, "main_db")
    newest = core.backup(app, "main_db")
    restored = core.restore(app, "main_db", newest.id)
    (row,) = status([app])
    assert row.last_backup == newest.id
    assert row.pre_restore == [restored.kept_as]
    # The kept copy is no backup, and no store of its own.
    assert [b.id for b in core.backups(app, "main_db")][-1] == newest.id
    assert app.list_stores() == ["main_db"]


def test_prune_drops_what_restores_kept_once_older_than_keep_pre_restore(
    configure: Callable[..., Site], app_name: str
) -> None:
    site = configure("[retention]\nkeep_pre_restore = 2\n")
    app = _app(site, app_name)
    taken = core.backup(app, "main_db")
    kept = core.restore(app, "main_db", taken.id).kept_as
    assert kept is not None
    backend = site.backend(site.service("main"))
    now = datetime.now(UTC)
    assert core.prune(app, "main_db", now=now + timedelta(days=1)).dropped == []
    assert kept in backend.list(prefix=app_name)
    later = core.prune(app, "main_db", now=now + timedelta(days=2, minutes=1))
    assert later.dropped == [kept]
    assert backend.list(prefix=app_name) == [f"{app_name}_main_db"]
    # The store and its backup are untouched.
    assert _state_rows(site, f"{app_name}_main_db") == ["first", "second"]
    assert [b.id for b in core.backups(app, "main_db")] == [taken.id]


def test_an_old_catalog_gets_the_table_of_backups(project: Path) -> None:
    site = Site.load()
    site.add_service("main", "sqlite:///stores")
    site.close()
    catalog = project / "var" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:  # as version 1 made it: no table of backups
        conn.execute("DROP TABLE storekeeper_backups")
        conn.execute("UPDATE storekeeper_meta SET value = '1' WHERE key = 'schema_version'")
    site = Site.load()
    try:
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
        assert site.catalog.backup_records() == []
        assert "main" in site.catalog.services()
    finally:
        site.close()
    with sqlite3.connect(catalog) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(storekeeper_backups)")]
    assert columns == ["app", "store", "id", "taken_at", "pinned", "reason", "manifest"]


# the command line, in real processes -------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_cli_pin_unpin_prune_and_the_listing(
    project: Path, service_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_app(project, app_name)
    write_config(
        project,
        f"""
        default_service = "main"
        apps = ["{spec}"]
        [services]
        main = "{service_url}"
        [retention]
        keep_last = 1
        keep_pre_restore = 0
        """,
    )
    target = f"{app_name}.main_db"
    assert run_cli("sync", cwd=project).returncode == 0
    monkeypatch.syspath_prepend(str(project))
    site = Site.load()
    try:
        app = import_app(spec).bind(site)
        first = core.backup(app, "main_db")
        pinned = run_cli("backups", "pin", first.id, "--reason", "release 1.0", cwd=project)
        assert pinned.returncode == 0, pinned.stderr
        assert f"backup {first.id} pinned (release 1.0)" in pinned.stdout
        second, third = core.backup(app, "main_db"), core.backup(app, "main_db")

        listed = run_cli("backups", cwd=project)  # every store's, when none is named
        assert listed.returncode == 0, listed.stderr
        assert "pinned (release 1.0)" in listed.stdout and third.id in listed.stdout
        assert second.id not in listed.stdout  # pruned after the third: keep_last = 1

        unknown = run_cli("backups", "pin", "20000101T000000000000Z", cwd=project)
        assert unknown.returncode == 2
        assert "error: no backup '20000101T000000000000Z'" in unknown.stderr

        kept = core.restore(app, "main_db", third.id).kept_as
        shown = run_cli("status", cwd=project)
        assert f"kept by a restore: {kept}" in shown.stdout
        assert third.id in shown.stdout  # the last backup

        assert run_cli("backups", "unpin", first.id, cwd=project).returncode == 0
        pruned = run_cli("backups", "prune", target, "--json", cwd=project)
        assert pruned.returncode == 0, pruned.stderr
        (report,) = json.loads(pruned.stdout)
        assert (report["removed"], report["dropped"]) == ([first.id], [kept])
        backend = site.backend(site.service("main"))
        assert backend.list(prefix=app_name) == [f"{app_name}_main_db"]
        assert [b.id for b in core.backups(app, "main_db")] == [third.id]
        engine = _engine(site, f"{app_name}_main_db")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM items")).scalar() == 2
        engine.dispose()
    finally:
        site.close()
