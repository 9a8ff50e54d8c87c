"""The chat example, served by each integration, through each framework's test client (and
the Celery one as its README command runs it), on the embedded SQLite default."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from webtest import TestApp

from storekeeper import App
from storekeeper.site import Site


@pytest.fixture
def chat(project: Path) -> Iterator[App]:
    """chat.stores:app on a fresh embedded default (./var/stores in the project folder)."""
    from chat.stores import app

    site = Site.load()
    Site.set_default(site)
    app.bind(site).sync()
    yield app
    site.close()


def test_flask_example(chat: App) -> None:
    from chat.flask_app import create_app

    client = create_app().test_client()
    assert client.post("/general", data={"user": "bob", "text": "hi"}).json["user"] == "bob"
    assert [m["text"] for m in client.get("/general").json["messages"]] == ["hi"]
    assert client.get("/users/bob").json == {"username": "bob"}
    assert client.get("/users/nobody").status_code == 404


def test_pyramid_example(chat: App) -> None:
    from chat.pyramid_app import make_app

    web = TestApp(make_app())
    web.post("/general", {"user": "bob", "text": "hi"})
    assert [m["text"] for m in web.get("/general").json["messages"]] == ["hi"]


def test_fastapi_example(chat: App) -> None:
    from chat.fastapi_app import api

    with TestClient(api) as client:
        assert client.post("/general?user=bob&text=hi").json()["user"] == "bob"
        assert [m["text"] for m in client.get("/general").json()["messages"]] == ["hi"]


def test_wsgi_and_asgi_examples(chat: App) -> None:
    from chat.asgi_app import application as asgi
    from chat.wsgi_app import application as wsgi

    with chat.session("chat_db") as session:
        from chat.talk import post

        with chat.session("scores_db") as scores:
            post(session, scores, "general", "ada", "hello")
    assert TestApp(wsgi).get("/general").json["messages"][0]["text"] == "hello"
    with TestClient(asgi) as client:
        assert client.get("/general").json()["messages"][0]["text"] == "hello"


def test_celery_example_command(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chat.celery_app"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "'fail': FAILURE" in done.stdout
    assert "channel 'background' now holds: bye, hello, retry" in done.stdout
