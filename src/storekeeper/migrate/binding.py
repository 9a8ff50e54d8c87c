"""What storekeeper's commands hand to a store's ``env.py`` (:class:`Binding`), and the
``context.configure`` options every store runs with: the lowest piece of :mod:`.migrate`, used by
the commands that start Alembic and by :mod:`.env`, which Alembic runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, MetaData

#: The key of :class:`Binding` in ``alembic.config.Config.attributes``.
ATTRIBUTE = "storekeeper"

#: The keys of ``config.attributes`` that hand ``env.py`` a database of the caller's own, in
#: the order they are looked at (the ``sqlalchemy.url`` option comes after storekeeper's
#: own binding).
GIVEN = ("connection", "engine", "url")


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
