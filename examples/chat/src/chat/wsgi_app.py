"""The chat as a bare WSGI app with scoped sessions and storekeeper's WSGI middleware:
``python -m chat.wsgi_app`` (http://127.0.0.1:8080/general to read the channel).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from storekeeper.wsgi import StoresMiddleware

from .stores import app as chat_app
from .talk import as_json, messages_of

chat_db = chat_app.scoped_session("chat_db")


def read(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """GET /CHANNEL: the channel's messages as JSON."""
    channel = environ["PATH_INFO"].strip("/") or "general"
    messages = [as_json(m) for m in chat_db.scalars(messages_of(channel))]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"messages": messages}).encode()]


application = StoresMiddleware(read, chat_app)

if __name__ == "__main__":
    chat_app.sync()
    print("serving on http://127.0.0.1:8080")
    make_server("127.0.0.1", 8080, application).serve_forever()
