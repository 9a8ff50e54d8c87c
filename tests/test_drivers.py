"""The drivers' contract, one suite run five times: ReadDriver/WriteDriver on a real
PostgreSQL (through COPY for add_many) and on SQLite, their async twins (AsyncReadDriver/
AsyncWriteDriver on psycopg's async mode and aiosqlite, called through a small adapter), and
the in-memory fakes of storekeeper.testing.fakes. A controller unit-tested with the fakes
behaves the same on the database, sync or async."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import String, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_session, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from conftest import write_config
from storekeeper import App, BadInput, NotFound, Store, errors
from storekeeper.backends.sqlite import take_over_transactions
from storekeeper.drivers import MultipleFound, ReadDriver, WriteDriver
from storekeeper.drivers_async import AsyncReadDriver, AsyncWriteDriver
from storekeeper.site import Site
from storekeeper.testing.fakes import fake_drivers


class Base(DeclarativeBase):
    pass


class Gage(Base):
    __tablename__ = "drivers_gages"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    depth: Mapped[float | None]
    kind: Mapped[str] = mapped_column(String(20), default="river")
    status: Mapped[str] = mapped_column(String(20), server_default="active")
    code: Mapped[str | None] = mapped_column(String(20), unique=True)


class GageReader(ReadDriver[Gage]):
    pass


class GageWriter(WriteDriver[Gage]):
    model = Gage


class AsyncGageReader(AsyncReadDriver[Gage]):
    pass


class AsyncGageWriter(AsyncWriteDriver[Gage]):
    model = Gage


COLUMNS = "id, name, depth, kind, status, code"
SEED: list[dict[str, Any]] = [
    {"name": "Provo", "depth": 3.5, "code": "PRV"},
    {"name": "provo river", "depth": None, "kind": "canal", "code": "PRR"},
    {"name": "Weber", "depth": 1.0, "code": "WEB"},
    {"name": "Ogden_50%", "depth": 7.25, "kind": "canal", "code": "OGD"},
    {"name": "OgdenX5", "depth": 2.0, "code": "OGX"},
]
KEY = b"a key of the test's own, 32 byte"


@dataclass
class Drivers:
    backend: str
    read: Any  # GageReader or FakeReadDriver[Gage]
    write: Any
    session: Session | None = None

    def names(self, found: list[Gage]) -> list[str]:
        return sorted(g.name for g in found)


@pytest.fixture(scope="module")
def postgresql_engine(postgres_url: str) -> Iterator[sa.Engine]:
    name = f"drivers_{uuid.uuid4().hex[:10]}"
    server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(postgres_url).set(database=name))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()
    with server.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    server.dispose()


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("drivers") / "gages.sqlite"
    engine = take_over_transactions(create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


class Blocking:
    """An async driver called from sync test code: each coroutine method is run to its end
    on the test's event loop; an async iterator is read one item per step of the loop."""

    def __init__(self, driver: Any, runner: asyncio.Runner) -> None:
        self._driver, self._runner = driver, runner

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._driver, name)
        if inspect.iscoroutinefunction(method):
            return lambda *a, **kw: self._runner.run(method(*a, **kw))
        if not callable(method):
            return method

        def call(*a: Any, **kw: Any) -> Any:
            out = method(*a, **kw)
            return _pull(out, self._runner) if hasattr(out, "__anext__") else out

        return call


def _pull(items: AsyncIterator[Any], runner: asyncio.Runner) -> Iterator[Any]:
    async def step() -> tuple[bool, Any]:
        try:
            return True, await items.__anext__()
        except StopAsyncIteration:
            return False, None

    async def close() -> None:
        await items.aclose()  # type: ignore[attr-defined]

    try:
        while True:
            more, item = runner.run(step())
            if not more:
                return
            yield item
    finally:
        runner.run(close())


def async_twin_url(engine: sa.Engine) -> sa.URL:
    """``engine``'s database through psycopg's async mode or aiosqlite."""
    url = engine.url
    sqlite = url.get_backend_name() == "sqlite"
    return url.set(drivername="sqlite+aiosqlite" if sqlite else url.drivername)


@pytest.fixture(params=["postgresql", "sqlite", "fake", "postgresql-async", "sqlite-async"])
def drivers(request: pytest.FixtureRequest) -> Iterator[Drivers]:
    """A reader and a writer of Gage seeded with SEED; what a test writes is rolled back."""
    if request.param == "fake":
        read, write = fake_drivers(Gage)
        write.add_many(SEED)
        yield Drivers("fake", read, write)
        return
    backend, _, mode = request.param.partition("-")
    engine: sa.Engine = request.getfixturevalue(f"{backend}_engine")
    if mode == "async":
        yield from async_drivers(engine, request.param)
        return
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        writer = GageWriter(session)
        writer.add_many(SEED)
        reader = GageReader(session, cursor_key=KEY)
        yield Drivers(request.param, reader, writer, session)
        session.close()
        outer.rollback()


def async_drivers(engine: sa.Engine, name: str) -> Iterator[Drivers]:
    """The async twins on an AsyncSession in a transaction rolled back after the test, on
    one event loop per test."""
    with asyncio.Runner() as runner:
        async_engine = create_async_engine(async_twin_url(engine))
        if engine.dialect.name == "sqlite":
            take_over_transactions(async_engine.sync_engine)

        async def begin() -> AsyncSession:
            connection = await async_engine.connect()
            await connection.begin()
            return AsyncSession(bind=connection, join_transaction_mode="create_savepoint")

        session = runner.run(begin())
        writer = AsyncGageWriter(session)
        runner.run(writer.add_many(SEED))
        read = Blocking(AsyncGageReader(session, cursor_key=KEY), runner)
        yield Drivers(name, read, Blocking(writer, runner), session.sync_session)

        async def end() -> None:
            connection = session.bind
            await session.close()
            await connection.rollback()  # type: ignore[union-attr]
            await connection.close()  # type: ignore[union-attr]
            await async_engine.dispose()

        runner.run(end())


