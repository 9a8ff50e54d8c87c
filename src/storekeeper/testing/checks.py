"""Migration checks for every store under test that has migrations: what pytest-alembic's
four built-in tests check, with no configuration of their own.

For each store, in a scratch database ``test_<app>_<store>_check_<worker>``: the migrations
have a single head; they upgrade an empty database to head one revision at a time; each
revision goes down to the one before and up again; and at head the schema matches the
store's models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StorekeeperError
from ..naming import TEST_PREFIX
from ..provision import place
from ..site import Site
from .janitor import StoreUnderTest, check_test_database

if TYPE_CHECKING:
    from .janitor import Janitor


def check_migrations(janitor: Janitor) -> list[str]:
    """Every problem found in the migrations of the stores under test, one line each."""
    from ..migrate import store_scripts

    problems: list[str] = []
    for app, store in janitor.bind().values():
        if store_scripts(app, store.name).exists:
            problems += check_store(janitor, janitor.ensure(app, store))
    return problems


def check_store(janitor: Janitor, ready: StoreUnderTest) -> list[str]:
    """The problems in the migrations of one store (an empty list when they are sound)."""
    from ..migrate import check, downgrade, heads, revisions, upgrade

    app, store, label = ready.app, ready.store, ready.target
    tops = heads(app, store)
    if len(tops) > 1:
        return [
            f"{label}: single head: the migrations have {len(tops)} heads "
            f"({', '.join(sorted(tops))}); merge them: storekeeper revision {label} --merge "
            "-m 'merge heads'"
        ]
    site = Site(
        janitor.site.config, database_format=f"{TEST_PREFIX}{{name}}_check_{janitor.worker}"
    )
    app.bind(site)
    where = place(app, store)
    backend = site.backend(where.service)
    database = check_test_database(where.database)
    try:
        backend.drop(database)
        backend.create(database)
        before = "base"
        for revision in revisions(app, store):
            try:
                upgrade(app, store, revision)
            except StorekeeperError as exc:
                return [f"{label}: upgrade from empty: {exc}"]
            try:
                downgrade(app, store, before)
                upgrade(app, store, revision)
            except StorekeeperError as exc:
                return [f"{label}: down from {revision} to {before} and up again: {exc}"]
            before = revision
        return [f"{label}: models and migrations differ: {line}" for line in check(app, store)]
    finally:
        site.close()
        backend.drop(database)
        app.bind(janitor.site)
