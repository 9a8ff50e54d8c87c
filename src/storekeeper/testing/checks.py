"""Migration checks for every store under test that has migrations: what pytest-alembic's
four built-in tests check, with no configuration of their own.

For each store: the migrations have a single head (asked of the scripts, before any database
is made); and in a scratch database of the run (``test_<run>_<worker>chk_<app>_<store>``),
they upgrade an empty database to head one revision at a time, each revision goes down to the
one before and up again, and at head the schema matches the store's models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StorekeeperError
from ..migrate import check, downgrade, heads, revisions, store_scripts, upgrade
from ..site import place
from .janitor import TestSite, check_test_service, drop_test_database, twin

if TYPE_CHECKING:
    from ..declare import App
    from .janitor import StoreBuilder


def check_migrations(janitor: StoreBuilder) -> list[str]:
    """Every problem found in the migrations of the stores under test, one line each (no
    test template is needed: two heads are reported here, not by a failing build)."""
    problems: list[str] = []
    for app, store in janitor.bind().values():
        if store_scripts(app, store.name).exists:
            problems += check_store(janitor, app, store.name)
    return problems


def check_store(janitor: StoreBuilder, app: App, store: str) -> list[str]:
    """The problems in the migrations of one store (an empty list when they are sound)."""
    label = f"{app.name}.{store}"
    tops = heads(app, store)
    if len(tops) > 1:
        return [
            f"{label}: single head: the migrations have {len(tops)} heads "
            f"({', '.join(sorted(tops))}); merge them: storekeeper revision {label} --merge "
            "-m 'merge heads'"
        ]
    site = TestSite(janitor.site.config, run=janitor.run_id, worker=f"{janitor.worker}chk")
    try:
        return _up_and_down(twin(app, site), store, label)
    finally:
        site.close()


def _up_and_down(app: App, store: str, label: str) -> list[str]:
    """Up from empty one revision at a time, down and up again at each, then the models."""
    where = place(app, store)
    backend = app.site.backend(check_test_service(where.service))
    database = where.database
    drop_test_database(backend, database)
    backend.create(database)
    try:
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
        app.site.dispose_engine(backend.database_url(database))
        drop_test_database(backend, database)
