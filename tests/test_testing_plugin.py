"""The pytest plugin, through real inner test runs (pytester, in subprocesses) against real
PostgreSQL and SQLite: isolation per test, a database per xdist worker, keepdb, and safety."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from conftest import APP_MODULE, ROOT
from storekeeper.errors import ConfigError
from storekeeper.testing.janitor import check_test_database

pytestmark = pytest.mark.slow

COUNT = "from sqlalchemy import func, select\n"


@pytest.fixture
def inner(
    pytester: pytest.Pytester, dialect: str, request: pytest.FixtureRequest
) -> Iterator[tuple[pytest.Pytester, str, list[str]]]:
    """An inner project with one app; yields the pytester, the app name and the options that
    put its test databases on the dialect under test."""
    name = f"t{uuid.uuid4().hex[:10]}"
    pytester.makepyfile(**{f"{name}": APP_MODULE.format(name=name)})
    server = str(request.getfixturevalue("postgres_url")) if dialect == "postgresql" else "sqlite"
    options = [
        "-p",
        "no:randomly",
        f"--storekeeper-app={name}:app",
        f"--storekeeper-server={server}",
    ]
    pytester.makeini("[pytest]\n")
    yield pytester, name, options
    if dialect == "postgresql":
        engine = create_engine(make_url(server), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for db in leftovers(server, name):
                conn.execute(text(f'DROP DATABASE "{db}" WITH (FORCE)'))
        engine.dispose()


def server_of(pytester: pytest.Pytester, options: list[str], cache: str = ".pytest_cache") -> str:
    """Where the inner runs' test databases live: the server's URL, or the SQLite folder."""
    server = options[-1].removeprefix("--storekeeper-server=")
    if server == "sqlite":
        return "sqlite:///" + str(pytester.path / cache / "d/storekeeper/stores")
    return server


def leftovers(server: str, name: str) -> dict[str, str | None]:
    """The databases of app ``name`` on ``server`` (a URL, or a SQLite folder), with their
    notes: by their name, or the note of a kept template."""
    from storekeeper.backends import Service, backend_for

    backend = backend_for(Service("s", make_url(server)))
    try:
        notes = {db: backend.note(db) for db in backend.list()}
    finally:
        backend.close()
    return {db: note for db, note in notes.items() if name in db or name in (note or "")}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=300)


def test_commits_in_a_test_are_invisible_to_the_next_and_app_sessions_join(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    pytester.makepyfile(
        test_isolation=COUNT
        + textwrap.dedent(
            f"""
            from {name} import Item

            def count(session):
                return session.scalar(select(func.count()).select_from(Item))

            def test_1_commits(dbsession):
                # The initializer's two rows are there, made once for the run.
                assert count(dbsession) == 2
                dbsession.add(Item(name="third"))
                dbsession.commit()
                assert count(dbsession) == 3

            def test_2_sees_a_clean_store(dbsession):
                assert count(dbsession) == 2

            def test_3_code_under_test_joins_the_transaction(dbsession, storekeeper_app):
                dbsession.add(Item(name="pending"))
                dbsession.flush()
                with storekeeper_app.session("main_db") as session:
                    assert count(session) == 3
                    session.add(Item(name="from the app"))
                assert count(dbsession) == 4

            def test_4_and_it_is_rolled_back_too(dbsession, storekeeper_app):
                assert count(dbsession) == 2
                # The run's own database, marked as the plugin's with the run's id.
                where = storekeeper_app.placement("main_db")
                run = where.database.split("_")[1]
                assert where.database == f"test_{{run}}_main_{name}_main_db"
                note = storekeeper_app.site.backend(where.service).note(where.database)
                assert note == f"storekeeper test: run {{run}}"
            """
        )
    )
    result = run(pytester, *options, "-v")
    result.assert_outcomes(passed=4)
    # Nothing of the run is left behind, on a server given with --storekeeper-server too.
    assert leftovers(server_of(pytester, options), name) == {}


def test_a_test_that_poisons_or_closes_its_session_leaves_the_next_clean(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    pytester.makepyfile(
        test_poison=COUNT
        + textwrap.dedent(
            f"""
            import pytest
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError
            from {name} import Item

            def count(session):
                return session.scalar(select(func.count()).select_from(Item))

            def test_1_poisons(dbsession):
                dbsession.add(Item(name="lost"))
                dbsession.flush()
                with pytest.raises(DBAPIError):
                    dbsession.execute(text("SELECT * FROM no_such_table"))

            def test_2_sees_nothing_of_it(dbsession):
                assert count(dbsession) == 2

            def test_3_closes_and_breaks_its_connection(dbsession):
                dbsession.add(Item(name="lost too"))
                dbsession.flush()
                dbsession.connection().invalidate()
                dbsession.close()

            def test_4_still_gets_a_clean_one(dbsession):
                assert count(dbsession) == 2
                dbsession.add(Item(name="fine"))
                dbsession.commit()
                assert count(dbsession) == 3
            """
        )
    )
    run(pytester, *options).assert_outcomes(passed=4)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_each_xdist_worker_gets_its_own_database(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    pytester.makepyfile(
        test_workers=textwrap.dedent(
            """
            import pytest
            from sqlalchemy import text

            @pytest.mark.parametrize("n", range(8))
            def test_where(dbsession, n, worker_id, tmp_path_factory):
                db = dbsession.execute(text("SELECT current_database()")).scalar()
                log = tmp_path_factory.getbasetemp().parent / f"db-{worker_id}.txt"
                log.write_text(db)
            """
        )
    )
    result = run(pytester, *options, "-n", "2")
    result.assert_outcomes(passed=8)
    seen = {p.read_text() for p in pytester.path.parent.glob("**/db-gw*.txt")}
    runs = {db.split("_")[1] for db in seen}
    assert len(runs) == 1, seen
    assert seen == {f"test_{r}_{w}_{name}_main_db" for r in runs for w in ("gw0", "gw1")}
    # The workers dropped their clones, the controller the run's template.
    assert leftovers(server_of(pytester, options), name) == {}


def test_two_runs_at_once_on_one_server_both_pass(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    pytester.makepyfile(
        test_overlap=COUNT
        + textwrap.dedent(
            f"""
            import os
            import time
            from pathlib import Path
            from {name} import Item

            def test_overlaps_the_other_run(dbsession):
                assert dbsession.scalar(select(func.count()).select_from(Item)) == 2
                # Handshake: each run waits here until the other has made its databases.
                Path(os.environ["ME"]).touch()
                deadline = time.monotonic() + 120
                while not Path(os.environ["OTHER"]).exists():
                    assert time.monotonic() < deadline, "the other run never got here"
                    time.sleep(0.05)
                dbsession.add(Item(name=Path(os.environ["ME"]).name))
                dbsession.commit()
                assert dbsession.scalar(select(func.count()).select_from(Item)) == 3
            """
        )
    )
    runs = []
    for me, other in (("a", "b"), ("b", "a")):
        env = {**os.environ, "ME": str(pytester.path / me), "OTHER": str(pytester.path / other)}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", *options],
                cwd=pytester.path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=300)[0] for process in runs]
    assert [p.returncode for p in runs] == [0, 0], outputs
    assert all("1 passed" in output for output in outputs), outputs
    assert leftovers(server_of(pytester, options), name) == {}


def test_keepdb_reuses_the_template_until_the_models_change(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    init_log = pytester.path / "init.log"
    pytester.makepyfile(
        test_keep=textwrap.dedent(
            """
            def test_uses_the_store(dbsession):
                assert dbsession.connection() is not None
            """
        )
    )
    env = ["-o", "cache_dir=.cache"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INIT_LOG", str(init_log))
        run(pytester, *options, *env, "--storekeeper-keepdb").assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True"]
        run(pytester, *options, *env, "--storekeeper-keepdb").assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True"], "keepdb rebuilt an unchanged template"
        # Without keepdb every run builds anew.
        run(pytester, *options, *env).assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True", "True"]
        # ... and leave the kept template alone: a run without keepdb builds its own.
        run(pytester, *options, *env, "--storekeeper-keepdb").assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True", "True"]
        # A model change (a new column) makes keepdb rebuild.
        module = pytester.path / f"{name}.py"
        module.write_text(
            module.read_text().replace(
                "    name: Mapped[str] = mapped_column(String(50))",
                "    name: Mapped[str] = mapped_column(String(50))\n"
                "    note: Mapped[str | None] = mapped_column(String(20))",
            )
        )
        run(pytester, *options, *env, "--storekeeper-keepdb").assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True"] * 3
    # What stays are the kept templates (one per state of the models), each marked as the
    # plugin's; the clones and the runs' own templates are gone.
    kept = leftovers(server_of(pytester, options, ".cache"), name)
    assert len(kept) == 2, kept
    assert all(
        db.startswith("test_tpl_") and (note or "").startswith(f"storekeeper test: keep {name}.")
        for db, note in kept.items()
    ), kept


def test_a_production_service_is_refused_and_nothing_is_made(
    inner: tuple[pytest.Pytester, str, list[str]], service_url: str
) -> None:
    pytester, _, options = inner
    pytester.makefile(
        ".toml",
        storekeeper=textwrap.dedent(
            f"""
            default_service = "main"
            [services]
            main = {{ url = "{service_url}", production = true }}
            [env.test]
            default_service = "main"
            """
        ),
    )
    pytester.makepyfile(test_prod="def test_uses(dbsession):\n    pass\n")
    options = [o for o in options if not o.startswith("--storekeeper-server")]
    result = run(pytester, *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*refusing to run tests on service 'main'*production*"])
    assert "test_uses PASSED" not in result.stdout.str()
    assert not list(pytester.path.glob("stores/*"))


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_data_outside_test_databases_is_never_touched(
    inner: tuple[pytest.Pytester, str, list[str]], postgres_url: str
) -> None:
    pytester, name, options = inner
    # The app's real database, with data, on the same server.
    admin = create_engine(make_url(postgres_url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    real = make_url(postgres_url).set(database=f"{name}_main_db")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}_main_db"'))
    engine = create_engine(real, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int, name text)"))
        conn.execute(text("INSERT INTO items VALUES (1, 'production row')"))
    pytester.makepyfile(test_it="def test_uses(dbsession):\n    pass\n")
    run(pytester, *options).assert_outcomes(passed=1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM items")).scalars().all() == ["production row"]
    engine.dispose()
    admin.dispose()
    with pytest.raises(ConfigError, match="only creates, drops or clones databases"):
        check_test_database(f"{name}_main_db")
    assert check_test_database(f"test_{name}_main_db") == f"test_{name}_main_db"


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_kept_template_is_rebuilt_only_when_the_plugin_marked_it(
    inner: tuple[pytest.Pytester, str, list[str]], postgres_url: str
) -> None:
    from storekeeper.backends import Service, backend_for

    pytester, name, options = inner
    pytester.makepyfile(test_it="def test_uses(dbsession):\n    pass\n")
    keep = [*options, "--storekeeper-keepdb"]
    run(pytester, *keep).assert_outcomes(passed=1)
    (template,) = leftovers(postgres_url, name)
    backend = backend_for(Service("s", make_url(postgres_url)))
    # A build of a run that died half-way: unsealed, with a connection still on it.
    backend.unseal_template(template)
    backend.set_note(template, "storekeeper test: run deadbeef")
    stray = create_engine(make_url(postgres_url).set(database=template), poolclass=NullPool)
    held = stray.connect()
    held.execute(text("SELECT 1"))
    run(pytester, *keep).assert_outcomes(passed=1)
    # Rebuilt (the initializer ran again) and sealed with the kept template's mark.
    assert (pytester.path / "init.log").read_text().split() == ["True", "True"]
    fingerprint = template.removeprefix("test_tpl_")
    mark = backend.template_mark(template) or ""
    assert mark.startswith(f"storekeeper test: keep {name}.main_db {fingerprint}"), mark
    held.invalidate()
    stray.dispose()
    # The same name without the plugin's mark (someone else's database): refused, kept.
    backend.unseal_template(template)
    backend.set_note(template, "the reporting team's copy")
    result = run(pytester, *keep)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*refusing to drop database '{template}'*not marked*"])
    assert backend.exists(template) and backend.note(template) == "the reporting team's copy"
    backend.drop(template)
    backend.close()


def test_an_unreachable_server_is_one_clear_error(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    pytester.makepyfile(**{name: APP_MODULE.format(name=name)})
    pytester.makepyfile(
        test_many="\n".join(f"def test_{i}(dbsession):\n    pass\n" for i in range(5))
    )
    url = make_url(postgres_url).set(port=1, password="hunter2pw")
    result = run(
        pytester,
        f"--storekeeper-app={name}:app",
        f"--storekeeper-server={url.render_as_string(hide_password=False)}",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert len(re.findall(r"storekeeper: cannot connect to service 'test'", output)) == 1
    assert "hunter2pw" not in output
    assert " passed" not in output


def test_a_failing_initializer_stops_the_run_naming_the_store(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    module = pytester.path / f"{name}.py"
    module.write_text(
        module.read_text().replace(
            "    if first_time:\n", "    raise RuntimeError('no water today')\n    if first_time:\n"
        )
    )
    pytester.makepyfile(test_it="def test_uses(dbsession):\n    pass\n")
    result = run(pytester, *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*building the test template of {name}.main_db*no water today*"])


def test_the_readme_example_passes(dialect: str, request: pytest.FixtureRequest) -> None:
    server = str(request.getfixturevalue("postgres_url")) if dialect == "postgresql" else "sqlite"
    example = ROOT / "examples" / "gauges"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
            f"--storekeeper-server={server}",
        ],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_store_is_chosen_by_marker_parameter_or_ini(pytester: pytest.Pytester) -> None:
    first, second = (f"t{uuid.uuid4().hex[:10]}" for _ in range(2))
    for name in (first, second):
        pytester.makepyfile(**{name: APP_MODULE.format(name=name)})
    pytester.makepyfile(
        test_choose=textwrap.dedent(
            f"""
            import pytest
            from sqlalchemy import text

            def database(session):
                return session.connection().engine.url.database

            @pytest.mark.storekeeper("{second}.main_db")
            def test_marker(dbsession):
                assert "_main_{second}_main_db" in database(dbsession)

            @pytest.mark.parametrize("dbsession", ["{first}.main_db"], indirect=True)
            def test_parameter(dbsession):
                assert "_main_{first}_main_db" in database(dbsession)

            def test_ini_default(dbsession):
                assert "_main_{first}_main_db" in database(dbsession)
            """
        )
    )
    apps = [f"--storekeeper-app={first}:app", f"--storekeeper-app={second}:app"]
    run(pytester, *apps, "-o", f"storekeeper_store={first}.main_db").assert_outcomes(passed=3)
    # Without a choice, the run is told once which stores it may name, and how: no test runs.
    pytester.makepyfile(
        test_unchosen="\n".join(f"def test_{i}(dbsession):\n    pass\n" for i in range(3))
    )
    result = run(pytester, *apps, "test_unchosen.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert output.count("several stores are under test") == 1, output
    assert "@pytest.mark.storekeeper('app.store')" in output
    assert "ini option storekeeper_store" in output
    assert "Traceback" not in output and "PASSED" not in output
    (pytester.path / "test_unchosen.py").unlink()
    pytester.makepyfile(
        test_choose="import pytest\n\n@pytest.mark.storekeeper('nope.db')\n"
        "def test_unknown(dbsession):\n    pass\n"
    )
    result = run(pytester, *apps)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*no test store 'nope.db'*{first}.main_db*"])


def test_each_store_is_tested_on_its_own_backend_and_the_header_says_where(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    pg, lite, shared = (f"t{uuid.uuid4().hex[:10]}" for _ in range(3))
    for name in (pg, lite, shared):
        pytester.makepyfile(**{name: APP_MODULE.format(name=name)})
    real_port = make_url(postgres_url).port
    pytester.makefile(
        ".toml",
        storekeeper=textwrap.dedent(
            f"""
            [services]
            main = "{postgres_url}"
            ci = {{ url = "{postgres_url}", tests = true }}
            [assign]
            "{pg}.main_db" = "main"
            "{shared}.main_db" = "ci"
            """
        ),
    )
    pytester.makepyfile(
        test_where=textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.storekeeper("{pg}.main_db")
            def test_a_postgresql_store_gets_a_throwaway_postgresql_server(dbsession):
                url = dbsession.get_bind().engine.url
                assert url.get_backend_name() == "postgresql"
                assert url.port != {real_port}

            @pytest.mark.storekeeper("{lite}.main_db")
            def test_a_sqlite_store_stays_on_sqlite(dbsession):
                assert dbsession.get_bind().engine.url.get_backend_name() == "sqlite"
                assert ".pytest_cache" in dbsession.get_bind().engine.url.database

            @pytest.mark.storekeeper("{shared}.main_db")
            def test_a_service_marked_tests_is_used_as_it_is(dbsession):
                assert dbsession.get_bind().engine.url.port == {real_port}
            """
        )
    )
    apps = [f"--storekeeper-app={n}:app" for n in (pg, lite, shared)]
    # Under xdist, so the controller starts the throwaway server its workers share.
    result = run(pytester, "-p", "no:randomly", *apps, "-v", "-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random(
        [
            "storekeeper: service main (postgresql): a throwaway PostgreSQL server*",
            "storekeeper: service local (sqlite): SQLite files in *.pytest_cache*",
            "storekeeper: service ci (postgresql): postgresql+psycopg://*:***@*tests = true*",
        ]
    )
    assert leftovers(postgres_url, pg) == {}
    assert leftovers(postgres_url, shared) == {}


