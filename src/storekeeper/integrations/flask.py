"""Flask: sessions that live for the app context, and ``flask stores ...`` commands.

::

    stores = StoreKeeper(flask_app, app)            # or StoreKeeper(app=app).init_app(flask_app)

    @flask_app.get("/users/<name>")
    def show(name):
        user = stores.get_or_404(User, name)       # the default store's session
        stores.session("scores_db").add(...)       # another store, same app context
        stores.session.commit()                    # commit yourself, as with Flask-SQLAlchemy

Each store's session is opened on first use in an app context (a request, a CLI command) and
rolled back and closed when the context is torn down: commit what you want kept. Moving from
Flask-SQLAlchemy: ``db.session`` -> ``stores.session``, ``db.get_or_404`` ->
``stores.get_or_404``, ``db.paginate`` -> ``stores.paginate``; ``Model.query.filter_by(...)``
-> ``stores.session.scalars(select(Model).filter_by(...))`` (README.md has the whole table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from flask import Flask, abort, g, request

from ..errors import BadInput, StorekeeperError
from ..pagination import Page, paginate
from ..sessions import SessionSet, default_store

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import Session

    from ..declare import App
    from ..provision import StoreResult

__all__ = ["StoreKeeper"]

T = TypeVar("T")


class _SessionProxy:
    """``stores.session``: call it for a store's session, or use it as the default store's
    session (``stores.session.add(x)``), as Flask-SQLAlchemy's ``db.session``."""

    __slots__ = ("_keeper",)

    def __init__(self, keeper: StoreKeeper) -> None:
        self._keeper = keeper

    def __call__(self, name: str | None = None) -> Session:
        keeper = self._keeper
        return keeper._sessions().get(name or keeper._default_name or keeper.default_store())

    def __getattr__(self, attr: str) -> Any:
        return getattr(self(), attr)


