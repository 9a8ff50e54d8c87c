"""Read replicas: reads go to a PostgreSQL streaming replica that is close enough behind its
primary, writes to the primary, and a reader always sees its own writes.

A store names its replica services (``[replicas]`` in ``storekeeper.toml``, ``storekeeper
assign APP.STORE SERVICE --replica NAME``, :meth:`storekeeper.site.Site.add_replica`).
``app.session(name, readonly=True)`` and read drivers then read from one of them:

- **read-your-writes**: after a commit that wrote, the primary's WAL position (flushed, so
  streamed to the replicas) is kept as a :class:`Token` in the unit of work (:func:`scope`;
  outside one, in the current thread or task). A replica serves a read only once it has
  replayed past the token, else the read goes to the primary. ``str(token())`` is a short
  string an app carries to the next request (a cookie) or task (a header), and hands back
  with ``scope(that_string)``;
- **lag**: each read probes the replica it is about to use, on the very connection it then
  reads on (its replayed position and lag, one round trip); replicas are tried least behind
  first, and one more than ``max_replica_lag`` seconds behind is skipped;
- **faults**: a replica that cannot be reached is skipped with one warning (not one per read)
  and tried again every :data:`RETRY_SECONDS`; when no replica will do, the read goes to the
  primary, in a read-only transaction, as it would on a replica.

``check_replica`` refuses a service that is not a replica of the store's primary (another
cluster's ``system_identifier``, or a server not in recovery); ``service test`` and ``sync``
call it. ``replica_status`` is what ``storekeeper status`` shows of each replica.

The SQL here is PostgreSQL's own (WAL positions, recovery state): replicas are a PostgreSQL
feature, and SQLite stores simply read from their file.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from .errors import BadInput, ConfigError, ServiceUnavailable
from .naming import split_target
from .secret import mask
from .site import place

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .backends import Backend, Service
    from .declare import App
    from .site import Placement, Site

__all__ = [
    "RETRY_SECONDS",
    "ReadScope",
    "ReplicaStatus",
    "Token",
    "begin",
    "check_replica",
    "read_session",
    "replica_status",
    "scope",
    "token",
]

log = logging.getLogger("storekeeper.replicas")

#: Seconds before a replica that could not be reached is tried again.
RETRY_SECONDS = 5.0
#: Seconds a replica's known lag is trusted before it is probed again, when that lag was too
#: much: a lagging replica is not probed on every read.
RECHECK_SECONDS = 1.0
#: Seconds to wait for a replica to accept a connection: a replica that does not answer must
#: not hold a read for the operating system's TCP timeout.
CONNECT_TIMEOUT = 3

# The replica's state, on the connection the read then uses: whether it is (still) a replica,
# how far it has replayed, and how far behind it is: nothing waiting to be replayed (all it
# received is replayed) is no lag, however long ago the last transaction was; else the age of
# the last transaction it replayed (NULL, unknown, when it replayed none since it started).
_PROBE = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0.0 "
    "ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 END"
)
# The primary's position after a commit that wrote: how far its WAL is flushed, which is past
# the commit's record (see _WROTE) and all of which the primary streams to its replicas
# (pg_current_wal_lsn(), the write position, may hold records a replica cannot have yet).
_PRIMARY_POSITION = text("SELECT pg_current_wal_flush_lsn()::text")
# Before a commit: whether the transaction wrote anything (it has a transaction id); and, when
# the server commits asynchronously (synchronous_commit = off), this one commit waits for its
# record to be flushed locally ('local'), so that the flushed position is past it. Any other
# setting flushes locally already, and is kept (remote_apply is not weakened).
_WROTE = text(
    "SELECT pg_current_xact_id_if_assigned() IS NOT NULL, "
    "CASE WHEN current_setting('synchronous_commit') = 'off' "
    "THEN set_config('synchronous_commit', 'local', true) END"
)
_IDENTITY = text("SELECT system_identifier::text, pg_is_in_recovery() FROM pg_control_system()")

# session.info keys of a watched primary session.
_BEGAN = "storekeeper.replicas.began"
_WROTE_KEY = "storekeeper.replicas.wrote"
# session.info key saying which service a read session reads from.
SERVED_BY = "storekeeper.served_by"
PRIMARY = "primary"


# WAL positions and tokens ----------------------------------------------------------------


def parse_lsn(value: str) -> int:
    """A WAL position written as PostgreSQL does (``16/B374D848``) as a number."""
    high, slash, low = value.strip().partition("/")
    try:
        if not slash or not high or not low or len(high) > 8 or len(low) > 8:
            raise ValueError(value)
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise BadInput(
            f"{value!r} is not a WAL position (two hexadecimal numbers, like '0/16B3748')"
        ) from None


def format_lsn(position: int) -> str:
    """A WAL position as PostgreSQL writes it."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class Token:
    """How far each store's primary had got when this unit of work last wrote to it: a read
    that carries the token is served by a replica only once the replica has replayed that far.

    ``str(token)`` is ``my_app.example_db:0/3000A28`` (several stores joined by ``~``), safe
    in a cookie, a URL and a task header; :meth:`parse` reads it back.
    """

    positions: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def __str__(self) -> str:
        return "~".join(
            f"{app}.{store}:{format_lsn(lsn)}"
            for (app, store), lsn in sorted(self.positions.items())
        )

    def __bool__(self) -> bool:
        return bool(self.positions)

    @classmethod
    def parse(cls, value: str | Token | None) -> Token:
        """A token from its string (``None`` or ``""``: the empty token); a string that is not
        one is a :class:`BadInput` naming it."""
        if isinstance(value, Token):
            return value
        if not value:
            return cls()
        positions: dict[tuple[str, str], int] = {}
        for part in value.split("~"):
            target, colon, lsn = part.rpartition(":")
            if not colon:
                raise BadInput(
                    f"{value!r} is not a replica token: expected APP.STORE:POSITION parts joined "
                    "by '~', like 'my_app.example_db:0/3000A28'"
                )
            key = split_target(target)
            positions[key] = max(parse_lsn(lsn), positions.get(key, 0))
        return cls(positions)

    def position(self, app: str, store: str) -> int | None:
        """The position reads of ``app.store`` must wait for, if any."""
        return self.positions.get((app, store))

    def merge(self, other: Token) -> Token:
        """The later position of each store of both tokens."""
        merged = dict(self.positions)
        for key, lsn in other.positions.items():
            merged[key] = max(lsn, merged.get(key, 0))
        return Token(merged)


