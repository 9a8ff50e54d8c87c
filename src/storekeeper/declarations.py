"""What apps declare, as plain data: :class:`Store`, :class:`ServerSetting`, :class:`Kind`, and
:class:`AppDeclaration` (an app's name and those three, validated).

A leaf of the package: it imports nothing of the core but naming and errors, so every layer
may use it. :class:`storekeeper.App` adds the run-time half (site, sessions, sync) on top.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .errors import BadInput, InvalidName, NotFound
from .naming import check_identifier, physical_name

if TYPE_CHECKING:
    from types import FrameType

    from sqlalchemy import Engine, MetaData

_Named = TypeVar("_Named", "Store", "ServerSetting", "Kind")

#: ``initializer(engine, first_time)``: Tethys' contract for filling a store.
Initializer = Callable[["Engine", bool], None]
InitializerSpec = Initializer | str | None

#: Modules whose frames are storekeeper's own (or the dataclass machinery's) while an app is
#: being made: the module that declares the app is the first frame outside them.
_OWN_MODULES = frozenset({__name__, "storekeeper.declare", "dataclasses"})


@dataclass(frozen=True)
class Store:
    """One database an app declares; its physical name is ``<app>_<store>``.

    ``initializer`` is a callable or a ``"module:function"`` / ``"module.function"`` string,
    called as ``initializer(engine, first_time)`` after the schema is in place.
    ``migrations`` is its Alembic script directory (relative paths are taken from the folder of
    the module that declares the app); by default ``<that folder>/migrations/<store>``.
    """

    name: str
    description: str = ""
    metadata: MetaData | None = None
    initializer: InitializerSpec = None
    required: bool = True
    spatial: bool = False
    migrations: str | Path | None = None

    def __post_init__(self) -> None:
        check_identifier(self.name, "store")


@dataclass(frozen=True)
class ServerSetting:
    """An app's socket for a whole database server, used to create stores at run time."""

    name: str
    description: str = ""
    required: bool = False

    def __post_init__(self) -> None:
        check_identifier(self.name, "server setting")


@dataclass(frozen=True)
class Kind:
    """A template for stores made at run time (a tenant's database).

    ``migrations`` is the Alembic script directory every store of the kind shares; by default
    ``<folder of the app's module>/migrations/kinds/<kind>``.
    """

    name: str
    metadata: MetaData | None = None
    initializer: InitializerSpec = None
    description: str = ""
    spatial: bool = False
    migrations: str | Path | None = None

    def __post_init__(self) -> None:
        check_identifier(self.name, "kind")


@dataclass(eq=False)
class AppDeclaration:
    """An app's declared part: its name, stores, server settings and kinds, validated.

    ``module`` is the name of the module that declares the app (``module=__name__``); when not
    given it is found by looking at the caller. Its folder is :attr:`home`, where relative
    migration paths start.
    """

    name: str
    stores: Sequence[Store] = ()
    servers: Sequence[ServerSetting] = ()
    kinds: Sequence[Kind] = ()
    description: str = ""
    migrations: str | Path | None = None
    module: str | None = None
    _home: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_identifier(self.name, "app")
        if self.module is None:
            # Only a fallback: App(..., module=__name__) says it without frame inspection.
            caller = _declaring_frame(sys._getframe(1)).f_globals
            self.module = caller.get("__name__")
            where = caller.get("__file__")
            if self._home is None and isinstance(where, str):
                self._home = Path(where).resolve().parent
        elif self._home is None:
            where = getattr(sys.modules.get(self.module), "__file__", None)
            if isinstance(where, str):
                self._home = Path(where).resolve().parent
        self.stores = tuple(self.stores)
        self.servers = tuple(self.servers)
        self.kinds = tuple(self.kinds)
        for group, items in (("store", self.stores), ("server setting", self.servers)):
            _no_duplicates(self.name, group, [i.name for i in items])
        _no_duplicates(self.name, "kind", [k.name for k in self.kinds])
        both = {s.name for s in self.stores} & {s.name for s in self.servers}
        if both:
            raise InvalidName(
                f"app {self.name!r}: {', '.join(sorted(both))} is both a store and a server "
                "setting; settings share one namespace for assignments"
            )
        for store in self.stores:
            physical_name(self.name, store.name)

    def store(self, name: str) -> Store:
        """The declared store called ``name``; :class:`NotFound` names the app's stores."""
        for store in self.stores:
            if store.name == name:
                return store
        runtime = self._made_at_run_time()
        made = f"; made at run time: {', '.join(runtime)}" if runtime else ""
        raise NotFound(
            f"app {self.name!r} declares no store {name!r}; its stores: "
            f"{', '.join(s.name for s in self.stores) or 'none'}{made}"
        )

    def _made_at_run_time(self) -> list[str]:
        """Names of the app's stores made at run time (none known to a bare declaration)."""
        return []

    def server(self, name: str) -> ServerSetting:
        """The declared server setting called ``name``."""
        return self._declared(self.servers, name, "server setting", "server settings")

    def kind(self, name: str) -> Kind:
        """The declared kind called ``name``."""
        return self._declared(self.kinds, name, "kind", "kinds")

    def _declared(self, items: Sequence[_Named], name: str, what: str, plural: str) -> _Named:
        for item in items:
            if item.name == name:
                return item
        raise NotFound(
            f"app {self.name!r} declares no {what} {name!r}; its {plural}: "
            f"{', '.join(i.name for i in items) or 'none'}"
        )

    @property
    def home(self) -> Path | None:
        """The folder of the module that declares the app (where relative paths start)."""
        return self._home

    def setting_names(self) -> list[str]:
        """Names that can be assigned a service: stores and server settings."""
        return [s.name for s in self.stores] + [s.name for s in self.servers]


def _declaring_frame(frame: FrameType) -> FrameType:
    """The first frame, from ``frame`` outwards, that is not storekeeper's own."""
    while frame.f_back is not None and frame.f_globals.get("__name__") in _OWN_MODULES:
        frame = frame.f_back
    return frame


def _no_duplicates(app: str, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f"app {app!r} declares {what} {name!r} twice")
        seen.add(name)