class StoreKeeper:
    """storekeeper's Flask extension: the sessions of ``app``'s stores in every app context.

    ``default`` names the store of the short forms (``stores.session.add``); it defaults to
    the app's only store. ``cli_group`` names the command group (``flask stores``); give each
    StoreKeeper its own when several storekeeper apps serve one Flask app.
    """

    def __init__(
        self,
        flask_app: Flask | None = None,
        app: App | None = None,
        *,
        default: str | None = None,
        cli_group: str = "stores",
    ) -> None:
        self.app = app
        self.default = default
        self.cli_group = cli_group
        self.session = _SessionProxy(self)
        self._default_name: str | None = None
        # Each extension on a Flask app keeps its sessions under its own key in ``g``.
        self._key = f"_storekeeper_{id(self):x}"
        if app is not None:
            self._check_default(app)
        if flask_app is not None:
            self.init_app(flask_app)

    def _check_default(self, app: App) -> None:
        if self.default is not None:
            app.store(self.default)

    def init_app(self, flask_app: Flask, app: App | None = None) -> StoreKeeper:
        """Serve ``flask_app``: end sessions on app-context teardown, add ``flask stores``."""
        if app is not None:
            self._check_default(app)
            self.app = app
            self._default_name = None
        if self.app is None:
            raise BadInput(
                "StoreKeeper needs the storekeeper App: StoreKeeper(flask_app, app) or "
                "stores.init_app(flask_app, app)"
            )
        # Several storekeeper apps may serve one Flask app (a portal of apps), each once.
        keepers: dict[str, StoreKeeper] = flask_app.extensions.setdefault("storekeeper", {})
        if self.app.name in keepers:
            raise BadInput(
                f"Flask app {flask_app.name!r} already has a StoreKeeper for app "
                f"{self.app.name!r}; use that one"
            )
        keepers[self.app.name] = self
        flask_app.teardown_appcontext(self._teardown)
        flask_app.cli.add_command(self._commands())
        # As Flask-SQLAlchemy offers db: `flask shell` starts with `stores` at hand.
        flask_app.shell_context_processor(lambda: {"stores": self})
        return self

    # sessions -------------------------------------------------------------------------

    @property
    def storekeeper_app(self) -> App:
        """The storekeeper ``App`` whose stores this extension serves."""
        if self.app is None:
            raise BadInput("StoreKeeper has no storekeeper App yet: call init_app(flask_app, app)")
        return self.app

    def default_store(self) -> str:
        """The store of the short forms: ``default``, or the app's only store."""
        # Kept: it is asked for on every short-form call.
        self._default_name = default_store(self.storekeeper_app, self.default)
        return self._default_name

    def _sessions(self) -> SessionSet:
        sessions: SessionSet | None = g.get(self._key)
        if sessions is None:
            sessions = SessionSet(self.storekeeper_app)
            setattr(g, self._key, sessions)
        return sessions

    def _teardown(self, exc: BaseException | None) -> None:
        sessions: SessionSet | None = g.pop(self._key, None)
        if sessions is not None:
            sessions.close()

    # Flask-SQLAlchemy's conveniences --------------------------------------------------

    def get_or_404(
        self,
        entity: type[T],
        ident: Any,
        *,
        store: str | None = None,
        description: str | None = None,
    ) -> T:
        """``session.get(entity, ident)``, or abort with 404 Not Found."""
        found = self.session(store).get(entity, ident)
        if found is None:
            _not_found(description)
        return found

    def first_or_404(
        self, statement: Select[Any], *, store: str | None = None, description: str | None = None
    ) -> Any:
        """The first result of ``statement``, or abort with 404 Not Found."""
        found = self.session(store).scalars(statement.limit(1)).first()
        if found is None:
            _not_found(description)
        return found

    def one_or_404(
        self, statement: Select[Any], *, store: str | None = None, description: str | None = None
    ) -> Any:
        """The only result of ``statement``; abort with 404 when there is none or several."""
        from sqlalchemy.exc import MultipleResultsFound, NoResultFound

        try:
            return self.session(store).scalars(statement).one()
        except (NoResultFound, MultipleResultsFound):
            _not_found(description)

    def paginate(
        self,
        statement: Select[Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = 100,
        count: bool = True,
        store: str | None = None,
    ) -> Page:
        """A :class:`~storekeeper.pagination.Page` of ``statement``; ``page`` and ``per_page``
        default to the request's ``?page=`` and ``?per_page=`` (1 and 20), and a bad value
        there is 404 Not Found, as in Flask-SQLAlchemy."""
        if page is None:
            page = _query_number("page", 1)
        if per_page is None:
            per_page = _query_number("per_page", 20)
        if max_per_page is not None:
            per_page = min(per_page, max_per_page)
        return paginate(self.session(store), statement, page=page, per_page=per_page, count=count)

    # flask stores ... -----------------------------------------------------------------

    def _commands(self) -> click.Group:
        keeper = self

        @click.group(self.cli_group, help="The app's stores (storekeeper).")
        def group() -> None:
            pass

        @group.command("sync", help="Create missing stores and tables, run initializers.")
        @click.option("--store", "stores", multiple=True, help="only this store (repeatable)")
        @click.option("--refresh", is_flag=True, help="drop and recreate (asks first)")
        @click.option("--yes", is_flag=True, help="do not ask before --refresh")
        @click.option("--first-time", is_flag=True, help="run initializers as the first time")
        def sync_command(
            stores: tuple[str, ...], refresh: bool, yes: bool, first_time: bool
        ) -> None:
            from ..cli import _describe, say
            from ..provision import sync

            app = keeper.storekeeper_app
            with _click_errors():
                for name in stores:
                    app.store(name)
                if refresh and not yes:
                    targets = ", ".join(
                        f"{app.name}.{s}" for s in stores or [x.name for x in app.stores]
                    )
                    click.confirm(
                        f"Drop and recreate {targets}? All their data is lost.", abort=True
                    )

                def progress(result: StoreResult) -> None:
                    say(f"{result.app}.{result.store}: {_describe(result)}")

                report = sync(
                    [app],
                    stores=list(stores) or None,
                    refresh=refresh,
                    first_time=first_time,
                    progress=progress,
                )
            say("sync: changed" if report.changed else "sync: no changes, everything is up to date")

        @group.command("status", help="Every store: its service, whether it exists, its size.")
        def status_command() -> None:
            from ..cli import print_status
            from ..provision import status

            with _click_errors():
                print_status(status([keeper.storekeeper_app]))

        return group


class _BadInputError(click.ClickException):
    exit_code = 2  # as the storekeeper command: 2 is bad input, 1 failed while working


class _click_errors:
    """Turn storekeeper's errors into click's: the message, no traceback, the CLI's exit code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, BadInput):
            raise _BadInputError(str(exc)) from None
        if isinstance(exc, StorekeeperError):
            raise click.ClickException(str(exc)) from None


def _not_found(description: str | None) -> NoReturn:
    abort(404, description=description)


def _query_number(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        abort(404, description=f"?{name}= must be a whole number of at least 1, not {raw!r}")
    return value
