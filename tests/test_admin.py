"""The admin page over HTTP (Starlette's TestClient): every page behind the login, every POST
behind its CSRF token, and the pages doing what the command line does, on real stores.

The browser tests (tests/test_admin_browser.py) drive the same page in Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from storekeeper import App, Store
from storekeeper.admin import create_app, set_password
from storekeeper.admin.security import COOKIE, LoginLimit
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
def local_site(project: Path, cheap_hashes: None) -> Iterator[Site]:
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
        # Argon2id with RFC 9106's second recommended setting (argon2-cffi's default).
        assert hashed is not None
        assert hashed.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert PASSWORD not in hashed.password_hash
    finally:
        site.close()


# security: sessions and cookies ---------------------------------------------------------


def test_the_session_cookie_is_opaque_httponly_samesite_strict_and_expires(
    client: TestClient, local_site: Site
) -> None:
    form = client.get("/login")
    response = client.post(
        "/login",
        data={"user": "admin", "password": PASSWORD, "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "max-age=28800" in attributes  # eight hours
    assert "secure" not in attributes  # plain HTTP on loopback; see the TLS test
    value = cookie.split(";")[0].split("=", 1)[1]
    assert "admin" not in value  # opaque: a random token and its signature
    # The catalog keeps only the token's hash: its copy opens no session.
    token = value.rpartition(".")[0]
    with local_site.catalog.engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT token_hash FROM storekeeper_admin_sessions").all()
    assert len(kept) == 1 and token not in kept[0][0]


def test_with_secure_cookies_the_cookies_are_marked_secure(local_site: Site, shop: App) -> None:
    with TestClient(create_app(local_site, [shop], secure_cookies=True)) as client:
        form = client.get("/login")
        assert "secure" in form.headers["set-cookie"].lower()
        assert "max-age=31536000" in form.headers["strict-transport-security"]


def test_a_forged_cookie_opens_nothing(client: TestClient, local_site: Site) -> None:
    log_in(client)
    real = client.cookies[COOKIE]
    token, _, signature = real.rpartition(".")
    for forged in [
        "anything",
        f"{token}.{'0' * len(signature)}",  # the token with a made-up signature
        f"{'A' * len(token)}.{signature}",  # another token with the real signature
        "",
    ]:
        client.cookies.clear()
        client.cookies.set(COOKIE, forged)
        response = client.get("/services", follow_redirects=False)
        assert response.status_code == 303, forged
        assert "/login" in response.headers["location"]


def test_an_expired_session_opens_nothing(local_site: Site, shop: App) -> None:
    import datetime as dt

    app = create_app(local_site, [shop], session_lifetime=dt.timedelta(hours=1))
    with TestClient(app) as client:
        log_in(client)
        assert client.get("/services", follow_redirects=False).status_code == 200
        with local_site.catalog.engine.begin() as conn:  # an hour and a second later
            conn.exec_driver_sql(
                "UPDATE storekeeper_admin_sessions SET expires_at = ?",
                (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),),
            )
        response = client.get("/services", follow_redirects=False)
        assert response.status_code == 303
        assert "/login" in response.headers["location"]


def test_logout_and_a_password_change_end_sessions_at_once(local_site: Site, shop: App) -> None:
    app = create_app(local_site, [shop])
    with TestClient(app) as one, TestClient(app) as other:
        csrf = log_in(one)
        log_in(other)
        kept = one.cookies[COOKIE]
        one.post("/logout", data={"csrf": csrf})
        one.cookies.set(COOKIE, kept)  # the cookie kept from before the logout
        assert one.get("/services", follow_redirects=False).status_code == 303
        assert other.get("/services", follow_redirects=False).status_code == 200
        set_password(local_site.catalog, "admin", "another long password")
        assert other.get("/services", follow_redirects=False).status_code == 303
        # The old password no longer opens a session; the new one does.
        form = other.get("/login")
        old = other.post(
            "/login", data={"user": "admin", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        assert old.status_code == 401
        log_in(other, password="another long password")


def test_the_signing_key_is_made_once_and_sealed_with_the_secret_key(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storekeeper.admin.security import signing_key

    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "a passphrase for the tests")
    site = Site.load()
    try:
        first = signing_key(site.catalog)
        assert signing_key(site.catalog) == first
        raw = site.catalog.setting("admin_signing_key")
        assert raw is not None and raw.startswith("enc:") and first.decode() not in raw
    finally:
        site.close()


def test_passwords_are_kept_as_argon2_hashes_and_short_ones_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["admin", "set-password", "--password-stdin"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    site = Site.load()
    try:
        assert site.catalog.admin_user() is None
    finally:
        site.close()


# security: CSRF, rate limit, headers ----------------------------------------------------


def test_a_post_without_a_session_is_refused_and_changes_nothing(
    client: TestClient, local_site: Site
) -> None:
    response = client.post(
        "/services", data={"name": "pg", "url": "sqlite:///elsewhere", "do": "save"}
    )
    assert response.status_code == 403
    assert "pg" not in local_site.catalog.services()


@pytest.mark.parametrize("token", [None, "wrong", "stale"])
def test_a_post_without_or_with_a_wrong_or_stale_csrf_token_is_403_and_changes_nothing(
    client: TestClient, local_site: Site, token: str | None
) -> None:
    csrf = log_in(client)
    if token == "stale":  # the token of an earlier session, ended since
        client.post("/logout", data={"csrf": csrf})
        log_in(client)
        given: str | None = csrf
    else:
        given = token
    data = {"name": "pg", "url": "sqlite:///elsewhere", "do": "save", "unreachable_ok": "yes"}
    if given is not None:
        data["csrf"] = given
    response = client.post("/services", data=data)
    assert response.status_code == 403
    assert "CSRF" in response.text and "nothing was changed" in response.text
    local_site.refresh()
    assert "pg" not in local_site.catalog.services()
    # The same form with the session's token works.
    data["csrf"] = csrf_of(client.get("/services").text)
    assert client.post("/services", data=data).status_code == 200
    assert "pg" in local_site.catalog.services()


def test_the_login_form_has_its_own_csrf_token(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"user": "admin", "password": PASSWORD})
    assert response.status_code == 403
    assert COOKIE not in client.cookies


def test_failed_logins_are_rate_limited_per_client(local_site: Site, shop: App) -> None:
    app = create_app(local_site, [shop], login_limit=LoginLimit(per_client=3, window=600))
    with TestClient(app) as client:
        csrf = csrf_of(client.get("/login").text)
        for _ in range(3):
            wrong = {"user": "admin", "password": "not it at all", "csrf": csrf}
            assert client.post("/login", data=wrong).status_code == 401
        right = {"user": "admin", "password": PASSWORD, "csrf": csrf}
        refused = client.post("/login", data=right, follow_redirects=False)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert "too many failed logins" in refused.text
        assert COOKIE not in client.cookies
    failed = [e for e in local_site.catalog.history(action="login") if not e.ok]
    assert len(failed) == 3 and failed[0].client == "testclient"


def test_security_headers_on_every_page_and_no_inline_script(client: TestClient) -> None:
    pages = [client.get("/login")]
    log_in(client)
    pages += [client.get(p) for p in ["/services", "/apps", "/stores", "/history"]]
    for page in pages:
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
        # Scripts only from files: no inline <script> body, no on* handler attributes.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)
        assert not re.search(r"\son[a-z]+\s*=", page.text)
    static = client.get("/static/admin.css")
    assert static.status_code == 200 and "no-store" not in static.headers.get("cache-control", "")


# security: where it listens ---------------------------------------------------------------


def test_storekeeper_admin_refuses_a_non_loopback_host_without_allow_remote_and_tls(
    local_site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["admin", "--host", "0.0.0.0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["admin", "--host", "192.0.2.1", "--allow-remote"]) == 2
    assert "needs TLS" in capsys.readouterr().err
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked here")
    assert main(["admin", "--host", "0.0.0.0", "--certfile", str(cert)]) == 2
    assert "--certfile and --keyfile go together" in capsys.readouterr().err


def test_loopback_hosts_are_told_apart() -> None:
    from storekeeper.admin.serve import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.9.1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")
    assert check_bind("127.0.0.1", allow_remote=False, certfile=None, keyfile=None) is False


# the pages at work, on PostgreSQL -------------------------------------------------------


def _rows(html: str, css: str) -> list[str]:
    """The ``data-...`` keys of the rows with class names, in page order."""
    return re.findall(rf'<tr class="[^"]*"\s+{css}="([^"]+)"', html)


def act(client: TestClient, csrf: str, action: str, *targets: str, **options: str) -> Any:
    """POST one action on ``targets`` as the stores page's form does (for a background job:
    its page once it is over)."""
    data: dict[str, Any] = {"csrf": csrf, "action": action, "target": list(targets), **options}
    return finished(client, client.post("/actions", data=data))


def finished(client: TestClient, response: Any) -> Any:
    """The page of the background job ``response`` landed on, once the job is over (sync,
    upgrade and backup run as jobs); any other response as it is."""
    found = re.search(r"/jobs/([\w-]+)$", str(response.url))
    if found is None:
        return response
    job = client.app.state.page.jobs.get(found.group(1))  # type: ignore[attr-defined]
    assert job.wait(120), job.lines
    return client.get(f"/jobs/{job.id}")


def _summaries(html: str) -> list[str]:
    return [s.strip() for s in re.findall(r'class="summary">([^<]*)<', html)]


def _migrations(app: App, *revisions: str) -> None:
    """Hand-written migrations of ``shop.orders``: r1 makes items, r2 adds a column."""
    from storekeeper import migrate
    from test_migrate import set_body

    if not (Path(str(app.migrations)) / "orders" / "env.py").exists():
        migrate.init(app, "orders")
    bodies = {
        "r1": (
            'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))',
            'op.drop_table("items")',
        ),
        "r2": (
            'op.add_column("items", sa.Column("name", sa.String(50)))',
            'op.drop_column("items", "name")',
        ),
    }
    for rev in revisions:
        made = migrate.revision(app, "orders", f"step {rev}", rev_id=rev)
        assert made is not None
        set_body(made.path, *bodies[rev])


@pytest.fixture
def pg_shop(
    project: Path, postgres_url: str, cheap_hashes: None
) -> Iterator[tuple[Site, App, TestClient]]:
    """App ``shop_<random>`` with a required store ``orders`` (with migrations) and an
    optional ``notes``, nothing assigned, no default service; logged in."""
    import uuid

    from conftest import write_config

    write_config(project, 'default_service = ""\n')
    site = Site.load()
    Site.set_default(site)
    set_password(site.catalog, "admin", PASSWORD)
    name = f"shop{uuid.uuid4().hex[:8]}"
    app = App(
        name,
        stores=[
            Store("notes", description="optional notes", required=False),
            Store("orders", description="the <b>orders</b>"),
        ],
        migrations=str(project / "migrations"),
        module=__name__,
    ).bind(site)
    try:
        with TestClient(create_app(site, [app])) as client:
            yield site, app, client
    finally:
        from storekeeper.backends import Service, backend_for, parse_service_url

        backend = backend_for(Service("pg", parse_service_url(postgres_url, project)))
        for database in backend.list(prefix=f"{name}_"):
            backend.drop(database)
        backend.close()
        site.close()


def test_add_a_service_assign_it_sync_upgrade_back_up_restore_and_drop_a_store(
    pg_shop: tuple[Site, App, TestClient], postgres_url: str
) -> None:
    from sqlalchemy import make_url

    site, app, client = pg_shop
    shop = app.name
    csrf = log_in(client)
    url = make_url(postgres_url)
    password = url.password
    assert password
    bare = url.set(password=None).render_as_string(hide_password=False)

    # Required-but-unassigned first, in warning colour (class "missing").
    apps = client.get("/apps").text
    assert _rows(apps, "data-setting") == ["orders", "notes"]
    assert re.search(r'<tr class="missing" data-setting="orders">', apps)

    # A service: the URL without its password, the password in its own field.
    added = client.post(
        "/services",
        data={"csrf": csrf, "name": "pg", "url": bare, "password": password, "do": "save"},
    )
    assert added.status_code == 200, added.text
    assert "service &#39;pg&#39; added" in added.text
    assert "PostgreSQL" in added.text  # its version, pinged
    assert site.service("pg").url.password == password
    for page in [added.text, client.get("/services").text, client.get("/services/pg/edit").text]:
        assert password not in page

    # Tethys' assignment: the app's drop-downs, saved with one button.
    saved = client.post(
        f"/apps/{shop}", data={"csrf": csrf, "setting.orders": "pg", "setting.notes": ""}
    )
    assert saved.status_code == 200 and f"{shop}.orders -&gt; pg" in saved.text
    assert site.catalog.assignments() == {(shop, "orders"): "pg"}
    assert not re.search(r'<tr class="missing"', saved.text)

    _migrations(app, "r1")
    synced = finished(
        client,
        client.post("/actions", data={"csrf": csrf, "action": "sync", "target": f"{shop}.orders"}),
    )
    assert synced.status_code == 200, synced.text
    assert _summaries(synced.text) == ["created, at revision r1"]

    _migrations(app, "r2")  # a new migration: the store is behind its head now
    stores = client.get("/stores", params={"app": shop}).text
    row = re.search(rf'<tr class="([^"]*)" data-store="{shop}.orders">(.*?)</tr>', stores, re.S)
    assert row is not None and "behind" in row.group(1)
    assert ">r1<" in row.group(2) and "r2" in row.group(2) and ">yes<" in row.group(2)

    upgraded = finished(
        client,
        client.post(
            "/actions",
            data={"csrf": csrf, "action": "upgrade", "target": f"{shop}.orders", "to": "head"},
        ),
    )
    assert _summaries(upgraded.text) == ["upgraded r1 -&gt; r2"]
    again = act(client, csrf, "upgrade", f"{shop}.orders", to="head")
    assert _summaries(again.text) == ["at r2, no change"]
    behind = client.get("/stores", params={"app": shop, "state": "behind"}).text
    assert f"{shop}.orders" not in behind
    assert f'data-store="{shop}.orders"' in client.get("/stores", params={"state": "at head"}).text

    backed = finished(
        client,
        client.post(
            "/actions", data={"csrf": csrf, "action": "backup", "target": f"{shop}.orders"}
        ),
    )
    (said,) = _summaries(backed.text)
    assert said.startswith("backed up as ")
    backup_id = said.split()[3]

    page = client.get(f"/stores/{shop}/orders").text
    assert backup_id in page and "orders_restored_" in page
    restored = client.post(
        "/actions",
        data={
            "csrf": csrf,
            "action": "restore",
            "target": f"{shop}.orders",
            "backup": backup_id,
            "as_name": "orders_copy",
        },
    )
    assert _summaries(restored.text) == [f"restored {backup_id} as database {shop}_orders_copy"]
    backend = site.backend(site.service("pg"))
    assert backend.exists(f"{shop}_orders_copy") and backend.exists(f"{shop}_orders")

    # Dropping asks for the store's name, typed.
    refused = client.post(
        "/actions",
        data={"csrf": csrf, "action": "drop", "target": f"{shop}.orders", "confirm": "order"},
    )
    assert refused.status_code == 400 and "type the store&#39;s name" in refused.text
    assert backend.exists(f"{shop}_orders")
    dropped = client.post(
        "/actions",
        data={"csrf": csrf, "action": "drop", "target": f"{shop}.orders", "confirm": "orders"},
    )
    assert _summaries(dropped.text) == ["dropped"]
    assert not backend.exists(f"{shop}_orders")

    # Every action is in the history, with the user and the client's address.
    events = site.catalog.history(shop, "orders")
    actions = ["drop", "restore", "backup", "migrate", "migrate", "sync"]
    assert [e.action for e in events][:6] == actions
    assert {(e.actor, e.client) for e in events[:6]} == {("admin", "testclient")}
    history = client.get("/history", params={"app": shop, "action": "backup"}).text
    assert backup_id in history and "testclient" in history and ">admin<" in history
    assert "sync" not in re.sub(r"<(select|option|input)[^>]*>", "", history).split("<tbody>")[1]


# bad input and faults ---------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_invalid_service_url_is_refused_on_the_form_and_nothing_is_saved(
    client: TestClient, local_site: Site
) -> None:
    csrf = log_in(client)
    for url, said in [
        ("not a url", "is not a database URL"),
        ("postgresql://app@db.example:99999", "port"),
        ("oracle://app@db.example", "not supported"),
    ]:
        response = client.post(
            "/services",
            data={"csrf": csrf, "name": "bad", "url": url, "password": "pw-typed-9", "do": "save"},
        )
        assert response.status_code == 400, url
        assert said in response.text, url
        assert "pw-typed-9" not in response.text  # the password is never sent back
        assert 'class="error"' in response.text
    assert "bad" not in local_site.catalog.services()


def test_an_unreachable_service_is_not_saved_unless_asked_and_says_why(
    client: TestClient, local_site: Site
) -> None:
    csrf = log_in(client)
    url = f"postgresql://app@127.0.0.1:{_closed_port()}/postgres"
    form = {"csrf": csrf, "name": "down", "url": url, "password": "pw-typed-9", "do": "save"}
    response = client.post("/services", data=form)
    assert response.status_code == 502
    assert "cannot connect to service &#39;down&#39;" in response.text
    assert "nothing was saved" in response.text and "pw-typed-9" not in response.text
    assert "down" not in local_site.catalog.services()
    tested = client.post("/services", data={**form, "do": "test"})
    assert tested.status_code == 502 and "cannot connect" in tested.text
    saved = client.post("/services", data={**form, "unreachable_ok": "yes"})
    assert saved.status_code == 200 and "service &#39;down&#39; added" in saved.text
    # The list shows it unreachable with the error; the page itself works.
    row = re.search(r'data-service="down">(.*?)</tr>', saved.text, re.S)
    assert row is not None and "unreachable: " in row.group(1) and "pw-typed-9" not in saved.text


def test_a_wrong_password_is_said_on_the_form_never_echoed(
    client: TestClient, postgres_url: str
) -> None:
    from sqlalchemy import make_url

    csrf = log_in(client)
    url = make_url(postgres_url)
    bare = url.set(password="x").render_as_string(hide_password=False).replace(":x@", "@")
    response = client.post(
        "/services",
        data={"csrf": csrf, "name": "pgw", "url": bare, "password": "Wr0ng-pass", "do": "test"},
    )
    assert response.status_code == 502
    assert "password authentication failed" in response.text
    assert "Wr0ng-pass" not in response.text


def test_editing_a_service_with_the_password_left_empty_keeps_it(
    client: TestClient, local_site: Site, postgres_url: str
) -> None:
    from sqlalchemy import make_url

    url = make_url(postgres_url)
    local_site.add_service("pg", postgres_url)
    csrf = log_in(client)
    edit = client.get("/services/pg/edit").text
    shown = re.search(r'name="url" value="([^"]+)"', edit)
    assert shown is not None and str(url.password) not in edit
    bare = shown.group(1).replace("&#43;", "+")
    saved = client.post(
        "/services/pg", data={"csrf": csrf, "url": bare, "password": "", "do": "save"}
    )
    assert saved.status_code == 200, saved.text
    local_site.refresh()
    assert local_site.service("pg").url.password == url.password
    tested = client.post("/services/pg/test", data={"csrf": csrf})
    assert "ok: service &#39;pg&#39; reached: PostgreSQL" in tested.text


def test_removing_a_service_in_use_is_refused_naming_the_stores(
    client: TestClient, local_site: Site, shop: App
) -> None:
    local_site.add_service("other", "sqlite:///other")
    local_site.assign("shop", "orders", "other")
    csrf = log_in(client)
    refused = client.post("/services/other/remove", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "still used by shop.orders" in refused.text
    assert "other" in local_site.catalog.services()
    local_site.unassign("shop", "orders")
    removed = client.post("/services/other/remove", data={"csrf": csrf})
    assert removed.status_code == 200 and "service &#39;other&#39; removed" in removed.text
    assert "other" not in local_site.catalog.services()


def test_an_action_on_a_store_that_is_gone_says_so_and_does_nothing(
    client: TestClient, local_site: Site, shop: App
) -> None:
    csrf = log_in(client)
    gone = act(client, csrf, "sync", "shop.vanished", "shop.orders")
    assert gone.status_code == 400
    failed, done = _summaries(gone.text)
    assert "has no store &#39;vanished&#39; (any more)" in failed
    assert done == "created"  # the other store of the selection still ran
    unknown = act(client, csrf, "explode", "shop.orders")
    assert unknown.status_code == 400 and "unknown action" in unknown.text
    assert not local_site.backend(local_site.service("local")).exists("shop_vanished")
    page = client.get("/stores/shop/vanished")
    assert page.status_code == 400 and "has no store" in page.text


def test_html_and_script_in_text_fields_are_rendered_inert(local_site: Site, project: Path) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    app = App(
        "shop",
        stores=[Store("orders", description=evil)],
        description=evil,
    ).bind(local_site)
    with TestClient(create_app(local_site, [app])) as client:
        csrf = log_in(client)
        assert act(client, csrf, "sync", "shop.orders").status_code == 200
        backed = act(client, csrf, "backup", "shop.orders", note=evil)
        assert backed.status_code == 200
        named = client.post(
            "/services", data={"csrf": csrf, "name": evil, "url": "sqlite:///x", "do": "save"}
        )
        assert named.status_code == 400
        pages = [
            client.get("/apps").text,
            client.get("/history").text,
            client.get("/history", params={"app": evil, "actor": evil}).text,
            client.get("/stores", params={"app": evil}).text,
            named.text,
            client.get("/login", params={"next": evil}).text,
        ]
        for page in pages:
            assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[0]
        assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1]


def test_a_server_that_goes_down_shows_its_stores_unreachable_and_the_rest_works(
    local_site: Site, shop: App
) -> None:
    from storekeeper.testing.server import PostgresServer

    server = PostgresServer().start()
    try:
        local_site.add_service("pgdown", server.url)
        local_site.assign("shop", "orders", "pgdown")
        shop.sync()
        with TestClient(create_app(local_site, [shop])) as client:
            csrf = log_in(client)
            assert "pgdown" in client.get("/services").text
            server.stop()  # the server goes down while the page is open

            services = client.get("/services")
            assert services.status_code == 200
            row = re.search(r'data-service="pgdown">(.*?)</tr>', services.text, re.S)
            assert row is not None and "unreachable: " in row.group(1)
            assert "cannot connect to service &#39;pgdown&#39;" in row.group(1)
            assert server.password not in services.text
            local = re.search(r'data-service="local">(.*?)</tr>', services.text, re.S)
            assert local is not None and '<td class="reachable">yes' in local.group(1)

            refreshed = client.post("/stores/refresh", data={"csrf": csrf})
            assert refreshed.status_code == 200
            stores = client.get("/stores", params={"state": "problem"}).text
            assert 'data-store="shop.orders"' in stores and "cannot connect" in stores
            tried = act(client, csrf, "sync", "shop.orders")
            assert tried.status_code == 409 and "cannot connect" in tried.text
            for path in ["/apps", "/history", "/stores", "/stores/shop/orders"]:
                assert client.get(path).status_code == 200, path
    finally:
        server.stop()


# the stores table: from what the core recorded ----------------------------------------------


def test_the_stores_table_holds_the_rows_of_status_json(
    client: TestClient, local_site: Site, shop: App
) -> None:
    from storekeeper.provision import recorded_status, status

    csrf = log_in(client)
    assert client.get("/stores.json").json()[0]["exists"] is None  # never read yet
    act(client, csrf, "sync", "shop.orders")
    page = client.get("/stores.json").json()
    assert page == [r.as_dict() for r in recorded_status([shop])]
    (row,) = page
    assert row["exists"] is True and row["size"] > 0 and row["last_sync"] and row["checked_at"]
    # The live status, read from the store itself, says the same (but when it was read).
    (live,) = [r.as_dict() for r in status([shop])]
    assert {k: v for k, v in live.items() if k != "checked_at"} == {
        k: v for k, v in row.items() if k != "checked_at"
    }


def test_storekeeper_status_recorded_prints_what_the_catalog_recorded(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from conftest import write_app, write_config

    spec = write_app(project, "shopx")
    write_config(project, f'apps = ["{spec}"]\n')
    import sys

    sys.path.insert(0, str(project))
    try:
        assert main(["status", "shopx", "--recorded", "--json"]) == 0
        (never,) = json.loads(capsys.readouterr().out)
        assert (never["exists"], never["checked_at"]) == (None, None)
        assert main(["sync", "shopx"]) == 0
        capsys.readouterr()
        assert main(["status", "shopx", "--recorded", "--json"]) == 0
        (recorded,) = json.loads(capsys.readouterr().out)
        assert main(["status", "shopx", "--json"]) == 0
        (live,) = json.loads(capsys.readouterr().out)
    finally:
        sys.path.remove(str(project))
    assert recorded["exists"] is True and recorded["checked_at"] is not None
    # The size as measured at the end of the sync (SQLite's write-ahead log still beside it).
    assert recorded["size"] > 0 and live["size"] > 0
    assert {**recorded, "checked_at": None, "size": None} == {**live, "size": None}


def test_the_stores_table_pages_and_filters_without_connecting_to_any_store(
    project: Path, cheap_hashes: None
) -> None:
    from conftest import write_config

    # Every store on a server that is not there: a page that connected would say so.
    write_config(
        project,
        f"""
        default_service = "gone"
        [services]
        gone = "postgresql://app@127.0.0.1:{_closed_port()}/postgres"
        """,
    )
    site = Site.load()
    set_password(site.catalog, "admin", PASSWORD)
    many = App("many", stores=[Store(f"s{i:03d}") for i in range(120)]).bind(site)
    other = App("other", stores=[Store("solo")]).bind(site)
    try:
        with TestClient(create_app(site, [many, other])) as client:
            log_in(client)
            first = client.get("/stores").text
            assert len(re.findall(r'data-store="', first)) == 50
            assert "121 of 121 stores, page 1 of 3" in first
            assert "cannot connect" not in first
            assert re.search(r'href="\?page=2" rel="next"', first)
            last = client.get("/stores", params={"page": "3"}).text
            assert len(re.findall(r'data-store="', last)) == 21
            assert 'data-store="other.solo"' in last and 'rel="next"' not in last
            only = client.get("/stores", params={"app": "other"}).text
            assert re.findall(r'data-store="([^"]+)"', only) == ["other.solo"]
            never = client.get("/stores", params={"state": "never read", "page": "2"}).text
            assert "121 of 121 stores, page 2 of 3" in never
            assert client.get("/stores", params={"state": "exists"}).text.count("data-store=") == 0
            bad = client.get("/stores", params={"page": "two"})
            assert bad.status_code == 400 and "is not a number" in bad.text
    finally:
        site.close()


# the catalog: who and from where, and an old catalog's upgrade -----------------------------


def test_the_command_line_records_the_system_user_and_host(local_site: Site, shop: App) -> None:
    import getpass
    import socket

    shop.sync()
    (event,) = local_site.catalog.history("shop", "orders")
    assert (event.actor, event.client) == (getpass.getuser(), socket.gethostname())


def test_an_old_catalog_at_version_1_is_upgraded_keeping_its_history(
    project: Path, cheap_hashes: None
) -> None:
    import sqlite3

    from storekeeper.catalog import tables

    (project / "var").mkdir()
    with sqlite3.connect(project / "var" / "catalog.sqlite") as conn:
        conn.executescript(
            """
            CREATE TABLE storekeeper_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO storekeeper_meta VALUES ('schema_version', '1');
            CREATE TABLE storekeeper_services (name VARCHAR(63) PRIMARY KEY, url TEXT NOT NULL,
                created_at DATETIME NOT NULL);
            CREATE TABLE storekeeper_assignments (app VARCHAR(63), setting VARCHAR(63),
                service VARCHAR(63) NOT NULL, assigned_at DATETIME NOT NULL,
                PRIMARY KEY (app, setting));
            CREATE TABLE storekeeper_stores (app VARCHAR(63), name VARCHAR(63),
                service VARCHAR(63) NOT NULL, server_setting VARCHAR(63), kind VARCHAR(63),
                created_at DATETIME NOT NULL, PRIMARY KEY (app, name));
            CREATE TABLE storekeeper_events (id INTEGER PRIMARY KEY AUTOINCREMENT,
                at DATETIME NOT NULL, app VARCHAR(63) NOT NULL, store VARCHAR(63) NOT NULL,
                action VARCHAR(32) NOT NULL, ok BOOLEAN NOT NULL, detail TEXT NOT NULL);
            INSERT INTO storekeeper_events (at, app, store, action, ok, detail)
                VALUES ('2026-01-02 03:04:05.000000', 'shop', 'orders', 'sync', 1, 'created');
            """
        )
    site = Site.load()
    try:
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
        (old,) = site.catalog.history()
        assert (old.action, old.detail, old.actor, old.client) == ("sync", "created", None, None)
        set_password(site.catalog, "admin", PASSWORD)
        assert site.catalog.admin_user() is not None
        site.catalog.record_state("shop", "orders", present=True, size=10)
        assert site.catalog.store_states()[("shop", "orders")].size == 10
        assert site.catalog.history()[0].actor is not None
    finally:
        site.close()


# mounting it in one's own app ---------------------------------------------------------------


def test_mounted_in_a_starlette_app_under_a_prefix(local_site: Site, shop: App) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("the app's own page")

    outer = Starlette(
        routes=[Route("/", hello), Mount("/admin", app=create_app(local_site, [shop]))]
    )
    with TestClient(outer) as client:
        assert client.get("/").text == "the app's own page"
        to_login = client.get("/admin/stores", follow_redirects=False)
        assert to_login.headers["location"].startswith("http://testserver/admin/login")
        form = client.get("/admin/login")
        assert "Path=/admin" in form.headers["set-cookie"]
        assert 'action="http://testserver/admin/login"' in form.text
        response = client.post(
            "/admin/login",
            data={"user": "admin", "password": PASSWORD, "csrf": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert response.status_code == 303 and "Path=/admin" in response.headers["set-cookie"]
        assert "/static/admin.css" in client.get("/admin/services").text
        assert client.get("/admin/static/admin.css").status_code == 200


def test_mounted_in_a_flask_app_through_wsgi(local_site: Site, shop: App) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from storekeeper.admin import create_wsgi_app

    flask_app = Flask(__name__)

    @flask_app.get("/")
    def index() -> str:
        return "the app's own page"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/admin": create_wsgi_app(local_site, [shop])}
    )
    client = flask_app.test_client()
    assert client.get("/").text == "the app's own page"
    to_login = client.get("/admin/stores")
    assert to_login.status_code == 303 and "/admin/login" in to_login.headers["location"]
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={"user": "admin", "password": PASSWORD, "csrf": csrf_of(form.text)},
    )
    assert response.status_code == 303, response.text
    page = client.get("/admin/services")
    assert page.status_code == 200 and 'data-service="local"' in page.text
    assert page.headers["x-frame-options"] == "DENY"


# the apps page and the actions' seam ----------------------------------------------------------


def test_the_apps_page_assigns_and_unassigns_with_one_button_and_refuses_an_unknown_service(
    local_site: Site,
) -> None:
    from storekeeper import Kind, ServerSetting

    local_site.add_service("fast", "sqlite:///fast")
    app = App(
        "shop",
        stores=[Store("orders"), Store("notes", required=False)],
        servers=[ServerSetting("tenants", description="per-tenant stores")],
        kinds=[Kind("tenant", description="one customer's data")],
    ).bind(local_site)
    with TestClient(create_app(local_site, [app])) as client:
        csrf = log_in(client)
        page = client.get("/apps").text
        assert _rows(page, "data-setting") == ["orders", "notes", "tenants"]
        assert "server setting" in page and "tenant" in page and "one customer" in page
        assert '<option value="fast"' in page and "default_service" in page

        both = {"csrf": csrf, "setting.orders": "fast", "setting.tenants": "fast"}
        saved = client.post("/apps/shop", data=both)
        assert saved.status_code == 200
        assert local_site.catalog.assignments() == {
            ("shop", "orders"): "fast",
            ("shop", "tenants"): "fast",
        }
        assert re.search(r'<option value="fast" selected>', saved.text)

        wrong = {"csrf": csrf, "setting.orders": "", "setting.tenants": "nosuch"}
        refused = client.post("/apps/shop", data=wrong)
        assert refused.status_code == 400
        assert (
            "unknown service &#39;nosuch&#39;" in refused.text
            and "nothing was saved" in refused.text
        )
        assert ("shop", "orders") in local_site.catalog.assignments()  # not half-saved

        unassigned = client.post(
            "/apps/shop", data={"csrf": csrf, "setting.orders": "", "setting.tenants": "fast"}
        )
        assert "shop.orders unassigned" in unassigned.text
        assert local_site.catalog.assignments() == {("shop", "tenants"): "fast"}
    actions = [e.action for e in local_site.catalog.history("shop")]
    assert actions[:3] == ["unassign", "assign", "assign"]


def test_run_action_returns_the_cores_report_and_never_raises(local_site: Site, shop: App) -> None:
    from storekeeper.admin import run_action
    from storekeeper.provision import StoreStatus, SyncReport

    done = run_action([shop], "sync", "shop.orders", actor="ops", client="10.0.0.7")
    assert done.ok and done.summary == "created" and done.exit_code == 0
    assert isinstance(done.report, SyncReport)
    assert ("action", "created") in done.rows
    read = run_action([shop], "refresh", "shop.orders", actor="ops", client="10.0.0.7")
    assert read.ok and isinstance(read.report, StoreStatus) and read.report.exists
    for action, target, options, said in [
        ("sync", "nosuch.orders", {}, "unknown app 'nosuch'"),
        ("drop", "shop.orders", {"confirm": "ORDERS"}, "type the store's name"),
        ("restore", "shop.orders", {}, "choose a backup"),
        ("upgrade", "shop.orders", {}, "has no migrations"),
        ("backup", "shop", {}, "expected APP.STORE"),
    ]:
        failed = run_action([shop], action, target, options, actor="ops", client="10.0.0.7")
        assert not failed.ok and said in failed.summary, (action, failed.summary)
    assert shop.store_exists("orders")
    events = local_site.catalog.history("shop", "orders")
    assert {(e.actor, e.client) for e in events} == {("ops", "10.0.0.7")}


def test_restore_in_place_asks_for_the_stores_name(local_site: Site, shop: App) -> None:
    from storekeeper.admin import run_action

    shop.sync()
    taken = run_action([shop], "backup", "shop.orders", actor="ops", client="here")
    backup_id = taken.report.id
    options = {"backup": backup_id, "in_place": "yes", "confirm": "wrong"}
    refused = run_action([shop], "restore", "shop.orders", options, actor="ops", client="here")
    assert not refused.ok and refused.exit_code == 2 and "nothing was changed" in refused.summary
    options["confirm"] = "orders"
    done = run_action([shop], "restore", "shop.orders", options, actor="ops", client="here")
    assert done.ok and done.summary.startswith(f"restored {backup_id} in place; kept ")


def test_a_service_added_with_the_command_line_is_in_the_drop_downs_at_once(
    client: TestClient, local_site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    log_in(client)
    assert '<option value="later"' not in client.get("/apps").text
    # Another process (the command line) adds it while the page runs.
    assert main(["service", "add", "later", "sqlite:///later"]) == 0
    assert '<option value="later"' in client.get("/apps").text
    assert 'data-service="later"' in client.get("/services").text


def test_the_login_limit_counts_per_client_and_overall() -> None:
    limit = LoginLimit()
    assert (limit.per_client, limit.overall, limit.window) == (5, 50, 300.0)
    small = LoginLimit(per_client=2, overall=3, window=600)
    small.failed("a")
    assert small.retry_after("a") == 0
    small.failed("a")
    assert small.retry_after("a") > 0 and small.retry_after("b") == 0
    small.failed("b")  # three failures in all: every client waits now
    assert small.retry_after("c") > 0
    small.succeeded("a")
    assert small.retry_after("a") > 0  # the overall count still holds


def test_storekeeper_admin_serves_the_page_on_loopback(project: Path, cheap_hashes: None) -> None:
    import http.client
    import os
    import subprocess
    import time

    from conftest import CLI

    site = Site.load()
    set_password(site.catalog, "admin", PASSWORD)
    site.close()
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    server = subprocess.Popen(
        [*CLI, "admin", "--port", str(port)],
        cwd=project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        said = server.stderr.readline()  # printed before it listens
        assert f"storekeeper admin on http://127.0.0.1:{port}/" in said
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/stores")
                response = conn.getresponse()
                break
            except ConnectionRefusedError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status == 303 and "/login" in str(response.getheader("location"))
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_old_postgresql_catalog_at_version_1_is_upgraded(
    project: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, cheap_hashes: None
) -> None:
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from storekeeper.catalog import tables
    from test_catalog import _postgres_catalog_url

    url = _postgres_catalog_url(postgres_url, f"adm{uuid.uuid4().hex[:8]}")
    engine = create_engine(url, poolclass=NullPool)
    try:
        # Version 1: today's tables less what the later steps add.
        with engine.begin() as conn:
            tables.STEPS[0](conn)
            for table in (
                "storekeeper_store_state",
                "storekeeper_admin_sessions",
                "storekeeper_admin_users",
            ):
                conn.exec_driver_sql(f"DROP TABLE {table}")
            conn.exec_driver_sql("ALTER TABLE storekeeper_events DROP COLUMN actor")
            conn.exec_driver_sql("ALTER TABLE storekeeper_events DROP COLUMN client")
            conn.exec_driver_sql(
                "INSERT INTO storekeeper_meta VALUES ('schema_version', '1');"
                "INSERT INTO storekeeper_events (at, app, store, action, ok, detail) "
                "VALUES (now(), 'shop', 'orders', 'sync', true, 'created')"
            )
        monkeypatch.setenv("STOREKEEPER_CATALOG", url)
        site = Site.load()
        try:
            assert site.catalog.schema_version() == tables.SCHEMA_VERSION
            (old,) = site.catalog.history()
            assert (old.action, old.actor) == ("sync", None)
            set_password(site.catalog, "admin", PASSWORD)
            site.catalog.record_state("shop", "orders", present=False)
            assert site.catalog.store_states()[("shop", "orders")].present is False
        finally:
            site.close()
    finally:
        engine.dispose()
        import psycopg
        from sqlalchemy import make_url

        database = make_url(url).database
        admin = make_url(postgres_url).set(drivername="postgresql", database="postgres")
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_stores_made_at_run_time_are_in_the_table_and_filtered_by_kind(
    local_site: Site,
) -> None:
    from storekeeper import Kind, ServerSetting

    app = App(
        "saas",
        stores=[Store("main")],
        servers=[ServerSetting("tenants")],
        kinds=[Kind("tenant"), Kind("archive")],
    ).bind(local_site)
    local_site.assign("saas", "tenants", "local")
    for name, kind in [("acme", "tenant"), ("beta", "tenant"), ("old", "archive")]:
        app.create_store(name, kind=kind)
    with TestClient(create_app(local_site, [app])) as client:
        csrf = log_in(client)
        tenants = client.get("/stores", params={"kind": "tenant"}).text
        assert re.findall(r'data-store="([^"]+)"', tenants) == ["saas.acme", "saas.beta"]
        assert ">yes<" in tenants  # create_store recorded that they exist
        dropped = act(client, csrf, "drop", "saas.old", confirm="old")
        assert _summaries(dropped.text) == ["dropped"]
        every = client.get("/stores.json").json()
        assert [r["store"] for r in every] == ["main", "acme", "beta"]
        assert [r["kind"] for r in every] == [None, "tenant", "tenant"]
