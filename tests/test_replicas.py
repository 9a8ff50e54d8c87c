"""Read replicas on a real streaming replica: a primary of our own (the throwaway server with
replication on) and a hot standby made from it with ``pg_basebackup -R``, on loopback, whose
replay is delayed by ``recovery_min_apply_delay = '1s'`` so that its lag is real.

Where a read was served is asked of the server that served it (``inet_server_port()`` in the
read's own query), not taken from storekeeper's word.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InternalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from conftest import write_config
from storekeeper import App, BadInput, Store, replicas
from storekeeper.catalog import tables
from storekeeper.cli import main
from storekeeper.config import Sourced
from storekeeper.drivers import ReadDriver
from storekeeper.errors import ConfigError, InvalidName, NotFound
from storekeeper.replicas import SERVED_BY, Token, format_lsn, parse_lsn, replica_status
from storekeeper.sessions import SessionSet, with_store
from storekeeper.site import Site
from storekeeper.testing.server import PostgresServer, PostgresStandby

DELAY = "1s"


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


class CounterReader(ReadDriver[Counter]):
    pass


APP = App(f"r{uuid.uuid4().hex[:10]}", stores=[Store("main_db", metadata=Base.metadata)])
# An app whose store was never made: what sync would make.
FRESH = App(f"f{uuid.uuid4().hex[:10]}", stores=[Store("main_db", metadata=Base.metadata)])
READ = text("SELECT value, inet_server_port() FROM counters WHERE id = 1")


def conninfo(server: PostgresServer, database: str = "postgres") -> str:
    return (
        make_url(server.url)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


def primary_position(primary: PostgresServer) -> int:
    with psycopg.connect(conninfo(primary), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def wait_replayed(standby: PostgresStandby, position: int, timeout: float = 30) -> None:
    """Return once ``standby`` has replayed up to ``position``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo(standby), autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
            if row and row[0] and parse_lsn(row[0]) >= position:
                return
            assert time.monotonic() < deadline, "the standby never replayed the primary's writes"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    """A primary of our own, with APP's store made on it."""
    with PostgresServer(replication=True) as server:
        with psycopg.connect(conninfo(server), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{APP.name}_main_db"')
        engine = create_engine(make_url(server.url).set(database=f"{APP.name}_main_db"))
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add(Counter(id=1, value=0))
            session.commit()
        engine.dispose()
        yield server


@pytest.fixture(scope="module")
def replica(primary: PostgresServer) -> Iterator[PostgresStandby]:
    """A hot standby of ``primary`` whose replay runs one second behind."""
    with primary.standby(settings={"recovery_min_apply_delay": DELAY}) as standby:
        wait_replayed(standby, primary_position(primary))
        yield standby


def replica_config(
    project: Path,
    primary: PostgresServer,
    *standbys: tuple[str, str],
    max_lag: float = 5,
    app: App = APP,
) -> Site:
    """A site whose store ``app``.main_db is on ``primary`` and reads from ``standbys``
    (service name, URL); ``app`` bound to it, and named for the command line."""
    services = "\n".join(f'{name} = "{url}"' for name, url in standbys)
    names = ", ".join(f'"{name}"' for name, _ in standbys)
    write_config(
        project,
        f"""
        apps = ["test_replicas:{"APP" if app is APP else "FRESH"}"]
        default_service = "pg"
        max_replica_lag = {max_lag}
        [services]
        pg = "{primary.url}"
        {services}
        [replicas]
        "{app.name}.main_db" = [{names}]
        """,
    )
    site = Site.load()
    Site.set_default(site)
    app.bind(site)
    return site


@pytest.fixture
def site(project: Path, primary: PostgresServer, replica: PostgresStandby) -> Iterator[Site]:
    """APP.main_db on ``primary``, reading from ``replica`` (service pg_r1)."""
    site = replica_config(project, primary, ("pg_r1", replica.url))
    yield site
    APP.bind(None)
    site.close()


def write(value: int) -> None:
    with APP.session("main_db") as session:
        session.get_one(Counter, 1).value = value


def read() -> tuple[int, int, str]:
    """The counter, the port of the server that served it, and who storekeeper says it was."""
    with APP.session("main_db", readonly=True) as session:
        value, port = session.execute(READ).one()
        return value, port, session.info[SERVED_BY]


# read-your-writes ------------------------------------------------------------------------


def test_300_writes_each_followed_by_a_read_carrying_its_token_read_nothing_stale(
    site: Site, primary: PostgresServer, replica: PostgresStandby
) -> None:
    stale, stale_without_token = 0, 0
    for step in range(1, 301):
        write(step)
        carried = str(replicas.token())  # what a response would set as a cookie
        assert carried.startswith(f"{APP.name}.main_db:")
        with replicas.scope(carried):  # the next request, carrying it
            value, port, served_by = read()
        stale += value != step
        assert served_by == ("pg_r1" if port == replica.port else "primary")
        with replicas.scope():  # a reader that carries no token: the replica, a second behind
            value, port, _ = read()
        stale_without_token += value != step
    assert stale == 0
    # The lag was real: without the token most reads were stale. With it, they went to the
    # primary while the replica was behind (it was, as writes came faster than its 1 s).
    assert stale_without_token > 150


def test_3000_reads_without_a_fresh_token_are_mostly_served_by_the_replica(
    site: Site, primary: PostgresServer, replica: PostgresStandby
) -> None:
    write(7)
    old = replicas.token()
    wait_replayed(replica, primary_position(primary))  # the token is no longer fresh
    served: dict[str, int] = {"replica": 0, "primary": 0}
    with replicas.scope(old):
        for _ in range(3000):
            value, port, _ = read()
            assert value == 7
            served["replica" if port == replica.port else "primary"] += 1
    assert served["replica"] > 0.8 * 3000, served


def test_reads_in_a_unit_of_work_that_wrote_see_its_uncommitted_writes(site: Site) -> None:
    stores = SessionSet(APP)
    try:
        stores.get("main_db").get_one(Counter, 1).value = 41
        reader = stores.get("main_db", readonly=True)
        assert reader is stores.get("main_db")
        assert reader.get_one(Counter, 1).value == 41
    finally:
        stores.close()


def test_read_drivers_and_session_sets_read_from_the_replica(
    site: Site, primary: PostgresServer, replica: PostgresStandby
) -> None:
    wait_replayed(replica, primary_position(primary))
    with replicas.scope(), CounterReader.of(APP, "main_db") as counters:
        assert counters.get_or_raise(1).id == 1
        assert counters.session.execute(text("SELECT inet_server_port()")).scalar() == replica.port
    stores = SessionSet(APP)
    try:
        with replicas.scope():
            session = stores.get("main_db", readonly=True)
            assert session.execute(text("SELECT inet_server_port()")).scalar() == replica.port
        assert list(stores) == []  # only the store's own sessions are listed
    finally:
        stores.finish(commit=True)


def test_tasks_and_request_hooks_read_from_the_replica(
    site: Site, primary: PostgresServer, replica: PostgresStandby
) -> None:
    @with_store(APP, "main_db", readonly=True)
    def task(main_db: Session) -> int:
        return int(main_db.execute(text("SELECT inet_server_port()")).scalar_one())

    write(11)
    carried = str(replicas.token())
    wait_replayed(replica, primary_position(primary))
    replicas.begin(carried)  # a request hook: the next request, carrying the cookie
    assert task() == replica.port
    write(12)  # this request wrote: its reads go to the primary while the replica is behind
    assert task() == primary.port
    replicas.begin("not a token", strict=False)  # a client's garbage: ignored
    assert not replicas.token()
    with pytest.raises(BadInput, match="is not a replica token"):
        replicas.begin("not a token")


def test_a_read_session_on_the_primary_refuses_to_write(
    site: Site, primary: PostgresServer
) -> None:
    write(3)  # this unit of work wrote: the replica is behind its token, so: the primary
    with APP.session("main_db", readonly=True) as session:
        assert session.info[SERVED_BY] == "primary"
        assert session.execute(text("SELECT inet_server_port()")).scalar() == primary.port
        with pytest.raises(InternalError, match="read-only transaction"):
            session.execute(text("UPDATE counters SET value = 0"))


def test_a_commit_that_only_read_leaves_no_token(site: Site) -> None:
    with replicas.scope() as unit:
        with APP.session("main_db") as session:
            session.get_one(Counter, 1)
        assert not unit.token
        write(5)
        assert unit.token.position(APP.name, "main_db") is not None


# faults ----------------------------------------------------------------------------------


def test_when_every_replica_lags_too_far_reads_go_to_the_primary(
    project: Path, primary: PostgresServer, replica: PostgresStandby
) -> None:
    site = replica_config(project, primary, ("pg_r1", replica.url), max_lag=0.5)
    try:
        for attempt in range(5):
            write(100 + attempt)
            target = primary_position(primary)
            # The handshake: the replica has the write, and holds back its replay (1 s).
            if not _received_not_replayed(replica, target):
                continue
            with replicas.scope():  # no token: only the lag decides
                value, port, served_by = read()
            (shown,) = replica_status(APP, "main_db")
            if not _received_not_replayed(replica, target):
                continue  # it caught up meanwhile (a slow machine): try again
            assert (port, served_by) == (primary.port, "primary")
            assert value == 100 + attempt
            assert shown.state == "lagging" and shown.lag is not None and shown.lag > 0.5
            assert "(lagging)" in shown.describe()
            break
        else:
            pytest.fail("never saw the replica holding back a write it had received")
    finally:
        APP.bind(None)
        site.close()


def _received_not_replayed(standby: PostgresStandby, target: int) -> bool:
    deadline = time.monotonic() + 5
    with psycopg.connect(conninfo(standby), autocommit=True) as conn:
        while time.monotonic() < deadline:
            received, replayed = conn.execute(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text"
            ).fetchone() or (None, None)
            if replayed and parse_lsn(replayed) >= target:
                return False
            if received and parse_lsn(received) >= target:
                return True
            time.sleep(0.005)
    return False


def test_a_replica_that_goes_down_is_skipped_with_one_warning(
    project: Path,
    primary: PostgresServer,
    replica: PostgresStandby,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doomed = primary.standby().start()
    site = replica_config(project, primary, ("pg_r2", doomed.url), ("pg_r1", replica.url))
    try:
        wait_replayed(replica, primary_position(primary))
        with replicas.scope():
            ports = {read()[1] for _ in range(20)}
        assert ports == {doomed.port, replica.port}  # both served, in turn
        doomed.stop()
        caplog.set_level(logging.WARNING, logger="storekeeper.replicas")
        with replicas.scope():
            served = [read() for _ in range(50)]
        assert {port for _, port, _ in served} == {replica.port}  # reads went on
        # Tried again at each read now (no wait between tries): still down, no new warning.
        monkeypatch.setattr(replicas, "RETRY_SECONDS", 0.0)
        with replicas.scope():
            assert {read()[1] for _ in range(10)} == {replica.port}
        warnings = [r for r in caplog.records if r.name == "storekeeper.replicas"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "replica pg_r2" in warnings[0].getMessage()
        assert "cannot be reached" in warnings[0].getMessage()
        assert doomed.password not in caplog.text
        shown = {r.service: r for r in replica_status(APP, "main_db")}
        assert shown["pg_r2"].describe() == "pg_r2 down" and shown["pg_r2"].problem
        assert shown["pg_r1"].state == "streaming"
    finally:
        doomed.stop()
        APP.bind(None)
        site.close()


def test_a_service_that_is_not_a_replica_of_the_primary_is_refused_at_service_test_and_sync(
    project: Path,
    primary: PostgresServer,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Another cluster, and the primary itself under another name: neither is its replica.
    replica_config(
        project, primary, ("pg_other", postgres_url), ("pg_self", primary.url), app=FRESH
    ).close()
    capsys.readouterr()
    try:
        assert main(["service", "test", "pg_other"]) == 2
        err = capsys.readouterr().err
        assert f"error: service 'pg_other' is configured as a replica of {FRESH.name}" in err
        assert "is not a replica of its primary 'pg'" in err and "system identifier" in err
        assert f"storekeeper assign {FRESH.name}.main_db pg --remove-replica pg_other" in err

        assert main(["service", "test", "pg_self"]) == 2
        err = capsys.readouterr().err
        assert "error: service 'pg_self'" in err and "it is not in recovery" in err

        # sync refuses before it makes anything: the store's database is not created.
        assert main(["sync"]) == 2
        err = capsys.readouterr().err
        assert "error: service 'pg_other' is configured as a replica of" in err
        with psycopg.connect(conninfo(primary), autocommit=True) as conn:
            made = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (f"{FRESH.name}_main_db",)
            ).fetchone()
        assert made == (0,)
        password = make_url(postgres_url).password
        assert password is None or str(password) not in err
    finally:
        FRESH.bind(None)


def test_sync_refuses_a_replica_that_is_not_postgresql_and_makes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        project, f'apps = ["test_replicas:FRESH"]\n[replicas]\n"{FRESH.name}.main_db" = ["local"]\n'
    )
    try:
        assert main(["sync"]) == 2
        err = capsys.readouterr().err
        assert f"error: service 'local' cannot be a replica of {FRESH.name}.main_db" in err
        assert "read replicas are PostgreSQL streaming replicas" in err
        assert not (project / "var" / "stores").exists()
    finally:
        FRESH.bind(None)


def test_service_test_and_status_show_a_real_replica_and_its_lag(
    project: Path,
    primary: PostgresServer,
    replica: PostgresStandby,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replica_config(project, primary, ("pg_r1", replica.url)).close()
    wait_replayed(replica, primary_position(primary))
    capsys.readouterr()
    try:
        assert main(["service", "test", "pg_r1"]) == 0
        out = capsys.readouterr().out
        assert f"ok: service 'pg_r1' is a streaming replica of 'pg' for {APP.name}.main_db" in out
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "replicas (lag)" in out.lower() and "pg_r1 0.0 s" in out
        assert main(["status", "--json"]) == 0
        (row,) = [r for r in json.loads(capsys.readouterr().out) if r["app"] == APP.name]
        (shown,) = row["replicas"]
        assert shown["service"] == "pg_r1" and shown["state"] == "streaming"
        assert shown["lag"] == 0.0 and parse_lsn(shown["replayed"]) > 0
    finally:
        APP.bind(None)


def test_a_refresh_records_the_replica_and_its_lag_for_the_admin_page(
    project: Path, primary: PostgresServer, replica: PostgresStandby, cheap_hashes: None
) -> None:
    from starlette.testclient import TestClient

    from storekeeper.admin import create_app, set_password
    from storekeeper.provision import recorded_status, status
    from test_admin import PASSWORD, log_in

    site = replica_config(project, primary, ("pg_r1", replica.url))
    wait_replayed(replica, primary_position(primary))
    set_password(site.catalog, "admin", PASSWORD)
    try:
        with TestClient(create_app(site, [APP])) as client:
            csrf = log_in(client)
            # Nothing read yet: nothing recorded about the replica, no column for it.
            assert recorded_status([APP])[0].replicas == []
            assert "replicas (lag)" not in client.get("/stores").text
            refreshed = client.post("/stores/refresh", data={"csrf": csrf})
            assert refreshed.status_code == 200
            (row,) = recorded_status([APP])
            (shown,) = row.replicas
            assert (shown.service, shown.state) == ("pg_r1", "streaming")
            assert shown.lag is not None and shown.lag >= 0
            assert parse_lsn(shown.replayed or "") > 0
            # The same shape as the live status' rows (status --recorded --json and --json).
            (live,) = status([APP])
            assert [r.keys() for r in row.as_dict()["replicas"]] == [
                r.keys() for r in live.as_dict()["replicas"]
            ]
            assert client.get("/stores.json").json()[0]["replicas"] == [shown.as_dict()]
            page = client.get("/stores").text
            assert "<th>replicas (lag)</th>" in page
            assert f'<span class="replica streaming">pg_r1 {shown.lag:.1f} s</span>' in page
            one = client.get(f"/stores/{APP.name}/main_db").text
            assert (
                '<tr class="replica streaming" data-replica="pg_r1"><td>pg_r1</td>'
                f"<td>streaming</td><td>{shown.lag:.1f} s</td>"
            ) in one
        site.close()
        # The store without its replica: after a refresh, no column and no list.
        site = replica_config(project, primary)
        with TestClient(create_app(site, [APP])) as client:
            client.post("/stores/refresh", data={"csrf": log_in(client)})
            assert recorded_status([APP])[0].replicas == []
            assert "replicas (lag)" not in client.get("/stores").text
            assert "<h2>Replicas</h2>" not in client.get(f"/stores/{APP.name}/main_db").text
    finally:
        APP.bind(None)
        site.close()


# naming replicas: the file, the command line, Python -----------------------------------

# Services that nothing here connects to: naming replicas is checked without a server.
UNREACHED_SERVICES = """
apps = ["test_replicas:APP"]
[services]
pg = "postgresql+psycopg://app:s3cret@db.example:5432"
pg_r1 = "postgresql+psycopg://app:s3cret@r1.example:5432"
pg_r2 = "postgresql+psycopg://app:s3cret@r2.example:5432"
"""


def test_assign_replica_is_kept_in_the_catalog_and_can_be_removed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(project, UNREACHED_SERVICES)
    target = f"{APP.name}.main_db"
    try:
        assert main(["assign", target, "pg", "--replica", "pg_r1", "--replica", "pg_r2"]) == 0
        out = capsys.readouterr().out
        assert f"{target} reads from replica pg_r1 (postgresql+psycopg://app:***@r1" in out
        assert "s3cret" not in out
        with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
            rows = conn.execute("SELECT app, store, service FROM storekeeper_replicas").fetchall()
        assert sorted(rows) == [(APP.name, "main_db", "pg_r1"), (APP.name, "main_db", "pg_r2")]

        # A service that a store reads from is in use.
        assert main(["service", "remove", "pg_r1"]) == 2
        assert f"service 'pg_r1' is still used by {target}" in capsys.readouterr().err

        assert main(["assign", target, "pg", "--remove-replica", "pg_r1"]) == 0
        assert f"{target} no longer reads from replica pg_r1" in capsys.readouterr().out
        site = Site.load()
        try:
            assert site.replicas(APP.name, "main_db") == [Sourced("pg_r2", "catalog")]
        finally:
            site.close()
    finally:
        APP.bind(None)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["pg", "--replica", "pg_nope"], "unknown service 'pg_nope'"),
        (["pg", "--replica", "local"], "it is sqlite, and read replicas are PostgreSQL"),
        (["pg", "--replica", "pg"], "service 'pg' is the primary of"),
        (["local", "--replica", "pg_r1"], "service 'local' is sqlite: read replicas are"),
        (["pg", "--remove-replica", "pg_r1"], "is not a replica of"),
        (["pg", "--replica", "pg_r1", "--remove-replica", "pg_r1"], "both name pg_r1"),
    ],
)
def test_assign_refuses_a_bad_replica_and_changes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    write_config(project, UNREACHED_SERVICES)
    try:
        assert main(["assign", f"{APP.name}.main_db", *arguments]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
        site = Site.load()
        try:
            assert site.assignments() == {}
            assert site.replicas(APP.name, "main_db") == []
        finally:
            site.close()
    finally:
        APP.bind(None)


def test_config_show_lists_the_replicas_and_where_they_come_from(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        project,
        "max_replica_lag = 2\n"
        + UNREACHED_SERVICES
        + f'[replicas]\n"{APP.name}.main_db" = ["pg_r1"]\n',
    )
    try:
        assert main(["assign", f"{APP.name}.main_db", "pg", "--replica", "pg_r2"]) == 0
        capsys.readouterr()
        assert main(["config", "show"]) == 0
        out = capsys.readouterr().out
        assert "replicas (max lag 2 s   [storekeeper.toml]):" in out
        assert f"{APP.name}.main_db reads from pg_r1   [storekeeper.toml]" in out
        assert f"{APP.name}.main_db reads from pg_r2   [catalog]" in out
        assert main(["config", "show", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["max_replica_lag"] == {"value": 2.0, "source": "storekeeper.toml"}
        assert shown["replicas"] == {
            f"{APP.name}.main_db": [
                {"service": "pg_r1", "source": "storekeeper.toml"},
                {"service": "pg_r2", "source": "catalog"},
            ]
        }
    finally:
        APP.bind(None)


def test_a_replica_from_the_file_is_removed_there_not_from_the_command_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        project,
        f"""
        apps = ["test_replicas:APP"]
        [services]
        pg = "postgresql+psycopg://app@db.example:5432"
        pg_r1 = "postgresql+psycopg://app@r1.example:5432"
        [replicas]
        "{APP.name}.main_db" = ["pg_r1"]
        """,
    )
    try:
        assert main(["assign", f"{APP.name}.main_db", "pg", "--remove-replica", "pg_r1"]) == 2
        assert "comes from storekeeper.toml, not the catalog" in capsys.readouterr().err
    finally:
        APP.bind(None)


def test_replicas_in_python_merge_with_the_files(project: Path) -> None:
    write_config(
        project,
        """
        [services]
        pg = "postgresql+psycopg://app@db.example:5432"
        pg_r1 = "postgresql+psycopg://app@r1.example:5432"
        pg_r2 = "postgresql+psycopg://app@r2.example:5432"
        [assign]
        "my_app.example_db" = "pg"
        [replicas]
        "my_app.example_db" = ["pg_r1"]
        """,
    )
    site = Site.load()
    try:
        site.add_replica("my_app", "example_db", "pg_r2")
        site.add_replica("my_app", "example_db", "pg_r1")  # already there: kept once
        assert site.replicas("my_app", "example_db") == [
            Sourced("pg_r1", "storekeeper.toml"),
            Sourced("pg_r2", "catalog"),
        ]
        site.remove_replica("my_app", "example_db", "pg_r2")
        with pytest.raises(NotFound, match="its replicas: pg_r1"):
            site.remove_replica("my_app", "example_db", "pg_r2")
        with pytest.raises(BadInput, match=r"is the primary of my_app\.example_db"):
            site.add_replica("my_app", "example_db", "pg")
    finally:
        site.close()


@pytest.mark.parametrize(
    ("toml", "error", "message"),
    [
        ('[replicas]\n"my_app.db" = 3', ConfigError, 'replicas."my_app.db" must be a list'),
        ('[replicas]\n"my_app" = ["pg"]', InvalidName, "replicas key 'my_app'"),
        ('[replicas]\n"my_app.db" = ["pg r1"]', InvalidName, "pg r1"),
        ('replicas = ["pg"]', ConfigError, "'replicas' must be a table"),
        ('max_replica_lag = "soon"', ConfigError, "max_replica_lag: 'soon' is not a number"),
        ("max_replica_lag = -1", ConfigError, "max_replica_lag: -1 is not a number"),
    ],
)
def test_bad_replica_configuration_is_named(
    project: Path, toml: str, error: type[Exception], message: str
) -> None:
    write_config(project, toml + "\n")
    with pytest.raises(error) as info:
        Site.load()
    assert message in str(info.value)
    assert "storekeeper.toml" in str(info.value)


def test_max_replica_lag_from_the_file_its_overlay_and_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Site.load().config.max_replica_lag == Sourced("5", "built-in")
    write_config(project, "max_replica_lag = 2.5\n[env.test]\nmax_replica_lag = 1\n")
    assert Site.load(env=None).config.max_replica_lag_seconds == 2.5
    assert Site.load().config.max_replica_lag == Sourced("1", "storekeeper.toml [env.test]")
    monkeypatch.setenv("STOREKEEPER_MAX_REPLICA_LAG", "0.25")
    assert Site.load().config.max_replica_lag_seconds == 0.25


def test_a_version_1_catalog_is_upgraded_with_the_replicas_table(project: Path) -> None:
    site = Site.load()
    site.add_service("pg", "postgresql+psycopg://app@db.example:5432")
    site.close()
    path = project / "var" / "catalog.sqlite"
    with sqlite3.connect(path) as conn:  # as version 1 left it
        conn.execute("DROP TABLE storekeeper_replicas")
        conn.execute("UPDATE storekeeper_meta SET value = '1' WHERE key = 'schema_version'")
    site = Site.load()
    try:
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
        assert "pg" in site.catalog.services()
        assert site.catalog.replicas() == {}
        site.catalog.add_replica("my_app", "example_db", "pg")
        assert site.catalog.replicas() == {("my_app", "example_db"): ["pg"]}
    finally:
        site.close()


# tokens ----------------------------------------------------------------------------------


def test_a_token_goes_to_a_string_and_back() -> None:
    token = Token({("my_app", "example_db"): parse_lsn("16/B374D848"), ("my_app", "b"): 5})
    text_form = str(token)
    assert text_form == "my_app.b:0/5~my_app.example_db:16/B374D848"
    assert Token.parse(text_form) == token
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    later = Token({("my_app", "b"): 9})
    assert token.merge(later).position("my_app", "b") == 9
    assert Token.parse(None) == Token.parse("") == Token()
    assert not Token()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("garbage", "is not a replica token"),
        ("my_app.db:zz/1", "is not a WAL position"),
        ("my_app.db:1", "is not a WAL position"),
        ("my app.db:0/1", "app name"),
    ],
)
def test_a_malformed_token_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(BadInput, match=message), replicas.scope(value):
        pass


def test_without_replicas_a_read_session_reads_the_store_itself(project: Path) -> None:
    app = App("plain_app", stores=[Store("main_db", metadata=Base.metadata)])
    site = Site.load()
    app.bind(site)
    try:
        app.sync()
        with replicas.scope() as unit:
            with app.session("main_db") as session:
                session.add(Counter(id=1, value=4))
            with app.session("main_db", readonly=True) as session:
                assert session.get_one(Counter, 1).value == 4
                assert session.info[SERVED_BY] == "primary"
            assert not unit.token  # no replicas: nothing to wait for
    finally:
        site.close()
