"""The migration verbs where a user goes astray: adopting migrations on a store made by
``create_all``, autogenerate with nothing to do, relative and odd revision targets, Alembic's
public API only, and the next command ``check`` suggests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from storekeeper import App, BadInput, BadRevision, migrate
from storekeeper.site import Site
from test_migrate import configure_cli, declare, first_revision

SQLITE = pytest.mark.parametrize("dialect", ["sqlite"])


@pytest.fixture
def v1(
    project: Path, site: Site, app_name: str, service_url: str, monkeypatch: pytest.MonkeyPatch
) -> App:
    """App ``app_name`` (models v1), configured for the command line too."""
    monkeypatch.syspath_prepend(str(project))
    configure_cli(project, app_name, service_url)
    return declare(project, site, app_name, 1)


def three_revisions(app: App) -> None:
    """Store ``main_db`` with migrations r1 (its table), r2 and r3 (empty), synced to r3."""
    first_revision(app)
    for rev in ("r2", "r3"):
        migrate.revision(app, "main_db", rev, rev_id=rev)
    app.sync()


# item 17: targets ---------------------------------------------------------------------------


@SQLITE
def test_item17_relative_targets_are_read_as_alembic_reads_them(v1: App) -> None:
    three_revisions(v1)
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
        assert move(v1, "main_db", to).after == after, (move.__name__, to)


@SQLITE
def test_item17_anything_not_relative_is_a_revision_id_and_an_unknown_one_is_refused(
    v1: App, app_name: str
) -> None:
    three_revisions(v1)
    # Alembic would read 'r3-1x' as 'r3-1' and go to r2: it is no revision, so it is refused.
    for to in ("r3-1x", "zz-top", "-x", "r1@@head"):
        with pytest.raises(BadRevision, match=rf"unknown revision {re.escape(repr(to))}"):
            migrate.downgrade(v1, "main_db", to)
    with pytest.raises(BadRevision, match=r"unknown revision 'r9' in 'r9-1'"):
        migrate.downgrade(v1, "main_db", "r9-1")
    with pytest.raises(BadRevision, match=r"upgrade goes up: '-1'.*downgrade --to -1"):
        migrate.upgrade(v1, "main_db", "-1")
    with pytest.raises(BadRevision, match=r"downgrade goes down: '\+1'.*upgrade --to \+1"):
        migrate.downgrade(v1, "main_db", "+1")
    assert migrate.current(v1, "main_db") == ("r3",)


@SQLITE
def test_item17_a_revision_id_alembic_cannot_target_is_refused_when_made(
    project: Path, v1: App, app_name: str
) -> None:
    first_revision(v1)
    versions = sorted(p.name for p in (project / "migrations/main_db/versions").glob("*.py"))
    for rev_id in ("my-rev", "a+b", "x@y", "a:b", " "):
        with pytest.raises(BadInput, match=re.escape(repr(rev_id))):
            migrate.revision(v1, "main_db", "bad id", rev_id=rev_id)
    with pytest.raises(BadRevision, match=r"revision id 'r1' is taken"):
        migrate.revision(v1, "main_db", "again", rev_id="r1")
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
