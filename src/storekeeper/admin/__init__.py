"""The admin page: services, each app's assignments (Tethys' drop-downs), every store's
state, the actions on stores and the history, in a browser.

``storekeeper admin`` serves it on 127.0.0.1; :func:`create_app` gives the ASGI app to mount
in one's own Starlette or FastAPI app, and :func:`create_wsgi_app` the same for a WSGI app
(Flask, Pyramid). Both refuse to build before ``storekeeper admin set-password`` has set the
admin password. Needs the ``admin`` extra: ``pip install 'storekeeper[admin]'``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..declare import App
    from ..site import Site
    from .actions import ACTIONS, ActionResult, run_action
    from .security import LoginLimit, set_password

_MISSING = (
    "the admin page needs the 'admin' extra (Starlette, Jinja2, uvicorn, argon2-cffi...), "
    "which is not installed: pip install 'storekeeper[admin]'"
)

# Light on import: `storekeeper --help` imports this package (for the admin command's
# defaults) and must work without the admin extra installed.
_LAZY = {
    "ACTIONS": "actions",
    "ActionResult": "actions",
    "run_action": "actions",
    "LoginLimit": "security",
    "set_password": "security",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def require_extra() -> None:
    try:
        import argon2  # noqa: F401
        import jinja2  # noqa: F401
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


__all__ = [
    "ACTIONS",
    "ActionResult",
    "create_app",
    "create_wsgi_app",
    "run_action",
    "set_password",
]

#: How long a login lasts (its cookie and its row in the catalog).
SESSION_LIFETIME = dt.timedelta(hours=8)


def _site_and_apps(
    site: Site | None, apps: Sequence[App] | None, config: str | Path | None
) -> tuple[Site, list[App]]:
    from ..discover import load_apps
    from ..site import Site

    site = site if site is not None else Site.load(config)
    if apps is None:
        apps = load_apps([], site.config.apps, site.config.root)
        for app in apps:
            app.bind(site)
    return site, list(apps)


def create_app(
    site: Site | None = None,
    apps: Sequence[App] | None = None,
    *,
    config: str | Path | None = None,
    secure_cookies: bool = False,
    session_lifetime: dt.timedelta = SESSION_LIFETIME,
    login_limit: LoginLimit | None = None,
) -> Starlette:
    """The admin page as an ASGI app (Starlette), to serve or mount (``Mount("/admin", app)``).

    ``site`` and ``apps`` default to what ``storekeeper`` itself would use (the nearest
    ``storekeeper.toml``, or ``config``, and its apps). ``secure_cookies`` marks the cookies
    ``Secure``: set it when the page is served over HTTPS. Raises
    :class:`~storekeeper.errors.ConfigError` when no admin password is set.
    """
    require_extra()
    from .app import build

    site, found = _site_and_apps(site, apps, config)
    if site.catalog.admin_user() is None:
        raise ConfigError(
            f"the admin page has no password yet (catalog {site.catalog.display_url}): run "
            "storekeeper admin set-password first"
        )
    return build(
        site, found, secure=secure_cookies, lifetime=session_lifetime, login_limit=login_limit
    )


def create_wsgi_app(
    site: Site | None = None, apps: Sequence[App] | None = None, **options: Any
) -> Any:
    """The admin page as a WSGI app, for Flask or Pyramid (``DispatcherMiddleware``): the
    ASGI app of :func:`create_app` run by a2wsgi on an event loop thread of its own."""
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(create_app(site, apps, **options))  # type: ignore[arg-type]
