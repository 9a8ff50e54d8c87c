"""Backups: ``storekeeper.backup`` / ``restore`` against the native tools run by hand.

On PostgreSQL (a throwaway cluster, or STOREKEEPER_TEST_POSTGRES_URL), a store of some 200 MB
(20 tables, each with two indexes; ``--quick``: some 20 MB) is:

1. backed up with ``storekeeper.backup.backup`` (pg_dump, then its checksum, manifest and
   catalog record) against raw ``pg_dump`` of the same database, with the format and
   ``--jobs`` storekeeper chose for it;
2. backed up encrypted (``STOREKEEPER_SECRET_KEY`` set: pg_dump streamed through AES-GCM)
   against the plain backup of 1;
3. restored in place with ``storekeeper.backup.restore`` (a new database, pg_restore, the swap
   in one transaction) against raw ``createdb`` + ``pg_restore`` of the same dump with the same
   ``--jobs``.

A SQLite store of some 100 MB (``--quick``: 10 MB) is backed up with ``storekeeper.backup``
(the online backup API, checksum, manifest) against ``VACUUM INTO``. Both sides run in this
process (the command line's start-up, some 0.3 s, is left out of both), median over rounds.

The upgrade of 50 small tenant stores with ``--jobs 4``, with and without the automatic backup
before it, is timed when ``storekeeper upgrade`` has ``--no-backup``; else the script says it
is not measured yet. Ends with ``ratio NAME VALUE`` lines (ours / theirs; below 1 is better).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import text

from fanout import postgres_url, project, storekeeper_cli
from storekeeper import App, Store
from storekeeper.backends.pg_tools import client_program
from storekeeper.backup import backup, restore
from storekeeper.config import load
from storekeeper.secret import new_key
from storekeeper.site import Site

TABLES = 20


def site_at(folder: Path, service: str, url: str) -> Site:
    """A site whose root is ``folder`` (its backups in ``folder/var/backups``), one service."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "storekeeper.toml"
    config.write_text(f'default_service = "{service}"\n[services]\n{service} = "{url}"\n')
    return Site(load(config, env=None))


def fill_postgres(site: Site, database: str, rows_per_table: int) -> None:
    """20 tables of ``rows_per_table`` rows (some 100 bytes each) with two indexes each."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    backend = site.backend(site.service("pg"))
    engine = create_engine(backend.database_url(database), poolclass=NullPool)
    with engine.begin() as conn:
        for i in range(TABLES):
            conn.execute(
                text(
                    f"CREATE TABLE t{i:02d} (id bigint PRIMARY KEY, name text NOT NULL, "
                    "value integer, payload text)"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO t{i:02d} SELECT g, md5(g::text), (g * 7919) % 100000, "
                    "repeat(md5((g + 1)::text), 2) FROM generate_series(1, :n) g"
                ),
                {"n": rows_per_table},
            )
            conn.execute(text(f"CREATE INDEX ix_t{i:02d}_name ON t{i:02d} (name)"))
            conn.execute(text(f"CREATE INDEX ix_t{i:02d}_value ON t{i:02d} (value)"))
    engine.dispose()


def fill_sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, v INT)")
    conn.execute(
        "INSERT INTO items WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g "
        "WHERE x < ?) SELECT x, hex(randomblob(40)), x % 1000 FROM g",
        (rows,),
    )
    conn.execute("CREATE INDEX IF NOT EXISTS ix_items_v ON items (v)")
    conn.commit()
    conn.close()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def libpq(site: Site, database: str) -> tuple[list[str], dict[str, str]]:
    url = site.backend(site.service("pg")).database_url(database)
    args = [f"--dbname={database}", f"--host={url.host}", f"--port={url.port}"]
    args.append(f"--username={url.username}")
    return args, {**os.environ, "PGPASSWORD": str(url.password or "")}


def rounds_of(
    contenders: dict[str, Callable[[], object]], rounds: int, reset: Callable[[], None]
) -> dict[str, float]:
    """The median seconds of each contender, alternating their order round by round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            samples[name].append(timed(contenders[name]))
            print(f"  round {r + 1}: {name}: {samples[name][-1]:.2f} s", file=sys.stderr)
            reset()
    return {name: statistics.median(values) for name, values in samples.items()}


