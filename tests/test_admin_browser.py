"""The admin page end to end in a real Chromium (Debian's, driven by Playwright for Python),
served by uvicorn on a loopback port, on the throwaway PostgreSQL server and a real catalog.

The tests save the screenshots the README shows (docs/admin-*.png).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import Column, Integer, MetaData, String, Table, make_url

from conftest import ROOT, Gate, serve_asgi, write_migration
from storekeeper import App, Store
from storekeeper.admin import create_app, set_password
from storekeeper.migrate.commands import init
from storekeeper.site import Site

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
#: Where the screenshots go: the README's pictures (docs/) with `make screenshots`, else a
#: folder of the run's own, so that `make test` leaves the work tree as it found it.
DOCS = Path(os.environ.get("STOREKEEPER_SCREENSHOTS") or ROOT / "var" / "screenshots")
#: The test server's service, as the admin adds it on the page.
SERVICE = "pg"

metadata = MetaData()
Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50)),
    Column("note", String(200)),
)

#: The first migration: the orders table as the models have it (minus the note column).
CREATE = """    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item", sa.String(50)),
    )"""
#: The second: the note column, shipped after the store was made.
ADD_NOTE = """    op.add_column("orders", sa.Column("note", sa.String(200)))"""


@dataclass
class Admin:
    """The admin page being served: its URL, site, app and the store's script directory."""

    url: str
    site: Site
    app: App
    scripts: Path
    folder: Path


@pytest.fixture(scope="module")
def admin(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    """The admin page of app ``shop`` (one required store, ``orders_db``, not assigned yet, with
    one migration) served by uvicorn; the catalog is SQLite in the project folder."""
    folder = tmp_path_factory.mktemp("admin-project")
    (folder / "storekeeper.toml").write_text('default_service = ""\n')
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("STOREKEEPER_")}
    if "STOREKEEPER_TEST_POSTGRES_URL" in saved:
        os.environ["STOREKEEPER_TEST_POSTGRES_URL"] = saved["STOREKEEPER_TEST_POSTGRES_URL"]
    site = Site.load(folder / "storekeeper.toml")
    scripts = folder / "migrations" / "orders_db"
    app = App(
        "shop",
        stores=[
            Store(
                "orders_db",
                description="the shop's orders",
                metadata=metadata,
                migrations=str(scripts),
                required=True,
            )
        ],
    ).bind(site)
    init(app, "orders_db")
    write_migration(scripts, "r1_orders", None, CREATE)
    set_password(site.catalog, "admin", PASSWORD)
    asgi = create_app(site, [app])
    try:
        with serve_asgi(asgi) as url:
            yield Admin(url, site, app, scripts, folder)
    finally:
        asgi.state.page.jobs.shutdown(wait=False)
        if SERVICE in site.services():
            backend = site.backend(site.service(SERVICE))
            for database in backend.list(prefix="shop_"):
                backend.drop(database)
        site.close()
        os.environ.update(saved)


def made(admin: Admin, postgres_url: str) -> None:
    """What the end-to-end test leaves, made with the core's verbs when this test runs alone:
    the service, the assignment, both migrations, the store synced to its head."""
    site = admin.site
    if SERVICE not in site.services():
        site.add_service(SERVICE, postgres_url)
    site.assign("shop", "orders_db", SERVICE)
    if not (admin.scripts / "versions" / "r2_note.py").exists():
        write_migration(admin.scripts, "r2_note", "r1_orders", ADD_NOTE)
    admin.app.sync()


def shot(page: Page, name: str) -> None:
    """Save the screenshot ``admin-<name>.png`` (the README's, with ``make screenshots``)."""
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / f"admin-{name}.png"), full_page=True)


