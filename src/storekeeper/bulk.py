"""Bulk writes for the write drivers: PostgreSQL's COPY through psycopg 3, a temporary staging
table for upserts, and telling which row and column of a failed batch the database refused.

Every COPY goes through :func:`copy_rows`, the one DBAPI call here (the async drivers run the
sync drivers under ``AsyncSession.run_sync`` and await that call). Binary COPY needs each
column's PostgreSQL type (:func:`table_types`, read once per connection and table); when
psycopg cannot write a value in binary (a ``Decimal`` for a ``double precision``), the write
driver sends the batch again as text COPY, where the server parses each value as an
``INSERT`` would, and names the line and column it refuses.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, MetaData, Table, text

if TYPE_CHECKING:
    from sqlalchemy import Connection

#: Below this many rows one INSERT (insertmanyvalues) costs less than a COPY's setup.
COPY_MIN_ROWS = 100


@dataclass(frozen=True)
class ColumnType:
    """A column's PostgreSQL type: its oid (a domain's base type) and how it is spelled."""

    oid: int
    name: str


@dataclass(frozen=True)
class TableTypes:
    """The PostgreSQL types of a table's columns, by column name, and whether psycopg has a
    binary dumper for every one of them."""

    columns: dict[str, ColumnType]
    binary: bool


class RowFailed(Exception):
    """psycopg could not write row ``index`` of a COPY (raised by :func:`copy_rows`)."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"row {index}: {error}")
        self.index = index
        self.error = error


def is_copy_connection(connection: Connection) -> bool:
    """Whether ``connection`` can COPY: PostgreSQL through psycopg 3."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver in ("psycopg", "psycopg_async")


def table_types(connection: Connection, table: Table) -> TableTypes:
    """The column types of ``table`` as the server has them (cached on the connection)."""
    cache: dict[str, TableTypes] = connection.info.setdefault("storekeeper.copy_types", {})
    name = _table_name(connection, table)
    found = cache.get(name)
    if found is None:
        rows = connection.execute(
            text(
                "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN t.typbasetype "
                "ELSE a.atttypid END, format_type(a.atttypid, a.atttypmod) "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped"
            ),
            {"table": name},
        ).all()
        columns = {column: ColumnType(int(oid), spelled) for column, oid, spelled in rows}
        found = cache[name] = TableTypes(columns, _has_binary_dumpers(connection, columns))
    return found


def _has_binary_dumpers(connection: Connection, columns: dict[str, ColumnType]) -> bool:
    from psycopg import pq

    adapters = connection.connection.driver_connection.adapters  # type: ignore[union-attr]
    for column in columns.values():
        try:
            adapters.get_dumper_by_oid(column.oid, pq.Format.BINARY)
        except Exception:  # an enum, an extension's type: text COPY lets the server parse it
            return False
    return True


def _table_name(connection: Connection, table: Table) -> str:
    return connection.dialect.identifier_preparer.format_table(table)


def copy_statement(
    connection: Connection, table: Table | str, names: Sequence[str], *, binary: bool
) -> str:
    """``COPY table (names) FROM STDIN``, binary or text."""
    quote = connection.dialect.identifier_preparer.quote
    target = table if isinstance(table, str) else _table_name(connection, table)
    columns = ", ".join(quote(name) for name in names)
    return f"COPY {target} ({columns}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")


def copy_rows(
    raw: Any,
    statement: str,
    oids: Sequence[int] | None,
    rows: Iterable[Sequence[Any]],
) -> None:
    """Run ``statement`` (a ``COPY ... FROM STDIN``) on DBAPI connection ``raw`` (psycopg's, or
    the async drivers' sync view of an ``AsyncConnection``: see the drivers'
    ``_dbapi_connection``), writing ``rows`` (sequences of values). ``oids`` are the columns'
    types, for binary COPY.

    The one DBAPI call of the COPY paths. A row psycopg cannot write is a :class:`RowFailed`
    with its index; the server's refusals are psycopg errors naming the line and column.
    """
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        if oids is not None:
            copy.set_types(oids)
        for index, row in enumerate(rows):
            try:
                copy.write_row(row)
            except Exception as error:
                raise RowFailed(index, error) from error


def stage(connection: Connection, table: Table, columns: Sequence[Column[Any]]) -> Table:
    """A temporary table with ``columns`` of ``table``, their types as the server has them
    (no constraints: they are checked when the rows are merged); dropped at commit, or
    earlier with :func:`drop_stage`."""
    quote = connection.dialect.identifier_preparer.quote
    name = f"storekeeper_stage_{uuid.uuid4().hex[:16]}"
    names = ", ".join(quote(c.name) for c in columns)
    connection.execute(
        text(
            f"CREATE TEMPORARY TABLE {quote(name)} ON COMMIT DROP AS "
            f"SELECT {names} FROM {_table_name(connection, table)} WITH NO DATA"
        )
    )
    return Table(name, MetaData(), *(Column(c.name, c.type) for c in columns))


def drop_stage(connection: Connection, staged: Table) -> None:
    """Drop a table :func:`stage` made."""
    connection.execute(
        text(f"DROP TABLE {connection.dialect.identifier_preparer.quote(staged.name)}")
    )


# which row and column a database refused ----------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """What a database said of a row it refused: the message, and where it points."""

    message: str
    line: int | None  # a COPY's line, counted from 0
    column: str | None


def is_row_refusal(error: BaseException) -> bool:
    """Whether ``error`` is a database refusing a row (a constraint, a value of the wrong
    type), not the connection failing."""
    orig = getattr(error, "orig", error)
    names = {kind.__name__ for kind in type(orig).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


def refusal(error: BaseException, row: Mapping[str, Any] | None = None) -> Refusal:
    """The message of a refused row, and the COPY line and the column it names (if any).
    ``row``, the row refused, finds the column of a value the message quotes (``invalid input
    syntax for type double precision: "deep"``)."""
    orig = getattr(error, "orig", error)
    diag = getattr(orig, "diag", None)
    message = str(getattr(diag, "message_primary", None) or orig).splitlines()[0]
    detail = getattr(diag, "message_detail", None)
    if detail:
        message = f"{message} ({detail})"
    line = column = None
    context = getattr(diag, "context", None) or ""
    found = re.search(r"COPY \S+, line (\d+)(?:, column (\w+))?", context)
    if found:
        line = int(found.group(1)) - 1
        column = found.group(2)
    column = column or getattr(diag, "column_name", None)
    if column is None and detail:
        keys = re.match(r"Key \(([^)]*)\)=", detail)
        column = keys.group(1) if keys else None
    if column is None:  # SQLite: "NOT NULL constraint failed: table.column"
        failed = re.search(r"constraint failed: ([\w.]+(?:, [\w.]+)*)", message)
        if failed:
            column = ", ".join(part.rsplit(".", 1)[-1] for part in failed.group(1).split(", "))
    if column is None and row is not None:
        quoted = re.search(r': "(.*)"$', message)
        matching = [k for k, v in row.items() if quoted and str(v) == quoted.group(1)]
        column = matching[0] if len(matching) == 1 else None
    return Refusal(message, line, column)
