"""The admin page over HTTP (Starlette's TestClient): every page behind the login, every POST
behind its CSRF token, and the pages doing what the command line does, on real stores.

The browser tests (tests/test_admin_browser.py) drive the same page in Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from storekeeper import App, Store
from storekeeper.admin import create_app, set_password
from storekeeper.cli import main
from storekeeper.errors import ConfigError
from storekeeper.site import Site

PASSWORD = "correct horse battery staple"


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def log_in(client: TestClient, user: str = "admin", password: str = PASSWORD) -> str:
    """Log in through the login form; returns the CSRF token of the session's pages."""
    form = client.get("/login")
    response = client.post(
        "/login",
        data={"user": user, "password": password, "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/stores").text)


@pytest.fixture
def local_site(project: Path) -> Iterator[Site]:
    """A site on the embedded default (SQLite in the project folder), admin password set."""
    site = Site.load()
    Site.set_default(site)
    set_password(site.catalog, "admin", PASSWORD)
    yield site
    site.close()


@pytest.fixture
def shop(local_site: Site) -> App:
    return App("shop", stores=[Store("orders", description="the orders")]).bind(local_site)


@pytest.fixture
def client(local_site: Site, shop: App) -> Iterator[TestClient]:
    with TestClient(create_app(local_site, [shop])) as client:
        yield client


def test_create_app_refuses_to_build_without_an_admin_password(project: Path) -> None:
    site = Site.load()
    try:
        with pytest.raises(ConfigError, match="storekeeper admin set-password"):
            create_app(site, [])
    finally:
        site.close()


def test_every_page_without_a_session_goes_to_the_login(client: TestClient) -> None:
    for path in [
        "/",
        "/services",
        "/services/new",
        "/apps",
        "/stores",
        "/stores.json",
        "/history",
        "/stores/shop/orders",
        "/services/local/edit",
    ]:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("http://testserver/login"), path
    assert "Log in" in client.get("/stores").text


def test_log_in_see_the_pages_and_log_out(client: TestClient) -> None:
    csrf = log_in(client)
    for path in ["/services", "/apps", "/stores", "/history", "/stores/shop/orders"]:
        assert client.get(path).status_code == 200, path
    out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/stores", follow_redirects=False).status_code == 303


def test_storekeeper_admin_set_password_then_the_page_opens(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["admin", "set-password", "--password-stdin"]) == 0
    assert "admin password of 'admin' set" in capsys.readouterr().out
    site = Site.load()
    try:
        with TestClient(create_app(site, [])) as client:
            log_in(client)
            assert client.get("/services").status_code == 200
        hashed = site.catalog.admin_user()
        assert hashed is not None and hashed.password_hash.startswith("$argon2id$")
        assert PASSWORD not in hashed.password_hash
    finally:
        site.close()