class ReadScope:
    """A unit of work's token: what it brought in (a cookie, a task header) and the positions
    of the writes it committed since. Made by :func:`scope`, or on first use per thread/task."""

    def __init__(self, start: Token) -> None:
        self._token = start
        # Stores written since their position was last asked: (app, store) -> router. The
        # position is read from the primary when a read or a caller needs it, not at every
        # commit (later is safe: it is only ever further on).
        self._pending: dict[tuple[str, str], _Router] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReadScope({str(self._token)!r}, pending={sorted(self._pending)})"

    @property
    def token(self) -> Token:
        """The token, with the positions of writes committed so far."""
        for key in list(self._pending):
            self._settle(key)
        return self._token

    def position(self, app: str, store: str) -> int | None:
        """The position reads of ``app.store`` must wait for in this unit of work."""
        self._settle((app, store))
        return self._token.position(app, store)

    def carry(self, other: str | Token | None) -> None:
        """Take in the positions of another token (a cookie read after the scope began)."""
        parsed = Token.parse(other)
        with self._lock:
            self._token = self._token.merge(parsed)

    def _wrote(self, key: tuple[str, str], router: _Router) -> None:
        self._pending[key] = router

    def _settle(self, key: tuple[str, str]) -> None:
        router = self._pending.pop(key, None)
        if router is None:
            return
        try:
            lsn = router.primary_position()
        except DBAPIError:
            # The primary is not reachable now: until it is, reads of this store go to it
            # (and fail as it does), never to a replica that may not have the write.
            self._pending[key] = router
            raise
        with self._lock:
            self._token = self._token.merge(Token({key: lsn}))


_current: ContextVar[ReadScope | None] = ContextVar("storekeeper_read_scope", default=None)


def current() -> ReadScope:
    """The unit of work's read scope: the innermost :func:`scope`, else one for this thread
    (or asyncio task) made on first use."""
    found = _current.get()
    if found is None:
        found = ReadScope(Token())
        _current.set(found)
    return found


