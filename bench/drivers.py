"""How fast the drivers move rows in and out of PostgreSQL, against the peers of issue 12.

On a throwaway PostgreSQL cluster (or STOREKEEPER_TEST_POSTGRES_URL), a six-column table (an
identity key, a text, a timestamp, a number, a nullable and a server-default column):

1. ``add_many`` of 100,000 rows against raw psycopg binary ``COPY`` of the same rows, Advanced
   Alchemy's ``add_many`` and SQLAlchemy Core ``insert()`` with insertmanyvalues;
2. ``upsert_many`` of 100,000 rows, half of them existing, against Advanced Alchemy's
   ``upsert_many`` (its native ``INSERT ... ON CONFLICT`` path, printed) and a hand-written
   ``INSERT ... ON CONFLICT DO UPDATE`` with executemany;
3. ``rows()`` of 100,000 rows against ``session.execute(select(*table.c)).mappings().all()``,
   and ``get_many`` of 1,000 ids against ``select(Model).where(Model.id.in_(ids))``;
4. ``stream()`` of 1,000,000 rows: rows per second, and how much the resident memory grew;
5. ``after()`` 1,000 pages deep against ``page()`` (OFFSET, and its count) as deep.

Every contender gets the same rows, built before timing: dicts for ours, Core and hand-written
SQL, model instances for Advanced Alchemy. Each write starts from the same table (truncated,
then the existing rows copied in) and commits. Rounds alternate the contenders' order; times
are medians. Ends with ``ratio NAME VALUE`` lines (ours / theirs). ``--quick`` is short.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from advanced_alchemy.operations import resolve_upsert_strategy
from advanced_alchemy.repository import SQLAlchemySyncRepository
from sqlalchemy import (
    DateTime,
    Engine,
    Identity,
    Text,
    create_engine,
    insert,
    make_url,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from storekeeper.drivers import ReadDriver, WriteDriver


class Base(DeclarativeBase):
    pass


class Reading(Base):
    __tablename__ = "bench_readings"
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    taken_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    value: Mapped[float]
    note: Mapped[str | None]
    status: Mapped[str] = mapped_column(Text, server_default="new")


class Readings(ReadDriver[Reading]):
    pass


class ReadingWriter(WriteDriver[Reading]):
    pass


class ReadingRepository(SQLAlchemySyncRepository[Reading]):
    model_type = Reading


TABLE = Reading.__table__
COLUMNS = ["name", "taken_at", "value", "note"]
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_rows(count: int, first_id: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for i in range(count):
        row: dict[str, Any] = {
            "name": f"gage {i}",
            "taken_at": START + dt.timedelta(seconds=i),
            "value": i * 0.25,
            "note": None if i % 3 else f"note {i}",
        }
        if first_id is not None:
            row = {"id": first_id + i, **row}
        rows.append(row)
    return rows


def instances(rows: list[dict[str, Any]]) -> list[Reading]:
    return [Reading(**row) for row in rows]


def raw_connection(engine: Engine) -> psycopg.Connection[Any]:
    url = engine.url
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    )


def raw_copy(
    conn: psycopg.Connection[Any], rows: list[dict[str, Any]], *, ids: bool = False
) -> None:
    """What psycopg's docs show: binary COPY, types given, one write_row per row."""
    names = (["id"] if ids else []) + COLUMNS
    types = (["int4"] if ids else []) + ["text", "timestamptz", "float8", "text"]
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY bench_readings ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(types)
        for row in rows:
            copy.write_row([row[n] for n in names])


@contextmanager
def clock(samples: list[float]) -> Iterator[None]:
    gc.collect()
    started = time.perf_counter()
    yield
    samples.append(time.perf_counter() - started)


