"""In-memory stand-ins for ReadDriver and WriteDriver, for a controller's unit tests.

They obey the drivers' contract (the same methods, lookups and errors; one contract suite,
tests/test_drivers.py, runs on both), for any mapped model, without a database::

    reader, writer = fake_drivers(StreamGage, [StreamGage(id=1, value=3)])

What they cannot do: run SQL. A positional filter may be a simple comparison of a column
with a value (``StreamGage.value > 3``); anything else is a BadInput. Server defaults are
filled only when they are a plain string; ``onupdate`` only when it is a value or a function.
Unique constraints the model declares are kept; types are not checked (as SQLite does not).
Cursors of ``after()`` are signed with a key of the fake table's own (or ``cursor_key=``).
"""

from __future__ import annotations

import builtins
import operator
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause, True_

from ..drivers import (
    CursorKey,
    ModelInfo,
    UpdateMany,
    _check_page,
    _default_value,
    _describe,
    _Shared,
    _Writes,
    last_wins,
    model_info,
)
from ..errors import BadInput, MultipleFound, NotFound
from ..pagination import KeysetPage, Page

M = TypeVar("M")

_OPERATORS: dict[Any, Callable[[Any, Any], Any]] = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.gt: operator.gt,
    operator.ge: operator.ge,
    operator.lt: operator.lt,
    operator.le: operator.le,
}


class FakeTable(Generic[M]):
    """The rows of one model, by primary key: what a fake reader and writer share."""

    def __init__(
        self,
        model: type[M],
        rows: Iterable[M | Mapping[str, Any]] = (),
        *,
        cursor_key: CursorKey | None = None,
    ):
        self.model = model
        self.info: ModelInfo = model_info(model)
        self.rows: dict[Any, M] = {}
        self.cursor_key: CursorKey = cursor_key or secrets.token_bytes(32)
        for i, row in enumerate(rows):
            self.insert(row, i)

    def new(self, row: M | Mapping[str, Any], index: int) -> M:
        """``row`` as an instance, with the defaults a database would fill."""
        values = dict(self.info.as_row(row, index))
        for key, col in self.info.columns.items():
            if key in values:
                continue
            default: Any = col.default
            server: Any = col.server_default
            if default is not None and not default.is_sequence and not default.is_clause_element:
                values[key] = _default_value(default)
            elif server is not None and isinstance(getattr(server, "arg", None), str):
                values[key] = server.arg
            elif key == self.info.pk and values.get(key) is None:
                values[key] = max((k for k in self.rows if isinstance(k, int)), default=0) + 1
            else:
                values[key] = None
        obj = row if isinstance(row, self.model) else self.model(**values)
        for key, value in values.items():
            setattr(obj, key, value)
        return obj

    def clash(self, obj: M, row: int | str) -> None:
        """BadInput when ``obj`` has the values of another row in a unique column set, as
        the database's duplicate key error; ``row`` names it (its index)."""
        for unique in self.info.unique_sets:
            mine = tuple(getattr(obj, k) for k in unique)
            if any(v is None for v in mine):
                continue  # NULLs are never equal, in a unique constraint too
            for other in self.rows.values():
                if other is not obj and tuple(getattr(other, k) for k in unique) == mine:
                    shown = ", ".join(unique)
                    raise BadInput(
                        f"{self.info.name}: row {row}, column {shown}: duplicate key "
                        f"({shown})=({', '.join(map(str, mine))}); nothing was written"
                    )

    def insert(self, row: M | Mapping[str, Any], index: int) -> M:
        obj = self.new(row, index)
        self.clash(obj, index)
        self.rows[getattr(obj, self.info.pk)] = obj
        return obj

    def set(self, obj: M, values: Mapping[str, Any], row: int | str) -> None:
        """Set ``values`` on ``obj``, and the ``onupdate`` of the columns not given; checked
        for duplicate keys first (nothing is set then)."""
        every = dict(values)
        for key, col in self.info.columns.items():
            onupdate: Any = col.onupdate
            if (
                key not in every
                and onupdate is not None
                and not onupdate.is_sequence
                and not onupdate.is_clause_element
            ):
                every[key] = _default_value(onupdate)
        before = {key: getattr(obj, key) for key in every}
        for key, value in every.items():
            setattr(obj, key, value)
        try:
            self.clash(obj, row)
        except BadInput:
            for key, value in before.items():
                setattr(obj, key, value)
            raise

    def keep(self) -> Callable[[], None]:
        """A function that puts every row back as it is now (all or nothing)."""
        rows = dict(self.rows)
        values = {id(obj): {k: getattr(obj, k) for k in self.info.columns} for obj in rows.values()}

        def restore() -> None:
            self.rows = rows
            for obj in rows.values():
                for key, value in values[id(obj)].items():
                    setattr(obj, key, value)

        return restore