def ids(d: Drivers, *names: str) -> list[int]:
    by_name = {g.name: g.id for g in d.read.find()}
    return [by_name[n] for n in names]


def test_a_driver_names_its_model_either_way() -> None:
    assert GageReader.model is Gage and GageWriter.model is Gage


def test_a_driver_without_a_model_says_how_to_name_one(sqlite_engine: sa.Engine) -> None:
    class Nameless(ReadDriver[Any]):
        pass

    with (
        Session(sqlite_engine) as session,
        pytest.raises(BadInput, match=r"Nameless names no model: declare it as"),
    ):
        Nameless(session)


def test_get_and_get_or_raise(drivers: Drivers) -> None:
    (weber,) = ids(drivers, "Weber")
    assert drivers.read.get(weber).name == "Weber"
    assert drivers.read.get(10**9) is None
    assert drivers.read.get_or_raise(weber).depth == 1.0
    with pytest.raises(NotFound, match=r"no Gage with id 1000000000"):
        drivers.read.get_or_raise(10**9)


def test_get_many_in_one_query_in_the_order_given(drivers: Drivers) -> None:
    a, b, c = ids(drivers, "Weber", "Provo", "OgdenX5")
    statements: list[str] = []
    if drivers.session is not None:
        connection = drivers.session.connection()
        event.listen(connection, "before_cursor_execute", lambda *a: statements.append(a[2]))
    found = drivers.read.get_many([c, 10**9, a, b])
    assert [g.name for g in found] == ["OgdenX5", "Weber", "Provo"]
    if drivers.session is not None:
        assert len(statements) == 1
    assert drivers.read.get_many([]) == []


LOOKUP_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"name": "Weber"}, ["Weber"]),
    ({"depth": None}, ["provo river"]),
    ({"name__in": ["Weber", "Provo", "Nope"]}, ["Provo", "Weber"]),
    ({"name__not_in": ["Weber", "Provo"]}, ["Ogden_50%", "OgdenX5", "provo river"]),
    ({"depth__not_in": [1.0]}, ["Ogden_50%", "OgdenX5", "Provo"]),  # NULL is not "not in"
    ({"depth__isnull": True}, ["provo river"]),
    ({"depth__isnull": False}, ["Ogden_50%", "OgdenX5", "Provo", "Weber"]),
    ({"depth__gt": 3.5}, ["Ogden_50%"]),
    ({"depth__gte": 3.5}, ["Ogden_50%", "Provo"]),
    ({"depth__lt": 2.0}, ["Weber"]),
    ({"depth__lte": 2.0}, ["OgdenX5", "Weber"]),
    ({"depth__between": (1.0, 3.5)}, ["OgdenX5", "Provo", "Weber"]),
    ({"name__like": "Pro%"}, ["Provo"]),  # case-sensitive on every backend
    ({"name__like": "Ogden_5%"}, ["Ogden_50%", "OgdenX5"]),  # _ is any one character
    ({"name__ilike": "pro%"}, ["Provo", "provo river"]),
    ({"name__startswith": "Ogden_"}, ["Ogden_50%"]),  # the text, not a pattern
    ({"name__startswith": "pro"}, ["provo river"]),
    ({"name__contains": "50%"}, ["Ogden_50%"]),
    ({"name__contains": "rov"}, ["Provo", "provo river"]),
    ({"kind": "canal", "depth__isnull": True}, ["provo river"]),
]


@pytest.mark.parametrize(("filters", "expected"), LOOKUP_CASES, ids=lambda v: str(v))
def test_find_with_each_lookup(
    drivers: Drivers, filters: dict[str, Any], expected: list[str]
) -> None:
    assert drivers.names(drivers.read.find(**filters)) == sorted(expected)
    assert drivers.read.count(**filters) == len(expected)
    assert drivers.read.exists(**filters) is bool(expected)


def test_sqlalchemy_expressions_as_positional_filters(drivers: Drivers) -> None:
    found = drivers.read.find(Gage.depth > 3, kind="river")
    assert drivers.names(found) == ["Provo"]
    assert drivers.read.count(Gage.depth <= 2.0) == 2
    assert not drivers.read.exists(Gage.name == "Nope")


def test_first_and_one(drivers: Drivers) -> None:
    assert drivers.read.first(kind="canal").name == "provo river"  # by primary key
    assert drivers.read.first(kind="canal", order_by="-id").name == "Ogden_50%"
    assert drivers.read.first(name="Nope") is None
    assert drivers.read.one(name__startswith="W").name == "Weber"
    with pytest.raises(NotFound, match=r"no Gage matches name='Nope'"):
        drivers.read.one(name="Nope")
    with pytest.raises(MultipleFound, match=r"more than one Gage matches kind='canal'"):
        drivers.read.one(kind="canal")


def test_list_orders_limits_and_offsets(drivers: Drivers) -> None:
    every = [g.name for g in drivers.read.list()]
    assert every == [row["name"] for row in SEED]  # by primary key
    by_kind = [g.name for g in drivers.read.list(order_by=["kind", "-id"])]
    assert by_kind == ["Ogden_50%", "provo river", "OgdenX5", "Weber", "Provo"]
    assert [g.name for g in drivers.read.list(limit=2, offset=1)] == ["provo river", "Weber"]


def test_page_gives_items_total_and_pages(drivers: Drivers) -> None:
    page = drivers.read.page(2, 2)
    assert [g.name for g in page.items] == ["Weber", "Ogden_50%"]
    assert (page.total, page.pages, page.has_next) == (5, 3, True)
    canals = drivers.read.page(1, 10, kind="canal")
    assert (len(canals.items), canals.total, canals.pages) == (2, 2, 1)
    with pytest.raises(BadInput, match="page number must be a whole number of at least 1"):
        drivers.read.page(0, 10)