def run_rounds(
    contenders: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]],
    rounds: dict[str, int],
    warm: tuple[str, ...] = (),
) -> dict[str, float]:
    """Each contender is (prepare, timed): prepare (untimed) returns what timed takes. The
    order alternates round by round; a contender runs ``rounds[name]`` times, after one
    untimed run for those in ``warm`` (connections, statement caches, the column types)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in warm:
        prepare, timed = contenders[name]
        timed(prepare())
    for r in range(max(rounds.values())):
        for name in names if r % 2 == 0 else reversed(names):
            if len(samples[name]) >= rounds[name]:
                continue
            prepare, timed = contenders[name]
            given = prepare()
            with clock(samples[name]):
                timed(given)
    return {name: statistics.median(s) for name, s in samples.items()}


def vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE bench_readings"))


def bench_add_many(engine: Engine, n: int, rounds: int, aa_rounds: int) -> dict[str, float]:
    rows = make_rows(n)

    def fresh() -> list[dict[str, Any]]:
        reset_table(engine)
        return rows

    def ours(given: list[dict[str, Any]]) -> None:
        with Session(engine) as session:
            ReadingWriter(session).add_many(given)
            session.commit()

    def copy(given: list[dict[str, Any]]) -> None:
        with raw_connection(engine) as conn:
            raw_copy(conn, given)
            conn.commit()

    def core(given: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:  # RETURNING: what makes Core use insertmanyvalues
            conn.execute(insert(TABLE).returning(TABLE.c.id), given).all()

    def fresh_instances() -> list[Reading]:
        reset_table(engine)
        return instances(rows)

    def advanced_alchemy(given: list[Reading]) -> None:
        with Session(engine) as session:
            ReadingRepository(session=session).add_many(given, auto_commit=True)

    result = run_rounds(
        {
            "ours": (fresh, ours),
            "copy": (fresh, copy),
            "core": (fresh, core),
            "advanced_alchemy": (fresh_instances, advanced_alchemy),
        },
        {"ours": rounds, "copy": rounds, "core": rounds, "advanced_alchemy": aa_rounds},
        warm=("ours", "copy", "core"),
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bench_readings")).scalar_one() == n
    return result


def reset_table(engine: Engine, existing: list[dict[str, Any]] | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE bench_readings RESTART IDENTITY"))
    if existing:
        with raw_connection(engine) as conn:
            raw_copy(conn, existing, ids=True)
            conn.commit()
    vacuum(engine)


UPSERT_SQL = text(
    "INSERT INTO bench_readings (id, name, taken_at, value, note) "
    "VALUES (:id, :name, :taken_at, :value, :note) ON CONFLICT (id) DO UPDATE SET "
    "name = excluded.name, taken_at = excluded.taken_at, value = excluded.value, "
    "note = excluded.note"
)


def bench_upsert_many(
    engine: Engine, n: int, rounds: int, aa_rounds: int
) -> tuple[dict[str, float], str]:
    existing = make_rows(n // 2, first_id=1)
    rows = [{**row, "value": row["value"] + 1} for row in make_rows(n, first_id=1)]

    def fresh() -> list[dict[str, Any]]:
        reset_table(engine, existing)
        return rows

    def ours(given: list[dict[str, Any]]) -> None:
        with Session(engine) as session:
            ReadingWriter(session).upsert_many(given)
            session.commit()

    def on_conflict(given: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            conn.execute(UPSERT_SQL, given)

    def fresh_instances() -> list[Reading]:
        reset_table(engine, existing)
        return instances(rows)

    def advanced_alchemy(given: list[Reading]) -> None:
        with Session(engine) as session:
            ReadingRepository(session=session).upsert_many(given, auto_commit=True)

    result = run_rounds(
        {
            "ours": (fresh, ours),
            "on_conflict": (fresh, on_conflict),
            "advanced_alchemy": (fresh_instances, advanced_alchemy),
        },
        {"ours": rounds, "on_conflict": rounds, "advanced_alchemy": aa_rounds},
        warm=("ours", "on_conflict"),
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bench_readings")).scalar_one() == n
        assert conn.execute(text("SELECT value FROM bench_readings WHERE id = 1")).scalar() == 1.0
    strategy = resolve_upsert_strategy(TABLE, ("id",), engine.dialect)
    return result, f"{strategy.kind} on ({', '.join(strategy.conflict_columns or ())})"


def bench_reads(engine: Engine, n: int, rounds: int) -> dict[str, float]:
    reset_table(engine, make_rows(n, first_id=1))
    wanted = list(range(1, n + 1, max(n // 1000, 1)))[:1000]

    def none() -> None:
        return None

    def ours_rows(_: None) -> None:
        with Session(engine) as session:
            assert len(Readings(session).rows()) == n

    def mappings(_: None) -> None:
        with Session(engine) as session:
            assert len(session.execute(select(*TABLE.c)).mappings().all()) == n

    def ours_get_many(_: None) -> None:
        for _ in range(20):
            with Session(engine) as session:
                assert len(Readings(session).get_many(wanted)) == len(wanted)

    def in_(_: None) -> None:
        for _ in range(20):
            with Session(engine) as session:
                found = session.scalars(select(Reading).where(Reading.id.in_(wanted))).all()
                assert len(found) == len(wanted)

    result = run_rounds(
        {
            "rows": (none, ours_rows),
            "mappings": (none, mappings),
            "get_many": (none, ours_get_many),
            "in": (none, in_),
        },
        dict.fromkeys(["rows", "mappings", "get_many", "in"], rounds),
        warm=("rows", "mappings", "get_many", "in"),
    )
    result["get_many"] /= 20
    result["in"] /= 20
    return result


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stream_in_a_fresh_process(url: Any, n: int) -> dict[str, float]:
    """``stream()`` every row: seconds, rows, and the growth of resident memory (sampled
    every 20,000 rows) over what the process held once connected."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            gc.collect()
            before = peak = rss_mb()
            started = time.perf_counter()
            count = 0
            for count, _row in enumerate(Readings(session).stream(batch_size=2000), 1):
                if count % 20_000 == 0:
                    peak = max(peak, rss_mb())
            seconds = time.perf_counter() - started
            growth = max(peak, rss_mb()) - before
    finally:
        engine.dispose()
    assert count == n
    return {"stream_seconds": seconds, "stream_rows": count, "stream_rss_growth": growth}