def test_a_store_is_built_when_a_test_first_asks_for_it(pytester: pytest.Pytester) -> None:
    used, other = (f"t{uuid.uuid4().hex[:10]}" for _ in range(2))
    for name in (used, other):
        pytester.makepyfile(**{name: APP_MODULE.format(name=name)})
    pytester.makepyfile(
        test_lazy=COUNT
        + textwrap.dedent(
            f"""
            from pathlib import Path
            import pytest
            from {used} import Item

            def initialized():
                return Path("init.log").read_text().split()

            @pytest.mark.storekeeper("{used}.main_db")
            def test_1_uses_one_store(dbsession):
                assert dbsession.scalar(select(func.count()).select_from(Item)) == 2

            def test_2_only_that_one_was_built():
                assert initialized() == ["True"]

            def test_3_code_asking_for_the_other_gets_it_built(storekeeper_apps):
                app = next(a for a in storekeeper_apps if a.name == "{other}")
                with app.session("main_db") as session:
                    assert session.scalar(select(func.count()).select_from(Item)) == 2
                assert initialized() == ["True", "True"]
            """
        )
    )
    apps = [f"--storekeeper-app={n}:app" for n in (used, other)]
    run(pytester, "-p", "no:randomly", *apps).assert_outcomes(passed=3)


