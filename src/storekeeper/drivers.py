"""Read and write drivers (CQRS): every query and write a controller needs, for one model.

``class GageReader(ReadDriver[StreamGage])`` (or ``model = StreamGage``) declares one; it is
built on a session (``GageReader(session)``) or on a store (``with GageReader.of(app,
"example_db") as gages:``, which opens and ends its own unit of work). Filters are equality by
keyword, Django-style lookups (``depth__gt=3``) and SQLAlchemy expressions as positional
arguments. ``storekeeper.testing.fakes`` has in-memory drivers that obey the same contract.

Bulk writes (``add_many``, ``upsert_many``) go through PostgreSQL's COPY (:mod:`.bulk`); keyset
pages (``after``) carry cursors signed with the site's key (:mod:`.cursors`).

Not imported by ``import storekeeper``: SQLAlchemy is loaded when a driver module is.
"""

from __future__ import annotations

import builtins
import itertools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    inspect,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapper

from . import bulk
from .cursors import make_cursor, query_fingerprint, read_cursor
from .errors import BadInput, MultipleFound, NotFound
from .pagination import KeysetPage, Page

if TYPE_CHECKING:
    from typing import Self

    from sqlalchemy import Column, Connection, Table
    from sqlalchemy.orm import Session

    from .declare import App

__all__ = ["LOOKUPS", "MultipleFound", "ReadDriver", "WriteDriver"]

M = TypeVar("M")

#: A key to sign keyset cursors with: the bytes, text, or a function giving them on first use.
CursorKey = bytes | str | Callable[[], bytes]


def _like_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """A LIKE pattern (``%`` any run, ``_`` one character) as a regular expression."""
    parts = ["." if c == "_" else ".*" if c == "%" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), flags | re.DOTALL)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _like_to_glob(pattern: str) -> str:
    return "".join("*" if c == "%" else "?" if c == "_" else _glob_escape(c) for c in pattern)


