"""In-memory stand-ins for ReadDriver and WriteDriver, for a controller's unit tests.

They obey the drivers' contract (the same methods, lookups and errors; one contract suite,
tests/test_drivers.py, runs on both), for any mapped model, without a database::

    reader, writer = fake_drivers(StreamGage, [StreamGage(id=1, value=3)])

What they cannot do: run SQL. A positional filter may be a simple comparison of a column
with a value (``StreamGage.value > 3``); anything else is a BadInput. Server defaults are
filled only when they are a plain string.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause, True_

from ..drivers import ModelInfo, MultipleFound, _check_page, _describe, model_info
from ..errors import BadInput, NotFound
from ..pagination import Page

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

    def __init__(self, model: type[M], rows: Iterable[M | Mapping[str, Any]] = ()):
        self.model = model
        self.info: ModelInfo = model_info(model)
        self.rows: dict[Any, M] = {}
        for row in rows:
            self.insert(row, 0)

    def new(self, row: M | Mapping[str, Any], index: int) -> M:
        """``row`` as an instance, with the defaults a database would fill."""
        values = self.info.as_row(row, index)
        for key, col in self.info.columns.items():
            if key in values:
                continue
            default: Any = col.default
            server: Any = col.server_default
            if default is not None and not getattr(default, "is_sequence", False):
                values[key] = default.arg(None) if default.is_callable else default.arg
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

    def insert(self, row: M | Mapping[str, Any], index: int) -> M:
        obj = self.new(row, index)
        key = getattr(obj, self.info.pk)
        if key in self.rows:
            raise BadInput(f"{self.info.name}: row {index}: duplicate {self.info.pk} {key!r}")
        self.rows[key] = obj
        return obj


class _FakeDriver(Generic[M]):
    def __init__(
        self,
        model: type[M],
        rows: Iterable[M | Mapping[str, Any]] = (),
        *,
        table: FakeTable[M] | None = None,
    ):
        self.model = model
        self.table = table if table is not None else FakeTable(model, rows)
        self.info = self.table.info

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

    def get_or_raise(self, id: Any) -> M:
        found = self.get(id)
        if found is None:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
        return found

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


class FakeWriteDriver(_FakeDriver[M]):
    """WriteDriver's contract on an in-memory table."""

    def add(self, row: M | Mapping[str, Any]) -> M:
        self.info.as_row(row, 0)
        return self.table.insert(row, 0)

    def add_many(
        self, rows: Iterable[M | Mapping[str, Any]], *, returning: bool = False
    ) -> builtins.list[M] | None:
        given = builtins.list(rows)
        self.info.check_rows(given)
        before = dict(self.table.rows)
        try:
            added = [self.table.insert(row, i) for i, row in enumerate(given)]
        except BadInput:
            self.table.rows = before  # all or nothing
            raise
        return added if returning else None

    def update(self, id: Any, **values: Any) -> M:
        self.info.check_values(values)
        obj = self.table.rows.get(id)
        if obj is None:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
        for key, value in values.items():
            setattr(obj, key, value)
        return obj

    def delete(self, id: Any) -> None:
        if id not in self.table.rows:
            raise NotFound(f"no {self.info.name} with {self.info.pk} {id!r}")
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
    model: type[M], rows: Iterable[M | Mapping[str, Any]] = ()
) -> tuple[FakeReadDriver[M], FakeWriteDriver[M]]:
    """A fake reader and writer of ``model`` sharing one in-memory table of ``rows``."""
    table = FakeTable(model, rows)
    return FakeReadDriver(model, table=table), FakeWriteDriver(model, table=table)