# migrations -----------------------------------------------------------------------------

ENV_PY = "from storekeeper.migrate.env import run\n\nrun()\n"
MIGRATION = '''"""{doc}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    {up}


def downgrade():
    {down_code}
'''
CREATE_ITEMS = (
    'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
    'sa.Column("name", sa.String(50), nullable=False))'
)


def write_migration(
    pytester: pytest.Pytester, rev: str, down: str | None, up: str, down_code: str
) -> None:
    versions = pytester.path / "migrations" / "main_db" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions.parent / "env.py").write_text(ENV_PY)
    (versions / f"{rev}.py").write_text(
        MIGRATION.format(doc=rev, rev=rev, down=down, up=up, down_code=down_code)
    )


def test_keepdb_rebuilds_when_a_migration_is_added_and_a_failing_one_stops_the_run(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    write_migration(pytester, "r1", None, CREATE_ITEMS, 'op.drop_table("items")')
    init_log = pytester.path / "init.log"
    pytester.makepyfile(
        test_cols=textwrap.dedent(
            """
            from sqlalchemy import inspect

            def test_columns(dbsession):
                columns = {c["name"] for c in inspect(dbsession.connection()).get_columns("items")}
                assert "name" in columns
            """
        )
    )
    keep = ["-o", "cache_dir=.cache", "--storekeeper-keepdb"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INIT_LOG", str(init_log))
        run(pytester, *options, *keep).assert_outcomes(passed=1)
        run(pytester, *options, *keep).assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True"]
        write_migration(
            pytester,
            "r2",
            "r1",
            'op.add_column("items", sa.Column("note", sa.String(20)))',
            'op.drop_column("items", "note")',
        )
        run(pytester, *options, *keep).assert_outcomes(passed=1)
        assert init_log.read_text().split() == ["True", "True"], "a new migration must rebuild"

        write_migration(pytester, "r3", "r2", 'raise RuntimeError("bad step")', "pass")
        result = run(pytester, *options, *keep)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [f"*building the test template of {name}.main_db*migration r3*failed*bad step*"]
    )


def test_migration_checks_pass_on_sound_migrations(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, _, options = inner
    write_migration(pytester, "r1", None, CREATE_ITEMS, 'op.drop_table("items")')
    write_migration(
        pytester,
        "r2",
        "r1",
        'op.create_index("ix_items_name", "items", ["name"])',
        'op.drop_index("ix_items_name", "items")',
    )
    module = next(p for p in pytester.path.glob("t*.py"))
    module.write_text(
        module.read_text().replace(
            "mapped_column(String(50))", "mapped_column(String(50), index=True)"
        )
    )
    pytester.makepyfile(
        test_fixture="import gc\n\n"
        "def test_fixture(storekeeper_migration_problems):\n"
        "    assert storekeeper_migration_problems == []\n"
        "    gc.collect()  # a connection the checks left open would warn now\n"
    )
    result = run(
        pytester, *options, "--storekeeper-check-migrations", "-v", "-W", "always::ResourceWarning"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*storekeeper_migrations PASSED*"])
    assert "ResourceWarning" not in result.stdout.str()


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        # Its downgrade forgets the index: going up again fails.
        (
            ('op.create_index("ix_items_name", "items", ["name"])', "pass"),
            "down from r2 to r1 and up again*",
        ),
        # The models have an index the migrations never make.
        (("pass", "pass"), "models and migrations differ*index*ix_items_name*"),
    ],
)
def test_migration_checks_name_what_is_wrong(
    inner: tuple[pytest.Pytester, str, list[str]], second: tuple[str, str], problem: str
) -> None:
    pytester, name, options = inner
    write_migration(pytester, "r1", None, CREATE_ITEMS, 'op.drop_table("items")')
    write_migration(pytester, "r2", "r1", *second)
    module = pytester.path / f"{name}.py"
    module.write_text(
        module.read_text().replace(
            "mapped_column(String(50))", "mapped_column(String(50), index=True)"
        )
    )
    pytester.makepyfile(test_it="def test_other():\n    pass\n")
    result = run(pytester, *options, "--storekeeper-check-migrations")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*problem(s) in the migrations*", f"*{name}.main_db: {problem}"])


def test_migration_checks_find_two_heads(inner: tuple[pytest.Pytester, str, list[str]]) -> None:
    pytester, name, options = inner
    write_migration(pytester, "r1", None, CREATE_ITEMS, 'op.drop_table("items")')
    write_migration(pytester, "r2", "r1", "pass", "pass")
    write_migration(pytester, "r3", "r1", "pass", "pass")
    pytester.makepyfile(test_it="def test_other():\n    pass\n")
    result = run(pytester, *options, "--storekeeper-check-migrations")
    # The check itself says it (the template is not built first, which would stop the run).
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 problem(s) in the migrations*",
            f"*{name}.main_db: single head: the migrations have 2 heads (r2, r3); merge them: "
            f"storekeeper revision {name}.main_db --merge*",
        ]
    )