def log_in(page: Page, admin: Admin, *, screenshot: bool = False) -> None:
    page.goto(f"{admin.url}/stores")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fstores$"))
    page.get_by_label("User").fill("admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    if screenshot:
        shot(page, "login")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{admin.url}/stores")


def store_row(page: Page) -> Any:
    return page.locator('tr[data-store="shop.orders_db"]')


def run_on_store(page: Page, admin: Admin, action: str) -> None:
    """Tick the store on the stores page and press ``action``; lands on the job's page."""
    page.goto(f"{admin.url}/stores")
    store_row(page).get_by_role("checkbox").check()
    page.get_by_role("button", name=action, exact=True).click()
    expect(page).to_have_url(re.compile(r"/jobs/[\w-]+$"))


def job_over(page: Page, *in_table: str, last: str | None = None) -> None:
    """Wait for the job on the page to end well (the page reloads itself into its summary);
    its summary table holds each of ``in_table``, its last line ``last``."""
    expect(page.locator("#job-summary, .job-last").first).to_be_visible()
    expect(page.locator("#job-state")).to_have_text("done")
    for text in in_table:
        expect(page.locator("#job-summary")).to_contain_text(text)
    if last is not None:
        expect(page.locator(".job-last")).to_contain_text(last)


def test_the_admin_page_end_to_end(page: Page, admin: Admin, postgres_url: str) -> None:
    log_in(page, admin, screenshot=True)

    # The required store is not assigned yet: the apps page shows it first, in warning colour.
    page.get_by_role("link", name="Apps").click()
    expect(page.locator('tr.missing[data-setting="orders_db"]')).to_be_visible()

    # Add the test server as a service: the URL without its password, the password apart.
    url = make_url(postgres_url)
    page.get_by_role("link", name="Services").click()
    page.get_by_role("link", name="Add a service").click()
    page.get_by_label("Name", exact=True).fill(SERVICE)
    page.get_by_label("URL, without the password").fill(
        url.set(password=None).render_as_string(hide_password=False)
    )
    page.get_by_label("Password", exact=True).fill(str(url.password))
    page.get_by_role("button", name="Save").click()
    row = page.locator(f'tr[data-service="{SERVICE}"]')
    expect(row.locator("td.reachable")).to_have_text("yes")
    assert str(url.password) not in page.content()
    shot(page, "services")

    # Plug it into the store with the drop-down, saved with the app's one button.
    page.get_by_role("link", name="Apps").click()
    page.get_by_label("service of shop.orders_db").select_option(SERVICE)
    page.get_by_role("button", name="Save shop").click()
    expect(page.get_by_role("status")).to_contain_text(f"shop.orders_db -> {SERVICE}")
    expect(page.locator('tr.missing[data-setting="orders_db"]')).to_have_count(0)
    shot(page, "apps")

    # Sync it in the background: the job ends in the table `storekeeper sync` prints.
    run_on_store(page, admin, "Sync")
    job_over(page, "shop.orders_db", "created", last="synced: 1 created")
    page.get_by_role("link", name="Back to the stores").click()
    expect(store_row(page).locator("td.exists")).to_have_text("yes")
    expect(store_row(page)).to_contain_text("r1_orders")
    assert admin.site.backend(admin.site.service(SERVICE)).exists("shop_orders_db")

    # A new migration ships: the store is behind its head; upgrade it.
    write_migration(admin.scripts, "r2_note", "r1_orders", ADD_NOTE)
    page.reload()
    expect(store_row(page)).to_contain_text("behind")
    shot(page, "stores")
    run_on_store(page, admin, "Upgrade")
    job_over(page, "r1_orders", "r2_note", last="upgrade: 1 ok, 0 failed, 0 not run")
    shot(page, "job")
    page.get_by_role("link", name="Back to the stores").click()
    expect(store_row(page)).to_contain_text("at head")

    # Back it up: the job's table is the one `storekeeper backups` prints.
    run_on_store(page, admin, "Backup")
    job_over(page, "r2_note", last="backup: 1 ok, 0 failed")
    headers = page.locator("#job-summary thead th").all_inner_texts()
    column = [h.strip().lower() for h in headers].index("id")
    backup_id = page.locator("#job-summary tbody tr td").nth(column).inner_text()

    # Restore it beside the store (--as, the default), from the store's page.
    page.goto(f"{admin.url}/stores/shop/orders_db")
    restore = page.locator("form.restore")
    restore.get_by_label("Backup").select_option(backup_id)
    restore.get_by_label("as a new store").fill("orders_copy")
    restore.get_by_role("button", name="Restore").click()
    expect(page.locator("body")).to_contain_text("restored")
    assert admin.site.backend(admin.site.service(SERVICE)).exists("shop_orders_copy")

    # The history: each of those, by whom and from where.
    page.get_by_role("link", name="History").click()
    history = page.locator("table.history")
    for what in ("login", "sync", "migrate", "backup", "restore"):
        expect(history).to_contain_text(what)
    expect(history.locator("tr", has_text="migrate").first).to_contain_text("127.0.0.1")
    expect(history.locator("tr", has_text="migrate").first).to_contain_text("admin")
    shot(page, "history")

    # Log out in one tab: every page of the session is closed, in the other tab too.
    other = page.context.new_page()
    other.goto(f"{admin.url}/services")
    expect(other).to_have_url(f"{admin.url}/services")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    for path in ("/stores", "/services", "/apps", "/history", "/stores/shop/orders_db"):
        other.goto(f"{admin.url}{path}")
        expect(other).to_have_url(re.compile(r"/login\?next="))
    other.close()


def test_a_job_page_without_javascript_reloads_itself_into_its_summary(
    chromium: Callable[..., Any], admin: Admin, postgres_url: str
) -> None:
    context = chromium(java_script_enabled=False)
    page = context.pages[0] if context.pages else context.new_page()
    made(admin, postgres_url)
    log_in(page, admin)
    run_on_store(page, admin, "Backup")
    # reached only through the page's own <meta http-equiv="refresh">
    job_over(page, last="backup: 1 ok, 0 failed")
    context.close()


def test_two_admins_upgrading_one_store_one_waits_for_its_lock_and_the_page_says_so(
    chromium: Callable[..., Any], admin: Admin, postgres_url: str, tmp_path: Path
) -> None:
    made(admin, postgres_url)
    first, second = chromium().pages[0], chromium().pages[0]
    log_in(first, admin)
    log_in(second, admin)
    # The new migration holds the store's lock (inside it) until the test lets it go.
    gate = Gate(tmp_path)
    index = '    op.create_index("orders_item", "orders", ["item"])'
    write_migration(admin.scripts, "r3_index", "r2_note", gate.body + index)
    try:
        first.goto(f"{admin.url}/stores/shop/orders_db")
        first.get_by_role("button", name="Upgrade", exact=True).click()
        gate.wait_entered()  # the first upgrade is inside its migration, holding the lock

        second.goto(f"{admin.url}/stores/shop/orders_db")
        second.get_by_role("button", name="Upgrade", exact=True).click()
        waiting = second.locator("#job-waiting")
        expect(waiting).to_be_visible()
        expect(waiting).to_contain_text("waiting for the lock on 'shop_orders_db', held by")
        expect(second.locator("#job-state")).to_have_text("waiting")
        expect(first.locator("#job-state")).to_have_text("running")
        shot(second, "lock-wait")
    finally:
        gate.release()
    job_over(first, "r3_index", last="upgrade: 1 ok")
    job_over(second, "up to date", last="upgrade: 1 ok")  # had the lock then: at head