def token() -> Token:
    """The current unit of work's token (``str()`` it to carry it in a cookie or a task
    header); empty when it wrote nothing to a store with replicas and carried nothing in."""
    return current().token


def _start(carried: str | Token | None, strict: bool) -> ReadScope:
    try:
        return ReadScope(Token.parse(carried))
    except BadInput:
        if strict:
            raise
        # A token is only ever a reason to read from the primary: one that does not parse
        # (a client's cookie, tampered with or from another version) is dropped, not fatal.
        log.debug("ignoring a malformed replica token %r", carried)
        return ReadScope(Token())


@contextmanager
def scope(carried: str | Token | None = None, *, strict: bool = True) -> Iterator[ReadScope]:
    """A unit of work for read-your-writes: within the block, reads wait (on the primary) for
    the writes ``carried`` names (a token string from a cookie or a task header, or ``None``)
    and for those committed inside the block; ``scope.token`` gives the token to carry on.

    A malformed ``carried`` is a :class:`BadInput` naming it; with ``strict=False`` (for
    what a client sent) it is ignored.
    """
    made = _start(carried, strict)
    reset = _current.set(made)
    try:
        yield made
    finally:
        _current.reset(reset)


def begin(carried: str | Token | None = None, *, strict: bool = True) -> ReadScope:
    """Start a new unit of work in the current context, as :func:`scope` does, for frameworks
    whose request hooks cannot wrap a block (``before_request``): it lasts until the next
    ``begin`` in this thread or task, and a ``scope`` inside it still nests."""
    made = _start(carried, strict)
    _current.set(made)
    return made


# routing ---------------------------------------------------------------------------------


@dataclass
class _ReplicaState:
    """What is known of one replica: the last probe's answer, or why it failed."""

    service: Service
    backend: Backend
    replay: int | None = None
    lag: float | None = None
    checked: float = 0.0
    down: str | None = None
    retry_at: float = 0.0