def test_async_dbsession_rolls_back_and_the_apps_async_sessions_join(
    inner: tuple[pytest.Pytester, str, list[str]],
) -> None:
    pytester, name, options = inner
    pytester.makepyfile(
        test_async=COUNT
        + textwrap.dedent(
            f"""
            import pytest
            from {name} import Item

            async def count(session):
                return await session.scalar(select(func.count()).select_from(Item))

            @pytest.mark.asyncio
            async def test_1_commits(async_dbsession, storekeeper_app):
                async_dbsession.add(Item(name="third"))
                await async_dbsession.commit()
                assert await count(async_dbsession) == 3
                # Code under test on asyncio joins the same transaction.
                async with storekeeper_app.async_session("main_db") as session:
                    assert await count(session) == 3
                    session.add(Item(name="from the app"))
                assert await count(async_dbsession) == 4

            @pytest.mark.asyncio
            async def test_2_sees_a_clean_store(async_dbsession):
                assert await count(async_dbsession) == 2

            def test_3_and_so_does_a_sync_test(dbsession):
                assert dbsession.scalar(select(func.count()).select_from(Item)) == 2
            """
        )
    )
    run(pytester, *options).assert_outcomes(passed=3)


def test_a_bad_server_option_is_one_usage_error_at_start(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_many="\n".join(f"def test_{i}(dbsession):\n    pass\n" for i in range(3))
    )
    result = run(pytester, "--storekeeper-server=mysql")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert output.count("--storekeeper-server 'mysql' is not one of sqlite, postgresql") == 1
    assert "test_0" not in result.stdout.str()
