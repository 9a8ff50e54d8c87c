"""Item 12: no object that can hold a URL shows its password in ``repr`` or ``str``.

Built from a real configuration: a PostgreSQL service from the file (the suite's throwaway
server, its random password), a service from the environment whose password holds ``/``, ``@``
and ``:`` (percent-encoded, as a valid URL has them), a ``url_file`` service, and the catalog
itself on PostgreSQL with its password.
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import make_url

from conftest import write_config
from storekeeper import App, Store
from storekeeper.config import load
from storekeeper.errors import StorekeeperError
from storekeeper.provision import status
from storekeeper.site import Site
from storekeeper.testing.janitor import StoreUnderTest

SPECIAL = "pa/ss@w:rd"
FILED = "fi1ed-secret"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secrets that ``text`` shows, typed or percent-encoded."""
    return [s for s in secrets if s in text or quote(s, safe="") in text]


def public_objects(root: Any) -> list[Any]:
    """``root`` and the objects reachable from it through public attributes, dataclass
    fields, and the items of dicts, lists and tuples (each once)."""
    seen: dict[int, Any] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, str | int | float | bool | bytes | Path | type(None)):
            continue
        seen[id(obj)] = obj
        if isinstance(obj, dict):
            todo += [*obj.keys(), *obj.values()]
        elif isinstance(obj, list | tuple | set | frozenset):
            todo += list(obj)
        elif dataclasses.is_dataclass(obj):
            todo += [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    return list(seen.values())


def new_pg_database(postgres_url: str, name: str) -> str:
    """Create database ``name`` on the suite's server; returns its URL (with the password)."""
    admin = make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


def test_no_repr_or_str_shows_a_password(
    project: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_password = make_url(postgres_url).password
    assert pg_password
    secrets = [pg_password, SPECIAL, FILED]
    (project / "other.url").write_text(
        f"postgresql+psycopg://app:{FILED}@127.0.0.1:{closed_port()}/x\n"
    )
    write_config(
        project,
        f"""
        default_service = "pg"
        [services]
        pg = "{postgres_url}"
        filed = {{ url_file = "other.url" }}
        """,
    )
    monkeypatch.setenv(
        "STOREKEEPER_SERVICE_SPECIAL",
        f"postgresql+psycopg://app:{quote(SPECIAL, safe='')}@127.0.0.1:{closed_port()}/x",
    )
    app_name = f"r{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("STOREKEEPER_CATALOG", new_pg_database(postgres_url, f"{app_name}_catalog"))
    config = load()
    site = Site(config)
    try:
        app = App(app_name, stores=[Store("main_db"), Store("dead_db")]).bind(site)
        site.assign(app_name, "dead_db", "special")
        services = site.services()
        backends = [site.backend(s) for s in services.values()]
        placements = [app.placement("main_db"), app.placement("dead_db")]
        report = app.sync(stores=["main_db"])
        rows = status([app])
        errors: list[StorekeeperError] = []
        for name in ("special", "filed"):
            try:
                site.backend(services[name]).ping()
            except StorekeeperError as exc:
                errors.append(exc)
        under_test = StoreUnderTest(app, "main_db", services["pg"], "t", "d", built=True)
        roots: list[Any] = [
            config,
            site,
            site.catalog,
            app,
            services,
            backends,
            placements,
            report,
            rows,
            errors,
            under_test,
            app.engine("main_db"),
            site.catalog.history(),
            site.catalog.runtime_stores(),
        ]
        objects = [obj for root in roots for obj in public_objects(root)]
        assert len(errors) == 2 and any(r.problem for r in rows)
        leaking: dict[str, set[str]] = {}
        for obj in objects:
            for kind, text in (("repr", repr(obj)), ("str", str(obj))):
                found = leaks(text, secrets)
                if found:
                    leaking.setdefault(f"{type(obj).__name__} {kind}", set()).update(found)
        assert leaking == {}
        # Masked, not emptied: the objects still say where they point.
        assert "127.0.0.1" in repr(config) and "127.0.0.1" in repr(services["special"])
    finally:
        backend = site.backend(site.service("pg"))
        site.catalog.close()
        for database in backend.list(prefix=f"{app_name}_"):
            backend.drop(database)
        site.close()
