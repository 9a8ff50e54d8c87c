"""Finding apps: ``--app MODULE:ATTR``, ``apps = [...]`` in the configuration, and installed
packages' entry points (group ``storekeeper.apps``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .declarations import AppDeclaration
from .errors import BadInput, NotFound

if TYPE_CHECKING:
    from .declare import App

ENTRY_POINT_GROUP = "storekeeper.apps"


def import_app(spec: str, *, origin: str = "--app") -> App:
    """Import ``"module:attribute"`` and check it is an :class:`App`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"{origin} {spec!r}: expected MODULE:ATTRIBUTE, like 'my_app.stores:app'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"{origin} {spec!r}: cannot import {module_name!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadInput(f"{origin} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    # The declared part is enough to tell (and keeps this module below the App facade); every
    # declaration made by apps is an App.
    if not isinstance(obj, AppDeclaration):
        raise BadInput(f"{origin} {spec!r} is a {type(obj).__name__}, not a storekeeper.App")
    return cast("App", obj)


def installed_apps() -> list[App]:
    """Apps that installed packages announce in the ``storekeeper.apps`` entry point group."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.append(
            import_app(
                ep.value, origin=f"entry point {ep.name!r} ({ep.dist.name if ep.dist else '?'})"
            )
        )
    return found


def load_apps(specs: Iterable[str], configured: Iterable[str], root: Path) -> list[App]:
    """Apps named by ``specs`` (``--app``); when none, the configured ones and installed ones.

    ``root`` (the configuration's folder) is put on ``sys.path`` so a project's own modules
    import the way they do when the project runs.
    """
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    specs = list(specs)
    if specs:
        apps = [import_app(s) for s in specs]
    else:
        apps = [import_app(s, origin="apps entry in the configuration") for s in configured]
        apps += installed_apps()
    unique: dict[str, App] = {}
    for app in apps:
        other = unique.get(app.name)
        if other is not None and other is not app:
            raise BadInput(f"two different apps are named {app.name!r}; app names must be unique")
        unique[app.name] = app
    return list(unique.values())


def select(apps: list[App], names: Iterable[str]) -> list[App]:
    """The apps called ``names`` (all when empty); :class:`NotFound` lists the known ones."""
    names = list(names)
    if not names:
        return apps
    by_name = {a.name: a for a in apps}
    chosen = []
    for name in names:
        if name not in by_name:
            known = ", ".join(by_name) or "none found"
            raise NotFound(
                f"unknown app {name!r} (known: {known}); name apps with --app MODULE:ATTR, "
                "'apps' in storekeeper.toml, or a 'storekeeper.apps' entry point"
            )
        chosen.append(by_name[name])
    return chosen
