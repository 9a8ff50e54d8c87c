"""Upgrading many stores of one kind: ``storekeeper upgrade APP.KIND:* --jobs 4`` against what
users write today.

200 stores (PostgreSQL: a throwaway cluster, or STOREKEEPER_TEST_POSTGRES_URL) go from base
through 10 migrations, with:

1. ``storekeeper upgrade bench.tenant:* --jobs 4`` (one command, worker processes);
2. a shell loop of ``alembic upgrade head``, one process per database, with a plain Alembic
   ``env.py`` reading the URL from the environment;
3. a sequential loop of ``alembic.command.upgrade`` in one Python process.

Between contenders every store is downgraded to base again (not timed). Prints a table with
the median over rounds, then ``ratio NAME VALUE`` lines (ours / theirs). ``--quick`` is short.
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

MIGRATIONS = 10

APP_MODULE = """
from storekeeper import App, Kind, ServerSetting

app = App("bench", servers=[ServerSetting("tenants")], kinds=[Kind("tenant")])
"""

MIGRATION = '''"""step {i}"""

import sqlalchemy as sa
from alembic import op

revision = "m{i:03d}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "t{i:03d}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("value", sa.Integer),
    )
    op.create_index("ix_t{i:03d}_name", "t{i:03d}", ["name"])


def downgrade() -> None:
    op.drop_table("t{i:03d}")
'''

# The env.py of a project that migrates one database per run, as Alembic's template has it
# (URL from the environment, or from the caller in process).
PLAIN_ENV = """
import os

from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.attributes.get("url") or os.environ["DATABASE_URL"]
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""


def postgres_url(stack: ExitStack, on_disk: bool) -> tuple[str, str]:
    """STOREKEEPER_TEST_POSTGRES_URL, else a throwaway cluster of ours: in /dev/shm unless
    ``on_disk`` (this VM's shared disk makes each CREATE DATABASE cost 10 to 600 ms depending
    on the neighbours' I/O); returns the URL and where the server's data is."""
    given = os.environ.get("STOREKEEPER_TEST_POSTGRES_URL")
    if given:
        return given, "STOREKEEPER_TEST_POSTGRES_URL"
    from storekeeper.testing.server import PostgresServer

    # The server keeps its data in RAM when it can; --on-disk puts it in the temporary folder.
    server = PostgresServer(parent=tempfile.gettempdir() if on_disk else None)
    url = stack.enter_context(server).url
    return url, f"throwaway cluster in {server.folder.parent if server.folder else '?'}"


def write_migrations(versions: Path, count: int) -> None:
    """``count`` migrations, each a table with an index, into ``versions``."""
    versions.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        down = f"m{i - 1:03d}" if i > 1 else None
        (versions / f"m{i:03d}_step.py").write_text(MIGRATION.format(i=i, down=down))


def project(folder: Path, service_url: str) -> None:
    """The bench app, its kind's migrations and a plain Alembic directory sharing them."""
    (folder / "bench.py").write_text(APP_MODULE)
    (folder / "storekeeper.toml").write_text(
        f'apps = ["bench:app"]\ndefault_service = "pg"\n[services]\npg = "{service_url}"\n'
    )
    kind = folder / "migrations" / "kinds" / "tenant"
    kind.mkdir(parents=True)
    (kind / "env.py").write_text("from storekeeper.migrate.env import run\n\nrun()\n")
    write_migrations(kind / "versions", MIGRATIONS)
    plain = folder / "plain"
    plain.mkdir()
    (plain / "env.py").write_text(PLAIN_ENV)
    (plain / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    (plain / "versions").symlink_to(kind / "versions")


def storekeeper_cli(folder: Path, *args: str) -> None:
    cli = str(Path(sys.executable).with_name("storekeeper"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    subprocess.run(
        [cli, *args],
        cwd=folder,
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--stores", type=int, help="how many stores (default 200, quick 24)")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 3, quick 1)")
    parser.add_argument("--on-disk", action="store_true", help="our server's data on disk")
    args = parser.parse_args()
    stores = args.stores or (24 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)

    with ExitStack() as stack:
        pg_url, server = postgres_url(stack, args.on_disk)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        project(folder, pg_url)
        sys.path.insert(0, str(folder))
        os.chdir(folder)

        from alembic import command
        from alembic.config import Config

        from storekeeper.config import load
        from storekeeper.migrate.templates import drop_template
        from storekeeper.site import Site

        site = Site(load(folder / "storekeeper.toml", env=None))
        Site.set_default(site)
        import bench  # type: ignore[import-not-found]

        app = bench.app.bind(site)
        names = [f"s{i:04d}" for i in range(stores)]
        started = time.perf_counter()
        for name in names:
            app.create_store(name, kind="tenant")
        setup = time.perf_counter() - started
        urls = [app.url(n).render_as_string(hide_password=False) for n in names]

        def reset() -> None:
            storekeeper_cli(folder, "downgrade", "bench.tenant:*", "--to", "base", "--jobs", "4")

        def ours() -> None:
            storekeeper_cli(folder, "upgrade", "bench.tenant:*", "--jobs", "4")

        loop = "\n".join(
            f"DATABASE_URL='{url}' alembic -c plain/alembic.ini upgrade head" for url in urls
        )
        alembic_bin = str(Path(sys.executable).parent)

        def shell_loop() -> None:
            env = {**os.environ, "PATH": f"{alembic_bin}:{os.environ.get('PATH', '')}"}
            subprocess.run(
                ["bash", "-e", "-c", loop],
                cwd=folder,
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def inprocess_loop() -> None:
            for url in urls:
                config = Config(str(folder / "plain" / "alembic.ini"))
                config.attributes["url"] = url
                command.upgrade(config, "head")

        contenders = {
            "storekeeper --jobs 4": ours,
            "shell loop of alembic": shell_loop,
            "in-process alembic loop": inprocess_loop,
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                reset()
                samples[name].append(timed(contenders[name]))
                print(f"  round {r + 1}: {name}: {samples[name][-1]:.1f} s", file=sys.stderr)
        for name in names:
            app.drop_store(name)
        drop_template(app, "tenant", app.site.service("pg"))
        site.close()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"\nupgrading {stores} stores through {MIGRATIONS} migrations on PostgreSQL, "
        f"median of {rounds} round(s); {os.cpu_count()} CPU(s); server: {server}; setup "
        f"(stores cloned from the kind's template) {setup:.1f} s"
    )
    print(f"{'contender':<26}{'seconds':>9}{'ms/store':>10}{'ratio':>8}")
    ours_s = medians["storekeeper --jobs 4"]
    for name, seconds in medians.items():
        print(f"{name:<26}{seconds:>9.2f}{seconds / stores * 1000:>10.1f}{ours_s / seconds:>8.3f}")
    print()
    print(f"ratio fanout_vs_shell_loop {ours_s / medians['shell loop of alembic']:.3f}")
    print(f"ratio fanout_vs_inprocess_loop {ours_s / medians['in-process alembic loop']:.3f}")


if __name__ == "__main__":
    main()