def test_rows_are_plain_dicts(drivers: Drivers) -> None:
    rows = drivers.read.rows(kind="canal", order_by="-id")
    assert [type(r) for r in rows] == [dict, dict]
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows] == [
        {"name": "Ogden_50%", "depth": 7.25, "kind": "canal", "status": "active", "code": "OGD"},
        {"name": "provo river", "depth": None, "kind": "canal", "status": "active", "code": "PRR"},
    ]
    assert list(rows[0]) == COLUMNS.split(", ")
    assert [r["name"] for r in drivers.read.rows(limit=1, offset=2)] == ["Weber"]


def test_an_unknown_column_or_lookup_is_named_with_the_models_columns(drivers: Drivers) -> None:
    with pytest.raises(
        BadInput, match=rf"Gage has no column 'nope' \(in filter\); its columns: {COLUMNS}"
    ):
        drivers.read.find(nope=1)
    with pytest.raises(BadInput, match=rf"unknown lookup 'near' in 'depth__near'.*{COLUMNS}"):
        drivers.read.count(depth__near=1)
    with pytest.raises(BadInput, match=r"Gage has no column 'deep' \(in filter\); its columns"):
        drivers.read.exists(deep__gt=1)
    with pytest.raises(
        BadInput, match=rf"no column 'nope' \(in order_by\); its columns: {COLUMNS}"
    ):
        drivers.read.list(order_by="-nope")
    with pytest.raises(BadInput, match=r"no column 'nope' \(in update\)"):
        drivers.write.update(ids(drivers, "Weber")[0], nope=1)


def test_add_fills_the_key_and_defaults(drivers: Drivers) -> None:
    gage = drivers.write.add({"name": "Jordan", "depth": 4.0})
    assert isinstance(gage.id, int)
    assert (gage.kind, gage.status) == ("river", "active")
    other = drivers.write.add(Gage(name="Bear", kind="canal"))
    assert drivers.read.get_or_raise(other.id).kind == "canal"
    assert drivers.read.count() == 7


def test_add_many_takes_dicts_or_instances_and_the_server_fills_the_rest(
    drivers: Drivers,
) -> None:
    assert drivers.write.add_many([{"name": f"bulk {i}", "depth": i} for i in range(50)]) is None
    assert drivers.write.add_many([Gage(name="inst 1"), Gage(name="inst 2")]) is None
    rows = drivers.read.rows(name__startswith="bulk ")
    assert len(rows) == 50
    assert {(r["kind"], r["status"]) for r in rows} == {("river", "active")}
    assert len({r["id"] for r in rows}) == 50
    assert drivers.read.count(name__startswith="inst ") == 2
    added = drivers.write.add_many([{"name": "ret"}], returning=True)
    assert [(g.name, g.kind) for g in added] == [("ret", "river")]
    assert drivers.write.add_many([]) is None


def test_a_bad_row_in_add_many_writes_nothing_and_names_the_row(drivers: Drivers) -> None:
    batch = [{"name": "good 0"}, {"name": "good 1"}, {"name": None}]
    with pytest.raises(BadInput, match=r"row 2: NULL in Gage\.name \(NOT NULL\)"):
        drivers.write.add_many(batch)
    with pytest.raises(BadInput, match=r"row 1: no value for Gage\.name"):
        drivers.write.add_many([{"name": "good 0"}, {"depth": 1.0}])
    with pytest.raises(BadInput, match=r"row 1: Gage has no column 'nope'"):
        drivers.write.add_many([{"name": "good 0"}, {"name": "x", "nope": 1}])
    assert drivers.read.count() == len(SEED)
    assert not drivers.read.exists(name__startswith="good")


# Only PostgreSQL: SQLite and the fakes take any value in a REAL column.
@pytest.mark.parametrize("drivers", ["postgresql", "postgresql-async"], indirect=True)
def test_a_row_postgresql_refuses_in_copy_is_named_and_nothing_is_written(
    drivers: Drivers,
) -> None:
    with pytest.raises(BadInput, match=r"row 2, column depth: .*double precision"):
        drivers.write.add_many(
            [{"name": "a", "depth": 1}, {"name": "b", "depth": 2}, {"name": "c", "depth": "deep"}]
        )
    assert drivers.read.count() == len(SEED)  # and the session goes on


def test_update(drivers: Drivers) -> None:
    (weber,) = ids(drivers, "Weber")
    assert drivers.write.update(weber, depth=9.5, kind="canal").depth == 9.5
    assert drivers.read.get_or_raise(weber).kind == "canal"
    assert drivers.read.count(kind="canal") == 3
    with pytest.raises(NotFound, match=r"no Gage with id 1000000000"):
        drivers.write.update(10**9, depth=1.0)
    with pytest.raises(BadInput, match=r"NULL in Gage\.name \(NOT NULL\)"):
        drivers.write.update(weber, name=None)
    assert drivers.read.get_or_raise(weber).name == "Weber"


def test_delete_delete_many_and_delete_where(drivers: Drivers) -> None:
    provo, weber, ogden = ids(drivers, "Provo", "Weber", "OgdenX5")
    drivers.write.delete(provo)
    assert drivers.read.get(provo) is None
    with pytest.raises(NotFound, match=r"no Gage with id"):
        drivers.write.delete(provo)
    assert drivers.write.delete_many([weber, ogden, 10**9]) == 2
    assert drivers.write.delete_many([]) == 0
    assert drivers.write.delete_where(kind="canal", depth__isnull=False) == 1
    assert [g.name for g in drivers.read.list()] == ["provo river"]
    with pytest.raises(BadInput, match=r"delete_where needs a filter"):
        drivers.write.delete_where()
    assert drivers.write.delete_where(sa.true()) == 1
    assert drivers.read.count() == 0


@pytest.fixture
def gages_app(project: Path) -> Iterator[App]:
    """An app with store gages_db (Gage's table) on SQLite files, synced."""
    write_config(project, 'default_service = "main"\n[services]\nmain = "sqlite:///stores"\n')
    site = Site.load()
    app = App(f"d{uuid.uuid4().hex[:8]}", stores=[Store("gages_db", metadata=Base.metadata)])
    app.bind(site)
    try:
        app.sync()
        yield app
    finally:
        site.close()


