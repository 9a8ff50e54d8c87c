"""Read and write drivers (CQRS): every query and write a controller needs, for one model.

``class GageReader(ReadDriver[StreamGage])`` (or ``model = StreamGage``) declares one; it is
built on a session (``GageReader(session)``) or on a store (``with GageReader.of(app,
"example_db") as gages:``, which opens and ends its own unit of work). Filters are equality by
keyword, Django-style lookups (``depth__gt=3``) and SQLAlchemy expressions as positional
arguments. ``storekeeper.testing.fakes`` has in-memory drivers that obey the same contract.

Not imported by ``import storekeeper``: SQLAlchemy is loaded when a driver module is.
"""

from __future__ import annotations

import builtins
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

from sqlalchemy import ColumnElement, Select, delete, exists, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapper

from .errors import BadInput, NotFound, StorekeeperError
from .pagination import Page

if TYPE_CHECKING:
    from typing import Self

    from sqlalchemy import Column, Table
    from sqlalchemy.orm import Session

    from .declare import App

M = TypeVar("M")


class MultipleFound(StorekeeperError):
    """``one()`` matched more than one row."""


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
    """What the drivers need to know of a mapped model: its columns and primary key."""

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

    def as_row(self, row: Any, index: int) -> dict[str, Any]:
        """A dict or an instance of the model as a dict of column values (only those given)."""
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
        return dict(row)

    def required(self) -> builtins.list[str]:
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

    def check_values(self, values: Mapping[str, Any]) -> None:
        """The values of an update: known columns, no NULL in a NOT NULL one."""
        for key, value in values.items():
            column = self.column(key, "update")
            if value is None and not column.nullable:
                raise BadInput(f"NULL in {self.name}.{key} (NOT NULL)")

    def check_rows(self, rows: Iterable[Any]) -> builtins.list[dict[str, Any]]:
        """Rows as dicts, checked before anything is written: known columns, and no NULL in
        a NOT NULL column. BadInput names the row's index."""
        out = [self.as_row(row, i) for i, row in enumerate(rows)]
        required = self.required()
        not_null = [k for k, c in self.columns.items() if not c.nullable]
        for i, row in enumerate(out):
            for key in required:
                if key not in row:
                    raise BadInput(f"row {i}: no value for {self.name}.{key} (NOT NULL)")
            for key in not_null:
                if key in row and row[key] is None:
                    raise BadInput(f"row {i}: NULL in {self.name}.{key} (NOT NULL)")
        return out


def _groups(dicts: Sequence[dict[str, Any]]) -> Iterator[builtins.list[tuple[int, dict[str, Any]]]]:
    """Runs of consecutive rows that give the same columns, with each row's index."""
    run: builtins.list[tuple[int, dict[str, Any]]] = []
    for i, row in enumerate(dicts):
        if run and row.keys() != run[0][1].keys():
            yield run
            run = []
        run.append((i, row))
    if run:
        yield run


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


class _Driver(Generic[M]):
    """What both drivers share: the model, the session, filters."""

    model: ClassVar[type[Any]]
    #: Whether ``of()`` opens a read session (from a replica when the store has one).
    readonly: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = model_of(cls)
        if model is not None:
            cls.model = model

    def __init__(self, session: Session):
        if getattr(type(self), "model", None) is None:
            raise BadInput(
                f"{type(self).__name__} names no model: declare it as "
                f"class {type(self).__name__}(ReadDriver[Model]) or with model = Model"
            )
        self.session = session
        self.info = model_info(self.model)

    @classmethod
    @contextmanager
    def of(cls, app: App, store: str) -> Iterator[Self]:
        """A driver on its own unit of work on ``store``: committed when the block ends,
        rolled back if it raises."""
        with app.session(store, readonly=cls.readonly) as session:
            yield cls(session)

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


