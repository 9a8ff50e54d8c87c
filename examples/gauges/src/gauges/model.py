"""The data model and initializer of the stream gages store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, Float, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

if TYPE_CHECKING:
    from storekeeper import App


class Base(DeclarativeBase):
    """Declarative base of the stream gages store."""


class StreamGage(Base):
    """A stream gage: where it is and its latest reading."""

    __tablename__ = "stream_gages"

    id: Mapped[int] = mapped_column(primary_key=True)
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    value: Mapped[int]


def init_stream_db(engine: Engine, first_time: bool) -> None:
    """Add the tutorial's two gages when the store is new (Tethys' initializer contract)."""
    if not first_time:
        return
    with Session(engine) as session:
        session.add_all(
            [
                StreamGage(latitude=40.23812952992122, longitude=-111.69585227966309, value=1),
                StreamGage(latitude=40.238784729316215, longitude=-111.7101001739502, value=2),
            ]
        )
        session.commit()


def list_gauges(app: App) -> list[StreamGage]:
    """Every gage, in id order."""
    with app.session("stream_db") as session:
        return list(session.scalars(select(StreamGage).order_by(StreamGage.id)))
