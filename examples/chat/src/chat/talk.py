"""What the chat does, whatever serves it: plain functions on sessions, so each example's
framework module only routes requests to them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from .model import Chat, Message, Score, User


def post(chat_db: Session, scores_db: Session, channel: str, user: str, text: str) -> Message:
    """Add a message to ``channel`` (made on first use) and a point to ``user``'s score in the
    channel's open game; flushed, not committed: the caller's integration decides."""
    if chat_db.get(User, user) is None:
        chat_db.add(User(username=user))
    if chat_db.get(Chat, channel) is None:
        chat_db.add(Chat(channel=channel))
    message = Message(channel=channel, user=user, content=text)
    chat_db.add(message)
    score = scores_db.get(Score, (1, user)) or Score(game=1, user=user, points=0)
    score.points += 1
    scores_db.add(score)
    chat_db.flush()
    scores_db.flush()
    return message


def messages_of(channel: str) -> Select[tuple[Message]]:
    """The messages of ``channel``, oldest first."""
    return select(Message).where(Message.channel == channel).order_by(Message.id)


def as_json(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data."""
    return {"id": message.id, "user": message.user, "text": message.content}
