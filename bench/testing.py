"""What a test's database costs: storekeeper's plugin against the ways tests get one today.

1. Per-test isolation, one INSERT per "test", on PostgreSQL:
   - floor: psycopg on one held connection: BEGIN; SAVEPOINT; INSERT; ROLLBACK;
   - session floor: a SQLAlchemy Session on a held connection: INSERT, ROLLBACK (what any
     fixture handing out a Session pays, isolation aside);
   - dbsession: the plugin's own fixture code (storekeeper.testing.plugin.Stores.session);
   - sqlalchemy recipe: connect, begin, Session(join_transaction_mode="create_savepoint"),
     INSERT, close, rollback, close the connection (SQLAlchemy's documented recipe);
   - truncate: INSERT committed, then TRUNCATE the table;
   - pytest-postgresql: its per-test ``postgresql`` fixture's work: a database created from a
     template by its DatabaseJanitor, connected to, INSERT, dropped.
2. A fresh migrated database, at 10, 50 and 200 migrations (each a table with an index):
   - storekeeper: the plugin's own way (the janitor's fresh_clone: clone the sealed
     template, built once and timed apart);
   - replay: create an empty database and run every migration in it (Alembic), as Qapla's
     recipe and pytest-alembic do;
   - pytest-postgresql: its DatabaseJanitor creating the database from the same template
     (CREATE DATABASE ... TEMPLATE, the server's default strategy).
   Only the making is timed; each database is dropped after, untimed, the same way for all.

Rounds interleave the contenders; each figure is the median over rounds of the mean per test.
Prints a table, then ``ratio NAME VALUE`` / ``ms NAME VALUE`` lines. ``--quick`` is short.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
from sqlalchemy import String, create_engine, make_url, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper import App, Store
from storekeeper.config import Config, load
from storekeeper.testing.janitor import Janitor
from storekeeper.testing.plugin import Stores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import write_migrations

CASES = (10, 50, 200)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def per_test_ms(fn: Callable[[int], object], tests: int) -> float:
    started = time.perf_counter()
    for i in range(tests):
        fn(i)
    return (time.perf_counter() - started) * 1000 / tests


def compare(
    contenders: dict[str, tuple[Callable[[int], object], int]], rounds: int
) -> dict[str, float]:
    """Median over rounds of the mean milliseconds per test; the order alternates."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:  # warm up: connections, statement caches
        fn, tests = contenders[name]
        per_test_ms(fn, max(tests // 5, 2))
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn, tests = contenders[name]
            samples[name].append(per_test_ms(fn, tests))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_config(pg_url: str, folder: Path) -> Config:
    (folder / "storekeeper.toml").write_text(
        f'default_service = "bench"\ncatalog = "sqlite:///catalog.sqlite"\n'
        f'[services]\nbench = "{pg_url}"\n'
    )
    return load(folder / "storekeeper.toml", env=None)


def isolation(pg_url: str, folder: Path, rounds: int, tests: int) -> dict[str, float]:
    from pytest_postgresql.janitor import DatabaseJanitor

    config = bench_config(pg_url, folder)
    app = App(f"bench{uuid.uuid4().hex[:6]}", stores=[Store("main_db", metadata=Base.metadata)])
    janitor = Janitor([app], config, worker="bench", run_id=uuid.uuid4().hex[:8], keepdb=False)
    (ready,) = janitor.prepare()
    stores = Stores(janitor, [ready], "")
    url = make_url(pg_url)
    conninfo = dict(host=url.host, port=url.port, user=url.username, password=url.password)
    held = psycopg.connect(dbname=ready.database, autocommit=True, **conninfo)  # type: ignore[arg-type]
    engine = app.engine("main_db")
    # Every contender sends the same statement: only the isolation around it differs.
    statement = text("INSERT INTO items (name) VALUES (:name)")
    row = {"name": "x"}

    def floor(_: int) -> None:
        held.execute("BEGIN")
        held.execute("SAVEPOINT test")
        held.execute("INSERT INTO items (name) VALUES (%s)", ("x",))
        held.execute("ROLLBACK")

    held_engine = create_engine(engine.url, connect_args={"prepare_threshold": None})
    held_sa = held_engine.connect()

    def session_floor(_: int) -> None:
        # The least any Session-based fixture pays: a Session on a held connection, no
        # savepoint, the INSERT, ROLLBACK.
        session = Session(bind=held_sa)
        session.execute(statement, row)
        session.rollback()
        session.close()

    def dbsession(_: int) -> None:
        fixture = stores.session(ready)
        session = next(fixture)
        session.execute(statement, row)
        fixture.close()  # what pytest's teardown of the fixture runs

    def recipe(_: int) -> None:
        conn = engine.connect()
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        session.execute(statement, row)
        session.close()
        outer.rollback()
        conn.close()

    def truncate(_: int) -> None:
        held.execute("INSERT INTO items (name) VALUES (%s)", ("x",))
        held.execute("TRUNCATE items")

    def pytest_postgresql(i: int) -> None:
        with (
            DatabaseJanitor(
                dbname=f"{ready.database}_pp", template_dbname=ready.template, **conninfo
            ),
            psycopg.connect(dbname=f"{ready.database}_pp", **conninfo) as conn,
        ):
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("x",))

    try:
        return compare(
            {
                "floor": (floor, tests),
                "session floor": (session_floor, tests),
                "dbsession": (dbsession, tests),
                "sqlalchemy recipe": (recipe, tests),
                "truncate": (truncate, tests),
                "pytest-postgresql": (pytest_postgresql, max(tests // 50, 3)),
            },
            rounds,
        )
    finally:
        held.close()
        held_sa.close()
        held_engine.dispose()
        stores.close()
        janitor.finish()


def fresh_databases(
    pg_url: str, folder: Path, migrations: int, dbs: int, replays: int
) -> dict[str, float]:
    """Milliseconds per fresh database (median) for each contender, at ``migrations``."""
    from pytest_postgresql.janitor import DatabaseJanitor

    from storekeeper.migrate import migrate_database, store_scripts

    scripts = folder / f"m{migrations}"
    (scripts / "env.py").parent.mkdir(parents=True)
    (scripts / "env.py").write_text("from storekeeper.migrate.env import run\n\nrun()\n")
    write_migrations(scripts / "versions", migrations)
    config = bench_config(pg_url, folder)
    app = App(
        f"fresh{migrations}x{uuid.uuid4().hex[:4]}", stores=[Store("main_db", migrations=scripts)]
    )
    janitor = Janitor([app], config, worker="bench", run_id=uuid.uuid4().hex[:8], keepdb=False)
    started = time.perf_counter()
    (ready,) = janitor.prepare()
    build_ms = (time.perf_counter() - started) * 1000
    backend = janitor.site.backend(ready.service)
    url = make_url(pg_url)
    conninfo = dict(host=url.host, port=url.port, user=url.username, password=url.password)
    times: dict[str, list[float]] = {"storekeeper": [], "replay": [], "pytest-postgresql": []}

    def timed(name: str, make: Callable[[str], object], database: str) -> None:
        # Only the making is timed: a run drops its databases when it ends, not when it
        # needs one, and every contender's drop happens the same way, untimed.
        started = time.perf_counter()
        make(database)
        times[name].append((time.perf_counter() - started) * 1000)
        backend.drop(database)

    def ours(database: str) -> None:
        janitor.fresh_clone(ready.service, ready.template, database)

    def replay(database: str) -> None:
        backend.create(database)
        migrate_database(backend, database, store_scripts(app, "main_db"), store=database)

    def pytest_postgresql(database: str) -> None:
        DatabaseJanitor(dbname=database, template_dbname=ready.template, **conninfo).init()

    try:
        for i in range(dbs):
            timed("storekeeper", ours, f"{ready.database}_sk")
            timed("pytest-postgresql", pytest_postgresql, f"{ready.database}_pp")
            if i < replays:
                timed("replay", replay, f"{ready.database}_replay")
    finally:
        janitor.finish()
        janitor.template_site.backend(ready.service).drop(ready.template)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["template build"] = build_ms
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    args = parser.parse_args()
    rounds, tests = (5, 200) if args.quick else (15, 1000)
    dbs, replays = (5, 2) if args.quick else (30, 8)

    with ExitStack() as stack:
        pg_url = os.environ.get("STOREKEEPER_TEST_POSTGRES_URL")
        if not pg_url:
            from storekeeper.testing.server import PostgresServer

            pg_url = stack.enter_context(PostgresServer()).url
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        per_test = isolation(pg_url, folder, rounds, tests)
        fresh = {n: fresh_databases(pg_url, folder, n, dbs, replays) for n in CASES}

    print(f"per-test isolation on PostgreSQL, one INSERT, median of {rounds} rounds (ms/test)")
    floor = per_test["floor"]
    for name, ms in per_test.items():
        print(f"  {name:<20}{ms:>9.3f}{ms / floor:>8.2f}x floor")
    print()
    print(f"a fresh migrated database, median ms ({dbs} per case, {replays} replays)")
    print(f"  {'migrations':<12}{'storekeeper':>12}{'replay':>10}{'pytest-pg':>11}{'build':>8}")
    for n, r in fresh.items():
        print(
            f"  {n:<12}{r['storekeeper']:>12.1f}{r['replay']:>10.1f}"
            f"{r['pytest-postgresql']:>11.1f}{r['template build']:>8.0f}"
        )
    print()
    print(f"ratio dbsession_vs_floor {per_test['dbsession'] / floor:.3f}")
    print(
        "ratio dbsession_vs_sqlalchemy_recipe "
        f"{per_test['dbsession'] / per_test['sqlalchemy recipe']:.3f}"
    )
    print(
        f"ratio dbsession_vs_session_floor {per_test['dbsession'] / per_test['session floor']:.3f}"
    )
    print(f"ratio dbsession_vs_truncate {per_test['dbsession'] / per_test['truncate']:.3f}")
    print(
        "ratio dbsession_vs_pytest_postgresql "
        f"{per_test['dbsession'] / per_test['pytest-postgresql']:.3f}"
    )
    print(f"ms fresh_db {statistics.median(r['storekeeper'] for r in fresh.values()):.1f}")
    for n in (50, 200):
        print(f"ratio fresh_db_vs_replay_{n} {fresh[n]['storekeeper'] / fresh[n]['replay']:.3f}")
    vs_janitor = statistics.median(
        r["storekeeper"] / r["pytest-postgresql"] for r in fresh.values()
    )
    print(f"ratio fresh_db_vs_pytest_postgresql_template {vs_janitor:.3f}")


if __name__ == "__main__":
    main()
