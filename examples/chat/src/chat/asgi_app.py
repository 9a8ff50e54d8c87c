"""The chat as a plain ASGI app (Starlette routing, no storekeeper integration) with async
scoped sessions and storekeeper's ASGI middleware: ``python -m chat.asgi_app``
(http://127.0.0.1:8001/general to read the channel).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from storekeeper.asgi import StoresMiddleware

from .stores import app as chat_app
from .talk import as_json, messages_of


async def read(request: Request) -> JSONResponse:
    """GET /CHANNEL: the channel's messages; the session is this request's own."""
    chat_db = chat_app.async_scoped_session("chat_db")
    messages = await chat_db.scalars(messages_of(request.path_params["channel"]))
    return JSONResponse({"messages": [as_json(m) for m in messages]})


application = StoresMiddleware(Starlette(routes=[Route("/{channel}", read)]), chat_app)

if __name__ == "__main__":
    import uvicorn

    chat_app.sync()
    uvicorn.run(application, host="127.0.0.1", port=8001)
