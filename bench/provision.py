"""Making stores of a kind: cloned from the kind's template against created and migrated.

For a kind with 10, 50 and 200 migrations (each a table with an index), on PostgreSQL (a
throwaway cluster, or STOREKEEPER_TEST_POSTGRES_URL):

1. ``app.create_store(name, kind="tenant")``: clones the kind's template kept at head (built
   once, timed apart), then records the store;
2. the same clone alone with each ``CREATE DATABASE ... STRATEGY`` (FILE_COPY and WAL_LOG), to
   show which one suits the case;
3. create an empty database and run every migration in it, as without a template.

Prints per-store medians, then ``ms template_clone VALUE`` (median ``create_store`` from the
template over all cases) and ``ratio template_vs_migrate_N VALUE`` (ours / theirs).
``--quick`` is short.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import text

from fanout import postgres_url, write_migrations
from storekeeper import App, Kind, ServerSetting
from storekeeper.config import load
from storekeeper.migrate import kind_scripts, migrate_database
from storekeeper.migrate.templates import drop_template, ensure_template
from storekeeper.site import Site

CASES = (10, 50, 200)


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def case(site: Site, folder: Path, migrations: int, stores: int) -> dict[str, float]:
    """Per-store medians (ms) of each way of making a store, for a kind with ``migrations``."""
    path = folder / f"kind{migrations}"
    path.mkdir()
    (path / "env.py").write_text("from storekeeper.migrate.env import run\n\nrun()\n")
    write_migrations(path / "versions", migrations)
    app = App(
        f"prov{migrations}",
        servers=[ServerSetting("tenants")],
        kinds=[Kind("tenant", migrations=path)],
    ).bind(site)
    service = site.service("pg")
    backend = site.backend(service)
    scripts = kind_scripts(app, "tenant")

    started = time.perf_counter()
    template = ensure_template(app, "tenant", service)
    build = time.perf_counter() - started
    times: dict[str, list[float]] = {
        "create_store": [],
        "FILE_COPY": [],
        "WAL_LOG": [],
        "create+migrate": [],
    }
    made: list[str] = []

    def phase(name: str, make: Callable[[int], None]) -> None:
        # Each way runs as a series of its own, as a real burst of new stores would, after a
        # checkpoint: FILE_COPY checkpoints too, and must not pay for the others' writes.
        with backend.admin.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(text("CHECKPOINT"))
        for i in range(stores):
            started = time.perf_counter()
            make(i)
            times[name].append(time.perf_counter() - started)

    def clone_with(strategy: str) -> Callable[[int], None]:
        def make(i: int) -> None:
            name = f"{app.name}_{strategy.lower()}_{i:03d}"
            backend.clone(template, name, strategy=strategy)  # type: ignore[call-arg]
            made.append(name)

        return make

    def create_and_migrate(i: int) -> None:
        name = f"{app.name}_migrated_{i:03d}"
        backend.create(name)
        migrate_database(backend, name, scripts, store=name)
        made.append(name)

    phase("create_store", lambda i: app.create_store(f"t{i:03d}", kind="tenant") and None)
    phase("FILE_COPY", clone_with("FILE_COPY"))
    phase("WAL_LOG", clone_with("WAL_LOG"))
    phase("create+migrate", create_and_migrate)
    for i in range(stores):
        app.drop_store(f"t{i:03d}")
    for name in made:
        backend.drop(name)
    drop_template(app, "tenant", service)
    result = {name: ms(values) for name, values in times.items()}
    result["template build"] = build * 1000
    result["samples"] = times["create_store"]  # type: ignore[assignment]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--stores", type=int, help="stores per case (default 100, quick 8)")
    parser.add_argument("--on-disk", action="store_true", help="our server's data on disk")
    args = parser.parse_args()
    stores = args.stores or (8 if args.quick else 100)

    with ExitStack() as stack:
        pg_url, server = postgres_url(stack, args.on_disk)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (folder / "storekeeper.toml").write_text(
            f'default_service = "pg"\n[services]\npg = "{pg_url}"\n'
        )
        site = Site(load(folder / "storekeeper.toml", env=None))
        Site.set_default(site)
        version = site.backend(site.service("pg")).ping()
        results = {}
        for migrations in CASES:
            results[migrations] = case(site, folder, migrations, stores)
            print(f"  {migrations} migrations done", file=sys.stderr)
        site.close()

    print(f"\nmaking {stores} stores of a kind on {version} ({server}); per-store medians in ms")
    columns = ["create_store", "FILE_COPY", "WAL_LOG", "create+migrate", "template build"]
    print(f"{'migrations':<12}" + "".join(f"{c:>16}" for c in columns) + f"{'ratio':>8}")
    for migrations, r in results.items():
        ratio = r["create_store"] / r["create+migrate"]
        print(f"{migrations:<12}" + "".join(f"{r[c]:>16.1f}" for c in columns) + f"{ratio:>8.3f}")
    print(
        "create_store = clone from the template (FILE_COPY) + locks + catalog records; "
        "FILE_COPY / WAL_LOG = the bare CREATE DATABASE ... TEMPLATE; template build = once"
    )
    every = [s for r in results.values() for s in r["samples"]]  # type: ignore[attr-defined]
    print()
    print(f"ms template_clone {ms(every):.1f}")
    for migrations in (50, 200):
        r = results[migrations]
        print(
            f"ratio template_vs_migrate_{migrations} {r['create_store'] / r['create+migrate']:.3f}"
        )


if __name__ == "__main__":
    main()