class _Router:
    """Reads of one store: its primary and its replicas, and what is known of them."""

    def __init__(self, site: Site, app: str, store: str, placement: Placement) -> None:
        self.site, self.app, self.store = site, app, store
        self.database = placement.database
        self.primary = site.backend(placement.service)
        self.max_lag = site.config.max_replica_lag_seconds
        self.replicas = [
            _ReplicaState(service, site.backend(service))
            for service in (site.service(r.value) for r in site.replicas(app, store))
        ]
        self._makers: dict[str, sessionmaker[Session]] = {}
        self._lock = threading.Lock()
        self._turn = itertools.count()

    # engines ---------------------------------------------------------------------------

    def primary_engine(self) -> Engine:
        return self.site.engine(self.primary.database_url(self.database), self.primary)

    def replica_engine(self, replica: _ReplicaState) -> Engine:
        """The engine read sessions use on ``replica``: without transactions (autocommit), as
        a hot standby's are read only anyway; so a read costs no BEGIN and no ROLLBACK round
        trip, and each statement sees at least what the probe before it saw."""
        url = replica.backend.database_url(self.database)
        options: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        return _autocommit(self.site.engine(url, replica.backend, **options))

    def _maker(self, name: str, engine: Engine) -> sessionmaker[Session]:
        maker = self._makers.get(name)
        if maker is None or maker.kw.get("bind") is not engine:
            maker = self._makers[name] = sessionmaker(bind=engine, expire_on_commit=False)
        return maker

    def primary_position(self) -> int:
        with self.primary_engine().connect() as conn:
            return parse_lsn(str(conn.execute(_PRIMARY_POSITION).scalar_one()))

    # choosing --------------------------------------------------------------------------

    def read_session(self, wait_for: int | None) -> Session:
        """A session on the replica least behind that has replayed past ``wait_for`` and is
        within the lag allowed; else a read-only session on the primary."""
        now = time.monotonic()
        for replica in self._candidates(now):
            session = self._try(replica, wait_for)
            if session is not None:
                return session
        session = self._maker(PRIMARY, _read_only(self.primary_engine()))()
        session.info[SERVED_BY] = PRIMARY
        return session

    def _candidates(self, now: float) -> list[_ReplicaState]:
        usable = [
            r
            for r in self.replicas
            if not (r.down and now < r.retry_at)
            and not (
                r.lag is not None and r.lag > self.max_lag and now - r.checked < RECHECK_SECONDS
            )
        ]
        # Least behind first; among equals, in turn, so that they share the reads.
        turn = next(self._turn)
        count = len(usable) or 1
        return sorted(
            usable,
            key=lambda r: (
                round(r.lag, 1) if r.lag is not None else 0.0,
                (self.replicas.index(r) - turn) % count,
            ),
        )

    def _try(self, replica: _ReplicaState, wait_for: int | None) -> Session | None:
        """A session on ``replica`` if its probe (the session's first statement) says it will
        do; ``None`` (the session closed) if not."""
        session = self._maker(replica.service.name, self.replica_engine(replica))()
        try:
            in_recovery, replay, lag = session.execute(_PROBE).one()
        except DBAPIError as exc:
            session.close()
            self._went_down(replica, exc)
            return None
        replica.checked = time.monotonic()
        if not in_recovery:
            session.close()
            self._not_a_replica(replica)
            return None
        self._came_back(replica)
        replica.replay = parse_lsn(replay) if replay else None
        replica.lag = max(0.0, float(lag)) if lag is not None else None
        usable = (
            replica.lag is not None
            and replica.lag <= self.max_lag
            and (wait_for is None or (replica.replay is not None and replica.replay >= wait_for))
        )
        if not usable:
            session.close()
            return None
        session.info[SERVED_BY] = replica.service.name
        return session

    def _went_down(self, replica: _ReplicaState, exc: DBAPIError) -> None:
        reason = mask(" ".join(str(exc.orig).split()), replica.service.url.password)
        with self._lock:
            first = replica.down is None
            replica.down = reason or type(exc.orig).__name__
            replica.retry_at = time.monotonic() + RETRY_SECONDS
            replica.lag = replica.replay = None
        if first:
            log.warning(
                "replica %s of %s.%s cannot be reached (%s); its reads go to the other "
                "replicas or the primary, and it is tried again every %g s",
                replica.service.name,
                self.app,
                self.store,
                replica.down,
                RETRY_SECONDS,
            )

    def _came_back(self, replica: _ReplicaState) -> None:
        if replica.down is None:
            return
        with self._lock:
            was, replica.down = replica.down, None
        if was is not None:
            log.info("replica %s of %s.%s is back", replica.service.name, self.app, self.store)

    def _not_a_replica(self, replica: _ReplicaState) -> None:
        with self._lock:
            first = replica.down is None
            replica.down = "not in recovery: it is a primary server, not a replica"
            replica.retry_at = time.monotonic() + RETRY_SECONDS
        if first:
            log.warning(
                "service %s, a replica of %s.%s, is not in recovery (promoted, or not a "
                "replica): its reads go to the other replicas or the primary",
                replica.service.name,
                self.app,
                self.store,
            )


_routers: weakref.WeakKeyDictionary[Site, dict[tuple[Any, ...], _Router]] = (
    weakref.WeakKeyDictionary()
)
_routers_lock = threading.Lock()


def _router(app: App, name: str) -> _Router | None:
    """The router of store ``name``, or ``None`` when it has no replicas (or is not on
    PostgreSQL). Made again when the store's placement or replicas change."""
    site = app.site
    replicas = site.replicas(app.name, name)
    if not replicas:
        return None
    placement = place(app, name)
    if placement.service.url.get_backend_name() != "postgresql":
        return None
    key = (
        app.name,
        name,
        site.backend(placement.service),
        placement.database,
        tuple(site.backend(site.service(r.value)) for r in replicas),
        site.config.max_replica_lag_seconds,
    )
    routers = _routers.get(site)
    if routers is None:
        with _routers_lock:
            routers = _routers.setdefault(site, {})
    router = routers.get(key)
    if router is None:
        router = routers[key] = _Router(site, app.name, name, placement)
    return router


# sessions --------------------------------------------------------------------------------


def read_session(app: App, name: str) -> Session:
    """A session that only reads store ``name``: on a replica when one will do (see the
    module's docstring), else on the primary in a read-only transaction.

    ``session.info["storekeeper.served_by"]`` names the service it reads from (``"primary"``).
    Where ``app.sessionmaker(name)`` is not the store's own (a test joined its sessions to
    its transaction), that one is used, so the test's data is seen.
    """
    maker = app.sessionmaker(name)
    if not getattr(maker, "_storekeeper_watched", False):
        session = maker()
        session.info[SERVED_BY] = PRIMARY
        return session
    router = _router(app, name)
    if router is None:
        session = Session(bind=_read_only(maker.kw["bind"]), expire_on_commit=False)
        session.info[SERVED_BY] = PRIMARY
        return session
    return router.read_session(current().position(app.name, name))


