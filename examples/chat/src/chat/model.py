"""The chat schema of Aiopyramid's tutorial, split into two stores.

``chat_db`` holds users, chats and messages; ``scores_db`` holds games and their scores. A
database cannot point into another, so ``scores.user`` names a user without a foreign key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Engine, ForeignKey, SmallInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class ChatBase(DeclarativeBase):
    """Tables of store ``chat_db``."""


class GameBase(DeclarativeBase):
    """Tables of store ``scores_db``."""


class User(ChatBase):
    """Someone who chats."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(40), primary_key=True)
    phash: Mapped[str | None] = mapped_column(String(128))


class Chat(ChatBase):
    """A channel."""

    __tablename__ = "chats"

    channel: Mapped[str] = mapped_column(String(40), primary_key=True)


class Message(ChatBase):
    """One message in a channel."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(ForeignKey("chats.channel"))
    user: Mapped[str] = mapped_column(ForeignKey("users.username"))
    time: Mapped[datetime] = mapped_column(DateTime, index=True, default=datetime.now)
    content: Mapped[str] = mapped_column(Text, default="")


class Game(GameBase):
    """A game played in a channel."""

    __tablename__ = "games"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(40))
    finished: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class Score(GameBase):
    """A user's points in a game."""

    __tablename__ = "scores"

    game: Mapped[int] = mapped_column(ForeignKey("games.id"), primary_key=True)
    user: Mapped[str] = mapped_column(String(40), primary_key=True)
    points: Mapped[int] = mapped_column(SmallInteger, default=0)


def init_chat_db(engine: Engine, first_time: bool) -> None:
    """The first time: a user and a channel to talk in."""
    if first_time:
        with Session(engine) as session:
            session.add_all([User(username="ada"), Chat(channel="general")])
            session.commit()


def init_scores_db(engine: Engine, first_time: bool) -> None:
    """The first time: one open game."""
    if first_time:
        with Session(engine) as session:
            session.add(Game(id=1, channel="general"))
            session.commit()