class _FakeDriver(_Shared[M]):
    def __init__(
        self,
        model: type[M],
        rows: Iterable[M | Mapping[str, Any]] = (),
        *,
        table: FakeTable[M] | None = None,
        cursor_key: CursorKey | None = None,
    ):
        self.model = model
        self.table = table if table is not None else FakeTable(model, rows, cursor_key=cursor_key)
        self.info = self.table.info
        self._cursor_key = cursor_key or self.table.cursor_key

    def _select(
        self, args: Sequence[Any], filters: Mapping[str, Any], order_by: Any = None
    ) -> builtins.list[M]:
        order = self.info.order(order_by)
        checks = builtins.list(self.info.lookups(filters))  # BadInput before any row is seen
        found = [
            obj
            for obj in self.table.rows.values()
            if all(_expression(self.info, a, obj) for a in args)
            and all(lookup.python(getattr(obj, key), value) for key, lookup, value in checks)
        ]
        # stable sorts, last key first; NULLs last ascending, first descending (PostgreSQL's)
        for key, desc in reversed(order):
            found.sort(key=_sort_key(key), reverse=desc)
        return found


def _is_after(obj: Any, order: Sequence[tuple[str, bool]], values: Sequence[Any]) -> bool:
    """Whether ``obj`` sorts after the row whose sort columns hold ``values`` (NULLs last
    ascending, first descending, as the real drivers' keyset sort)."""
    for (key, desc), value in zip(order, values, strict=True):
        mine = getattr(obj, key)
        if mine == value or (mine is None and value is None):
            continue
        if mine is None:
            return not desc
        if value is None:
            return desc
        return bool(mine < value) if desc else bool(mine > value)
    return False


def _sort_key(key: str) -> Callable[[Any], tuple[bool, Any]]:
    return lambda obj: (getattr(obj, key) is None, getattr(obj, key))


def _expression(info: ModelInfo, expr: Any, obj: Any) -> bool:
    """A positional filter the fakes understand: ``Model.column <op> value``."""
    if isinstance(expr, True_):
        return True
    if (
        isinstance(expr, BinaryExpression)
        and isinstance(expr.left, ColumnClause)
        and isinstance(expr.right, BindParameter)
        and expr.operator in _OPERATORS
    ):
        key = expr.left.key
        if key in info.columns:
            value = getattr(obj, key)
            return value is not None and bool(_OPERATORS[expr.operator](value, expr.right.value))
    raise BadInput(f"the fake drivers cannot evaluate {expr}; use a keyword lookup")


