"""What the admin page's stores table costs over the core's status verb it renders.

1,000 stores (10 apps of 100) across 3 services, each made by ``sync`` (SQLite services, so
the setup is quick; the page never connects to a store: it renders what the catalog recorded
about each one). The contenders, in one process, on the same recorded state:

- the page: ``GET /stores`` (its first page of 50 rows, logged in) through the admin page's
  ASGI app (``storekeeper.admin.create_app``) with httpx2's ``ASGITransport``, so the number
  is the login check, the catalog read, the filters and the HTML, and no network stack;
- the verb: ``storekeeper.provision.recorded_status(apps)``, the rows ``status --recorded``
  shows (all of them: the page reads them all to filter and count), read fresh from the
  catalog as a ``status`` command reads them (``site.refresh()`` first, as the page does on
  every request, so that it sees what the command line changed meanwhile).

Contenders alternate within each round; each figure is the median over rounds of the mean
time per call. Ends with ``ratio stores_page_vs_status_verb VALUE`` (page / verb).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

import httpx2
from sqlalchemy import Column, Integer, MetaData, String, Table

from sessions import compare
from storekeeper import App, Store
from storekeeper.admin import create_app, set_password
from storekeeper.config import load
from storekeeper.provision import recorded_status
from storekeeper.site import Site
from storekeeper.testing.server import data_parent

APPS, STORES_PER_APP, SERVICES = 10, 100, 3
PASSWORD = "bench password, not a secret"

metadata = MetaData()
Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))


def make_stores(folder: Path) -> tuple[Site, list[App]]:
    """The site of 3 SQLite services and the 10 apps of 100 stores, every store synced."""
    services = "\n".join(f'svc{i} = "sqlite:///stores{i}"' for i in range(SERVICES))
    (folder / "storekeeper.toml").write_text(f'default_service = ""\n[services]\n{services}\n')
    site = Site(load(folder / "storekeeper.toml", env=None))
    apps = []
    for a in range(APPS):
        name = f"app{a:02d}"
        stores = [Store(f"store{s:03d}", metadata=metadata) for s in range(STORES_PER_APP)]
        app = App(name, stores=stores).bind(site)
        for s, store in enumerate(stores):
            site.assign(name, store.name, f"svc{(a * STORES_PER_APP + s) % SERVICES}")
        apps.append(app)
    started = time.perf_counter()
    for app in apps:
        app.sync()
    print(f"setup: {APPS * STORES_PER_APP} stores synced in {time.perf_counter() - started:.1f} s")
    set_password(site.catalog, "admin", PASSWORD)
    return site, apps


async def logged_in(http: httpx2.AsyncClient) -> None:
    form = await http.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    done = await http.post(
        "/login", data={"user": "admin", "password": PASSWORD, "csrf": csrf.group(1)}
    )
    assert done.status_code == 303, done.text


def admin_bench(rounds: int, ops: int) -> dict[str, float]:
    # In RAM when there is room (as the test server's data): a thousand files on a shared
    # disk measure the neighbours' I/O.
    with tempfile.TemporaryDirectory(dir=data_parent()) as tmp:
        site, apps = make_stores(Path(tmp))
        loop = asyncio.new_event_loop()
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=create_app(site, apps)), base_url="http://127.0.0.1"
        )
        try:
            loop.run_until_complete(logged_in(http))
            first = loop.run_until_complete(http.get("/stores"))
            assert first.status_code == 200, first.text
            assert "of 1000 stores" in first.text, first.text
            assert first.text.count('data-store="') == 50
            rows = recorded_status(apps)
            assert len(rows) == 1000 and all(r.exists for r in rows)
            assert {r.service for r in rows} == {f"svc{i}" for i in range(SERVICES)}

            def page() -> object:
                return loop.run_until_complete(http.get("/stores"))

            def verb() -> object:
                site.refresh()
                return recorded_status(apps)

            return compare({"page": page, "verb": verb}, rounds, ops)
        finally:
            loop.run_until_complete(http.aclose())
            loop.close()
            site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    args = parser.parse_args()
    rounds, ops = (5, 10) if args.quick else (15, 40)

    r = admin_bench(rounds, ops)

    print(f"the stores table, 1000 stores on {SERVICES} services, median of {rounds} rounds")
    print(f"x {ops} calls (ms per call)")
    print(f"{'stores page (first 50)':<28}{r['page'] * 1e3:>10.2f}")
    print(f"{'status verb (recorded)':<28}{r['verb'] * 1e3:>10.2f}")
    print()
    print(f"stores page median {r['page'] * 1e3:.2f} ms")
    print(f"ratio stores_page_vs_status_verb {r['page'] / r['verb']:.3f}")


if __name__ == "__main__":
    main()
