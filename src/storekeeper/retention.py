"""Retention: which backups of a store are kept, and for how long the databases a restore
replaced are kept.

The rules are restic's and Borg's, by the same names: ``keep_last = N`` keeps the N newest
backups; ``keep_daily = N`` the newest backup of each of the N newest days that have one;
``keep_weekly = N`` the newest of each of the N newest ISO weeks that have one (days and weeks
in UTC, as backups are stamped). A backup kept by any rule is kept. The rules count unpinned
backups only: a pinned backup is always kept, besides them. A store none of whose rules is set
keeps every backup. ``keep_pre_restore`` is a number of days (seven unless set).

Settings come from the configuration's ``[retention]`` (every store), a service's
``[services.NAME.retention]`` and a store's ``[retention."APP.STORE"]``, the most specific
winning key by key (:meth:`storekeeper.config.Config.retention_for`). This module only
decides; :func:`storekeeper.backup.prune` deletes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .config import Config

T = TypeVar("T")

#: How long the database a restore replaced is kept when ``keep_pre_restore`` is not set.
DEFAULT_KEEP_PRE_RESTORE_DAYS = 7.0


@dataclass(frozen=True)
class Policy:
    """The retention of one store: its rules (``None`` when not set) and where each came from."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_pre_restore: float = DEFAULT_KEEP_PRE_RESTORE_DAYS
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def limits_backups(self) -> bool:
        """Whether any rule on backups is set (else every backup is kept)."""
        return any(v is not None for v in (self.keep_last, self.keep_daily, self.keep_weekly))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "keep_last": self.keep_last,
            "keep_daily": self.keep_daily,
            "keep_weekly": self.keep_weekly,
            "keep_pre_restore": self.keep_pre_restore,
            "sources": dict(self.sources),
        }


def policy_for(config: Config, service: str, app: str, store: str) -> Policy:
    """The retention of ``app.store`` on ``service`` from the configuration."""
    found = config.retention_for(service, app, store)

    def whole(key: str) -> int | None:
        return int(found[key].value) if key in found else None

    days = found.get("keep_pre_restore")
    return Policy(
        keep_last=whole("keep_last"),
        keep_daily=whole("keep_daily"),
        keep_weekly=whole("keep_weekly"),
        keep_pre_restore=float(days.value) if days else DEFAULT_KEEP_PRE_RESTORE_DAYS,
        sources={key: value.source for key, value in found.items()},
    )


def _newest_per(
    items: Sequence[T], when: Callable[[T], datetime], period: Callable[[datetime], object], n: int
) -> list[T]:
    """The newest item of each of the ``n`` newest periods that have one (``items`` newest
    first)."""
    kept: list[T] = []
    seen: set[object] = set()
    for item in items:
        key = period(when(item))
        if key in seen:
            continue
        if len(seen) >= n:
            break
        seen.add(key)
        kept.append(item)
    return kept


def to_prune(
    items: Sequence[T],
    policy: Policy,
    *,
    when: Callable[[T], datetime],
    pinned: Callable[[T], bool],
) -> list[T]:
    """The items (backups) that ``policy`` does not keep, oldest first; never a pinned one,
    and none at all when no rule is set."""
    if not policy.limits_backups:
        return []
    counted = sorted((i for i in items if not pinned(i)), key=when, reverse=True)
    kept: list[T] = []
    if policy.keep_last:
        kept += counted[: policy.keep_last]
    if policy.keep_daily:
        kept += _newest_per(counted, when, lambda t: t.date(), policy.keep_daily)
    if policy.keep_weekly:
        kept += _newest_per(counted, when, lambda t: t.isocalendar()[:2], policy.keep_weekly)
    kept_ids = {id(i) for i in kept}
    return [i for i in reversed(counted) if id(i) not in kept_ids]


def pre_restore_expired(taken: datetime, policy: Policy, now: datetime) -> bool:
    """Whether a database set aside by a restore at ``taken`` is older than
    ``keep_pre_restore`` days."""
    return now - taken > timedelta(days=policy.keep_pre_restore)
