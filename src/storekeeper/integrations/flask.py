"""Flask: sessions that live for the app context, and ``flask stores ...`` commands.

::

    stores = StoreKeeper(flask_app, app)            # or StoreKeeper(app=app).init_app(flask_app)

    @flask_app.get("/users/<name>")
    def show(name):
        user = stores.get_or_404(User, name)       # the default store's session
        stores.session("scores_db").add(...)       # another store, same app context
        stores.session.commit()                    # commit yourself, as with Flask-SQLAlchemy

    gages = stores.driver(GageReader)              # a driver on the same sessions

Each store's session is opened on first use in an app context (a request, a CLI command) and
rolled back and closed when the context is torn down: commit what you want kept. Moving from
Flask-SQLAlchemy: ``db.session`` -> ``stores.session``, ``db.get_or_404`` ->
``stores.get_or_404``, ``db.paginate`` -> ``stores.paginate``; ``Model.query.filter_by(...)``
-> ``stores.session.scalars(select(Model).filter_by(...))`` (README.md has the whole table).

``flask stores`` has ``sync`` and ``status``, and Flask-Migrate's verbs for one store at a time
(the default store unless named): ``flask db migrate`` -> ``flask stores migrate``, and so on
for ``init``, ``revision``, ``upgrade``, ``downgrade``, ``stamp``, ``current``, ``history``,
``heads`` and ``check``; and ``service ...``, ``config show`` and ``secret ...``. They are the
verbs of :mod:`storekeeper.commands`, the ones the ``storekeeper`` command is built from: the
same options, tables and exit codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from flask import Flask, abort, g, has_request_context, request

from ..commands import Face, Verb, with_options
from ..errors import BadInput
from ..pagination import Page, paginate
from ..sessions import SessionSet, default_store, driver_store

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import Session

    from ..declare import App
    from ..site import Site

__all__ = ["StoreKeeper"]

T = TypeVar("T")
D = TypeVar("D")


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

    def driver(self, driver: Callable[[Session], D], store: str | None = None) -> D:
        """``stores.driver(GageReader)``: a driver on this app context's session of its store
        (``store``, else the store whose metadata holds its model, else the default store),
        the session ``stores.session(...)`` gives: commit it as that one."""
        name = driver_store(self.storekeeper_app, driver, store, self.default)
        return driver(self._sessions().get(name))

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
        """``flask stores``: the verbs of :mod:`storekeeper.commands` on this app's stores,
        one store at a time (the default store unless named), named as Flask-Migrate names
        them."""
        from ..commands import GROUPS, VERBS

        face = _FlaskFace(self)
        group = click.Group(self.cli_group, help="The app's stores (storekeeper).")
        groups: dict[str, click.Group] = {}
        for full_name, (key, fixed, help) in _FLASK_COMMANDS.items():
            parent, _, name = full_name.rpartition(" ")
            if parent and parent not in groups:
                groups[parent] = click.Group(parent, help=_sentence(GROUPS[parent]))
                group.add_command(groups[parent])
            (groups[parent] if parent else group).add_command(
                face.command(name, VERBS[key], fixed, help)
            )
        self._verbs = frozenset(group.commands)
        return group

    def _spell(self, text: str) -> str:
        """``text`` with the library's hints spelled as this Flask app's commands:
        ``storekeeper upgrade APP.STORE`` -> ``flask stores upgrade STORE``, ``storekeeper
        revision APP.STORE --init`` -> ``flask stores init STORE``, ``storekeeper sync`` ->
        ``flask stores sync``. Hints that ``flask stores`` cannot say (``assign``,
        ``service ...``, a kind's stores, another app) stay ``storekeeper`` commands, which
        are installed with it."""
        return _HINT.sub(self._spell_hint, _AUTOGENERATE.sub(self._spell_migrate, text))

    def _spell_migrate(self, hint: re.Match[str]) -> str:
        """``storekeeper revision APP.STORE -m MSG --autogenerate`` is ``flask stores
        migrate STORE -m MSG`` (then spelled by :meth:`_spell_hint`)."""
        app_name, _, store = hint["target"].partition(".")
        if "migrate" not in self._verbs or app_name != self.storekeeper_app.name:
            return hint[0]
        if not store.isidentifier():
            return hint[0]
        return f"storekeeper migrate {hint['target']} {hint['message']}"

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


class _FlaskFace(Face):
    """The verbs' view of one StoreKeeper: its app, its site, its spelling of hints."""

    def __init__(self, keeper: StoreKeeper) -> None:
        super().__init__()
        self.keeper = keeper
        self.prog = f"flask {keeper.cli_group}"

    @property
    def site(self) -> Site:
        site = self.keeper.storekeeper_app.site
        self._apply_lock_timeout(site)
        return site

    @property
    def apps(self) -> list[App]:
        return [self.keeper.storekeeper_app]

    def spell(self, text: str) -> str:
        return self.keeper._spell(text)

    def target(self, store: str | None, *, migrated: bool = True) -> str:
        """``APP.STORE`` of the store named, or of the default store; when ``migrated``,
        refused with the ``init`` command to run when it has no script directory yet."""
        from ..migrate import scripts_for

        app, name = self.keeper.storekeeper_app, store or self.keeper.default_store()
        if migrated:
            scripts_for(app, name).require()  # its hint, spelled: flask stores init
        return f"{app.name}.{name}"

    def command(
        self, name: str, verb: Verb, fixed: dict[str, Any], help: str | None
    ) -> click.Command:
        """``flask stores NAME``: ``verb`` with ``fixed`` options, on ``[STORE]`` when it acts
        on stores."""
        one_store = verb.acts_on in ("targets", "moves", "many", "target")

        def callback(store: str | None = None, **kw: Any) -> None:
            self.lock_timeout = kw.pop("lock_timeout", None)

            def call() -> int:
                if verb.acts_on == "targets":
                    kw["targets"] = [self.target(store)]
                elif verb.acts_on == "moves":
                    kw.update(targets=[self.target(store)], every=False)
                elif verb.acts_on == "many":
                    kw.update(targets=[self.target(store, migrated=False)], every=False)
                elif verb.acts_on == "target":
                    kw["target"] = self.target(store, migrated=not fixed.get("init"))
                elif verb.acts_on == "apps":
                    kw["apps"] = ()
                return verb.run(self, **fixed, **kw)

            code = self.run(call)
            if code:
                click.get_current_context().exit(code)

        func = with_options(verb, callback, fixed)
        if one_store:
            func = click.argument("store", required=False)(func)
        text = help or _sentence(verb.help)
        return click.command(name, help=text, short_help=text.split(";")[0])(func)


def _sentence(text: str) -> str:
    """A verb's help as Flask's commands say theirs: a capital, a full stop."""
    return text[:1].upper() + text[1:] + "."


# flask stores' commands: (the verb, the options it fixes, its help when not the verb's).
_NEW_MIGRATION = {"init": False, "merge": False}
_FLASK_COMMANDS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "sync": ("sync", {}, None),
    "status": ("status", {}, None),
    "init": (
        "revision",
        {
            "init": True,
            "message": None,
            "autogenerate": False,
            "merge": False,
            "rev_id": None,
            "empty": False,
            "as_json": False,
        },
        "Create a store's Alembic script directory.",
    ),
    "migrate": (
        "revision",
        {**_NEW_MIGRATION, "autogenerate": True},
        "New migration with what the models add or change.",
    ),
    "revision": ("revision", {"init": False}, "New migration, empty unless --autogenerate."),
    **{
        verb: (verb, {}, None)
        for verb in ("upgrade", "downgrade", "stamp", "current", "history", "heads", "check")
    },
    # The site's services, configuration and key, as storekeeper has them. (Not assign: a
    # service is plugged into an app's store with storekeeper assign, which names the app.)
    **{
        verb: (verb, {}, None)
        for verb in (
            "service add",
            "service list",
            "service remove",
            "service test",
            "config show",
            "secret rotate",
            "secret new-key",
        )
    },
}

# ``storekeeper revision APP.STORE -m MSG --autogenerate``, which flask stores calls migrate.
_AUTOGENERATE = re.compile(
    r"\bstorekeeper revision (?P<target>[A-Za-z_][\w.:*]*) (?P<message>-m (?:'[^']*'|\S+)) "
    r"--autogenerate"
)

# ``storekeeper VERB [TARGET] [--init]`` in the library's messages.
_HINT = re.compile(
    r"\bstorekeeper (?P<verb>[a-z]+)(?: (?P<target>[A-Za-z_][\w.:*]*))?(?P<init> --init)?"
)


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
