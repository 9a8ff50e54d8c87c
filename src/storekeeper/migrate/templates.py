"""Kind templates: a database per kind and service kept at the migrations' head, which new
stores of the kind are cloned from, so making a store costs the same however many migrations
the kind has.

The template is checked (and migrated, or rebuilt) once per process and head, under its own
lock; every clone is made under that lock too, so a process refreshing the template never
races one cloning it. Between uses the template is sealed (vacuumed, no connections).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ProvisionError
from ..naming import template_name
from .commands import (
    _single_head,
    current_heads,
    database_connection,
    is_known,
    migrate_database,
    script_directory,
)
from .scripts import kind_scripts

if TYPE_CHECKING:
    from ..backends import Backend, Service
    from ..declare import App
    from .scripts import Scripts

log = logging.getLogger("storekeeper")

# (service URL, template database) -> the head this process saw the template at.
_FRESH: dict[tuple[str, str], str | None] = {}


def template_database(app: App, kind: str) -> str:
    """The name of the template database of ``kind`` on the app's site."""
    return app.site.database_name(template_name(app.name, kind))


def _key(backend: Backend, name: str) -> tuple[str, str]:
    return (backend.service.url.render_as_string(hide_password=True), name)


def _refresh(backend: Backend, name: str, scripts: Scripts, spatial: bool) -> str | None:
    """Bring template ``name`` to head (building it when missing or unusable) and seal it;
    returns the revision it is at."""
    if backend.exists(name):
        backend.unseal_template(name)
        try:
            with database_connection(backend, name, f"template of {scripts.label}") as conn:
                at = current_heads(conn)
                directory = script_directory(scripts)
                known = all(is_known(directory, rev) for rev in at)
                if known:
                    migrate_database(backend, name, scripts, connection=conn)
                    revision = ",".join(current_heads(conn)) or None
        except BaseException:
            backend.seal_template(name)
            raise
        if known:
            backend.seal_template(name)
            return revision
        # The template holds a revision these migrations lack (another branch of the code):
        # build it anew from these.
        log.info("template %s is at unknown revision %s: rebuilding it", name, at)
        backend.drop(name)
    backend.create(name, spatial=spatial)
    try:
        result = migrate_database(backend, name, scripts)
        backend.seal_template(name)
    except BaseException:
        backend.drop(name)
        raise
    return result.after


def ensure_template(app: App, kind: str, service: Service) -> str:
    """Make sure the template of ``kind`` on ``service`` is at head; returns its name."""
    backend = app.site.backend(service)
    name = template_database(app, kind)
    with backend.lock(name):
        _ensure_locked(app, kind, backend, name)
    return name


def _ensure_locked(app: App, kind: str, backend: Backend, name: str) -> str | None:
    scripts = kind_scripts(app, kind)
    head = _single_head(script_directory(scripts), scripts)
    key = _key(backend, name)
    if key in _FRESH and _FRESH[key] == head:
        return head
    revision = _refresh(backend, name, scripts, app.kind(kind).spatial)
    _FRESH[key] = revision
    app.site.catalog.record(app.name, kind, "template", ok=True, detail=f"{name} at {revision}")
    return revision


def clone_from_template(app: App, kind: str, service: Service, database: str) -> str | None:
    """Create ``database`` on ``service`` as a copy of the kind's template at head; returns the
    revision it is at."""
    backend = app.site.backend(service)
    name = template_database(app, kind)
    with backend.lock(name):
        revision = _ensure_locked(app, kind, backend, name)
        try:
            backend.clone(name, database)
        except ProvisionError:
            if backend.exists(name):
                raise
            # Dropped behind this process's back (a cleanup, another test run): rebuild it.
            _FRESH.pop(_key(backend, name), None)
            revision = _ensure_locked(app, kind, backend, name)
            backend.clone(name, database)
    return revision


def drop_template(app: App, kind: str, service: Service) -> bool:
    """Drop the template of ``kind`` on ``service``; returns whether it existed."""
    backend = app.site.backend(service)
    name = template_database(app, kind)
    with backend.lock(name):
        existed = backend.exists(name)
        backend.drop(name)
        _FRESH.pop(_key(backend, name), None)
    return existed