def postgres_case(site: Site, folder: Path, rows: int, rounds: int) -> dict[str, float]:
    app = App("bench_bk", stores=[Store("big_db")]).bind(site)
    app.sync()
    database = "bench_bk_big_db"
    backend = site.backend(site.service("pg"))
    started = time.perf_counter()
    fill_postgres(site, database, rows)
    size = backend.size(database) or 0
    print(
        f"  filled {database}: {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    probe = backup(app, "big_db", encrypt=False)
    fmt, jobs = probe.format, probe.jobs
    dump = client_program("pg_dump", backend.server_version).path
    pg_restore = client_program("pg_restore", backend.server_version).path
    raw_file = folder / ("raw.dir" if fmt == "directory" else "raw.dump")
    args, env = libpq(site, database)
    jobs_args = [f"--jobs={jobs}"] if jobs > 1 else []
    key = new_key()

    def clean_backups() -> None:
        subprocess.run(["rm", "-rf", str(raw_file), str(folder / "pg" / "var")])

    def ours() -> None:
        backup(app, "big_db", encrypt=False)

    def ours_encrypted() -> None:
        os.environ["STOREKEEPER_SECRET_KEY"] = key
        try:
            backup(app, "big_db")
        finally:
            del os.environ["STOREKEEPER_SECRET_KEY"]

    def raw_dump() -> None:
        run([dump, f"--format={fmt}", "--no-owner", *jobs_args, f"--file={raw_file}", *args], env)

    backups_of = rounds_of(
        {
            "storekeeper backup": ours,
            "pg_dump": raw_dump,
            "storekeeper backup, encrypted": ours_encrypted,
        },
        rounds,
        clean_backups,
    )

    kept = backup(app, "big_db", encrypt=False)
    raw_dump()
    target = "bench_bk_raw_restore"

    def drop_aside() -> None:
        for name in backend.list(prefix="bench_bk_"):
            if name != database:
                backend.drop(name)

    def ours_restore() -> None:
        restore(app, "big_db", kept.id)

    def raw_restore() -> None:
        backend.create(target)
        run(
            [
                pg_restore,
                "--no-owner",
                "--exit-on-error",
                *jobs_args,
                *libpq(site, target)[0],
                str(raw_file),
            ],
            env,
        )

    restores = rounds_of(
        {"storekeeper restore": ours_restore, "pg_restore": raw_restore}, rounds, drop_aside
    )
    clean_backups()
    backend.drop(database)
    return {
        **backups_of,
        **restores,
        "size": float(size),
        "format": 1.0 if fmt == "custom" else 2.0,
        "jobs": float(jobs),
    }


def sqlite_case(folder: Path, rows: int, rounds: int) -> tuple[dict[str, float], int]:
    site = site_at(folder / "lite", "lite", f"sqlite:///{folder / 'lite' / 'stores'}")
    app = App("bench_lite", stores=[Store("main_db")]).bind(site)
    app.sync()
    live = site.backend(site.service("lite")).path("bench_lite_main_db")  # type: ignore[attr-defined]
    fill_sqlite(live, rows)
    size = live.stat().st_size
    copy = folder / "vacuum_into.sqlite3"

    def ours() -> None:
        backup(app, "main_db", encrypt=False)

    def vacuum_into() -> None:
        conn = sqlite3.connect(live)
        conn.execute("VACUUM INTO ?", (str(copy),))
        conn.close()

    def reset() -> None:
        copy.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(Path(site.config.root) / "var" / "backups")])

    medians = rounds_of(
        {"storekeeper backup (SQLite)": ours, "VACUUM INTO": vacuum_into}, rounds, reset
    )
    site.close()
    return medians, size


