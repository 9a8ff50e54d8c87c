"""Identifiers and physical names, validated in one place.

App, store, setting, kind and service names become parts of database names, file names and
environment variable names, so they are kept to a portable shape: lower-case ASCII letters,
digits and underscores, starting with a letter, and not an SQL reserved word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from .errors import InvalidName

#: PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
MAX_DATABASE_NAME_BYTES = 63

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*\Z")

# Reserved in PostgreSQL, SQLite or MySQL (and in the SQL standard); as names they would need
# quoting in one dialect or another, which users of these tools never expect to do.
RESERVED_WORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between binary both case
    cast check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    database default deferrable delete desc distinct do drop else end except exists false fetch
    for foreign freeze from full grant group having ilike in index initially inner insert
    intersect into is isnull join key lateral leading left like limit localtime localtimestamp
    natural not notnull null offset on only or order outer overlaps placing primary references
    returning right select session_user similar some symmetric system_user table tablesample
    then to trailing transaction trigger true union unique update user using values variadic
    verbose view when where window with
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def check_identifier(value: object, what: str) -> str:
    """Return ``value`` if it is a valid name for ``what`` (``"app"``, ``"store"``...).

    Raises :class:`InvalidName` with a message that shows the value and the rule.
    """
    if not isinstance(value, str):
        raise InvalidName(f"{what} name must be a string, got {type(value).__name__} {value!r}")
    if value == "":
        raise InvalidName(f"{what} name is empty; use lower-case letters, digits and '_'")
    if not _IDENTIFIER.match(value):
        raise InvalidName(
            f"invalid {what} name {value!r}: use lower-case ASCII letters, digits and '_', "
            "starting with a letter (no spaces, quotes, dots, slashes or upper case)"
        )
    if value in RESERVED_WORDS:
        raise InvalidName(
            f"invalid {what} name {value!r}: it is an SQL reserved word; choose another, "
            f"e.g. {value + '_db'!r}"
        )
    if len(value.encode()) > MAX_DATABASE_NAME_BYTES:
        raise InvalidName(
            f"invalid {what} name {value!r}: {len(value)} characters, at most "
            f"{MAX_DATABASE_NAME_BYTES} allowed"
        )
    return value


def _fits(name: str, what: str, shorten: str) -> str:
    if len(name.encode()) > MAX_DATABASE_NAME_BYTES:
        raise InvalidName(
            f"{what} {name!r} is {len(name.encode())} bytes; PostgreSQL allows at most "
            f"{MAX_DATABASE_NAME_BYTES}: shorten the {shorten} or app name"
        )
    return name


#: The test plugin's databases start with this; no real database may.
TEST_PREFIX = "test_"


def _app_part(app: str) -> str:
    """``app`` checked as the first part of database names: an app called ``test`` (or
    ``test_...``) would have real stores named like the test plugin's databases."""
    check_identifier(app, "app")
    if f"{app}_".startswith(TEST_PREFIX):
        raise InvalidName(
            f"invalid app name {app!r}: its databases would start with {TEST_PREFIX!r}, which "
            "is kept for the test plugin's databases; choose another, e.g. "
            f"{app.replace('test', 'tested', 1)!r}"
        )
    return app


def physical_name(app: str, store: str) -> str:
    """The database name of ``store`` of ``app``: ``<app>_<store>``, checked for length."""
    _app_part(app)
    check_identifier(store, "store")
    return _fits(f"{app}_{store}", f"database name for store {app}.{store}:", "store")


def template_name(app: str, kind: str) -> str:
    """The physical name of the template database of ``kind``: ``<app>__<kind>_template``
    (the double underscore keeps it apart from every store's ``<app>_<store>``)."""
    _app_part(app)
    check_identifier(kind, "kind")
    return _fits(f"{app}__{kind}_template", f"template database of kind {app}.{kind}:", "kind")


def format_database_name(template: str, name: str) -> str:
    """Apply a site's database name format (``"{name}"``, ``"test_{name}"``) to ``name``.

    Sites for tests place every store under another name on the same servers; the result is
    checked like any database name.
    """
    try:
        result = template.format(name=name)
    except (KeyError, IndexError, ValueError):
        raise InvalidName(
            f"database name format {template!r} must contain '{{name}}' and nothing else in "
            "braces, like 'test_{name}'"
        ) from None
    if "{name}" not in template or not _IDENTIFIER.match(result):
        raise InvalidName(
            f"database name format {template!r} gives {result!r} for {name!r}: use lower-case "
            "letters, digits and '_' around '{name}'"
        )
    if len(result.encode()) > MAX_DATABASE_NAME_BYTES:
        raise InvalidName(
            f"database name {result!r} is {len(result.encode())} bytes; PostgreSQL allows at "
            f"most {MAX_DATABASE_NAME_BYTES}: shorten the store or app name"
        )
    return result


def split_target(value: str) -> tuple[str, str]:
    """Split ``"APP.SETTING"`` into its two checked parts."""
    app, dot, setting = value.partition(".")
    if not dot or not app or not setting:
        raise InvalidName(f"expected APP.SETTING (like 'my_app.example_db'), got {value!r}")
    return check_identifier(app, "app"), check_identifier(setting, "store or setting")


def env_var_for_service(name: str) -> str:
    """The environment variable that overrides the URL of service ``name``."""
    return "STOREKEEPER_SERVICE_" + check_identifier(name, "service").upper()


#: The tag of a database a restore replaced: ``<database>_pre_restore_<yyyymmddHHMMSS>``.
PRE_RESTORE = "_pre_restore_"
_STAMP = "%Y%m%d%H%M%S"


def beside(database: str, tag: str) -> str:
    """The name of a database kept beside ``database``: ``<database><tag>``, the database's part
    shortened so the whole fits PostgreSQL's 63 bytes."""
    room = MAX_DATABASE_NAME_BYTES - len(tag.encode())
    head = database.encode()[:room].decode(errors="ignore")
    return f"{head}{tag}"


def pre_restore_name(database: str, when: datetime) -> str:
    """The name under which a restore keeps the database it replaces, made at ``when``."""
    return beside(database, f"{PRE_RESTORE}{when:{_STAMP}}")


def pre_restore_prefix(database: str) -> str:
    """What the names of the databases set aside by restores of ``database`` begin with."""
    return pre_restore_name(database, datetime(2000, 1, 1))[: -len("20000101000000")]


def pre_restore_time(database: str, name: str) -> datetime | None:
    """When database ``name`` was set aside by a restore of ``database`` (UTC), or ``None``
    when ``name`` is not such a copy."""
    head = pre_restore_prefix(database)
    stamp = name[len(head) :]
    if not name.startswith(head) or len(stamp) != 14 or not stamp.isdigit():
        return None
    try:
        return datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def pre_restore_copies(database: str, names: Iterable[str]) -> list[tuple[str, datetime]]:
    """Of database names ``names``, those restores of ``database`` set aside, oldest first,
    each with when it was set aside."""
    found = [(n, when) for n in names if (when := pre_restore_time(database, n)) is not None]
    return sorted(found, key=lambda pair: pair[1])
