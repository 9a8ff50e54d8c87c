"""What every store's ``env.py`` calls: ``from storekeeper.migrate.env import run; run()``.

Where the migrations run, first match wins:

1. a database of the caller's own, as Alembic documents for programmatic use and as
   pytest-alembic does: ``config.attributes["connection"]`` (a ``Connection``, or an
   ``Engine``), ``config.attributes["engine"]``, ``config.attributes["url"]`` (a URL or its
   string), or the ``sqlalchemy.url`` option. The migrations run on that database only; the
   store named in ``alembic.ini`` is never opened, only its models are read (for
   autogenerate; ``config.attributes["target_metadata"]`` overrides them);
2. storekeeper's own commands hand a :class:`Binding` (the store's connection, opened under
   its lock, and its metadata) in ``config.attributes["storekeeper"]`` (a ``sqlalchemy.url``
   option counts only after it, so an ``alembic.ini`` that has one never turns them away);
3. plain ``alembic -c .../alembic.ini``: the store is the ``storekeeper_target`` of that file
   or ``-x store=APP.STORE``, and the app is found as the command line finds it
   (``storekeeper.toml``, entry points) or by ``-x app=MODULE:ATTR``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from ..discover import import_app, load_apps, select
from ..errors import BadInput
from ..site import Site
from .binding import ATTRIBUTE, GIVEN, Binding, configure_options
from .commands import store_connection
from .scripts import Scripts, kind_scripts, store_scripts

if TYPE_CHECKING:
    from ..declare import App

__all__ = ["ATTRIBUTE", "GIVEN", "Binding", "configure_options", "run"]


def run() -> None:
    """Run the migrations Alembic asked for: on the database the caller handed over, else on
    the store storekeeper's command locked, else on the store ``alembic.ini`` (or ``-x``)
    names."""
    from alembic import context  # lazy: importing this module loads no Alembic

    config = context.config
    # A database the caller handed over comes first: nothing else may be opened then.
    for key in GIVEN:
        if config.attributes.get(key) is not None:
            _run_given(context, f"config.attributes[{key!r}]", config.attributes[key])
            return
    binding = config.attributes.get(ATTRIBUTE)
    if binding is not None:
        _run_bound(context, binding)
        return
    # After storekeeper's own binding: an alembic.ini copied with a sqlalchemy.url in it must
    # not turn storekeeper's commands away from the store they locked.
    url = config.get_main_option("sqlalchemy.url")
    if url:
        _run_given(context, "the sqlalchemy.url option", url)
        return
    _run_plain(context)


def _run_bound(context: Any, binding: Binding) -> None:
    connection = binding.connection
    options = configure_options(connection.dialect.name, binding.metadata)
    if binding.on_version_apply is not None:
        options["on_version_apply"] = binding.on_version_apply
    context.configure(connection=connection, **options, **binding.options)
    with context.begin_transaction():
        context.run_migrations()


@contextlib.contextmanager
def _given_connection(where: str, value: Any) -> Iterator[Connection]:
    """A connection to the database ``value`` names: itself, one from an engine (closed
    afterwards), or one from a pool-less engine on a URL (disposed afterwards)."""
    if isinstance(value, Connection):
        yield value
        return
    if isinstance(value, Engine):
        with value.connect() as connection:
            yield connection
        return
    if not isinstance(value, str | URL):
        raise BadInput(
            f"{where} must be a SQLAlchemy Connection, Engine or URL, got {type(value).__name__}"
        )
    try:
        engine = create_engine(value, poolclass=NullPool)
    except ArgumentError:
        raise BadInput(f"{where} is not a database URL") from None
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _run_given(context: Any, where: str, value: Any) -> None:
    """Run on the caller's database only; the store's models say what autogenerate wants."""
    config = context.config
    metadata = config.attributes.get("target_metadata")
    if metadata is None:
        metadata = _target_scripts(context, kind_ok=True)[1].metadata
    if context.is_offline_mode() and not hasattr(value, "dialect"):
        url = make_url(value)
        context.configure(
            url=url, literal_binds=True, **configure_options(url.get_backend_name(), metadata)
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    with _given_connection(where, value) as connection:
        context.configure(
            connection=connection, **configure_options(connection.dialect.name, metadata)
        )
        with context.begin_transaction():
            context.run_migrations()


def _target(context: Any) -> str | None:
    x = context.get_x_argument(as_dictionary=True)
    return (
        x.get("store")
        or os.environ.get("STOREKEEPER_STORE")
        or context.config.get_main_option("storekeeper_target")
    )


def _target_scripts(context: Any, *, kind_ok: bool = False) -> tuple[str, Scripts]:
    """The store (or, with ``kind_ok``, the kind) that ``-x store``, ``STOREKEEPER_STORE`` or
    ``alembic.ini``'s ``storekeeper_target`` names, and its script directory."""
    config = context.config
    location = config.get_main_option("script_location")
    target = _target(context)
    if not target:
        raise BadInput(
            f"this script directory ({location}) names no store: its alembic.ini has no "
            "storekeeper_target (or there is no alembic.ini); name the store with alembic -x "
            "store=APP.STORE, or set storekeeper_target = APP.STORE in its alembic.ini"
        )
    if target.endswith(":*") and not kind_ok:
        raise BadInput(
            f"this script directory ({location}) is shared by the stores of kind "
            f"{target[:-2]}: name one with alembic -x store=APP.STORE"
        )
    app_name, _, name = target.partition(".")
    app = _find_app(context, app_name)
    if name.endswith(":*"):
        return name, kind_scripts(app, name[:-2])
    return name, store_scripts(app, name)


def _find_app(context: Any, app_name: str) -> App:
    """The app named ``app_name``, bound to the project's site (``-x app``, the ini's
    ``storekeeper_app``, else as the command line finds apps); connects to nothing."""
    config = context.config
    site = Site.default()
    # The project's modules import as when the project runs (alembic's own script does not
    # put the working folder on the path).
    if str(site.config.root) not in sys.path:
        sys.path.insert(0, str(site.config.root))
    x = context.get_x_argument(as_dictionary=True)
    spec = x.get("app") or config.get_main_option("storekeeper_app")
    if spec:
        app = import_app(spec, origin="storekeeper_app")
    else:
        (app,) = select(load_apps([], site.config.apps, site.config.root), [app_name])
    app.bind(site)
    return app


def _run_plain(context: Any) -> None:
    """Plain ``alembic``: find the app and store, then run as storekeeper would."""
    if not logging.getLogger().handlers:
        # What alembic's own env.py shows: one line per migration run.
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)-5.5s [%(name)s] %(message)s"
        )
        logging.getLogger("alembic").setLevel(logging.INFO)
    store, scripts = _target_scripts(context)
    app = scripts.app
    if context.is_offline_mode():
        # alembic ... --sql: print the SQL for the store's dialect, connecting to nothing.
        url = app.url(store)
        context.configure(
            url=url,
            literal_binds=True,
            **configure_options(url.get_backend_name(), scripts.metadata),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    with store_connection(app, store) as connection:
        context.configure(
            connection=connection, **configure_options(connection.dialect.name, scripts.metadata)
        )
        with context.begin_transaction():
            context.run_migrations()
