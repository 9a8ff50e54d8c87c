"""What storekeeper's sessions and startup cost, against hand-written SQLAlchemy.

1. ``with app.session("stream_db") as s: s.get(StreamGage, 1)`` against the same primary-key
   lookup in a hand-written ``with Session(engine) as s:``, on PostgreSQL (a throwaway cluster,
   or STOREKEEPER_TEST_POSTGRES_URL) and on SQLite; rounds interleave the two contenders so
   drift hits both alike; the ratio is of the medians of the per-round means.
2. Wall time of ``python -c "import storekeeper"`` and of ``storekeeper --help``.

Prints a table, then ``ratio NAME VALUE`` / ``ms NAME VALUE`` lines. ``--quick`` is short.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy.orm import Session

from gauges.model import Base, StreamGage, init_stream_db
from storekeeper import App, Store
from storekeeper.config import load
from storekeeper.site import Site


def per_op_seconds(fn: Callable[[], object], ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - started) / ops


def compare(contenders: dict[str, Callable[[], object]], rounds: int, ops: int) -> dict[str, float]:
    """Median over rounds of the mean seconds per operation, contenders alternating order."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:  # warm up: connections, compiled-statement caches
        per_op_seconds(contenders[name], max(ops // 5, 20))
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(per_op_seconds(contenders[name], ops))
    return {name: statistics.median(values) for name, values in samples.items()}


def session_bench(service_url: str, folder: Path, rounds: int, ops: int) -> dict[str, float]:
    (folder / "storekeeper.toml").write_text(
        f'default_service = "bench"\n[services]\nbench = "{service_url}"\n'
    )
    site = Site(load(folder / "storekeeper.toml", env=None))
    app = App(
        "bench",
        stores=[Store("stream_db", metadata=Base.metadata, initializer=init_stream_db)],
    ).bind(site)
    app.sync(refresh=True)
    engine = app.engine("stream_db")

    def ours() -> object:
        with app.session("stream_db") as session:
            return session.get(StreamGage, 1)

    def handwritten() -> object:
        with Session(engine) as session:
            return session.get(StreamGage, 1)

    def handwritten_commit() -> object:
        with Session(engine, expire_on_commit=False) as session:
            gauge = session.get(StreamGage, 1)
            session.commit()
            return gauge

    assert ours().value == handwritten().value == 1  # type: ignore[attr-defined]
    try:
        return compare(
            {
                "storekeeper": ours,
                "handwritten": handwritten,
                "handwritten+commit": handwritten_commit,
            },
            rounds,
            ops,
        )
    finally:
        app.drop_store("stream_db")
        site.close()


def on_both_dialects(
    bench: Callable[[str, Path, int, int], dict[str, float]], rounds: int, ops: int
) -> dict[str, dict[str, float]]:
    """``bench(service_url, folder, rounds, ops)`` on PostgreSQL (a throwaway cluster, or
    STOREKEEPER_TEST_POSTGRES_URL) and on SQLite, each in a temporary folder."""
    with ExitStack() as stack:
        pg_url = os.environ.get("STOREKEEPER_TEST_POSTGRES_URL")
        if not pg_url:
            from storekeeper.testing.server import PostgresServer

            pg_url = stack.enter_context(PostgresServer()).url
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return {
            "postgresql": bench(pg_url, folder, rounds, ops),
            "sqlite": bench("sqlite:///stores", folder, rounds, ops),
        }


def wall_ms(command: list[str], runs: int) -> float:
    times = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    args = parser.parse_args()
    rounds, ops, runs = (5, 300, 5) if args.quick else (15, 1000, 15)

    results = on_both_dialects(session_bench, rounds, ops)

    python = sys.executable
    cli = str(Path(python).with_name("storekeeper"))
    baseline = wall_ms([python, "-c", "pass"], runs)
    import_ms = wall_ms([python, "-c", "import storekeeper"], runs)
    help_ms = wall_ms([cli, "--help"], runs)

    print(f"session + one primary-key lookup, median of {rounds} rounds x {ops} ops (us/op)")
    print(f"{'dialect':<12}{'storekeeper':>13}{'handwritten':>13}{'hw+commit':>11}{'ratio':>8}")
    for dialect, r in results.items():
        ratio = r["storekeeper"] / r["handwritten"]
        print(
            f"{dialect:<12}{r['storekeeper'] * 1e6:>13.1f}{r['handwritten'] * 1e6:>13.1f}"
            f"{r['handwritten+commit'] * 1e6:>11.1f}{ratio:>8.3f}"
        )
    print(
        f"\nwall time, median of {runs} runs: python -c pass {baseline:.0f} ms, "
        f"import storekeeper {import_ms:.0f} ms, storekeeper --help {help_ms:.0f} ms\n"
    )
    pg, lite = results["postgresql"], results["sqlite"]
    print(f"ratio session_vs_handwritten {pg['storekeeper'] / pg['handwritten']:.3f}")
    print(f"ratio session_vs_handwritten_sqlite {lite['storekeeper'] / lite['handwritten']:.3f}")
    print(f"ms import {import_ms:.0f}")
    print(f"ms cli_help {help_ms:.0f}")


if __name__ == "__main__":
    main()