class FakeReadDriver(_FakeDriver[M]):
    """ReadDriver's contract on an in-memory table."""

    def get(self, id: Any) -> M | None:
        return self.table.rows.get(id)

    def get_many(self, ids: Iterable[Any]) -> builtins.list[M]:
        return [self.table.rows[i] for i in ids if i in self.table.rows]

    def find(self, *args: Any, order_by: Any = None, **filters: Any) -> builtins.list[M]:
        return self._select(args, filters, order_by)

    def first(self, *args: Any, order_by: Any = None, **filters: Any) -> M | None:
        found = self._select(args, filters, order_by)
        return found[0] if found else None

    def one(self, *args: Any, **filters: Any) -> M:
        found = self._select(args, filters)
        if not found:
            raise NotFound(f"no {self.info.name} matches {_describe(args, filters)}")
        if len(found) > 1:
            raise MultipleFound(
                f"more than one {self.info.name} matches {_describe(args, filters)}"
            )
        return found[0]

    def list(
        self, order_by: Any = None, limit: int | None = None, offset: int | None = None
    ) -> builtins.list[M]:
        found = self._select((), {}, order_by)[offset or 0 :]
        return found if limit is None else found[:limit]

    def page(
        self, number: int, size: int, *args: Any, order_by: Any = None, **filters: Any
    ) -> Page:
        _check_page(number, size)
        found = self._select(args, filters, order_by)
        return Page(found[(number - 1) * size : number * size], number, size, len(found))

    def after(
        self, cursor: str | None, size: int, *args: Any, order_by: Any = None, **filters: Any
    ) -> KeysetPage:
        _check_page(1, size)
        order = self.info.keyset_order(order_by)
        query = self._keyset_query(order, args, filters)
        values = self._keyset_values(cursor, order, query)
        found = self._select(args, filters, [f"-{k}" if desc else k for k, desc in order])
        if values is not None:
            found = [obj for obj in found if _is_after(obj, order, values)]
        return self._keyset_page(found[: size + 1], size, order, query)

    def count(self, *args: Any, **filters: Any) -> int:
        return len(self._select(args, filters))

    def exists(self, *args: Any, **filters: Any) -> bool:
        return bool(self._select(args, filters))

    def rows(
        self,
        *args: Any,
        order_by: Any = None,
        limit: int | None = None,
        offset: int | None = None,
        **filters: Any,
    ) -> builtins.list[dict[str, Any]]:
        found = self._select(args, filters, order_by)[offset or 0 :]
        found = found if limit is None else found[:limit]
        return [{k: getattr(o, k) for k in self.info.columns} for o in found]

    def stream(
        self, *args: Any, order_by: Any = None, batch_size: int = 1000, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
        return iter(self.rows(*args, order_by=order_by, **filters))


class FakeWriteDriver(_FakeDriver[M], _Writes[M]):
    """WriteDriver's contract on an in-memory table."""

    def add(self, row: M | Mapping[str, Any]) -> M:
        self.info.as_row(row, 0)
        return self.table.insert(row, 0)

    def add_many(
        self, rows: Iterable[M | Mapping[str, Any]], *, returning: bool = False
    ) -> builtins.list[M] | None:
        given = builtins.list(rows)
        self.info.check_rows(given)
        restore = self.table.keep()
        try:
            added = [self.table.insert(row, i) for i, row in enumerate(given)]
        except BadInput:
            restore()  # all or nothing
            raise
        return added if returning else None

    def upsert_many(
        self,
        rows: Iterable[M | Mapping[str, Any]],
        *,
        on: str | Sequence[str] | None = None,
        returning: bool = False,
    ) -> builtins.list[M] | None:
        target = self.info.conflict_target(on)
        dicts, positions = last_wins(self.info.check_rows(rows), target, self.info.name)
        restore = self.table.keep()
        written = []
        try:
            for row, index in zip(dicts, positions, strict=True):
                match = next(
                    (
                        obj
                        for obj in self.table.rows.values()
                        if all(getattr(obj, k) == row[k] for k in target)
                    ),
                    None,
                )
                if match is None:
                    written.append(self.table.insert(dict(row), index))
                else:
                    self.table.set(match, {k: v for k, v in row.items() if k not in target}, index)
                    written.append(match)
        except BadInput:
            restore()
            raise
        return written if returning else None

    def update(self, id: Any, **values: Any) -> M:
        self.info.check_values(values)
        obj = self.table.rows.get(id)
        if obj is None:
            raise self._not_found(id)
        self.table.set(obj, values, 0)
        return obj

    def update_many(
        self,
        values_by_id: Mapping[Any, Mapping[str, Any]] | None = None,
        /,
        *,
        where: Any = None,
        **values: Any,
    ) -> int:
        asked = UpdateMany.read(self.info, values_by_id, where, values)
        changes = asked.by_id
        if changes is None:
            found = self._select(asked.args, asked.filters)
            changes = [(getattr(obj, self.info.pk), asked.values) for obj in found]
        restore = self.table.keep()
        count = 0
        try:
            for index, (id, given) in enumerate(changes):
                obj = self.table.rows.get(id)
                if obj is not None:
                    self.table.set(obj, given, f"{index} ({self.info.pk} {id!r})")
                    count += 1
        except BadInput:
            restore()
            raise
        return count

    def delete(self, id: Any) -> None:
        if id not in self.table.rows:
            raise self._not_found(id)
        del self.table.rows[id]

    def delete_many(self, ids: Iterable[Any]) -> int:
        gone = [i for i in set(ids) if i in self.table.rows]
        for i in gone:
            del self.table.rows[i]
        return len(gone)

    def delete_where(self, *args: Any, **filters: Any) -> int:
        if not args and not filters:
            raise BadInput(
                "delete_where needs a filter; to delete every row, say so: "
                "delete_where(sqlalchemy.true())"
            )
        gone = [getattr(o, self.info.pk) for o in self._select(args, filters)]
        return self.delete_many(gone)


def fake_drivers(
    model: type[M],
    rows: Iterable[M | Mapping[str, Any]] = (),
    *,
    cursor_key: CursorKey | None = None,
) -> tuple[FakeReadDriver[M], FakeWriteDriver[M]]:
    """A fake reader and writer of ``model`` sharing one in-memory table of ``rows``."""
    table = FakeTable(model, rows, cursor_key=cursor_key)
    return FakeReadDriver(model, table=table), FakeWriteDriver(model, table=table)