def test_of_opens_and_ends_its_own_unit_of_work(gages_app: App) -> None:
    app = gages_app
    with GageWriter.of(app, "gages_db") as gages:
        gages.add_many(SEED)
    with pytest.raises(RuntimeError), GageWriter.of(app, "gages_db") as gages:
        gages.delete_where(kind="canal")
        raise RuntimeError("rolled back")
    with GageReader.of(app, "gages_db") as reader:
        assert reader.count() == len(SEED)
        assert reader.session.in_transaction()
    assert not reader.session.in_transaction()


# bulk writes, upserts, update_many --------------------------------------------------------

BIG = 250  # over bulk.COPY_MIN_ROWS: COPY on PostgreSQL


def statements(d: Drivers) -> list[str]:
    """The SQL statements the session runs from now on (not a COPY's rows: those go around
    SQLAlchemy's cursor)."""
    seen: list[str] = []
    if d.session is not None:
        event.listen(d.session.connection(), "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_big_add_many_is_one_copy_and_the_server_fills_the_rest(drivers: Drivers) -> None:
    seen = statements(drivers)
    batch: list[Any] = [{"name": f"bulk {i}", "depth": i / 4} for i in range(BIG)]
    batch[7] = Gage(name="bulk 7", depth=1.75)  # instances and dicts in one batch
    assert drivers.write.add_many(batch) is None
    rows = drivers.read.rows(name__startswith="bulk ", order_by="id")
    assert [r["name"] for r in rows] == [f"bulk {i}" for i in range(BIG)]
    assert rows[9]["depth"] == 2.25
    assert {(r["kind"], r["status"]) for r in rows} == {("river", "active")}  # Python, server
    assert len({r["id"] for r in rows}) == BIG  # identity filled by the server
    if drivers.backend == "postgresql":
        assert any(s.startswith("COPY") for s in seen) is False  # COPY is not a statement
        assert not [s for s in seen if s.startswith("INSERT")]  # ... nor did it INSERT


def test_a_small_add_many_is_one_insert_of_many_rows(drivers: Drivers) -> None:
    seen = statements(drivers)
    drivers.write.add_many([{"name": f"small {i}"} for i in range(20)])
    assert drivers.read.count(name__startswith="small ") == 20
    if drivers.session is not None:
        (insert,) = [s for s in seen if s.startswith("INSERT")]
        if drivers.backend == "postgresql":  # insertmanyvalues: one VALUES list of 20 rows
            assert insert.count("), (") == 19


def test_a_bad_row_in_a_big_batch_names_its_index_and_column(drivers: Drivers) -> None:
    (weber,) = ids(drivers, "Weber")
    batch: list[dict[str, Any]] = [{"name": f"b{i}", "code": f"c{i}"} for i in range(BIG)]
    batch[180] = {"name": "again", "code": "WEB"}  # Weber's code: a duplicate key
    duplicate = r"(duplicate key|UNIQUE constraint failed)"
    with pytest.raises(BadInput, match=rf"Gage: row 180, column code: {duplicate}"):
        drivers.write.add_many(batch)
    batch[180] = {"name": "twin", "code": "c3"}  # a duplicate within the batch
    with pytest.raises(BadInput, match=rf"row 180, column code: {duplicate}"):
        drivers.write.add_many(batch)
    batch[180] = {"name": "same id", "code": "c180", "id": weber}
    with pytest.raises(BadInput, match=rf"row 180, column id: {duplicate}.*nothing was written"):
        drivers.write.add_many(batch)
    assert drivers.read.count() == len(SEED)
    assert drivers.read.get_or_raise(weber).name == "Weber"


@pytest.mark.parametrize("drivers", ["postgresql"], indirect=True)
def test_a_value_of_the_wrong_type_in_a_copy_is_named_by_row_and_column(
    drivers: Drivers,
) -> None:
    batch: list[dict[str, Any]] = [{"name": f"t{i}", "depth": float(i)} for i in range(BIG)]
    batch[150] = {"name": "t150", "depth": "deep"}
    with pytest.raises(BadInput, match=r"row 150, column depth: .*double precision.*\"deep\""):
        drivers.write.add_many(batch)
    batch[150] = {"name": "x" * 60, "depth": 1.0}  # too long for String(50)
    with pytest.raises(BadInput, match=r"row 150, column name: value too long"):
        drivers.write.add_many(batch)
    assert drivers.read.count() == len(SEED)
    # what binary COPY cannot write, text COPY can: the server parses it as INSERT would
    batch[150] = {"name": "t150", "depth": "2.5"}
    drivers.write.add_many(batch)
    assert drivers.read.one(name="t150").depth == 2.5


def test_upsert_adds_or_updates_by_a_unique_column(drivers: Drivers) -> None:
    (weber,) = ids(drivers, "Weber")
    updated = drivers.write.upsert({"code": "WEB", "name": "Weber", "depth": 4.5}, on="code")
    assert (updated.id, updated.name, updated.depth) == (weber, "Weber", 4.5)
    assert drivers.read.get_or_raise(weber).depth == 4.5
    added = drivers.write.upsert({"code": "NEW", "name": "Bear"}, on="code")
    assert (added.name, added.kind, added.status) == ("Bear", "river", "active")
    assert drivers.read.count() == len(SEED) + 1
    by_key = drivers.write.upsert({"id": weber, "name": "Weber River"})  # on the primary key
    assert by_key.id == weber and drivers.read.get_or_raise(weber).name == "Weber River"


@pytest.mark.parametrize("size", [6, BIG])  # insertmanyvalues; COPY to a staging table
def test_upsert_many_half_existing(drivers: Drivers, size: int) -> None:
    half = size // 2
    drivers.write.add_many(
        [{"name": f"u{i}", "code": f"u{i}", "kind": "canal"} for i in range(half)]
    )
    seen = statements(drivers)
    rows = [{"name": f"U{i}", "code": f"u{i}", "depth": float(i)} for i in range(size)]
    assert drivers.write.upsert_many(rows, on="code") is None
    found = drivers.read.rows(code__startswith="u", order_by="id")
    assert [(r["name"], r["depth"]) for r in found] == [(f"U{i}", float(i)) for i in range(size)]
    # given columns are set; the others kept (updated rows) or defaulted (new ones)
    assert {r["kind"] for r in found[:half]} == {"canal"}
    assert {r["kind"] for r in found[half:]} == {"river"}
    if drivers.backend == "postgresql" and size == BIG:
        assert any("FROM storekeeper_stage_" in s for s in seen)
    written = drivers.write.upsert_many(rows[:3], on="code", returning=True)
    assert [g.code for g in written] == ["u0", "u1", "u2"]


def test_of_rows_with_the_same_key_the_last_wins(drivers: Drivers) -> None:
    rows = [
        {"code": "Z", "name": "first"},
        {"code": "Y", "name": "y"},
        {"code": "Z", "name": "last"},
    ]
    drivers.write.upsert_many(rows, on="code")
    assert drivers.read.one(code="Z").name == "last"
    assert drivers.read.count(code__in=["Y", "Z"]) == 2


def test_upsert_on_columns_without_a_unique_constraint_is_refused(drivers: Drivers) -> None:
    unique = r"Gage's unique columns: \(id\); \(code\)"
    with pytest.raises(BadInput, match=rf"upsert on=\(name\) names no unique constraint.*{unique}"):
        drivers.write.upsert_many([{"name": "Weber", "depth": 1.0}], on="name")
    with pytest.raises(BadInput, match=r"upsert on=\(code, name\) names no unique constraint"):
        drivers.write.upsert({"name": "Weber", "code": "WEB"}, on=["code", "name"])
    with pytest.raises(BadInput, match=r"no column 'nope' \(in upsert on=\)"):
        drivers.write.upsert({"name": "Weber"}, on="nope")
    with pytest.raises(BadInput, match=r"row 1: upsert matches rows by code: give Gage\.code"):
        drivers.write.upsert_many([{"name": "a", "code": "A"}, {"name": "b"}], on="code")
    assert drivers.read.count() == len(SEED)


def test_a_bad_row_in_upsert_many_names_its_index_and_writes_nothing(drivers: Drivers) -> None:
    (provo,) = ids(drivers, "Provo")
    rows: list[dict[str, Any]] = [{"name": f"v{i}", "code": f"v{i}"} for i in range(BIG)]
    rows[120] = {"name": "v120", "code": "v120", "id": provo}  # Provo's id, another code
    duplicate = r"(duplicate key|UNIQUE constraint failed)"
    with pytest.raises(BadInput, match=rf"row 120, column id: {duplicate}"):
        drivers.write.upsert_many(rows, on="code")
    with pytest.raises(BadInput, match=r"row 3: NULL in Gage\.name \(NOT NULL\)"):
        drivers.write.upsert_many([*rows[:3], {"name": None, "code": "v3"}], on="code")
    assert drivers.read.count() == len(SEED)
    assert drivers.read.get_or_raise(provo).code == "PRV"


def test_update_many_by_id_or_where(drivers: Drivers) -> None:
    provo, weber = ids(drivers, "Provo", "Weber")
    assert drivers.read.get_or_raise(weber).depth == 1.0  # loaded before: must not go stale
    changes = {weber: {"depth": 9.0}, provo: {"depth": 8.0, "kind": "canal"}, 10**9: {"depth": 0}}
    assert drivers.write.update_many(changes) == 2
    assert drivers.read.get_or_raise(weber).depth == 9.0
    assert drivers.read.get_or_raise(provo).kind == "canal"
    assert drivers.write.update_many(where={"kind": "canal"}, status="closed") == 3
    assert drivers.write.update_many(where=Gage.depth > 8.5, kind="deep") == 1
    assert drivers.read.get_or_raise(weber).kind == "deep"
    assert drivers.read.count(status="closed") == 3
    assert drivers.write.update_many({}) == 0


def test_update_many_refuses_what_it_cannot_do(drivers: Drivers) -> None:
    provo, weber = ids(drivers, "Provo", "Weber")
    with pytest.raises(BadInput, match=r"update_many needs values by id .* or where="):
        drivers.write.update_many(depth=1.0)
    with pytest.raises(BadInput, match=r"not both"):
        drivers.write.update_many({weber: {"depth": 1.0}}, where={"kind": "canal"})
    with pytest.raises(BadInput, match=r"needs the values to set"):
        drivers.write.update_many(where={"kind": "canal"})
    with pytest.raises(BadInput, match=r"no column 'nope' \(in update\)"):
        drivers.write.update_many({weber: {"nope": 1}})
    with pytest.raises(BadInput, match=r"no column 'nope' \(in filter\)"):
        drivers.write.update_many(where={"nope": 1}, depth=1.0)
    duplicate = r"(duplicate key|UNIQUE constraint failed)"
    with pytest.raises(BadInput, match=rf"row 1 \(id {weber}\), column code: {duplicate}"):
        drivers.write.update_many({provo: {"depth": 0.5}, weber: {"code": "PRV"}})
    assert drivers.read.get_or_raise(provo).depth == 3.5  # nothing was written
    assert drivers.read.get_or_raise(weber).code == "WEB"


# keyset pagination and streaming ----------------------------------------------------------


def every_page(d: Drivers, size: int, **query: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = d.read.after(cursor, size, **query)
        pages.append([g.name for g in page.items])
        if page.next_cursor is None:
            return pages
        assert page.has_next
        cursor = page.next_cursor


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["Provo", "provo river", "Weber", "Ogden_50%", "OgdenX5"]),
        # NULLs last ascending, first descending, on every backend
        ({"order_by": "depth"}, ["Weber", "OgdenX5", "Provo", "Ogden_50%", "provo river"]),
        ({"order_by": "-depth"}, ["provo river", "Ogden_50%", "Provo", "OgdenX5", "Weber"]),
        ({"order_by": ["kind", "-id"]}, ["Ogden_50%", "provo river", "OgdenX5", "Weber", "Provo"]),
        ({"kind": "river", "order_by": "-name"}, ["Weber", "Provo", "OgdenX5"]),
    ],
    ids=["by-id", "depth", "-depth", "kind,-id", "filtered"],
)
def test_after_walks_every_row_once_in_order(
    drivers: Drivers, query: dict[str, Any], expected: list[str]
) -> None:
    pages = every_page(drivers, 2, **query)
    assert [name for page in pages for name in page] == expected
    assert [len(p) for p in pages[:-1]] == [2] * (len(pages) - 1)
    assert every_page(drivers, 10, **query) == [expected]


