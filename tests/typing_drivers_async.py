"""Checked by mypy (``make typecheck``; pyproject's ``[tool.mypy] files``), never run: the async
drivers' methods have the sync ones' parameters and results, the model included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, assert_type, cast

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storekeeper import App
from storekeeper.drivers import ReadDriver, WriteDriver
from storekeeper.drivers_async import AsyncReadDriver, AsyncWriteDriver, Awaiting, Streaming
from storekeeper.pagination import Page


class Base(DeclarativeBase):
    pass


class Gage(Base):
    __tablename__ = "typing_gages"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


class GageReader(AsyncReadDriver[Gage]):
    pass


class GageWriter(AsyncWriteDriver[Gage]):
    pass


class HighGages(ReadDriver[Gage]):
    def highest(self) -> Gage | None:
        return self.first(order_by="-value")

    def values(self) -> Iterator[int]:
        yield from (g.value for g in self.find())


class AsyncHighGages(AsyncReadDriver[Gage]):
    sync_driver = HighGages

    if TYPE_CHECKING:  # its own methods, for mypy, as AsyncReadDriver declares ReadDriver's
        sync: HighGages = cast("HighGages", None)
        highest = Awaiting(sync.highest)
        values = Streaming(sync.values)


async def a_twins_own_methods_are_typed_too(session: AsyncSession) -> None:
    gages = AsyncHighGages(session)
    assert_type(await gages.highest(), Gage | None)
    assert_type([v async for v in gages.values()], list[int])
    assert_type(await gages.count(), int)


async def each_method_returns_what_its_sync_twin_does(session: AsyncSession, app: App) -> None:
    gages, changes = GageReader(session), GageWriter(session)
    assert_type(await gages.get(1), Gage | None)
    assert_type(await gages.get_or_raise(1), Gage)
    assert_type(await gages.get_many([1, 2]), list[Gage])
    assert_type(await gages.find(Gage.value > 3, order_by="-value", value__lt=9), list[Gage])
    assert_type(await gages.first(value=3), Gage | None)
    assert_type(await gages.one(value=3), Gage)
    assert_type(await gages.list(order_by="id", limit=2, offset=1), list[Gage])
    assert_type(await gages.page(1, 10), Page)
    assert_type(await gages.count(value__gt=3), int)
    assert_type(await gages.exists(value__gt=3), bool)
    assert_type(await gages.rows(limit=5), list[dict[str, Any]])
    assert_type(await changes.add({"value": 3}), Gage)
    assert_type(await changes.add_many([Gage(value=1)], returning=True), list[Gage] | None)
    assert_type(await changes.update(1, value=4), Gage)
    assert_type(await changes.delete(1), None)
    assert_type(await changes.delete_many([1]), int)
    assert_type(await changes.delete_where(value=4), int)
    assert_type(gages.sync, ReadDriver[Gage])
    assert_type(changes.sync, WriteDriver[Gage])
    async with GageReader.of(app, "gages_db") as own:
        assert_type(own, GageReader)
    await gages.get(1, 2)  # type: ignore[call-arg]
    await gages.count(value__gt=3, order_by="id")  # a keyword filter, as in the sync driver