def bench_stream_and_keyset(engine: Engine, n: int, depth: int, size: int) -> dict[str, float]:
    reset_table(engine)
    for start in range(0, n, 100_000):  # 100,000 rows of dicts at a time: memory stays flat
        with Session(engine) as session:
            ReadingWriter(session).add_many(make_rows(min(100_000, n - start)))
            session.commit()
    vacuum(engine)
    # In a process of its own: what this one allocated before would hide the growth.
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1) as pool:
        out: dict[str, float] = pool.apply(stream_in_a_fresh_process, (engine.url, n))

    with Session(engine) as session:
        reader = Readings(session, cursor_key=b"bench key")
        cursor = None
        walked = time.perf_counter()
        for _ in range(depth - 1):
            cursor = reader.after(cursor, size).next_cursor
        out["after_walk_ms_per_page"] = (time.perf_counter() - walked) / (depth - 1) * 1000
    after_times, page_times, offset_times = [], [], []
    for _ in range(7):
        with Session(engine) as session, clock(after_times):
            keyset = Readings(session, cursor_key=b"bench key").after(cursor, size)
        with Session(engine) as session, clock(page_times):
            page = Readings(session).page(depth, size)
        with Session(engine) as session, clock(offset_times):
            statement = select(Reading).order_by(Reading.id).offset((depth - 1) * size)
            offset = session.scalars(statement.limit(size)).all()
    assert [r.id for r in keyset.items] == [r.id for r in page.items] == [r.id for r in offset]
    out["after"] = statistics.median(after_times)
    out["page"] = statistics.median(page_times)
    out["offset"] = statistics.median(offset_times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    args = parser.parse_args()
    if args.quick:
        n, rounds, aa_rounds, reads, big, depth = 3_000, 3, 1, 5_000, 50_000, 100
    else:
        n, rounds, aa_rounds, reads, big, depth = 100_000, 3, 1, 100_000, 1_000_000, 1000
    size = 100

    with ExitStack() as stack:
        server_url = os.environ.get("STOREKEEPER_TEST_POSTGRES_URL")
        if not server_url:
            from storekeeper.testing.server import PostgresServer

            server_url = stack.enter_context(PostgresServer()).url
        admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS bench_drivers"))
            conn.execute(text("CREATE DATABASE bench_drivers"))
        engine = create_engine(make_url(server_url).set(database="bench_drivers"))
        stack.callback(admin.dispose)
        stack.callback(engine.dispose)
        Base.metadata.create_all(engine)
        with engine.connect() as conn:
            server = conn.execute(text("SHOW server_version")).scalar_one()

        adds = bench_add_many(engine, n, rounds, aa_rounds)
        upserts, aa_path = bench_upsert_many(engine, n, rounds, aa_rounds)
        reads_ = bench_reads(engine, reads, rounds * 2 + 1)
        deep = bench_stream_and_keyset(engine, big, depth, size)

    aa_version = importlib.metadata.version("advanced-alchemy")
    print(f"PostgreSQL {server}, psycopg {psycopg.__version__}, advanced-alchemy {aa_version}")
    print(f"rounds: {rounds} (Advanced Alchemy {aa_rounds}); medians in seconds\n")
    print(f"add_many of {n:,} rows")
    for name, label in [
        ("ours", "storekeeper add_many (binary COPY)"),
        ("copy", "raw psycopg binary COPY"),
        ("core", "Core insert() insertmanyvalues"),
        ("advanced_alchemy", "Advanced Alchemy add_many"),
    ]:
        print(f"  {label:<40}{adds[name]:>9.3f}  {n / adds[name]:>12,.0f} rows/s")
    print(f"\nupsert_many of {n:,} rows, {n // 2:,} existing")
    for name, label in [
        ("ours", "storekeeper upsert_many (COPY + merge)"),
        ("on_conflict", "INSERT ... ON CONFLICT executemany"),
        ("advanced_alchemy", f"Advanced Alchemy upsert_many [{aa_path}]"),
    ]:
        print(f"  {label:<40}{upserts[name]:>9.3f}  {n / upserts[name]:>12,.0f} rows/s")
    print(f"\nreads of a {reads:,}-row table")
    print(f"  {'rows() of every row':<40}{reads_['rows']:>9.3f}")
    print(f"  {'execute(select(*c)).mappings().all()':<40}{reads_['mappings']:>9.3f}")
    print(f"  {'get_many of 1,000 ids':<40}{reads_['get_many'] * 1000:>9.3f} ms")
    print(f"  {'select(Model).where(id.in_(ids))':<40}{reads_['in'] * 1000:>9.3f} ms")
    print(
        f"\nstream() of {big:,} rows: {deep['stream_seconds']:.2f} s, "
        f"{deep['stream_rows'] / deep['stream_seconds']:,.0f} rows/s, "
        f"resident memory grew {deep['stream_rss_growth']:.1f} MB"
    )
    print(
        f"page {depth:,} of {size} rows on {big:,}: after() {deep['after'] * 1000:.2f} ms, "
        f"page() {deep['page'] * 1000:.2f} ms (OFFSET alone {deep['offset'] * 1000:.2f} ms); "
        f"walking after() page by page: {deep['after_walk_ms_per_page']:.2f} ms a page\n"
    )
    print(f"ratio add_many_vs_copy {adds['ours'] / adds['copy']:.3f}")
    print(f"ratio add_many_vs_advanced_alchemy {adds['ours'] / adds['advanced_alchemy']:.4f}")
    print(f"ratio add_many_vs_core {adds['ours'] / adds['core']:.3f}")
    print(
        f"ratio upsert_many_vs_advanced_alchemy {upserts['ours'] / upserts['advanced_alchemy']:.4f}"
    )
    print(f"ratio upsert_many_vs_on_conflict {upserts['ours'] / upserts['on_conflict']:.3f}")
    print(f"ratio rows_vs_mappings {reads_['rows'] / reads_['mappings']:.3f}")
    print(f"ratio get_many_vs_in {reads_['get_many'] / reads_['in']:.3f}")
    print(f"ratio after_vs_page {deep['after'] / deep['page']:.4f}")
    print(f"ratio after_vs_offset {deep['after'] / deep['offset']:.4f}")
    print(f"rows_per_s stream {deep['stream_rows'] / deep['stream_seconds']:.0f}")
    print(f"mb stream_rss_growth {deep['stream_rss_growth']:.1f}")


if __name__ == "__main__":
    main()
