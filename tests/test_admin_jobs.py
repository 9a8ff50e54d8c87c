"""The admin page's background jobs (storekeeper.admin.jobs) on real SQLite stores: each job
ends in the summary the command line prints, goes on past a store that is gone, refuses bad
input before starting, and the runner keeps only its last jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Gate, write_migration
from storekeeper import App, Store
from storekeeper.admin.jobs import JobRunner
from storekeeper.errors import BadInput, NotFound
from storekeeper.report import SYNCED_HEADERS, print_sync
from storekeeper.site import Site


@pytest.fixture
def shop(project: Path) -> Iterator[App]:
    site = Site.load()
    yield App("shop", stores=[Store("orders"), Store("stock")]).bind(site)
    site.close()


@pytest.fixture
def runner(shop: App) -> Iterator[JobRunner]:
    jobs = JobRunner([shop], workers=2, keep=3)
    yield jobs
    jobs.shutdown()


def test_a_sync_job_ends_in_the_table_and_last_line_storekeeper_sync_prints(
    runner: JobRunner, shop: App, capsys: pytest.CaptureFixture[str]
) -> None:
    job = runner.submit("sync", ["shop.orders", "shop.stock"], actor="admin", client="::1")
    assert job.wait(60)
    assert job.state == "done", job.lines
    assert job.summary is not None
    assert job.summary.headers == SYNCED_HEADERS
    assert [row[0] for row in job.summary.rows] == ["shop.orders", "shop.stock"]
    assert [row[-1] for row in job.summary.rows] == ["created", "created"]
    assert job.summary.lines == ["synced: 2 created"]
    assert job.lines[0] == "[1/2] shop.orders: sync..."
    assert job.lines[-1].startswith("[2/2] shop.stock: created")
    # the command line says the same of the same stores, now up to date
    again = runner.submit("sync", ["shop.orders", "shop.stock"], actor="admin", client="::1")
    assert again.wait(60) and again.summary is not None
    print_sync(shop.sync())
    printed = capsys.readouterr().out
    assert again.summary.lines[0] in printed
    for row in again.summary.rows:
        assert row[0] in printed and row[-1] in printed
    events = shop.site.catalog.history("shop", "orders")
    assert any(e.action == "sync" and e.actor == "admin" and e.client == "::1" for e in events)


def test_a_job_goes_on_past_a_store_that_is_gone_and_says_so(runner: JobRunner) -> None:
    job = runner.submit("sync", ["shop.gone", "shop.orders"], actor="admin", client="::1")
    assert job.wait(60)
    assert job.state == "failed"
    assert job.summary is not None
    assert [row[0] for row in job.summary.rows] == ["shop.orders"]
    assert job.summary.errors and "shop.gone" in job.summary.errors[0]
    assert job.summary.errors[0].startswith("error: ")


def test_bad_input_is_refused_before_a_job_starts(runner: JobRunner) -> None:
    with pytest.raises(BadInput, match="unknown action 'explode'"):
        runner.submit("explode", ["shop.orders"], actor="admin", client="::1")
    with pytest.raises(BadInput, match="choose at least one store"):
        runner.submit("sync", [" "], actor="admin", client="::1")
    assert runner.recent() == []


def test_the_runner_keeps_its_last_jobs_and_forgets_older_finished_ones(
    runner: JobRunner,
) -> None:
    done = []
    for _ in range(4):
        job = runner.submit("backup", ["shop.orders"], actor="admin", client="::1")
        assert job.wait(60)
        done.append(job)
    assert [j.id for j in runner.recent()] == [j.id for j in reversed(done[1:])]
    with pytest.raises(NotFound, match=done[0].id):
        runner.get(done[0].id)
    assert runner.get(done[-1].id) is done[-1]


def test_the_polled_state_gives_only_the_new_lines(runner: JobRunner) -> None:
    job = runner.submit("sync", ["shop.orders"], actor="admin", client="::1")
    assert job.wait(60)
    whole = job.as_dict()
    assert whole["over"] and whole["next"] == len(whole["lines"]) == 2
    assert job.as_dict(since=1)["lines"] == whole["lines"][1:]
    assert job.as_dict(since=whole["next"])["lines"] == []
    assert whole["summary"]["lines"] == ["synced: 1 created"]


def test_two_jobs_upgrading_two_stores_at_once_both_end_at_their_head(
    project: Path,
) -> None:
    """Alembic's ``context`` and ``op`` are process-wide: a second migration in another
    thread must not run (and then tear them down) while the first is inside its own."""
    from storekeeper.migrate.commands import init, revision_state

    site = Site.load()
    app = App(
        "shop",
        stores=[
            Store("orders", migrations=str(project / "m" / "orders")),
            Store("stock", migrations=str(project / "m" / "stock")),
        ],
    ).bind(site)
    for store in ("orders", "stock"):
        init(app, store)
        write_migration(
            project / "m" / store,
            "r1",
            None,
            '    op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
        )
    app.sync()
    gate = Gate(project)
    write_migration(
        project / "m" / "orders", "r2", "r1", gate.body + '    op.create_index("t_id", "t", ["id"])'
    )
    write_migration(project / "m" / "stock", "r2", "r1", '    op.create_index("t_id", "t", ["id"])')
    runner = JobRunner([app], workers=2)
    try:
        first = runner.submit("upgrade", ["shop.orders"], actor="a", client="::1")
        gate.wait_entered()  # the first is inside its migration
        second = runner.submit("upgrade", ["shop.stock"], actor="b", client="::1")
        # the second either ran meanwhile (the defect) or says it waits for the first
        while not second.over and not any(
            "waiting for another migration" in line for line in second.lines
        ):
            second.wait(0.05)
    finally:
        gate.release()
    assert first.wait(60) and second.wait(60)
    assert (first.state, second.state) == ("done", "done"), (first.lines, second.lines)
    assert revision_state(app, "orders").state == revision_state(app, "stock").state == "at head"
    runner.shutdown()
    site.close()
