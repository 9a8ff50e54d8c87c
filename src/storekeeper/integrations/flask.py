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

``flask stores`` has ``sync`` and ``status``, and Flask-Migrate's verbs for one store at a time
(the default store unless named): ``flask db migrate`` -> ``flask stores migrate``, and so on
for ``init``, ``revision``, ``upgrade``, ``downgrade``, ``stamp``, ``current``, ``history``,
``heads`` and ``check``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from flask import Flask, abort, g, has_request_context, request

from ..errors import BadInput, StorekeeperError
from ..pagination import Page, paginate
from ..secret import mask
from ..sessions import SessionSet, default_store

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import Session

    from ..declare import App
    from ..migrate import MigrateResult
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
        self._verbs: frozenset[str] = frozenset()  # the verbs of flask stores, once made
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
        error_out: bool = True,
        count: bool = True,
        store: str | None = None,
    ) -> Page:
        """A :class:`~storekeeper.pagination.Page` of ``statement``, as Flask-SQLAlchemy's
        ``db.paginate``: ``page`` and ``per_page`` default to the request's ``?page=`` and
        ``?per_page=`` (1 and 20; outside a request, 1 and 20), ``per_page`` is capped at
        ``max_per_page``. With ``error_out`` (the default), a page past the last one, a page
        or per_page below 1 and a query value that is not a whole number abort with 404 Not
        Found; with ``error_out=False`` bad values fall back to page 1 and 20 per page, and a
        page past the last one is empty."""
        page, per_page = _page_numbers(page, per_page, max_per_page, error_out)
        found = paginate(self.session(store), statement, page=page, per_page=per_page, count=count)
        if error_out and not found.items and page != 1:
            pages = "" if found.total is None else f" (there are {found.pages})"
            _not_found(f"page {page} is past the last page{pages}")
        return found

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
            from ..provision import sync
            from ..report import describe, say

            app = keeper.storekeeper_app
            with keeper._errors():
                for name in stores:
                    app.store(name)
                if refresh and not yes:
                    _confirm_refresh(app, stores)

                def progress(result: StoreResult) -> None:
                    say(f"{result.app}.{result.store}: {describe(result)}")

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
            from ..provision import status
            from ..report import print_status

            with keeper._errors():
                print_status(status([keeper.storekeeper_app]))

        self._add_migration_commands(group)
        self._verbs = frozenset(group.commands)
        return group

    def _add_migration_commands(self, group: click.Group) -> None:
        """Flask-Migrate's ``flask db`` verbs, each on one store: the library does the work,
        the ``storekeeper`` command's printers say what it did."""
        from .. import migrate
        from ..migrate.commands import revision_state
        from ..report import (
            print_check,
            print_current,
            print_heads,
            print_history,
            print_init,
            print_migrated,
            print_revision,
            say,
        )

        keeper = self
        store_argument = click.argument("store", required=False)
        message_option = click.option("-m", "--message", help="what the migration changes")
        rev_id_option = click.option("--rev-id", help="the revision id instead of a random one")
        empty_option = click.option("--empty", is_flag=True, help="write it even when empty")

        @group.command("init", help="Create a store's Alembic script directory.")
        @store_argument
        def init_command(store: str | None) -> None:
            with keeper._errors():
                app, name = keeper.storekeeper_app, store or keeper.default_store()
                scripts = migrate.scripts_for(app, name)
                existed = scripts.exists
                print_init(scripts, migrate.init(app, name), existed=existed)
            say(f"next: {keeper._command('migrate', name)} -m 'first tables'")

        @group.command("migrate", help="New migration with what the models add or change.")
        @store_argument
        @message_option
        @rev_id_option
        @empty_option
        def migrate_command(
            store: str | None, message: str | None, rev_id: str | None, empty: bool
        ) -> None:
            # -m is left optional so that, when it is missing, the library's refusal (exit 2)
            # says how to give it, as for the storekeeper command.
            with keeper._errors():
                app, name = keeper._migrated_store(store)
                made = migrate.revision(
                    app, name, message or "", autogenerate=True, rev_id=rev_id, empty=empty
                )
            print_revision(made)

        @group.command("revision", help="New migration, empty unless --autogenerate.")
        @store_argument
        @message_option
        @click.option("--autogenerate", is_flag=True, help="fill it with what the models change")
        @click.option("--merge", is_flag=True, help="a migration joining several heads")
        @rev_id_option
        @empty_option
        def revision_command(
            store: str | None,
            message: str | None,
            autogenerate: bool,
            merge: bool,
            rev_id: str | None,
            empty: bool,
        ) -> None:
            with keeper._errors():
                app, name = keeper._migrated_store(store)
                made = migrate.revision(
                    app,
                    name,
                    message or "",
                    autogenerate=autogenerate,
                    merge=merge,
                    rev_id=rev_id,
                    empty=empty,
                )
            print_revision(made)

        def add_move(
            action: str, move: Callable[[App, str, str], MigrateResult], help: str, to: str | None
        ) -> None:
            # Downgrade and stamp (to=None) lose or hide schema: they go only where they are
            # told; upgrade goes to head unless told.
            to_option = (
                click.option("--to", required=True, metavar="REV", help="revision, -1, base")
                if to is None
                else click.option("--to", default=to, metavar="REV", help=f"default: {to}")
            )

            @group.command(action, help=help)
            @store_argument
            @to_option
            def move_command(store: str | None, to: str) -> None:
                with keeper._errors():
                    app, name = keeper._migrated_store(store)
                    result = move(app, name, to)
                print_migrated([result])

        add_move("upgrade", migrate.upgrade, "Migrate a store up to head (or --to REV).", "head")
        add_move(
            "downgrade", migrate.downgrade, "Migrate a store down to --to REV (-1, base).", None
        )
        add_move("stamp", migrate.stamp, "Record --to REV in a store, running nothing.", None)

        @group.command("current", help="A store's revision against its head.")
        @store_argument
        def current_command(store: str | None) -> None:
            with keeper._errors():
                state = revision_state(*keeper._migrated_store(store))
            print_current([state])

        @group.command("history", help="A store's migrations, newest first.")
        @store_argument
        def history_command(store: str | None) -> None:
            with keeper._errors():
                app, name = keeper._migrated_store(store)
                revisions = migrate.history(app, name)
            print_history(revisions, f"{app.name}.{name}")

        @group.command("heads", help="A store's head revision(s).")
        @store_argument
        def heads_command(store: str | None) -> None:
            with keeper._errors():
                app, name = keeper._migrated_store(store)
                found = migrate.heads(app, name)
            print_heads(found, f"{app.name}.{name}", keeper._command("revision", name, "--merge"))

        @group.command("check", help="Fail when a store's models and its schema drift apart.")
        @store_argument
        def check_command(store: str | None) -> None:
            with keeper._errors():
                app, name = keeper._migrated_store(store)
                differences = migrate.check(app, name)
            label = f"{app.name}.{name}"
            print_check({label: [keeper._spell(d) for d in differences]})
            if differences:
                raise click.ClickException(
                    f"check failed for {label}: write a migration "
                    f"({keeper._command('migrate', name)} -m MSG) or fix the models"
                )

    def _errors(self) -> _click_errors:
        """Inside a ``flask stores`` command: storekeeper's errors as click's, their hints
        spelled as this Flask app's commands."""
        return _click_errors(self._spell)

    def _spell(self, text: str) -> str:
        """``text`` with the library's hints spelled as this Flask app's commands:
        ``storekeeper upgrade APP.STORE`` -> ``flask stores upgrade STORE``, ``storekeeper
        revision APP.STORE --init`` -> ``flask stores init STORE``, ``storekeeper sync`` ->
        ``flask stores sync``. Hints that ``flask stores`` cannot say (``assign``,
        ``service ...``, a kind's stores, another app) stay ``storekeeper`` commands, which
        are installed with it."""
        return _HINT.sub(self._spell_hint, text)

    def _spell_hint(self, hint: re.Match[str]) -> str:
        verb, target, init = hint["verb"], hint["target"], hint["init"] or ""
        if verb not in self._verbs:
            return hint[0]
        if verb == "revision" and init:
            verb, init = "init", ""
        if target is None:
            return f"{self._command(verb)}{init}"
        name = target.rstrip(".")
        after = target[len(name) :]  # a full stop ending the sentence, not the target's
        app_name, dot, store = name.partition(".")
        if app_name == self.storekeeper_app.name and dot and store.isidentifier():
            return f"{self._command(verb, store)}{after}{init}"
        if verb in ("sync", "status"):
            # The whole app (or the next word of the sentence): flask stores serves one app.
            own = app_name == self.storekeeper_app.name and not dot
            return f"{self._command(verb)}{after if own else ' ' + target}{init}"
        return hint[0]

    def _command(self, verb: str, *args: str) -> str:
        """How a user types one of this extension's commands, for the hints in messages."""
        return " ".join(["flask", self.cli_group, verb, *args])

    def _migrated_store(self, store: str | None) -> tuple[App, str]:
        """The app and the store a migration command names (the default store when none),
        refused with the ``init`` command to run when it has no script directory yet."""
        from ..migrate import scripts_for

        app, name = self.storekeeper_app, store or self.default_store()
        scripts_for(app, name).require()  # its hint, spelled by _spell: flask stores init
        return app, name


