"""What the chat does, whatever serves it: plain functions on sessions, so each example's
framework module only routes requests to them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .model import Chat, Message, Score, User


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite alike)."""
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def post(chat_db: Session, scores_db: Session, channel: str, user: str, text: str) -> Message:
    """Add a message to ``channel`` (made on first use) and a point to ``user``'s score in the
    channel's open game; flushed, not committed: the caller's integration decides.

    Users, channels and scores are made with INSERT ... ON CONFLICT, not looked up first:
    two requests or tasks posting as a new user at once would otherwise both insert it.
    """
    insert = _insert(chat_db)
    chat_db.execute(insert(User).values(username=user).on_conflict_do_nothing())
    chat_db.execute(insert(Chat).values(channel=channel).on_conflict_do_nothing())
    message = Message(channel=channel, user=user, content=text)
    chat_db.add(message)
    chat_db.flush()
    score = _insert(scores_db)(Score).values(game=1, user=user, points=1)
    scores_db.execute(
        score.on_conflict_do_update(
            index_elements=[Score.game, Score.user], set_={"points": Score.points + 1}
        )
    )
    return message


def messages_of(channel: str) -> Select[tuple[Message]]:
    """The messages of ``channel``, oldest first."""
    return select(Message).where(Message.channel == channel).order_by(Message.id)


def as_json(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data."""
    return {"id": message.id, "user": message.user, "text": message.content}
