"""What every store's ``env.py`` calls: ``from storekeeper.migrate.env import run; run()``.

Run by storekeeper's commands, the connection (opened under the store's lock) and the metadata
come in through ``config.attributes``. Run by plain ``alembic -c .../alembic.ini``, the store is
the ``storekeeper_target`` of that file or ``-x store=APP.STORE``, and the app is found as the
command line finds it (``storekeeper.toml``, entry points) or by ``-x app=MODULE:ATTR``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from sqlalchemy import Connection, MetaData

#: The key of :class:`Binding` in ``alembic.config.Config.attributes``.
ATTRIBUTE = "storekeeper"


@dataclass
class Binding:
    """What storekeeper hands to ``env.py``: the store's connection and metadata."""

    connection: Connection
    metadata: MetaData | None
    #: Called after each applied migration with Alembic's ``on_version_apply`` arguments.
    on_version_apply: Callable[..., None] | None = None
    options: dict[str, Any] = field(default_factory=dict)


def configure_options(dialect: str, metadata: MetaData | None) -> dict[str, Any]:
    """The ``context.configure`` options storekeeper uses for every store."""
    return {
        "target_metadata": metadata,
        "compare_type": True,
        "compare_server_default": True,
        # One transaction per migration: a failing one leaves the store at the last good one.
        "transaction_per_migration": True,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        "render_as_batch": dialect == "sqlite",
    }


def run() -> None:
    """Run the migrations Alembic asked for on the store storekeeper (or ``-x``) names."""
    from alembic import context

    binding = context.config.attributes.get(ATTRIBUTE)
    if binding is None:
        _run_plain(context)
        return
    connection = binding.connection
    options = configure_options(connection.dialect.name, binding.metadata)
    if binding.on_version_apply is not None:
        options["on_version_apply"] = binding.on_version_apply
    context.configure(connection=connection, **options, **binding.options)
    with context.begin_transaction():
        context.run_migrations()


def _run_plain(context: Any) -> None:
    """Plain ``alembic``: find the app and store, then run as storekeeper would."""
    from ..discover import import_app, load_apps, select
    from ..site import Site
    from .commands import store_connection
    from .scripts import store_scripts

    config = context.config
    if not logging.getLogger().handlers:
        # What alembic's own env.py shows: one line per migration run.
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)-5.5s [%(name)s] %(message)s"
        )
        logging.getLogger("alembic").setLevel(logging.INFO)
    x = context.get_x_argument(as_dictionary=True)
    target = (
        x.get("store")
        or os.environ.get("STOREKEEPER_STORE")
        or config.get_main_option("storekeeper_target")
    )
    if not target or target.endswith(":*"):
        raise BadInput(
            f"this script directory ({config.get_main_option('script_location')}) is shared by "
            "the stores of a kind: name one with alembic -x store=APP.STORE"
        )
    app_name, _, store = target.partition(".")
    site = Site.default()
    # The project's modules import as when the project runs (alembic's own script does not
    # put the working folder on the path).
    if str(site.config.root) not in sys.path:
        sys.path.insert(0, str(site.config.root))
    spec = x.get("app") or config.get_main_option("storekeeper_app")
    if spec:
        app = import_app(spec, origin="storekeeper_app")
        app.bind(site)
    else:
        apps = load_apps([], site.config.apps, site.config.root)
        (app,) = select(apps, [app_name])
        app.bind(site)
    scripts = store_scripts(app, store)
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