class _BadInputError(click.ClickException):
    exit_code = 2  # as the storekeeper command: 2 is bad input, 1 failed while working


class _click_errors:
    """Turn storekeeper's errors into click's: the message (secrets masked, hints spelled by
    ``spell``), no traceback, the exit code the ``storekeeper`` command gives them."""

    def __init__(self, spell: Callable[[str], str]) -> None:
        self._spell = spell

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, StorekeeperError):
            kind = _BadInputError if exc.exit_code == 2 else click.ClickException
            raise kind(self._spell(mask(str(exc)))) from None


# ``storekeeper VERB [TARGET] [--init]`` in the library's messages.
_HINT = re.compile(
    r"\bstorekeeper (?P<verb>[a-z]+)(?: (?P<target>[A-Za-z_][\w.:*]*))?(?P<init> --init)?"
)


def _confirm_refresh(app: App, stores: tuple[str, ...]) -> None:
    """Ask before ``--refresh`` drops stores; anything but yes (no answer too) is bad input,
    exit 2, as in the ``storekeeper`` command: nothing was done, at the user's word."""
    targets = ", ".join(f"{app.name}.{s}" for s in stores or [x.name for x in app.stores])
    try:
        confirmed = click.confirm(f"Drop and recreate {targets}? All their data is lost.")
    except click.Abort:  # end of input, or Ctrl-C at the question
        click.echo()  # end the question's line
        raise BadInput(
            "refresh not confirmed (no answer); nothing was changed; pass --yes to refresh "
            "without the question"
        ) from None
    if not confirmed:
        raise BadInput("refresh not confirmed; nothing was changed")


def _not_found(description: str | None) -> NoReturn:
    abort(404, description=description)


def _page_numbers(
    page: int | None, per_page: int | None, max_per_page: int | None, error_out: bool
) -> tuple[int, int]:
    """The page and page size to show, decided as Flask-SQLAlchemy decides them."""
    if has_request_context():
        if page is None:
            page = _query_number("page", 1, error_out)
        if per_page is None:
            per_page = _query_number("per_page", 20, error_out)
    page = 1 if page is None else page
    per_page = 20 if per_page is None else per_page
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            _not_found(f"page must be at least 1, not {page}")
        page = 1
    if per_page < 1:
        if error_out:
            _not_found(f"per_page must be at least 1, not {per_page}")
        per_page = 20
    return page, per_page


def _query_number(name: str, default: int, error_out: bool) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        if error_out:
            _not_found(f"?{name}= must be a whole number of at least 1, not {raw!r}")
        return default