class ReadDriver(_Driver[M]):
    """Every query a controller needs on one model. ``of()`` reads from a replica of the
    store when one has this unit of work's writes (see :mod:`storekeeper.replicas`)."""

    readonly = True

    def _select(self, args: Sequence[Any], filters: Mapping[str, Any]) -> Select[Any]:
        return select(self.model).where(*self._where(args, filters))

    def get(self, id: Any) -> M | None:
        """The row with primary key ``id``, or None."""
        return self.session.get(self.model, id)

    def get_or_raise(self, id: Any) -> M:
        """The row with primary key ``id``; NotFound naming the model and the id."""
        found = self.get(id)
        if found is None:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
        return found

    def get_many(self, ids: Iterable[Any]) -> builtins.list[M]:
        """The rows with these primary keys, in one query, in the order given (missing ids
        are left out)."""
        wanted = builtins.list(ids)
        if not wanted:
            return []
        pk = self.info.columns[self.info.pk]
        found = {
            getattr(obj, self.info.pk): obj
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
        """Matching rows as plain dicts of column values (no ORM objects are built)."""
        cols = [col.label(key) for key, col in self.info.columns.items()]
        statement = self._ordered(select(*cols).where(*self._where(args, filters)), order_by)
        result = self.session.execute(statement.limit(limit).offset(offset))
        return [dict(row) for row in result.mappings()]


class WriteDriver(_Driver[M]):
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
        """Add many rows (dicts or instances) in bulk: all or nothing. On PostgreSQL (psycopg)
        without ``returning``, through ``COPY`` of the given columns (the server fills defaults
        and identity columns); elsewhere one ``INSERT`` executemany. A bad row (a NULL in a
        NOT NULL column, columns unlike the first row's) is a BadInput naming its index, and
        nothing is written. With ``returning``, the new instances."""
        dicts = self.info.check_rows(rows)
        if not dicts:
            return [] if returning else None
        self.session.flush()
        with self.session.begin_nested():
            if returning:
                statement = insert(self.model).returning(self.model)
                try:
                    return builtins.list(self.session.scalars(statement, dicts))
                except IntegrityError as error:
                    raise BadInput(f"{self.info.name}: {error.orig}") from error
            connection = self.session.connection()
            copy = connection.dialect.name == "postgresql" and connection.dialect.driver == (
                "psycopg"
            )
            for run in _groups(dicts):
                given = self._with_python_defaults([row for _, row in run])
                try:
                    if copy:
                        self._copy(connection, given)
                    else:
                        connection.execute(insert(self.info.table), given)
                except Exception as error:
                    line = _line_of(error)
                    where = f"row {run[line][0]}: " if line is not None else ""
                    if isinstance(error, IntegrityError):
                        raise BadInput(f"{self.info.name}: {where}{error.orig}") from error
                    if _is_psycopg_bad_data(error):
                        raise BadInput(f"{self.info.name}: {where}{error}") from error
                    raise
        return None

    def _with_python_defaults(
        self, dicts: builtins.list[dict[str, Any]]
    ) -> builtins.list[dict[str, Any]]:
        # COPY knows only the server's defaults; Python-side ones are filled here, as insert()
        # would (scalars and plain callables).
        missing = [
            (key, col.default)
            for key, col in self.info.columns.items()
            if col.default is not None
            and key not in dicts[0]
            and not getattr(col.default, "is_sequence", False)
        ]
        if not missing:
            return dicts
        filled = []
        for row in dicts:
            row = dict(row)
            for key, default in missing:
                arg: Any = getattr(default, "arg", None)
                row[key] = arg(None) if getattr(default, "is_callable", False) else arg
            filled.append(row)
        return filled

    def _copy(self, connection: Any, dicts: builtins.list[dict[str, Any]]) -> None:
        from psycopg import sql

        keys = builtins.list(dicts[0])
        names = [self.info.columns[k].name for k in keys]
        table = self.info.table
        target = (
            sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
        )
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            target, sql.SQL(", ").join(map(sql.Identifier, names))
        )
        raw = connection.connection.dbapi_connection
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in dicts:
                copy.write_row([row[k] for k in keys])

    def update(self, id: Any, **values: Any) -> M:
        """Set ``values`` on the row with primary key ``id`` (NotFound if none); returns it."""
        self.info.check_values(values)
        obj = self.session.get(self.model, id)
        if obj is None:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
        for key, value in values.items():
            setattr(obj, key, value)
        self.session.flush()
        return obj  # type: ignore[no-any-return]

    def delete(self, id: Any) -> None:
        """Delete the row with primary key ``id`` (NotFound if none)."""
        obj = self.session.get(self.model, id)
        if obj is None:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
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


def _check_page(number: int, size: int) -> None:
    for what, value in (("number", number), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"page {what} must be a whole number of at least 1, not {value!r}")


def _describe(args: Sequence[Any], filters: Mapping[str, Any]) -> str:
    shown = [str(a) for a in args] + [f"{k}={v!r}" for k, v in filters.items()]
    return ", ".join(shown) or "(no filter)"


def _is_psycopg_bad_data(error: Exception) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(error, (psycopg.errors.IntegrityError, psycopg.errors.DataError))


def _line_of(error: Exception) -> int | None:
    """The failed row's index in a COPY, from PostgreSQL's error context (``line N``)."""
    orig = getattr(error, "orig", error)
    context = getattr(getattr(orig, "diag", None), "context", None) or ""
    found = re.search(r"COPY \S+, line (\d+)", context)
    return int(found.group(1)) - 1 if found else None