def test_after_with_rows_sharing_a_sort_value_keeps_each_once(drivers: Drivers) -> None:
    drivers.write.add_many([{"name": f"same {i}", "depth": 5.0} for i in range(7)])
    names = [n for page in every_page(drivers, 3, order_by="depth") for n in page]
    assert names == [
        "Weber",
        "OgdenX5",
        "Provo",
        *[f"same {i}" for i in range(7)],
        "Ogden_50%",
        "provo river",
    ]


def test_a_cursor_tampered_with_or_from_another_query_is_refused(drivers: Drivers) -> None:
    cursor = drivers.read.after(None, 2, order_by="-depth").next_cursor
    assert cursor is not None and "Ogden" not in cursor
    drivers.read.after(cursor, 2, order_by="-depth")  # its own query takes it
    payload, signature = cursor.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    for bad in (forged, cursor[:-3], "not a cursor", cursor + "x"):
        with pytest.raises(errors.BadCursor, match=r"was not made by this site"):
            drivers.read.after(bad, 2, order_by="-depth")
    for other in ({"order_by": "depth"}, {"order_by": "-depth", "kind": "canal"}, {}):
        with pytest.raises(errors.BadCursor, match=r"belongs to another query"):
            drivers.read.after(cursor, 2, **other)
    with pytest.raises(BadInput, match=r"no column 'deep' \(in order_by\); its columns"):
        drivers.read.after(None, 2, order_by="deep")