def upgrade_case(pg_url: str, folder: Path, stores: int) -> dict[str, float] | str:
    """The upgrade of ``stores`` tenant stores with --jobs 4, with and without the automatic
    backup; or why it is not measured."""
    help_text = subprocess.run(
        [str(Path(sys.executable).with_name("storekeeper")), "upgrade", "--help"],
        capture_output=True,
        text=True,
        cwd=folder,
    ).stdout
    if "--no-backup" not in help_text:
        return (
            "not measured yet: the automatic backup before `upgrade` (and its --no-backup) is "
            "built on another branch (bk-keep) and not merged into this one"
        )
    place = folder / "upgrade"
    place.mkdir()
    project(place, pg_url)
    sys.path.insert(0, str(place))
    site = Site(load(place / "storekeeper.toml", env=None))
    import bench  # type: ignore[import-not-found]

    app = bench.app.bind(site)
    for i in range(stores):
        app.create_store(f"u{i:03d}", kind="tenant")

    def reset() -> None:
        storekeeper_cli(
            place, "downgrade", "bench.tenant:*", "--to", "base", "--jobs", "4", "--no-backup"
        )

    reset()
    medians = rounds_of(
        {
            "upgrade --jobs 4, auto backup": lambda: storekeeper_cli(
                place, "upgrade", "bench.tenant:*", "--jobs", "4"
            ),
            "upgrade --jobs 4 --no-backup": lambda: storekeeper_cli(
                place, "upgrade", "bench.tenant:*", "--jobs", "4", "--no-backup"
            ),
        },
        1,
        reset,
    )
    for i in range(stores):
        app.drop_store(f"u{i:03d}")
    site.close()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 3, quick 1)")
    parser.add_argument("--on-disk", action="store_true", help="our server's data on disk")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    pg_rows = 3_500 if args.quick else 35_000
    lite_rows = 100_000 if args.quick else 1_000_000

    with ExitStack() as stack:
        pg_url, server = postgres_url(stack, args.on_disk)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        os.chdir(folder)
        for key in [k for k in os.environ if k.startswith("STOREKEEPER_")]:
            if key != "STOREKEEPER_TEST_POSTGRES_URL":
                del os.environ[key]
        site = site_at(folder / "pg", "pg", pg_url)
        Site.set_default(site)
        pg = postgres_case(site, folder, pg_rows, rounds)
        site.close()
        lite, lite_size = sqlite_case(folder, lite_rows, rounds)
        upgrade = upgrade_case(pg_url, folder, 50)

    fmt = "custom" if pg["format"] == 1.0 else "directory"
    print(
        f"\nbackups on PostgreSQL ({server}): a {pg['size'] / 1e6:.0f} MB store of {TABLES} "
        f"tables, format {fmt} with --jobs {int(pg['jobs'])} (as storekeeper chose); SQLite: a "
        f"{lite_size / 1e6:.0f} MB store; median of {rounds} round(s); {os.cpu_count()} CPU(s)"
    )
    print(f"{'contender':<34}{'seconds':>9}")
    for name, seconds in {**pg, **lite}.items():
        if name not in ("size", "format", "jobs"):
            print(f"{name:<34}{seconds:>9.2f}")
    if isinstance(upgrade, dict):
        for name, seconds in upgrade.items():
            print(f"{name:<34}{seconds:>9.2f}")
    print()
    print(f"ratio backup_vs_pg_dump {pg['storekeeper backup'] / pg['pg_dump']:.3f}")
    print(f"ratio restore_vs_pg_restore {pg['storekeeper restore'] / pg['pg_restore']:.3f}")
    print(
        "ratio encrypted_backup_vs_plain "
        f"{pg['storekeeper backup, encrypted'] / pg['storekeeper backup']:.3f}"
    )
    print(
        "ratio sqlite_backup_vs_vacuum_into "
        f"{lite['storekeeper backup (SQLite)'] / lite['VACUUM INTO']:.3f}"
    )
    if isinstance(upgrade, dict):
        with_backup = upgrade["upgrade --jobs 4, auto backup"]
        print(
            "ratio upgrade_with_backup_vs_without "
            f"{with_backup / upgrade['upgrade --jobs 4 --no-backup']:.3f}"
        )
    else:
        print(f"upgrade_with_backup_vs_without: {upgrade}")


if __name__ == "__main__":
    main()
