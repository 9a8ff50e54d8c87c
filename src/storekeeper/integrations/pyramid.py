"""Pyramid: ``request.stores.<name>``, a session per store opened on first use per request.

::

    config.include("storekeeper.pyramid")   # with settings storekeeper.app = chat.stores:app
    # or, from code: config.use_stores(app, commit="transaction")

    @view_config(route_name="say", renderer="json")
    def say(request):
        request.stores.chat_db.add(Message(...))
        messages = request.stores.driver(MessageReader)   # a driver on that same session

Settings (or ``config.use_stores`` arguments):

``storekeeper.app``
    ``module:attribute`` of the storekeeper ``App``.
``storekeeper.commit``
    ``manual`` (the default, as Qapla's ``request.main``: commit yourself; whatever is not
    committed is rolled back), ``transaction`` (commit every store the request used when the
    view succeeded; roll back when it raised, even if an exception view answered), or
    ``pyramid_tm`` (join each session to ``request.tm`` with zope.sqlalchemy and let pyramid_tm
    commit or abort, as with its other resources; needs ``pip install pyramid_tm
    zope.sqlalchemy``).
``storekeeper.rollback_on_error_status``
    with ``transaction``: also roll back when the response is a 4xx or 5xx (default true).

Every session the request opened is closed when the request ends, whatever happened; a store
the request never touched opens no connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyramid.settings import asbool
from pyramid.tweens import EXCVIEW

from ..declare import App
from ..discover import import_app
from ..errors import ConfigError
from ..sessions import SessionSet

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry
    from pyramid.request import Request
    from pyramid.response import Response

__all__ = ["COMMIT_POLICIES", "StorePolicy", "includeme", "use_stores"]

COMMIT_POLICIES = ("manual", "transaction", "pyramid_tm")
_POLICY = "storekeeper.policy"


@dataclass(frozen=True)
class StorePolicy:
    """Which app's stores requests get, and when their sessions commit."""

    app: App
    commit: str = "manual"
    rollback_on_error_status: bool = True

    def __post_init__(self) -> None:
        if self.commit not in COMMIT_POLICIES:
            raise ConfigError(
                f"storekeeper.commit {self.commit!r} is not a commit policy; use one of: "
                f"{', '.join(COMMIT_POLICIES)}"
            )


def use_stores(
    config: Configurator,
    app: App,
    *,
    commit: str = "manual",
    rollback_on_error_status: bool = True,
) -> None:
    """``config.use_stores(app, commit="transaction")``: the directive behind the settings."""
    if not isinstance(app, App):
        raise ConfigError(f"use_stores needs a storekeeper.App, not {type(app).__name__}")
    policy = StorePolicy(app, commit, rollback_on_error_status)
    if policy.commit == "pyramid_tm":
        try:
            import pyramid_tm  # noqa: F401
            import zope.sqlalchemy  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"storekeeper.commit 'pyramid_tm' needs {exc.name}: pip install pyramid_tm "
                "zope.sqlalchemy"
            ) from None
        config.include("pyramid_tm")
    config.registry[_POLICY] = policy


def includeme(config: Configurator) -> None:
    """``config.include("storekeeper.pyramid")``: ``request.stores`` and the tween that ends
    its sessions; reads the ``storekeeper.*`` settings."""
    config.add_directive("use_stores", use_stores)
    settings = config.get_settings()
    spec = settings.get("storekeeper.app")
    if spec:
        use_stores(
            config,
            import_app(spec, origin="setting storekeeper.app"),
            commit=settings.get("storekeeper.commit", "manual"),
            rollback_on_error_status=asbool(
                settings.get("storekeeper.rollback_on_error_status", True)
            ),
        )
    # Checked when the configuration is committed, after any config.use_stores() call.
    config.action("storekeeper.policy-check", lambda: _policy(config.registry))
    config.add_request_method(_request_stores, "stores", reify=True)
    # Over the exception view: the tween sees the response an exception view made, and
    # request.exception tells it the view failed. Over pyramid_tm's when present: it closes
    # the sessions after pyramid_tm has committed or aborted them.
    config.add_tween(
        "storekeeper.integrations.pyramid.tween_factory",
        over=("pyramid_tm.tm_tween_factory", EXCVIEW),
    )


def _policy(registry: Registry) -> StorePolicy:
    policy: StorePolicy | None = registry.get(_POLICY)
    if policy is None:
        raise ConfigError(
            "request.stores needs the storekeeper App: add the setting storekeeper.app = "
            "module:attribute, or call config.use_stores(app) after "
            "config.include('storekeeper.pyramid')"
        )
    return policy


def _request_stores(request: Request) -> SessionSet:
    policy = _policy(request.registry)
    if policy.commit == "pyramid_tm":
        from zope.sqlalchemy import register

        return SessionSet(
            policy.app, on_open=lambda session: register(session, transaction_manager=request.tm)
        )
    return SessionSet(policy.app)


def tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    """The tween that commits or rolls back, then closes, the sessions a request opened."""

    def end_sessions(request: Request) -> Response:
        try:
            response = handler(request)
        except BaseException:
            _finish(request, commit=False)
            raise
        policy: StorePolicy | None = registry.get(_POLICY)
        commit = (
            policy is not None
            and policy.commit == "transaction"
            and getattr(request, "exception", None) is None
            and not (policy.rollback_on_error_status and response.status_int >= 400)
        )
        _finish(request, commit=commit)
        return response

    return end_sessions


def _finish(request: Any, *, commit: bool) -> None:
    # reify keeps request.stores in the request's __dict__: absent means nothing was opened.
    sessions: SessionSet | None = request.__dict__.get("stores")
    if sessions is not None:
        sessions.finish(commit)