def test_a_cursor_signed_with_another_key_is_refused(drivers: Drivers) -> None:
    other: Any
    if drivers.session is None:
        other, _ = fake_drivers(Gage, SEED, cursor_key=b"another key")
    elif isinstance(drivers.read, Blocking):
        twin = AsyncGageReader(async_session(drivers.session), cursor_key=b"another key")
        other = Blocking(twin, drivers.read._runner)
    else:
        other = GageReader(drivers.session, cursor_key=b"another key")
    cursor = other.after(None, 2).next_cursor
    with pytest.raises(errors.BadCursor, match=r"signed with another key"):
        drivers.read.after(cursor, 2)


def test_a_driver_on_a_bare_session_needs_a_key_for_after(sqlite_engine: sa.Engine) -> None:
    with (
        Session(sqlite_engine) as session,
        pytest.raises(
            BadInput,
            match=r"GageReader.after\(\) signs its cursors with the site's key: build "
            r"the driver with GageReader.of\(app, store\), or pass cursor_key=",
        ),
    ):
        GageReader(session).after(None, 10)


def test_stream_yields_every_matching_row_as_a_dict(drivers: Drivers) -> None:
    drivers.write.add_many([{"name": f"s{i:03}", "depth": i} for i in range(BIG)])
    streamed = drivers.read.stream(name__startswith="s", batch_size=16, order_by="-id")
    assert not isinstance(streamed, list)
    rows = list(streamed)
    assert rows == drivers.read.rows(name__startswith="s", order_by="-id")
    assert [r["name"] for r in rows] == [f"s{i:03}" for i in reversed(range(BIG))]
    unordered = drivers.read.stream(name__startswith="s")  # in no order promised
    assert sorted(r["name"] for r in unordered) == [f"s{i:03}" for i in range(BIG)]
    with pytest.raises(BadInput, match=r"no column 'nope' \(in filter\)"):
        drivers.read.stream(nope=1)  # at the call, not at the first row
    with pytest.raises(BadInput, match=r"batch_size must be a whole number"):
        drivers.read.stream(batch_size=0)


@pytest.mark.parametrize("drivers", ["postgresql"], indirect=True)
def test_stream_reads_through_a_server_side_cursor(drivers: Drivers) -> None:
    assert drivers.session is not None
    drivers.write.add_many([{"name": f"s{i}"} for i in range(BIG)])
    open_cursors = text("SELECT count(*) FROM pg_cursors")
    streamed = drivers.read.stream(batch_size=10, order_by="id")
    first = next(streamed)
    assert first["name"] == "Provo"
    assert drivers.session.execute(open_cursors).scalar_one() == 1  # the rest waits there
    assert len(list(streamed)) == len(SEED) + BIG - 1
    assert drivers.session.execute(open_cursors).scalar_one() == 0


def test_multiple_found_lives_in_errors() -> None:
    assert MultipleFound is errors.MultipleFound
    assert issubclass(errors.BadCursor, BadInput)


def test_of_signs_cursors_with_the_key_the_site_keeps_in_its_catalog(gages_app: App) -> None:
    app, site = gages_app, gages_app.site
    with GageWriter.of(app, "gages_db") as gages:
        gages.add_many(SEED)
    with GageReader.of(app, "gages_db") as reader:
        cursor = reader.after(None, 2).next_cursor
    key = site.catalog.cursor_key()
    assert len(key) == 32
    with site.catalog.engine.connect() as conn:
        stored = conn.execute(text("SELECT value FROM storekeeper_meta WHERE key LIKE 'cursor%'"))
        assert [bytes.fromhex(v) for (v,) in stored] == [key]
    # another process of the site: a new Site reads the same key, and takes the cursor
    other = Site.load()
    app.bind(other)
    try:
        with GageReader.of(app, "gages_db") as reader:
            assert [g.name for g in reader.after(cursor, 2).items] == ["Weber", "Ogden_50%"]
        assert other.catalog.cursor_key() == key
        with app.session("gages_db") as session, pytest.raises(errors.BadCursor):
            GageReader(session, cursor_key=b"not the site's").after(cursor, 2)
    finally:
        other.close()


