"""Keyset pagination cursors: the last row's sort values, signed, for the next page.

A cursor is ``PAYLOAD.SIGNATURE``, both base64url: the payload is JSON (a fingerprint of the
query that made it and the last row's values of the sort columns), the signature an
HMAC-SHA256 of it with the site's key (``Catalog.cursor_key``). A cursor that was changed, is
signed with another key, or was made by another query (other model, filters or order) is a
:class:`~storekeeper.errors.BadCursor`; its values are never used unchecked.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import BadCursor, BadInput

#: How values of other types than JSON's travel in a cursor: a tag and a text.
_ENCODERS: dict[type[Any], tuple[str, Callable[[Any], Any]]] = {
    dt.datetime: ("dt", lambda v: v.isoformat()),
    dt.date: ("d", lambda v: v.isoformat()),
    dt.time: ("t", lambda v: v.isoformat()),
    dt.timedelta: ("td", lambda v: [v.days, v.seconds, v.microseconds]),
    decimal.Decimal: ("dec", str),
    uuid.UUID: ("uuid", str),
    bytes: ("b", lambda v: base64.b64encode(v).decode()),
    float: ("f", repr),  # inf and nan, which JSON has not
}
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dt": dt.datetime.fromisoformat,
    "d": dt.date.fromisoformat,
    "t": dt.time.fromisoformat,
    "td": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "dec": decimal.Decimal,
    "uuid": uuid.UUID,
    "b": base64.b64decode,
    "f": float,
}


def _encode(value: Any, column: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    for kind in type(value).__mro__:
        if kind in _ENCODERS:
            tag, encode = _ENCODERS[kind]
            return [tag, encode(value)]
    raise BadInput(
        f"after() cannot keep a value of type {type(value).__name__} of column {column!r} in a "
        "cursor; order by columns of numbers, text, dates, times, decimals, UUIDs or bytes"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        tag, text = value
        return _DECODERS[tag](text)
    return value


def query_fingerprint(
    model: str, order: Sequence[tuple[str, bool]], args: Sequence[Any], filters: Mapping[str, Any]
) -> str:
    """What identifies a keyset query: its model, sort and filters (not the page size)."""
    shown = {
        "model": model,
        "order": [[key, desc] for key, desc in order],
        "filters": sorted([key, repr(value)] for key, value in filters.items()),
        "args": [_expression_text(arg) for arg in args],
    }
    blob = json.dumps(shown, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _expression_text(expression: Any) -> str:
    """A SQLAlchemy expression with its values: ``str()`` alone hides them behind
    placeholders, and ``depth > 3`` must not match a cursor made for ``depth > 4``."""
    try:
        compiled = expression.compile()
    except Exception:  # not an expression: its repr is all there is
        return repr(expression)
    return f"{compiled} {sorted((k, repr(v)) for k, v in compiled.params.items())}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def make_cursor(key: bytes, query: str, keys: Sequence[str], values: Sequence[Any]) -> str:
    """A signed cursor after a row whose sort columns ``keys`` hold ``values``."""
    payload = json.dumps(
        {"q": query, "v": [_encode(v, k) for k, v in zip(keys, values, strict=True)]},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_signature(key, payload))}"


def read_cursor(key: bytes, query: str, cursor: str) -> list[Any]:
    """The sort values a cursor carries, once its signature and query are checked."""
    if not isinstance(cursor, str):
        raise BadCursor(f"a cursor is the text a previous after() gave, not {cursor!r}")
    head, _, tail = cursor.partition(".")
    try:
        payload, signature = _unb64(head), _unb64(tail)
    except (binascii.Error, ValueError):
        payload, signature = b"", b""
    if not signature or not hmac.compare_digest(signature, _signature(key, payload)):
        raise BadCursor(
            f"cursor {_short(cursor)} was not made by this site (tampered with, or signed "
            "with another key): start again from the first page (cursor=None)"
        )
    data = json.loads(payload)
    if data.get("q") != query:
        raise BadCursor(
            f"cursor {_short(cursor)} belongs to another query (other filters, order_by or "
            "model): pass the cursor the same query gave, or None for its first page"
        )
    return [_decode(v) for v in data["v"]]


def _short(cursor: str) -> str:
    return repr(cursor if len(cursor) <= 24 else cursor[:20] + "...")
