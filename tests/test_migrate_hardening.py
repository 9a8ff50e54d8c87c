"""The migration verbs where a user goes astray: adopting migrations on a store made by
``create_all``, autogenerate with nothing to do, relative and odd revision targets, Alembic's
public API only, and the next command ``check`` suggests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from storekeeper import App, BadInput, BadRevision, MigrationError, migrate
from storekeeper.site import Site
from test_migrate import declare, first_revision, query

SQLITE = pytest.mark.parametrize("dialect", ["sqlite"])


def three_revisions(app: App) -> None:
    """Store ``main_db`` with migrations r1 (its table), r2 and r3 (empty), synced to r3."""
    first_revision(app)
    for rev in ("r2", "r3"):
        migrate.revision(app, "main_db", rev, rev_id=rev)
    app.sync()


# item 15: adopting migrations on a store made by create_all ----------------------------------


def test_item15_adopting_migrations_on_a_store_made_by_create_all(
    project: Path, cli_v1: App, app_name: str
) -> None:
    label = f"{app_name}.main_db"
    cli_v1.sync()  # no script directory yet: create_all makes the tables
    migrate.init(cli_v1, "main_db")
    made = migrate.revision(cli_v1, "main_db", "baseline", autogenerate=True, rev_id="r1")
    assert made is not None
    # The first migration builds every table, as a new database of the store needs...
    assert "op.create_table(" in Path(made.path).read_text()
    for attempt in (lambda: migrate.upgrade(cli_v1, "main_db"), cli_v1.sync):
        with pytest.raises(MigrationError) as caught:
            attempt()
        message = str(caught.value)
        assert f"store {label} has tables (items) but no migration history" in message
        assert f"storekeeper stamp {label} --to r1" in message
        assert "already exists" not in message
    [line] = migrate.check(cli_v1, "main_db")
    assert "no migration history" in line and f"storekeeper stamp {label} --to r1" in line
    assert "upgrade" not in line
    assert migrate.current(cli_v1, "main_db") == ()  # the refusals changed nothing
    # The new migration, compared with what the store really has, it says how to adopt it.
    [note] = made.notes
    assert f"{label} already has these tables" in note and "no migration history" in note
    assert f"storekeeper stamp {label} --to r1" in note

    migrate.stamp(cli_v1, "main_db", "r1")
    assert migrate.check(cli_v1, "main_db") == []
    assert cli_v1.sync().results[0].action == "up to date"
    assert query(cli_v1, "SELECT name FROM items ORDER BY id")[0] == "init-True"  # data kept
    # A new database of the store is built by the migrations alone.
    cli_v1.drop_store("main_db")
    assert cli_v1.sync().results[0].migrations_applied == ["r1"]


@SQLITE
def test_item15_adopting_a_store_whose_tables_differ_from_the_models_lists_the_differences(
    project: Path, site: Site, cli_v1: App, app_name: str
) -> None:
    cli_v1.sync()
    v2 = declare(project, site, app_name, 2)
    migrate.init(v2, "main_db")
    made = migrate.revision(v2, "main_db", "baseline", autogenerate=True, rev_id="r1")
    assert made is not None
    [note] = made.notes
    assert "table tags is in the models but not in the database" in note
    assert f"storekeeper stamp {app_name}.main_db --to REV" in note


# item 16: autogenerate with nothing to do ---------------------------------------------------


@SQLITE
def test_item16_autogenerate_with_no_changes_writes_nothing_unless_empty(
    project: Path, cli_v1: App, app_name: str
) -> None:
    first_revision(cli_v1)
    versions = project / "migrations" / "main_db" / "versions"
    before = sorted(versions.glob("*.py"))
    assert migrate.revision(cli_v1, "main_db", "nothing", autogenerate=True) is None
    assert sorted(versions.glob("*.py")) == before
    made = migrate.revision(cli_v1, "main_db", "on purpose", autogenerate=True, empty=True)
    assert made is not None and Path(made.path).is_file()
    assert made.down_revisions == ("r1",)

    target = f"{app_name}.main_db"
    run = run_cli("revision", target, "-m", "again", "--autogenerate", cwd=project)
    assert run.returncode == 0, run.stderr
    assert "no changes detected" in run.stdout and "--empty" in run.stdout
    assert len(list(versions.glob("*.py"))) == 2
    run = run_cli("revision", target, "-m", "again", "--autogenerate", "--empty", cwd=project)
    assert run.returncode == 0, run.stderr
    assert "new revision" in run.stdout and len(list(versions.glob("*.py"))) == 3


# item 17: targets ---------------------------------------------------------------------------


@SQLITE
def test_item17_relative_targets_are_read_as_alembic_reads_them(cli_v1: App) -> None:
    three_revisions(cli_v1)
    moves = [
        (migrate.downgrade, "-1", "r2"),
        (migrate.downgrade, "head-2", "r1"),
        (migrate.upgrade, "+1", "r2"),
        (migrate.upgrade, "r2+1", "r3"),
        (migrate.downgrade, "r3-2", "r1"),
        (migrate.downgrade, "base", None),
        (migrate.upgrade, "base+2", "r2"),
        (migrate.upgrade, "heads", "r3"),
    ]
    for move, to, after in moves:
        assert move(cli_v1, "main_db", to).after == after, (move.__name__, to)


@SQLITE
def test_item17_anything_not_relative_is_a_revision_id_and_an_unknown_one_is_refused(
    cli_v1: App, app_name: str
) -> None:
    three_revisions(cli_v1)
    # Alembic would read 'r3-1x' as 'r3-1' and go to r2: it is no revision, so it is refused.
    for to in ("r3-1x", "zz-top", "-x", "r1@@head"):
        with pytest.raises(BadRevision, match=rf"unknown revision {re.escape(repr(to))}"):
            migrate.downgrade(cli_v1, "main_db", to)
    with pytest.raises(BadRevision, match=r"unknown revision 'r9' in 'r9-1'"):
        migrate.downgrade(cli_v1, "main_db", "r9-1")
    with pytest.raises(BadRevision, match=r"upgrade goes up: '-1'.*downgrade --to -1"):
        migrate.upgrade(cli_v1, "main_db", "-1")
    with pytest.raises(BadRevision, match=r"downgrade goes down: '\+1'.*upgrade --to \+1"):
        migrate.downgrade(cli_v1, "main_db", "+1")
    assert migrate.current(cli_v1, "main_db") == ("r3",)


@SQLITE
def test_item17_a_revision_id_alembic_cannot_target_is_refused_when_made(
    project: Path, cli_v1: App, app_name: str
) -> None:
    first_revision(cli_v1)
    versions = sorted(p.name for p in (project / "migrations/main_db/versions").glob("*.py"))
    for rev_id in ("my-rev", "a+b", "x@y", "a:b", " "):
        with pytest.raises(BadInput, match=re.escape(repr(rev_id))):
            migrate.revision(cli_v1, "main_db", "bad id", rev_id=rev_id)
    with pytest.raises(BadRevision, match=r"revision id 'r1' is taken"):
        migrate.revision(cli_v1, "main_db", "again", rev_id="r1")
    after = sorted(p.name for p in (project / "migrations/main_db/versions").glob("*.py"))
    assert after == versions  # nothing written
    run = run_cli("revision", f"{app_name}.main_db", "-m", "x", "--rev-id", "my-rev", cwd=project)
    assert run.returncode == 2, run.stderr
    assert "'my-rev'" in run.stderr and "unexpected" not in run.stderr


# item 18: Alembic's public API --------------------------------------------------------------


def test_item18_the_migration_code_uses_only_alembics_public_api() -> None:
    private = re.compile(r"_upgrade_revs|_downgrade_revs|_stamp_revs|cmd_opts|EnvironmentContext")
    for path in sorted((ROOT / "src/storekeeper/migrate").glob("*.py")):
        found = private.findall(path.read_text())
        assert not found, f"{path.name} uses {found}"


# item 19: what check suggests ---------------------------------------------------------------


@SQLITE
def test_item19_check_suggests_upgrade_at_base_and_a_kinds_migrations_as_app_kind_star(
    project: Path, site: Site, cli_v1: App, app_name: str
) -> None:
    first_revision(cli_v1)
    cli_v1.sync()
    migrate.downgrade(cli_v1, "main_db", "base")
    migrate.init(cli_v1, "tenant")  # no revisions yet: the kind's models are not built by them
    run = run_cli("check", f"{app_name}.main_db", f"{app_name}.tenant", cwd=project)
    assert run.returncode == 1, run.stderr
    assert (
        f"check failed for {app_name}.main_db: its database is behind its migrations: "
        f"storekeeper upgrade {app_name}.main_db"
    ) in run.stderr
    assert (
        f"check failed for kind {app_name}.tenant: write a migration "
        f"(storekeeper revision {app_name}.tenant:* -m MSG --autogenerate) or fix the models"
    ) in run.stderr
    assert "APP.STORE" not in run.stderr

    # A store of a kind drifts with the kind's models: the kind's migrations need the change.
    migrate.revision(cli_v1, "tenant", "items", autogenerate=True, rev_id="k1")
    cli_v1.create_store("acme", kind="tenant")
    v2 = declare(project, site, app_name, 2)
    found = migrate.commands.checked(v2, "acme")
    assert found.differences and found.action == "revision"
    assert found.next == f"storekeeper revision {app_name}.tenant:* -m MSG --autogenerate"