# The async twins ---------------------------------------------------------------------


def public_methods(cls: type) -> set[str]:
    return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def typed_declarations(cls: type) -> set[str]:
    """The names a twin declares for mypy (``name = Awaiting(sync.name)`` under
    ``if TYPE_CHECKING:``), read from its source."""
    import ast

    tree = ast.parse(inspect.getsource(cls))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            called = node.value.func
            if isinstance(called, ast.Name) and called.id in ("Awaiting", "Streaming"):
                found |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return found


@pytest.mark.parametrize(
    ("twin", "sync"), [(AsyncReadDriver, ReadDriver), (AsyncWriteDriver, WriteDriver)]
)
def test_every_sync_method_has_an_async_twin_typed_for_mypy(twin: type, sync: type) -> None:
    methods = public_methods(sync)
    assert methods <= public_methods(twin)
    for name in methods:
        streams = inspect.isgeneratorfunction(getattr(sync, name)) or name == "stream"
        assert streams or inspect.iscoroutinefunction(getattr(twin, name)), name
        assert getattr(twin, name).__doc__ == getattr(sync, name).__doc__
    missing = methods - typed_declarations(twin)
    assert not missing, (
        f"{twin.__name__} has no typed declaration for {sorted(missing)}: add "
        f"`NAME = Awaiting(sync.NAME)` (Streaming for an iterator) to its TYPE_CHECKING block"
    )


def test_an_async_driver_without_a_model_says_how_to_name_one(
    sqlite_engine: sa.Engine,
) -> None:
    class Nameless(AsyncWriteDriver[Any]):
        pass

    engine = create_async_engine(async_twin_url(sqlite_engine))
    with pytest.raises(
        BadInput, match=r"Nameless names no model: declare it as class Nameless\(AsyncWriteDriver"
    ):
        Nameless(AsyncSession(engine))
    with pytest.raises(BadInput, match=r"Wrong.sync_driver must be a ReadDriver class"):

        class Wrong(AsyncReadDriver[Gage]):
            sync_driver = GageWriter  # type: ignore[assignment]


class GageNames(ReadDriver[Gage]):
    """A sync driver with methods of its own; its twin gets them too."""

    closed: list[str] = []

    def names(self, **filters: Any) -> Iterator[str]:
        statement = sa.select(Gage.name).where(*self._where((), filters)).order_by(Gage.id)
        try:
            for row in self.session.execute(statement.execution_options(yield_per=2)):
                yield row.name
        finally:
            self.closed.append("names")

    def deepest(self) -> Gage:
        return self.one(depth=sa.select(sa.func.max(Gage.depth)).scalar_subquery())


class AsyncGageNames(AsyncReadDriver[Gage]):
    sync_driver = GageNames


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_twin_of_a_sync_driver_of_ones_own_streams_its_iterators(
    backend: str, request: pytest.FixtureRequest
) -> None:
    from contextlib import aclosing

    engine: sa.Engine = request.getfixturevalue(f"{backend}_engine")
    GageNames.closed.clear()

    async def run() -> None:
        async_engine = create_async_engine(async_twin_url(engine))
        if backend == "sqlite":
            take_over_transactions(async_engine.sync_engine)
        try:
            async with AsyncSession(async_engine) as session:
                await AsyncGageWriter(session).add_many(SEED)
                gages = AsyncGageNames(session)
                started = gages.names()  # an async iterator, not a coroutine
                assert inspect.isasyncgen(started)
                await started.aclose()
                assert [n async for n in gages.names()] == [r["name"] for r in SEED]
                assert [n async for n in gages.names(kind="canal")] == ["provo river", "Ogden_50%"]
                assert GageNames.closed == ["names", "names"]
                async with aclosing(gages.names()) as names:
                    async for name in names:
                        assert name == "Provo"
                        break
                # Left early, the sync generator (and its cursor) was closed at once.
                assert GageNames.closed == ["names"] * 3
                assert (await gages.deepest()).name == "Ogden_50%"  # its own method, awaited
                assert await gages.count() == len(SEED)  # and ReadDriver's
                await session.rollback()
        finally:
            await async_engine.dispose()

    asyncio.run(run())


