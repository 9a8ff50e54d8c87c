"""The chat on Flask: ``python -m chat.flask_app`` (http://127.0.0.1:5000).

Try: ``curl -d user=ada -d text=hi localhost:5000/general`` then ``curl localhost:5000/general``.
``flask --app chat.flask_app stores status`` shows the stores.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from storekeeper.flask import StoreKeeper

from .model import User
from .stores import app as chat_app
from .talk import as_json, messages_of, post

stores = StoreKeeper(app=chat_app, default="chat_db")


def create_app() -> Flask:
    """The Flask app, its sessions served by storekeeper."""
    web = Flask(__name__)
    stores.init_app(web)

    @web.post("/<channel>")
    def say(channel: str) -> dict[str, Any]:
        form = request.form
        message = post(
            stores.session(), stores.session("scores_db"), channel, form["user"], form["text"]
        )
        stores.session.commit()
        stores.session("scores_db").commit()
        return as_json(message)

    @web.get("/<channel>")
    def read(channel: str) -> dict[str, Any]:
        page = stores.paginate(messages_of(channel))
        return {"messages": [as_json(m) for m in page], "next_page": page.next_num}

    @web.get("/users/<name>")
    def user(name: str) -> dict[str, Any]:
        return {"username": stores.get_or_404(User, name).username}

    return web


if __name__ == "__main__":
    chat_app.sync()
    create_app().run(host="127.0.0.1", port=5000)
