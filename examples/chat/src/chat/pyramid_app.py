"""The chat on Pyramid, commit policy ``transaction``: ``python -m chat.pyramid_app``
(http://127.0.0.1:6543).

Try: ``curl -d user=ada -d text=hi localhost:6543/general`` then ``curl localhost:6543/general``.
"""

from __future__ import annotations

from typing import Any
from wsgiref.simple_server import make_server

from pyramid.config import Configurator
from pyramid.request import Request

from .stores import app as chat_app
from .talk import as_json, messages_of, post


def say(request: Request) -> dict[str, Any]:
    stores = request.stores
    params = request.POST
    message = post(
        stores.chat_db,
        stores.scores_db,
        request.matchdict["channel"],
        params["user"],
        params["text"],
    )
    return as_json(message)  # committed by the tween when the view returns


def read(request: Request) -> dict[str, Any]:
    messages = request.stores.chat_db.scalars(messages_of(request.matchdict["channel"]))
    return {"messages": [as_json(m) for m in messages]}


def make_app() -> Any:
    """The Pyramid WSGI app; request.stores from storekeeper."""
    settings = {"storekeeper.app": "chat.stores:app", "storekeeper.commit": "transaction"}
    with Configurator(settings=settings) as config:
        config.include("storekeeper.pyramid")
        config.add_route("channel", "/{channel}")
        config.add_view(say, route_name="channel", request_method="POST", renderer="json")
        config.add_view(read, route_name="channel", request_method="GET", renderer="json")
        return config.make_wsgi_app()


if __name__ == "__main__":
    chat_app.sync()
    print("serving on http://127.0.0.1:6543")
    make_server("127.0.0.1", 6543, make_app()).serve_forever()