def test_psycopgs_async_connection_serves_sync_driver_code_in_the_greenlet(
    postgresql_engine: sa.Engine,
) -> None:
    """What a sync driver's COPY helper does with the connection a twin gives it: cursors,
    COPY FROM with types, COPY TO read back, all awaited inside SQLAlchemy's greenlet."""

    def sync_code(session: Session) -> tuple[Any, list[Any], list[Any]]:
        raw = AsyncGageWriter.sync_driver(session)._dbapi_connection(session.connection())
        with raw.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE copied (n int, t text)")
            with cursor.copy("COPY copied (n, t) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                for n in range(3):
                    copy.write_row([n, f"row {n}"])
            cursor.execute("SELECT count(*), max(t) FROM copied")
            counted = cursor.fetchone()
            with cursor.copy("COPY (SELECT n FROM copied ORDER BY n) TO STDOUT") as copy:
                rows = list(copy.rows())
            with cursor.copy("COPY (SELECT 7) TO STDOUT") as copy:
                chunks = [bytes(chunk) for chunk in copy]
        return counted, rows, chunks

    async def run() -> tuple[Any, list[Any], list[Any]]:
        async_engine = create_async_engine(async_twin_url(postgresql_engine))
        try:
            async with AsyncSession(async_engine) as session:
                return await session.run_sync(sync_code)
        finally:
            await async_engine.dispose()

    counted, rows, chunks = asyncio.run(run())
    assert tuple(counted) == (3, "row 2")
    assert rows == [("0",), ("1",), ("2",)]
    assert b"".join(chunks) == b"7\n"


def test_async_of_opens_and_ends_its_own_unit_of_work(gages_app: App) -> None:
    app = gages_app

    async def run() -> None:
        async with AsyncGageWriter.of(app, "gages_db") as gages:
            await gages.add_many(SEED)
        with pytest.raises(RuntimeError):
            async with AsyncGageWriter.of(app, "gages_db") as gages:
                assert await gages.delete_where(kind="canal") == 2
                raise RuntimeError("rolled back")
        async with AsyncGageReader.of(app, "gages_db") as reader:
            assert await reader.count() == len(SEED)
            assert reader.session.in_transaction()
            found = await reader.get_or_raise(1)
            assert isinstance(found, Gage) and found.name == "Provo"
        assert not reader.session.in_transaction()
        await app.site.dispose_async_engines()

    asyncio.run(run())


# On an app's SQLite store pysqlite (legacy transaction control) begins no transaction before
# a SAVEPOINT: the batch writes' savepoint opened the transaction and its RELEASE committed it,
# so the unit of work's rollback kept the rows. Each batch write (and a savepoint of one's own)
# must be undone with its unit of work, sync and async, as on the contract suite's engines.

# Each write on the seeded store, and the rows (name, depth) it leaves if it is kept.
BATCH_WRITES: dict[str, Any] = {
    "add_many": lambda w: w.add_many([{"name": "Lehi", "code": "LEH"}]),
    "add_many_returning": lambda w: w.add_many([{"name": "Lehi", "code": "LEH"}], returning=True),
    "upsert_many": lambda w: w.upsert_many(
        [{"name": "Provo", "code": "PRV", "depth": 9.0}], on="code"
    ),
    "update_many_by_id": lambda w: w.update_many({1: {"depth": 9.0}, 3: {"depth": 9.0}}),
    "update_many_where": lambda w: w.update_many(where={"kind": "canal"}, depth=9.0),
    "delete_many": lambda w: w.delete_many([1, 2]),
    "delete_where": lambda w: w.delete_where(kind="canal"),
}


def seeded_rows(app: App) -> list[tuple[str, float | None]]:
    with app.session("gages_db") as session:
        return [
            tuple(r)
            for r in session.execute(text("SELECT name, depth FROM drivers_gages ORDER BY id"))
        ]


@pytest.fixture
def seeded_app(gages_app: App) -> App:
    with GageWriter.of(gages_app, "gages_db") as gages:
        gages.add_many(SEED)
    return gages_app


@pytest.mark.parametrize("write", list(BATCH_WRITES))
def test_a_batch_write_is_rolled_back_with_its_unit_of_work_on_an_apps_sqlite_store(
    seeded_app: App, write: str
) -> None:
    before = seeded_rows(seeded_app)
    with pytest.raises(RuntimeError), GageWriter.of(seeded_app, "gages_db") as gages:
        BATCH_WRITES[write](gages)
        assert seeded_rows_in(gages.session) != before  # written, in the unit of work
        raise RuntimeError("rolled back")
    assert seeded_rows(seeded_app) == before


@pytest.mark.parametrize("write", list(BATCH_WRITES))
def test_an_async_batch_write_is_rolled_back_with_its_unit_of_work_on_an_apps_sqlite_store(
    seeded_app: App, write: str
) -> None:
    before = seeded_rows(seeded_app)

    async def run() -> None:
        with pytest.raises(RuntimeError):
            async with AsyncGageWriter.of(seeded_app, "gages_db") as gages:
                await BATCH_WRITES[write](gages)
                assert await gages.session.run_sync(seeded_rows_in) != before
                raise RuntimeError("rolled back")
        await seeded_app.site.dispose_async_engines()

    asyncio.run(run())
    assert seeded_rows(seeded_app) == before


def seeded_rows_in(session: Session) -> list[tuple[str, float | None]]:
    return [
        tuple(r) for r in session.execute(text("SELECT name, depth FROM drivers_gages ORDER BY id"))
    ]


def test_add_many_is_rolled_back_with_its_unit_of_work_on_an_apps_sqlite_store(
    gages_app: App,
) -> None:
    with pytest.raises(RuntimeError), GageWriter.of(gages_app, "gages_db") as gages:
        gages.add_many(SEED)
        raise RuntimeError("rolled back")
    with GageReader.of(gages_app, "gages_db") as reader:
        assert reader.count() == 0


def test_a_savepoint_of_ones_own_is_rolled_back_with_its_session_on_an_apps_sqlite_store(
    seeded_app: App,
) -> None:
    before = seeded_rows(seeded_app)
    with pytest.raises(RuntimeError), seeded_app.session("gages_db") as session:
        with session.begin_nested():
            session.add(Gage(name="Lehi", code="LEH"))
        raise RuntimeError("rolled back")
    assert seeded_rows(seeded_app) == before
    # and kept when the session commits; a savepoint rolled back undoes only its own rows
    with seeded_app.session("gages_db") as session:
        with session.begin_nested():
            session.add(Gage(name="Lehi", code="LEH"))
        savepoint = session.begin_nested()
        session.add(Gage(name="Orem", code="ORM"))
        session.flush()
        savepoint.rollback()
    assert seeded_rows(seeded_app) == [*before, ("Lehi", None)]


def test_an_async_savepoint_of_ones_own_is_rolled_back_with_its_session_on_an_apps_sqlite_store(
    seeded_app: App,
) -> None:
    before = seeded_rows(seeded_app)

    async def run() -> None:
        with pytest.raises(RuntimeError):
            async with seeded_app.async_session("gages_db") as session:
                async with session.begin_nested():
                    session.add(Gage(name="Lehi", code="LEH"))
                raise RuntimeError("rolled back")
        await seeded_app.site.dispose_async_engines()

    asyncio.run(run())
    assert seeded_rows(seeded_app) == before
