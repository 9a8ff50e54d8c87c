"""The errors storekeeper raises: one base class and a few kinds a caller can act on.

Every message names the offending value and says what to do next. The command line maps
:class:`BadInput` to exit code 2 and every other :class:`StorekeeperError` to exit code 1.
"""

from __future__ import annotations

from collections.abc import Iterable


class StorekeeperError(Exception):
    """Base class of every error storekeeper raises on purpose."""

    exit_code = 1


class BadInput(StorekeeperError):
    """The caller gave something invalid; nothing was changed."""

    exit_code = 2


class InvalidName(BadInput):
    """An app, store, setting or service name that storekeeper cannot use."""


class ConfigError(BadInput):
    """The configuration (file, environment, catalog) is invalid or incomplete."""


class NotFound(BadInput):
    """An app, store, setting, kind or service that does not exist."""


class MultipleFound(StorekeeperError):
    """A query that must match one row (a driver's ``one()``) matched more than one."""


class BadCursor(BadInput):
    """A keyset pagination cursor that was tampered with, signed with another key, or made by
    another query (other filters, order or model)."""


class NotAssigned(ConfigError):
    """A store or server setting that no service is plugged into."""


class ServiceUnavailable(StorekeeperError):
    """A database server could not be reached or refused the credentials."""


class LockTimeout(StorekeeperError):
    """A store's lock was not had in time; the message says who holds it."""


class ProvisionError(StorekeeperError):
    """Creating, dropping or initializing a store failed."""


class InitializerError(ProvisionError):
    """A store's initializer could not be imported or raised."""


class MigrationError(StorekeeperError):
    """Migrating a store failed, or its migrations cannot be run as they are (several heads,
    a database ahead of the code).

    ``before`` and ``after`` are the store's revisions before the run and where it stays
    (``None`` at base, or when unknown); ``backup`` the id of the backup taken automatically
    just before the migration, when one was.
    """

    def __init__(self, message: str, *, before: str | None = None, after: str | None = None):
        super().__init__(message)
        self.before = before
        self.after = after
        self.backup: str | None = None


class BadRevision(MigrationError, BadInput):
    """A revision that does not exist for a store, or a move it cannot make (below base)."""


def exit_code_of(failures: Iterable[int]) -> int:
    """The exit code of a run over many stores, from the exit codes of its failures: 0 when
    none failed, 2 when every failure was bad input, else 1."""
    codes = set(failures)
    if not codes:
        return 0
    return 2 if codes == {BadInput.exit_code} else 1