def _py(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A comparison as SQL makes it: NULL compared with anything is not true."""
    return lambda a, b: a is not None and bool(test(a, b))


@dataclass(frozen=True)
class Lookup:
    """One ``__lookup``: its SQL (given the column, the value and the dialect's name) and the
    same test in Python for the fakes."""

    sql: Callable[[Any, Any, str], ColumnElement[bool]]
    python: Callable[[Any, Any], bool]


def _case_sensitive(glob: Callable[[Any], str], like: Callable[[Any, Any], Any]) -> Any:
    # SQLite's LIKE ignores ASCII case; GLOB does not: the same answer on every backend.
    def build(col: Any, value: Any, dialect: str) -> ColumnElement[bool]:
        if dialect == "sqlite":
            return col.op("GLOB")(glob(value))  # type: ignore[no-any-return]
        return like(col, value)  # type: ignore[no-any-return]

    return build


LOOKUPS: dict[str, Lookup] = {
    "exact": Lookup(
        lambda c, v, d: c.is_(None) if v is None else c == v,
        lambda a, b: a is None if b is None else _py(operator.eq)(a, b),
    ),
    "in": Lookup(lambda c, v, d: c.in_(list(v)), _py(lambda a, b: a in b)),
    "not_in": Lookup(lambda c, v, d: c.not_in(list(v)), _py(lambda a, b: a not in b)),
    "isnull": Lookup(
        lambda c, v, d: c.is_(None) if v else c.is_not(None), lambda a, b: (a is None) == bool(b)
    ),
    "gt": Lookup(lambda c, v, d: c > v, _py(operator.gt)),
    "gte": Lookup(lambda c, v, d: c >= v, _py(operator.ge)),
    "lt": Lookup(lambda c, v, d: c < v, _py(operator.lt)),
    "lte": Lookup(lambda c, v, d: c <= v, _py(operator.le)),
    "between": Lookup(lambda c, v, d: c.between(v[0], v[1]), _py(lambda a, b: b[0] <= a <= b[1])),
    "like": Lookup(
        _case_sensitive(_like_to_glob, lambda c, v: c.like(v)),
        _py(lambda a, b: _like_regex(b).fullmatch(a) is not None),
    ),
    "ilike": Lookup(
        lambda c, v, d: c.ilike(v),
        _py(lambda a, b: _like_regex(b, re.IGNORECASE).fullmatch(a) is not None),
    ),
    "startswith": Lookup(
        _case_sensitive(
            lambda v: _glob_escape(v) + "*", lambda c, v: c.startswith(v, autoescape=True)
        ),
        _py(lambda a, b: str(a).startswith(b)),
    ),
    "contains": Lookup(
        _case_sensitive(
            lambda v: "*" + _glob_escape(v) + "*", lambda c, v: c.contains(v, autoescape=True)
        ),
        _py(lambda a, b: b in str(a)),
    ),
}


class ModelInfo:
    """What the drivers need to know of a mapped model: its columns, primary key and unique
    column sets."""

    def __init__(self, model: type[Any]):
        mapper: Mapper[Any] = inspect(model)
        self.model = model
        self.name = model.__name__
        self.mapper = mapper
        self.table = cast("Table", mapper.local_table)
        self.columns: dict[str, Column[Any]] = {
            key: col for key, col in mapper.columns.items() if col.table is self.table
        }
        if len(mapper.primary_key) != 1:
            raise BadInput(f"{self.name}: drivers need a primary key of exactly one column")
        pk = mapper.primary_key[0]
        self.pk = next(key for key, col in self.columns.items() if col is pk)
        key_of = {col: key for key, col in self.columns.items()}
        #: Attribute keys to Core column keys, where they differ (``x = mapped_column("y")``).
        self.core_keys = {key: col.key for key, col in self.columns.items() if col.key != key}
        self.unique_sets: builtins.list[tuple[str, ...]] = []
        for constraint in self.table.constraints:
            if type(constraint).__name__ in ("PrimaryKeyConstraint", "UniqueConstraint"):
                self._add_unique([key_of[c] for c in constraint.columns if c in key_of])  # type: ignore[attr-defined]
        for index in self.table.indexes:
            partial = any(
                index.dialect_options[d].get("where") is not None for d in ("postgresql", "sqlite")
            )
            if index.unique and not partial and all(c in key_of for c in index.columns):
                self._add_unique([key_of[c] for c in index.columns])
        # table.constraints is a set: the primary key first, then by name, for messages
        self.unique_sets.sort(key=lambda keys: (keys != (self.pk,), keys))
        self._required = self._required_columns()
        self._not_null = frozenset(k for k, c in self.columns.items() if not c.nullable)

    def _add_unique(self, keys: builtins.list[str]) -> None:
        found = tuple(keys)
        if found and found not in self.unique_sets:
            self.unique_sets.append(found)

    def column_list(self) -> str:
        return ", ".join(self.columns)

    def column(self, name: str, where: str = "filter") -> Column[Any]:
        col = self.columns.get(name)
        if col is None:
            raise BadInput(
                f"{self.name} has no column {name!r} (in {where}); its columns: "
                f"{self.column_list()}"
            )
        return col

    def lookups(self, filters: Mapping[str, Any]) -> Iterator[tuple[str, Lookup, Any]]:
        """Each keyword filter as (column key, lookup, value); BadInput for unknown ones."""
        for key, value in filters.items():
            name, lookup = key, "exact"
            if key not in self.columns and "__" in key:
                name, lookup = key.rsplit("__", 1)
            self.column(name)
            if lookup not in LOOKUPS:
                raise BadInput(
                    f"unknown lookup {lookup!r} in {key!r}; lookups: {', '.join(LOOKUPS)}; "
                    f"{self.name}'s columns: {self.column_list()}"
                )
            yield name, LOOKUPS[lookup], value

    def where(
        self, args: Sequence[Any], filters: Mapping[str, Any], dialect: str
    ) -> builtins.list[ColumnElement[bool]]:
        clauses: builtins.list[ColumnElement[bool]] = builtins.list(args)
        for name, lookup, value in self.lookups(filters):
            clauses.append(lookup.sql(self.columns[name], value, dialect))
        return clauses

    def order(self, order_by: Any) -> builtins.list[tuple[str, bool]]:
        """``order_by`` (a column name, ``-name`` for descending, or a list of them) as
        (column key, descending) pairs; the primary key when not given."""
        if order_by is None:
            return [(self.pk, False)]
        names = [order_by] if isinstance(order_by, str) else builtins.list(order_by)
        pairs = []
        for name in names:
            if not isinstance(name, str):
                raise BadInput(f"order_by takes column names ('name', '-name'), not {name!r}")
            desc = name.startswith("-")
            key = name.lstrip("-")
            self.column(key, "order_by")
            pairs.append((key, desc))
        return pairs

    def keyset_order(self, order_by: Any) -> builtins.list[tuple[str, bool]]:
        """``order`` with the primary key last, so every row has a place of its own."""
        pairs = self.order(order_by)
        if all(key != self.pk for key, _ in pairs):
            pairs.append((self.pk, False))
        return pairs

    def keyset_sort(self, order: Sequence[tuple[str, bool]]) -> builtins.list[Any]:
        """ORDER BY for a keyset: NULLs last ascending, first descending, on every backend
        (PostgreSQL's default, which the cursor's condition and the fakes follow)."""
        clauses = []
        for key, desc in order:
            col = self.columns[key]
            if not col.nullable:
                clauses.append(col.desc() if desc else col.asc())
            else:
                clauses.append(col.desc().nulls_first() if desc else col.asc().nulls_last())
        return clauses

    def keyset_after(self, order: Sequence[tuple[str, bool]], values: Sequence[Any]) -> Any:
        """The rows after the one whose sort columns hold ``values``, in ``keyset_sort``."""
        if len(values) != len(order):
            raise BadInput("the cursor does not fit this query's order_by")
        cols = [self.columns[key] for key, _ in order]
        directions = {desc for _, desc in order}
        if len(directions) == 1 and all(
            not c.nullable and v is not None for c, v in zip(cols, values, strict=True)
        ):
            # one row-value comparison: what an index on the sort columns serves
            (desc,) = directions
            left = cols[0] if len(cols) == 1 else tuple_(*cols)
            right = values[0] if len(cols) == 1 else tuple_(*values)
            return left < right if desc else left > right
        branches = []
        for i, ((_, desc), col, value) in enumerate(zip(order, cols, values, strict=True)):
            same = [
                c.is_(None) if v is None else c == v
                for c, v in zip(cols[:i], values[:i], strict=True)
            ]
            if value is None:
                beyond: Any = col.is_not(None) if desc else false()
            elif desc:
                beyond = col < value
            else:
                beyond = or_(col > value, col.is_(None)) if col.nullable else col > value
            branches.append(and_(*same, beyond))
        return or_(*branches)

    def as_row(self, row: Any, index: int) -> Mapping[str, Any]:
        """A dict or an instance of the model as a mapping of column values (only those
        given). A dict is checked, not copied."""
        if isinstance(row, self.model):
            state: Any = inspect(row)
            return {k: state.dict[k] for k in self.columns if k in state.dict}
        if not isinstance(row, Mapping):
            raise BadInput(f"row {index}: a dict or a {self.name}, not {type(row).__name__}")
        for key in row:
            if key not in self.columns:
                raise BadInput(
                    f"row {index}: {self.name} has no column {key!r}; its columns: "
                    f"{self.column_list()}"
                )
        return row

    def _required_columns(self) -> builtins.list[str]:
        """Columns that must be given a value: NOT NULL, no default of any kind."""
        return [
            key
            for key, col in self.columns.items()
            if not col.nullable
            and col.default is None
            and col.server_default is None
            and not (
                col.primary_key
                and col.autoincrement in (True, "auto")
                and col is self.table.autoincrement_column
            )
            and col.identity is None
        ]

    def required(self) -> builtins.list[str]:
        return builtins.list(self._required)

    def check_values(self, values: Mapping[str, Any]) -> None:
        """The values of an update: known columns, no NULL in a NOT NULL one."""
        for key, value in values.items():
            column = self.column(key, "update")
            if value is None and not column.nullable:
                raise BadInput(f"NULL in {self.name}.{key} (NOT NULL)")

    def check_rows(self, rows: Iterable[Any]) -> builtins.list[Mapping[str, Any]]:
        """Rows as mappings, checked before anything is written: known columns, and no NULL
        in a NOT NULL column. BadInput names the row's index."""
        out: builtins.list[Mapping[str, Any]] = []
        known: Any = None  # the last key set seen, checked once per run of rows like it
        not_null: builtins.list[str] = []
        values_of: Callable[[Mapping[str, Any]], Any] = tuple
        for i, row in enumerate(rows):
            if type(row) is not dict or row.keys() != known:
                row = self.as_row(row, i)
                for key in self._required:
                    if key not in row:
                        raise BadInput(f"row {i}: no value for {self.name}.{key} (NOT NULL)")
                known = row.keys() if type(row) is dict else None
                not_null = [k for k in row if k in self._not_null]
                values_of = operator.itemgetter(*not_null, *not_null[:1]) if not_null else tuple
            if None in values_of(row):
                key = next(k for k in not_null if row[k] is None)
                raise BadInput(f"row {i}: NULL in {self.name}.{key} (NOT NULL)")
            out.append(row)
        return out

    def conflict_target(self, on: str | Sequence[str] | None) -> tuple[str, ...]:
        """``upsert``'s ``on=`` (a column, or several) as column keys, checked to be the
        primary key or a unique constraint of the model; the primary key when not given."""
        if on is None:
            return (self.pk,)
        keys = (on,) if isinstance(on, str) else tuple(on)
        for key in keys:
            self.column(key, "upsert on=")
        for unique in self.unique_sets:
            if set(unique) == set(keys):
                return unique
        shown = "; ".join(f"({', '.join(u)})" for u in self.unique_sets)
        raise BadInput(
            f"{self.name}: upsert on=({', '.join(keys)}) names no unique constraint, so rows "
            f"cannot be matched by it; {self.name}'s unique columns: {shown}"
        )

    def python_defaults(self, given: Iterable[str]) -> builtins.list[tuple[str, Any]]:
        """Columns not ``given`` that have a Python-side default (scalar or callable)."""
        have = set(given)
        return [
            (key, col.default)
            for key, col in self.columns.items()
            if key not in have and col.default is not None and not col.default.is_sequence
        ]

    def copyable(self, given: Iterable[str]) -> bool:
        """Whether COPY of columns ``given`` writes what ``INSERT`` would: every column left
        out is filled by the server, or by a Python default we can compute (not a SQL
        expression, not a sequence the server does not call by itself)."""
        have = set(given)
        for key, col in self.columns.items():
            default: Any = col.default
            if key in have or default is None:
                continue
            if default.is_sequence or default.is_clause_element:
                return False
        return True

    def core_row(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """A row's attribute keys as the table's column keys, for Core statements."""
        if not self.core_keys:
            return row
        return {self.core_keys.get(k, k): v for k, v in row.items()}


def _default_value(default: Any) -> Any:
    """The value of a Python-side default (SQLAlchemy wraps callables to take a context)."""
    return default.arg(None) if default.is_callable else default.arg


def _groups(dicts: Sequence[Mapping[str, Any]]) -> Iterator[Sequence[Mapping[str, Any]]]:
    """Runs of consecutive rows that give the same columns (slices: no object per row)."""
    start = 0
    keys = dicts[0].keys() if dicts else None
    for i, row in enumerate(dicts):
        if row.keys() != keys:
            yield dicts[start:i]
            start, keys = i, row.keys()
    if dicts:
        yield dicts[start:] if start else dicts


_INFO: dict[type[Any], ModelInfo] = {}


def model_info(model: type[Any]) -> ModelInfo:
    info = _INFO.get(model)
    if info is None:
        info = _INFO[model] = ModelInfo(model)
    return info


def model_of(cls: type[Any]) -> type[Any] | None:
    """The model a driver class declares: ``model = X`` or ``ReadDriver[X]`` as its base."""
    model = cls.__dict__.get("model")
    if model is not None:
        return model  # type: ignore[no-any-return]
    for base in getattr(cls, "__orig_bases__", ()):
        origin = get_origin(base)
        args = get_args(base)
        if isinstance(origin, type) and args and isinstance(args[0], type) and args[0] is not Any:
            return args[0]
    for base in cls.__mro__[1:]:
        found = base.__dict__.get("model")
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


def last_wins(
    rows: Sequence[Mapping[str, Any]], on: Sequence[str], name: str
) -> tuple[builtins.list[Mapping[str, Any]], builtins.list[int]]:
    """Upsert rows with one row per ``on`` value (of several, the last given wins), and the
    index each kept row had. Every row must give the ``on`` columns."""
    kept: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(rows):
        try:
            key = tuple(row[k] for k in on)
        except KeyError:
            key = (None,)
        if any(v is None for v in key):
            raise BadInput(
                f"row {i}: upsert matches rows by {', '.join(on)}: give {name}."
                f"{', '.join(on)} a value (or add the row with add_many)"
            )
        kept.pop(key, None)
        kept[key] = i
    positions = sorted(kept.values())
    return [rows[i] for i in positions], positions


@dataclass(frozen=True)
class UpdateMany:
    """An ``update_many`` call, checked: values by id (``by_id``), or ``values`` on the rows
    matching ``args`` and ``filters``."""

    by_id: builtins.list[tuple[Any, Mapping[str, Any]]] | None
    args: Sequence[Any] = ()
    filters: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(
        cls,
        info: ModelInfo,
        values_by_id: Mapping[Any, Mapping[str, Any]] | None,
        where: Any,
        values: Mapping[str, Any],
    ) -> UpdateMany:
        """BadInput for a call that asks both ways, or neither, or names unknown columns."""
        if values_by_id is not None:
            if where is not None or values:
                raise BadInput(
                    "update_many takes values by id, or where= and the values to set; not both"
                )
            changes = builtins.list(values_by_id.items())
            for id, given in changes:
                if not isinstance(given, Mapping):
                    raise BadInput(
                        f"update_many: the values of {info.pk} {id!r} must be a dict of "
                        f"column: value, not {type(given).__name__}"
                    )
                info.check_values(given)
                if info.pk in given:
                    raise BadInput(f"update_many cannot change {info.name}.{info.pk} (of {id!r})")
            return cls(changes)
        if where is None:
            raise BadInput(
                "update_many needs values by id ({id: {column: value}}) or where= and the "
                "values to set; to update every row, say so: where=sqlalchemy.true()"
            )
        if not values:
            raise BadInput("update_many(where=...) needs the values to set (column=value)")
        info.check_values(values)
        if isinstance(where, Mapping):
            return cls(None, (), where, values)
        listed = where if isinstance(where, (builtins.list, tuple)) else [where]
        return cls(None, tuple(listed), {}, values)


class _Shared(Generic[M]):
    """What the real drivers and the fakes share, on top of each one's own queries."""

    info: ModelInfo
    _cursor_key: CursorKey | None

    def get(self, id: Any) -> M | None:  # pragma: no cover - each driver has its own
        raise NotImplementedError

    def _not_found(self, id: Any) -> NotFound:
        return NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")

    def get_or_raise(self, id: Any) -> M:
        """The row with primary key ``id``; NotFound naming the model and the id."""
        found = self.get(id)
        if found is None:
            raise self._not_found(id)
        return found

    def _signing_key(self) -> bytes:
        key = self._cursor_key
        if key is None:
            raise BadInput(
                f"{type(self).__name__}.after() signs its cursors with the site's key: build "
                f"the driver with {type(self).__name__}.of(app, store), or pass "
                "cursor_key=app.site.catalog.cursor_key"
            )
        if callable(key):
            key = self._cursor_key = key()
        return key.encode() if isinstance(key, str) else key

    def _keyset_query(
        self, order: Sequence[tuple[str, bool]], args: Sequence[Any], filters: Mapping[str, Any]
    ) -> str:
        return query_fingerprint(self.info.table.fullname, order, args, filters)

    def _keyset_values(
        self, cursor: str | None, order: Sequence[tuple[str, bool]], query: str
    ) -> builtins.list[Any] | None:
        if cursor is None:
            self._signing_key()  # the first page too must be able to sign its cursor
            return None
        values = read_cursor(self._signing_key(), query, cursor)
        if len(values) != len(order):
            raise BadInput("the cursor does not fit this query's order_by")
        return values

    def _keyset_page(
        self, found: Sequence[M], size: int, order: Sequence[tuple[str, bool]], query: str
    ) -> KeysetPage:
        items = builtins.list(found[:size])
        next_cursor = None
        if len(found) > size:
            keys = [key for key, _ in order]
            last = [getattr(items[-1], key) for key in keys]
            next_cursor = make_cursor(self._signing_key(), query, keys, last)
        return KeysetPage(items, size, next_cursor)


class _Writes(Generic[M]):
    """What the write driver and its fake share."""

    def upsert_many(  # pragma: no cover - each writer has its own
        self,
        rows: Iterable[M | Mapping[str, Any]],
        *,
        on: str | Sequence[str] | None = None,
        returning: bool = False,
    ) -> builtins.list[M] | None:
        raise NotImplementedError

    def upsert(self, row: M | Mapping[str, Any], *, on: str | Sequence[str] | None = None) -> M:
        """Add ``row``, or update the row it matches by ``on`` (a unique column or columns;
        the primary key by default) with the columns it gives; returns the instance."""
        (obj,) = cast("builtins.list[M]", self.upsert_many([row], on=on, returning=True))
        return obj


class _Driver(_Shared[M]):
    """What both drivers share: the model, the session, filters."""

    model: ClassVar[type[Any]]
    #: Whether ``of()`` opens a read session (from a replica when the store has one).
    readonly: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = model_of(cls)
        if model is not None:
            cls.model = model

    def __init__(self, session: Session, *, cursor_key: CursorKey | None = None):
        """A driver on ``session``. ``cursor_key`` signs the cursors of ``after()``: the
        site's (``app.site.catalog.cursor_key``, which :meth:`of` passes), or a key of
        your own."""
        if getattr(type(self), "model", None) is None:
            raise BadInput(
                f"{type(self).__name__} names no model: declare it as "
                f"class {type(self).__name__}(ReadDriver[Model]) or with model = Model"
            )
        self.session = session
        self.info = model_info(self.model)
        self._cursor_key = cursor_key

    @classmethod
    @contextmanager
    def of(cls, app: App, store: str) -> Iterator[Self]:
        """A driver on its own unit of work on ``store``: committed when the block ends,
        rolled back if it raises. Its cursors are signed with the site's key."""
        with app.session(store, readonly=cls.readonly) as session:
            yield cls(session, cursor_key=app.site.catalog.cursor_key)

    def _dbapi_connection(self, connection: Connection) -> Any:
        """The DBAPI connection under ``connection``, for driver-level calls (COPY); the async
        twins (drivers_async) give psycopg's AsyncConnection with a sync interface."""
        return connection.connection.dbapi_connection

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def _where(self, args: Sequence[Any], filters: Mapping[str, Any]) -> Any:
        return self.info.where(args, filters, self.dialect)

    def _ordered(self, statement: Select[Any], order_by: Any) -> Select[Any]:
        cols = self.info.columns
        return statement.order_by(
            *(cols[key].desc() if desc else cols[key] for key, desc in self.info.order(order_by))
        )

    def _row_select(
        self, args: Sequence[Any], filters: Mapping[str, Any], order_by: Any, *, paged: bool
    ) -> Any:
        """A select of the model's columns; ordered when ``order_by`` says, or by primary
        key when ``paged`` (a limit or offset needs an order to mean anything)."""
        cols = [col.label(key) for key, col in self.info.columns.items()]
        statement = select(*cols).where(*self._where(args, filters))
        if order_by is None and not paged:
            return statement  # no sort: every row as the server reads them, soonest
        return self._ordered(statement, order_by)


class ReadDriver(_Driver[M]):
    """Every query a controller needs on one model. ``of()`` reads from a replica of the
    store when one has this unit of work's writes (see :mod:`storekeeper.replicas`)."""

    readonly = True

    def _select(self, args: Sequence[Any], filters: Mapping[str, Any]) -> Select[Any]:
        return select(self.model).where(*self._where(args, filters))

    def get(self, id: Any) -> M | None:
        """The row with primary key ``id``, or None."""
        return self.session.get(self.model, id)

    def get_many(self, ids: Iterable[Any]) -> builtins.list[M]:
        """The rows with these primary keys, in one query, in the order given (missing ids
        are left out)."""
        wanted = builtins.list(ids)
        if not wanted:
            return []
        pk = self.info.columns[self.info.pk]
        key = self.info.pk
        found = {
            getattr(obj, key): obj
            for obj in self.session.scalars(select(self.model).where(pk.in_(wanted)))
        }
        return [found[i] for i in wanted if i in found]

    def find(self, *args: Any, order_by: Any = None, **filters: Any) -> builtins.list[M]:
        """Every row matching the filters, by primary key unless ``order_by`` says."""
        return builtins.list(
            self.session.scalars(self._ordered(self._select(args, filters), order_by))
        )

    def first(self, *args: Any, order_by: Any = None, **filters: Any) -> M | None:
        """The first row matching the filters (by primary key unless ``order_by``), or None."""
        statement = self._ordered(self._select(args, filters), order_by).limit(1)
        first: M | None = self.session.scalars(statement).first()
        return first

    def one(self, *args: Any, **filters: Any) -> M:
        """The one row matching the filters: NotFound when none, MultipleFound when more."""
        found = builtins.list(self.session.scalars(self._select(args, filters).limit(2)))
        if not found:
            raise NotFound(f"no {self.info.name} matches {_describe(args, filters)}")
        if len(found) > 1:
            raise MultipleFound(
                f"more than one {self.info.name} matches {_describe(args, filters)}"
            )
        return found[0]  # type: ignore[no-any-return]

    def list(
        self, order_by: Any = None, limit: int | None = None, offset: int | None = None
    ) -> builtins.list[M]:
        """Rows in ``order_by`` order (column names, ``-name`` descending; primary key by
        default), ``limit`` of them from ``offset``."""
        statement = self._ordered(select(self.model), order_by).limit(limit).offset(offset)
        return builtins.list(self.session.scalars(statement))

    def page(
        self, number: int, size: int, *args: Any, order_by: Any = None, **filters: Any
    ) -> Page:
        """Page ``number`` (from 1) of ``size`` rows: ``items``, ``total``, ``pages``."""
        _check_page(number, size)
        statement = self._ordered(self._select(args, filters), order_by)
        items = self.session.scalars(statement.limit(size).offset((number - 1) * size)).all()
        return Page(items, number, size, self.count(*args, **filters))

    def after(
        self, cursor: str | None, size: int, *args: Any, order_by: Any = None, **filters: Any
    ) -> KeysetPage:
        """Keyset pagination: ``size`` rows after ``cursor`` (None for the first page) in
        ``order_by`` order (the primary key breaks ties), and ``next_cursor`` for the page
        after them (None at the end). Each page costs the same, however deep: the cursor
        holds the last row's sort values, signed, and the next page starts after them. A
        cursor tampered with or made by another query is a BadCursor."""
        _check_page(1, size)
        order = self.info.keyset_order(order_by)
        query = self._keyset_query(order, args, filters)
        values = self._keyset_values(cursor, order, query)
        statement = self._select(args, filters)
        if values is not None:
            statement = statement.where(self.info.keyset_after(order, values))
        statement = statement.order_by(*self.info.keyset_sort(order)).limit(size + 1)
        return self._keyset_page(self.session.scalars(statement).all(), size, order, query)

    def count(self, *args: Any, **filters: Any) -> int:
        """How many rows match the filters."""
        statement = select(func.count()).select_from(self.info.table)
        return int(self.session.execute(statement.where(*self._where(args, filters))).scalar_one())

    def exists(self, *args: Any, **filters: Any) -> bool:
        """Whether any row matches the filters."""
        inner = select(self.info.columns[self.info.pk]).where(*self._where(args, filters))
        return bool(self.session.execute(select(exists(inner))).scalar_one())

    def rows(
        self,
        *args: Any,
        order_by: Any = None,
        limit: int | None = None,
        offset: int | None = None,
        **filters: Any,
    ) -> builtins.list[dict[str, Any]]:
        """Matching rows as plain dicts of column values (no ORM objects are built), in
        ``order_by`` order; without it, by primary key when ``limit`` or ``offset`` is given,
        else in no order promised (no sort is paid for)."""
        paged = limit is not None or offset is not None
        statement = self._row_select(args, filters, order_by, paged=paged)
        statement = statement.limit(limit).offset(offset)
        result: Any = self.session.execute(statement)
        keys = builtins.list(result.keys())
        if self._unprocessed(result):
            # No column's type converts what the DBAPI gives: its tuples as they come,
            # without building a Row for each (what makes rows() faster than mappings()).
            data = result.cursor.fetchall()
            result.close()
        else:
            data = result.all()
        return builtins.list(map(dict, map(zip, itertools.repeat(keys), data)))

    def _unprocessed(self, result: Any) -> bool:
        """Whether no column of ``result`` (a select of the model's columns) has a result
        processor: then the DBAPI's values are the values."""
        cursor = getattr(result, "cursor", None)
        description = getattr(cursor, "description", None)
        if description is None or len(description) != len(self.info.columns):
            return False
        dialect = self.session.get_bind().dialect
        return all(
            col.type._cached_result_processor(dialect, column[1]) is None
            for col, column in zip(self.info.columns.values(), description, strict=True)
        )

    def stream(
        self, *args: Any, order_by: Any = None, batch_size: int = 1000, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Matching rows as plain dicts, read from a server-side cursor ``batch_size`` rows
        at a time: for reads larger than memory. In ``order_by`` order, else in none. Read
        it to the end, or close it (``with contextlib.closing(reader.stream()) as rows:``)
        to free the cursor early."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
        statement = self._row_select(args, filters, order_by, paged=False)  # fails here, now
        return self._streamed(statement, batch_size)

    def _streamed(self, statement: Any, batch_size: int) -> Iterator[dict[str, Any]]:
        result = self.session.execute(statement, execution_options={"yield_per": batch_size})
        try:
            keys = builtins.list(result.keys())
            for batch in result.partitions():
                for row in batch:
                    yield dict(zip(keys, row, strict=True))
        finally:
            result.close()


class WriteDriver(_Driver[M], _Writes[M]):
    """Every write a controller needs on one model. Writes are flushed, not committed: the
    unit of work (the session's owner, or ``of()``) commits."""

    def add(self, row: M | Mapping[str, Any]) -> M:
        """Add one row (an instance or a dict); returns the instance, its key filled."""
        obj = row if isinstance(row, self.model) else self.model(**self.info.as_row(row, 0))
        self.session.add(obj)
        self.session.flush()
        return obj  # type: ignore[no-any-return]

    def add_many(
        self, rows: Iterable[M | Mapping[str, Any]], *, returning: bool = False
    ) -> builtins.list[M] | None:
        """Add many rows (dicts or instances) in bulk: all or nothing. On PostgreSQL
        (psycopg) without ``returning``, batches of 100 rows or more go through binary
        ``COPY`` (types from the table; the server fills defaults and identity columns,
        Python-side defaults are filled here); smaller ones, and other databases, one
        ``INSERT`` of many rows. A bad row (a NULL in a NOT NULL column, a value of the
        wrong type, a duplicate key) is a BadInput naming its index and column, and nothing
        is written. With ``returning``, the new instances, in the order given."""
        dicts = self.info.check_rows(rows)
        if not dicts:
            return [] if returning else None
        self.session.flush()
        if returning:
            statement = insert(self.model).returning(self.model, sort_by_parameter_order=True)
            runs = self._batch(
                dicts, lambda conn, run: self.session.scalars(statement, builtins.list(run)).all()
            )
            return [obj for run in runs for obj in run]
        self._batch(dicts, self._insert_run)
        return None

    def _insert_run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        keys = builtins.list(rows[0])
        if bulk.is_copy_connection(connection):
            if len(rows) >= bulk.COPY_MIN_ROWS and self.info.copyable(keys):
                names, values = self._copy_values(connection, keys, rows)
                self._copy(connection, self.info.table, names, values)
                return
            # insertmanyvalues: one INSERT of many VALUES (it needs a RETURNING)
            statement: Any = insert(self.info.table).returning(self.info.columns[self.info.pk])
        else:
            statement = insert(self.info.table)
        connection.execute(statement, [self.info.core_row(r) for r in rows])

    def _copy(
        self,
        connection: Connection,
        table: Table,
        names: Sequence[str],
        values: Callable[[], Iterable[Sequence[Any]]],
    ) -> None:
        """COPY ``values`` into the columns ``names`` of ``table`` (the model's, or a staging
        table with its types): binary when psycopg can write every value so, else as text
        (the binary try undone in a savepoint), which the server parses as INSERT would."""
        types = bulk.table_types(connection, self.info.table)
        if types.binary:
            oids = [types.columns[name].oid for name in names]
            binary = bulk.copy_statement(connection, table, names, binary=True)
            try:
                with self.session.begin_nested():
                    bulk.copy_rows(
                        self._dbapi_connection(self.session.connection()), binary, oids, values()
                    )
                    return
            except bulk.RowFailed:
                pass
        text = bulk.copy_statement(connection, table, names, binary=False)
        bulk.copy_rows(self._dbapi_connection(connection), text, None, values())

    def _copy_values(
        self, connection: Connection, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> tuple[builtins.list[str], Callable[[], Iterable[Sequence[Any]]]]:
        """The column names COPY writes (the given columns, then those with a Python-side
        default), and a function giving the value tuples one by one, passed through their
        types' bind processors: made as COPY writes them, not held all at once (a list of
        100,000 tuples costs more in garbage collection than in making it)."""
        defaults = self.info.python_defaults(keys)
        every = [*keys, *(key for key, _ in defaults)]
        names = [self.info.columns[key].name for key in every]
        processors = [
            self.info.columns[key].type._cached_bind_processor(connection.dialect) for key in every
        ]
        getter: Callable[[Mapping[str, Any]], Sequence[Any]]
        if len(keys) == 1:
            (only,) = keys
            getter = lambda row: (row[only],)  # noqa: E731
        else:
            getter = operator.itemgetter(*keys)

        def values() -> Iterable[Sequence[Any]]:
            made: Iterable[Sequence[Any]] = map(getter, rows)
            if defaults:
                made = ((*v, *(_default_value(d) for _, d in defaults)) for v in made)
            if any(processors):
                made = (
                    tuple(p(x) if p is not None else x for p, x in zip(processors, v, strict=True))
                    for v in made
                )
            return made

        return names, values

    def upsert_many(
        self,
        rows: Iterable[M | Mapping[str, Any]],
        *,
        on: str | Sequence[str] | None = None,
        returning: bool = False,
    ) -> builtins.list[M] | None:
        """Add each row, or update the row it matches by ``on`` (the primary key by default,
        or columns with a unique constraint) with the columns it gives; all or nothing. Of
        rows with the same ``on`` values, the last wins. On PostgreSQL, batches of 100 rows
        or more are copied into a temporary table and merged with one ``INSERT ... SELECT
        ... ON CONFLICT DO UPDATE``; smaller ones, and SQLite, ``INSERT ... ON CONFLICT`` of
        many rows. With ``returning``, the instances written."""
        target = self.info.conflict_target(on)
        dicts, positions = last_wins(self.info.check_rows(rows), target, self.info.name)
        if not dicts:
            return [] if returning else None
        self.session.flush()
        if returning:
            runs = self._batch(dicts, lambda c, run: self._upsert_returning(run, target), positions)
            written = [obj for run in runs for obj in run]
            # Those written were just read back whole (RETURNING): expired, they would be read
            # again on first use (and an async twin cannot read lazily).
            self._expire_loaded(keep=written)
            return written
        self._batch(dicts, lambda c, run: self._upsert_run(c, run, target), positions)
        self._expire_loaded()
        return None

    def _upsert_statement(self, table: Any, given: Sequence[str], target: Sequence[str]) -> Any:
        dialect = self.session.get_bind().dialect.name
        statement: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            statement = postgresql.insert(table)
        elif dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            statement = sqlite.insert(table)
        else:
            raise BadInput(f"upsert is not written for {dialect} yet")
        cols = self.info.columns
        set_: dict[str, Any] = {
            cols[k].name: statement.excluded[cols[k].name] for k in given if k not in target
        }
        for key, col in cols.items():
            onupdate: Any = col.onupdate
            if key not in given and onupdate is not None and not onupdate.is_sequence:
                set_[col.name] = (
                    onupdate.arg if onupdate.is_clause_element else _default_value(onupdate)
                )
        if not set_:  # only the matching columns given: touch the row, so it is returned
            name = cols[target[0]].name
            set_[name] = statement.excluded[name]
        return statement.on_conflict_do_update(
            index_elements=[cols[k].name for k in target], set_=set_
        )

    def _upsert_returning(
        self, rows: Sequence[Mapping[str, Any]], target: Sequence[str]
    ) -> Sequence[M]:
        statement = self._upsert_statement(self.model, builtins.list(rows[0]), target)
        statement = statement.returning(self.model, sort_by_parameter_order=True)
        return self.session.scalars(
            statement, rows, execution_options={"populate_existing": True}
        ).all()

    def _upsert_run(
        self,
        connection: Connection,
        rows: Sequence[Mapping[str, Any]],
        target: Sequence[str],
    ) -> None:
        keys = builtins.list(rows[0])
        table = self.info.table
        if (
            bulk.is_copy_connection(connection)
            and len(rows) >= bulk.COPY_MIN_ROWS
            and self.info.copyable(keys)
        ):
            names, values = self._copy_values(connection, keys, rows)
            every = [*keys, *(key for key, _ in self.info.python_defaults(keys))]
            columns = [self.info.columns[key] for key in every]
            staged = bulk.stage(connection, table, columns)
            self._copy(connection, staged, names, values)
            statement = self._upsert_statement(table, keys, target)
            connection.execute(statement.from_select(columns, select(*staged.c)))
            bulk.drop_stage(connection, staged)
            return
        statement = self._upsert_statement(table, keys, target)
        if bulk.is_copy_connection(connection):
            statement = statement.returning(self.info.columns[self.info.pk])
        connection.execute(statement, [self.info.core_row(r) for r in rows])

    def update(self, id: Any, **values: Any) -> M:
        """Set ``values`` on the row with primary key ``id`` (NotFound if none); returns it."""
        self.info.check_values(values)
        obj = self.session.get(self.model, id)
        if obj is None:
            raise self._not_found(id)
        for key, value in values.items():
            setattr(obj, key, value)
        self.session.flush()
        return obj  # type: ignore[no-any-return]

    def update_many(
        self,
        values_by_id: Mapping[Any, Mapping[str, Any]] | None = None,
        /,
        *,
        where: Any = None,
        **values: Any,
    ) -> int:
        """Update many rows; how many there were. Either ``update_many({id: {column: value},
        ...})`` (each row its own values; ids not there are left out), or
        ``update_many(where=..., column=value, ...)`` (the same values on every row matching
        ``where``: a dict of keyword filters, or SQLAlchemy expressions). All or nothing."""
        asked = UpdateMany.read(self.info, values_by_id, where, values)
        if asked.by_id is not None:
            return self._update_by_id(asked.by_id)
        clauses = self._where(asked.args, asked.filters)
        self.session.flush()
        result: Any = self.session.execute(
            update(self.model).where(*clauses).values(**asked.values),
            execution_options={"synchronize_session": "fetch"},
        )
        return int(result.rowcount)

    def _update_by_id(self, changes: Sequence[tuple[Any, Mapping[str, Any]]]) -> int:
        dicts = [{"storekeeper_id": id, **values} for id, values in changes]
        if not dicts:
            return 0
        self.session.flush()
        counts = self._batch(dicts, self._update_run)
        self._expire_loaded([d["storekeeper_id"] for d in dicts])
        return sum(counts)

    def _update_run(self, connection: Connection, run: Sequence[Mapping[str, Any]]) -> int:
        keys = [k for k in run[0] if k != "storekeeper_id"]
        cols = self.info.columns
        statement = (
            update(self.info.table)
            .where(cols[self.info.pk] == bindparam("storekeeper_id"))
            .values({cols[k].key: bindparam(f"storekeeper_{k}") for k in keys})
        )
        params = [
            {"storekeeper_id": row["storekeeper_id"], **{f"storekeeper_{k}": row[k] for k in keys}}
            for row in run
        ]
        result: Any = connection.execute(statement, params)
        return int(result.rowcount)

    def delete(self, id: Any) -> None:
        """Delete the row with primary key ``id`` (NotFound if none)."""
        obj = self.session.get(self.model, id)
        if obj is None:
            raise self._not_found(id)
        self.session.delete(obj)
        self.session.flush()

    def delete_many(self, ids: Iterable[Any]) -> int:
        """Delete the rows with these primary keys; how many there were."""
        wanted = builtins.list(ids)
        if not wanted:
            return 0
        pk = self.info.columns[self.info.pk]
        return self._delete(pk.in_(wanted))

    def delete_where(self, *args: Any, **filters: Any) -> int:
        """Delete the rows matching the filters (at least one); how many there were."""
        if not args and not filters:
            raise BadInput(
                "delete_where needs a filter; to delete every row, say so: "
                "delete_where(sqlalchemy.true())"
            )
        return self._delete(*self._where(args, filters))

    def _delete(self, *where: Any) -> int:
        self.session.flush()
        result: Any = self.session.execute(
            delete(self.model).where(*where), execution_options={"synchronize_session": "fetch"}
        )
        return int(result.rowcount)

    # all or nothing, and the bad row named ----------------------------------------------

    def _batch(
        self,
        dicts: Sequence[Mapping[str, Any]],
        write: Callable[[Connection, Sequence[Mapping[str, Any]]], Any],
        positions: Sequence[int] | None = None,
    ) -> builtins.list[Any]:
        """``write`` each run of rows giving the same columns, in one savepoint: all or
        nothing. A row the database refuses is a BadInput naming its index (its place in
        ``positions``, when rows were left out) and the column, and nothing is written."""
        try:
            with self.session.begin_nested():
                # asked for inside the savepoint: the session emits SAVEPOINT when it is
                connection = self.session.connection()
                return [write(connection, run) for run in _groups(dicts)]
        except Exception as error:
            if not _refused(error):
                raise
            failure: BaseException = error
        index, failure = self._first_refused(dicts, write, failure)
        at = positions[index] if positions is not None else index
        row = dicts[index]
        found = bulk.refusal(failure.error if isinstance(failure, bulk.RowFailed) else failure, row)
        which = f" ({self.info.pk} {row['storekeeper_id']!r})" if "storekeeper_id" in row else ""
        column = f", column {found.column}" if found.column else ""
        raise BadInput(
            f"{self.info.name}: row {at}{which}{column}: {found.message}; nothing was written"
        ) from failure

    def _first_refused(
        self,
        dicts: Sequence[Mapping[str, Any]],
        write: Callable[[Connection, Sequence[Mapping[str, Any]]], Any],
        failure: BaseException,
    ) -> tuple[int, BaseException]:
        """The first row whose writing fails, and its error: named by COPY when it can
        (its line, or the row psycopg could not write), else found by writing ever shorter
        prefixes of the batch, each in a savepoint rolled back."""
        if len(dicts) == 1:
            return 0, failure
        good, bad = 0, len(dicts)  # writing dicts[:good] works, dicts[:bad] fails
        while bad - good > 1:
            middle = (good + bad) // 2
            savepoint = self.session.begin_nested()
            try:
                connection = self.session.connection()
                for run in _groups(dicts[:middle]):
                    write(connection, run)
            except Exception as error:
                savepoint.rollback()
                if not _refused(error):
                    raise
                bad, failure = middle, error
            else:
                savepoint.rollback()
                good = middle
        return bad - 1, failure

    def _expire_loaded(self, ids: Iterable[Any] | None = None, keep: Iterable[M] = ()) -> None:
        """Expire this model's instances in the session after a write that went around it
        (Core, COPY), so they are read again; only those with ``ids`` when given, never
        those in ``keep``."""
        wanted = set(ids) if ids is not None else None
        kept = {id(obj) for obj in keep}
        for obj in builtins.list(self.session.identity_map.values()):
            if (
                isinstance(obj, self.model)
                and id(obj) not in kept
                and (wanted is None or getattr(obj, self.info.pk) in wanted)
            ):
                self.session.expire(obj)


def _refused(error: BaseException) -> bool:
    return isinstance(error, bulk.RowFailed) or bulk.is_row_refusal(error)


def _check_page(number: int, size: int) -> None:
    for what, value in (("number", number), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"page {what} must be a whole number of at least 1, not {value!r}")


def _describe(args: Sequence[Any], filters: Mapping[str, Any]) -> str:
    shown = [str(a) for a in args] + [f"{k}={v!r}" for k, v in filters.items()]
    return ", ".join(shown) or "(no filter)"
