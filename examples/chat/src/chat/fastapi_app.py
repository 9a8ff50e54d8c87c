"""The chat on FastAPI (Starlette), async: ``python -m chat.fastapi_app``
(http://127.0.0.1:8000).

Try: ``curl -X POST 'localhost:8000/general?user=ada&text=hi'`` then
``curl localhost:8000/general``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from storekeeper.starlette import StoreKeeper

from .stores import app as chat_app
from .talk import as_json, messages_of, post

stores = StoreKeeper(chat_app, default="chat_db")
api = FastAPI(lifespan=stores.lifespan)
chat_db = Depends(stores.dependency())
scores_db = Depends(stores.dependency("scores_db"))


@api.post("/{channel}")
async def say(
    channel: str,
    user: str,
    text: str,
    chat: AsyncSession = chat_db,
    scores: AsyncSession = scores_db,
) -> dict[str, Any]:
    # The chat's logic is written once, synchronously; run_sync runs it on both async
    # sessions' connections. The dependencies commit when this returns.
    message = await chat.run_sync(
        lambda sync_chat: post(sync_chat, scores.sync_session, channel, user, text)
    )
    return as_json(message)


@api.get("/{channel}")
async def read(channel: str, chat: AsyncSession = chat_db) -> dict[str, Any]:
    messages = await chat.scalars(messages_of(channel))
    return {"messages": [as_json(m) for m in messages]}


if __name__ == "__main__":
    import uvicorn

    chat_app.sync()
    uvicorn.run(api, host="127.0.0.1", port=8000)