_read_only_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_autocommit_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _autocommit(engine: Engine) -> Engine:
    found = _autocommit_engines.get(engine)
    if found is None:
        found = _autocommit_engines[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return found


def _read_only(engine: Engine) -> Engine:
    """``engine`` whose transactions are read only (PostgreSQL's ``BEGIN READ ONLY``, no extra
    round trip), so code that writes in a read session fails on the primary as it would on a
    replica; SQLite's engines are used as they are."""
    if engine.dialect.name != "postgresql":
        return engine
    found = _read_only_engines.get(engine)
    if found is None:
        found = _read_only_engines[engine] = engine.execution_options(postgresql_readonly=True)
    return found


class ReadSessionScope:
    """``with app.session(name, readonly=True) as s:``: a read session, closed at the end
    (its transaction rolled back: it wrote nothing)."""

    __slots__ = ("_app", "_name", "_session")

    def __init__(self, app: App, name: str) -> None:
        self._app, self._name = app, name

    def __enter__(self) -> Session:
        self._session = read_session(self._app, self._name)
        return self._session

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._session.close()


def watch_commits(app: App, name: str, maker: sessionmaker[Session]) -> None:
    """Keep the primary's position in the unit of work's token after each commit of a session
    from ``maker`` (store ``name``'s own factory) that wrote, when the store has replicas.

    Installed on every PostgreSQL store's factory; a store without replicas pays one lookup
    per commit. Whether a commit wrote is PostgreSQL's answer (a transaction id was
    assigned), so writes by any path count: the ORM, Core, COPY.
    """
    maker._storekeeper_watched = True  # type: ignore[attr-defined]
    if maker.kw["bind"].dialect.name != "postgresql":
        return

    def began(session: Session, _transaction: Any, _connection: Any) -> None:
        session.info[_BEGAN] = True

    def before_commit(session: Session) -> None:
        if session.in_nested_transaction():  # a savepoint: the outer commit is the one
            return
        if not session.info.get(_BEGAN) and not (session.new or session.dirty or session.deleted):
            return
        if not app.site.replicas(app.name, name):
            return
        session.flush()
        if session.info.get(_BEGAN):
            wrote, _ = session.execute(_WROTE).one()
            session.info[_WROTE_KEY] = bool(wrote)

    def after_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return
        session.info.pop(_BEGAN, None)
        if session.info.pop(_WROTE_KEY, False):
            router = _router(app, name)
            if router is not None:
                current()._wrote((app.name, name), router)

    def ended(session: Session, transaction: Any) -> None:
        if transaction.parent is None:
            session.info.pop(_BEGAN, None)
            session.info.pop(_WROTE_KEY, None)

    event.listen(maker, "after_begin", began)
    event.listen(maker, "before_commit", before_commit)
    event.listen(maker, "after_commit", after_commit)
    event.listen(maker, "after_transaction_end", ended)


# checks and status -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of a store as ``status`` shows it."""

    service: str
    #: ``streaming``, ``lagging`` (more than ``max_replica_lag`` behind), ``down`` or
    #: ``not a replica``.
    state: str
    #: Seconds behind the primary (``None`` when unknown).
    lag: float | None = None
    #: The WAL position it has replayed.
    replayed: str | None = None
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """``pg_r1 0.4 s``, ``pg_r2 down``..."""
        if self.state in ("streaming", "lagging") and self.lag is not None:
            return f"{self.service} {self.lag:.1f} s" + (
                " (lagging)" if self.state == "lagging" else ""
            )
        return f"{self.service} {self.state}"


def _admin(backend: Backend) -> Engine:
    """The maintenance engine of a PostgreSQL service (replicas are PostgreSQL only)."""
    from .backends.postgresql import PostgresBackend

    if not isinstance(backend, PostgresBackend):
        raise BadInput(f"service {backend.service.name!r} is not PostgreSQL: it has no replicas")
    return backend.admin


def _identity(backend: Backend) -> tuple[str, bool]:
    with _admin(backend).connect() as conn:
        system, in_recovery = conn.execute(_IDENTITY).one()
    return str(system), bool(in_recovery)


def check_replica(site: Site, app: str, store: str, replica: str, primary: str) -> None:
    """Refuse service ``replica`` as a replica of ``app.store`` (on ``primary``) unless it is a
    streaming replica of that very server: the same ``system_identifier`` (the cluster's
    birth certificate, copied by ``pg_basebackup``) and in recovery. A :class:`ConfigError`
    says which and how to fix it; a server that cannot be reached raises
    :class:`~storekeeper.errors.ServiceUnavailable`."""
    replica_service = site.check_replica_service(app, store, replica, primary)
    primary_service = site.service(primary)
    ours, _ = _reach(site, primary_service)
    theirs, in_recovery = _reach(site, replica_service)
    fix = (
        f'fix replicas."{app}.{store}" where it is configured, or run: storekeeper assign '
        f"{app}.{store} {primary} --remove-replica {replica}"
    )
    if theirs != ours:
        raise ConfigError(
            f"service {replica!r} is configured as a replica of {app}.{store}, but it is not a "
            f"replica of its primary {primary!r}: its system identifier {theirs} is not the "
            f"primary's {ours} (another cluster); {fix}"
        )
    if not in_recovery:
        raise ConfigError(
            f"service {replica!r} is configured as a replica of {app}.{store}, but it is not in "
            f"recovery: it is a primary server (the primary itself, or a promoted replica), not "
            f"a replica of {primary!r}; {fix}"
        )


def _reach(site: Site, service: Service) -> tuple[str, bool]:
    from .backends.base import unreachable

    backend = site.backend(service)
    try:
        return _identity(backend)
    except DBAPIError as exc:
        raise unreachable(service, exc) from None


def check_store_replicas(app: App, name: str, placement: Placement) -> list[str]:
    """Check every replica of store ``name`` (see :func:`check_replica`): a service that is
    not a replica of the store's primary (or not PostgreSQL, or unknown) raises its
    :class:`BadInput`; one that cannot be reached is returned as a warning (reads skip it while
    it is down)."""
    site = app.site
    warnings = []
    for replica in site.replicas(app.name, name):
        try:
            check_replica(site, app.name, name, replica.value, placement.service.name)
        except ServiceUnavailable as exc:
            warnings.append(f"replica {replica.value} of {app.name}.{name}: {exc}")
    return warnings


def replicas_of_service(site: Site, service: str) -> list[tuple[str, str, str]]:
    """``(app, store, primary)`` of each store that ``service`` is a replica of."""
    found = []
    for (app, store), names in sorted(site.all_replicas().items()):
        if service in {n.value for n in names}:
            chosen = site.assignment(app, store)
            record = site.runtime_store(app, store) if chosen is None else None
            primary = chosen.value if chosen is not None else record.service if record else None
            if primary is not None:
                found.append((app, store, primary))
    return found


def replica_status(app: App, name: str) -> list[ReplicaStatus]:
    """Each replica of store ``name`` now: its lag and replayed position, or why it serves no
    reads (down, not a replica, too far behind)."""
    site = app.site
    replicas = site.replicas(app.name, name)
    if not replicas:
        return []
    placement = place(app, name)
    rows = []
    for replica in replicas:
        try:
            check_replica(site, app.name, name, replica.value, placement.service.name)
        except BadInput as exc:  # not a replica of this primary, or no service of that name
            rows.append(ReplicaStatus(replica.value, "not a replica", problem=str(exc)))
            continue
        except ServiceUnavailable as exc:
            rows.append(ReplicaStatus(replica.value, "down", problem=str(exc)))
            continue
        backend = site.backend(site.service(replica.value))
        try:
            with _admin(backend).connect() as conn:
                _, replay, lag = conn.execute(_PROBE).one()
        except DBAPIError as exc:
            reason = mask(" ".join(str(exc.orig).split()), backend.service.url.password)
            rows.append(ReplicaStatus(replica.value, "down", problem=reason))
            continue
        lagging = lag is None or float(lag) > site.config.max_replica_lag_seconds
        rows.append(
            ReplicaStatus(
                replica.value,
                "lagging" if lagging else "streaming",
                max(0.0, float(lag)) if lag is not None else None,
                replay,
            )
        )
    return rows
