"""One page of a query's results, as Flask-SQLAlchemy's ``paginate`` gives it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BadInput

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Page:
    """Items of page ``page`` (counted from 1) of ``per_page`` items, out of ``total``."""

    items: Sequence[Any]
    page: int
    per_page: int
    total: int | None

    @property
    def pages(self) -> int:
        """How many pages there are (0 when nothing matched or the total was not counted)."""
        if not self.total:
            return 0
        return -(-self.total // self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one."""
        if self.total is None:
            return len(self.items) == self.per_page
        return self.page < self.pages

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, or ``None``."""
        return self.page - 1 if self.has_prev else None

    @property
    def next_num(self) -> int | None:
        """The next page's number, or ``None``."""
        return self.page + 1 if self.has_next else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


@dataclass(frozen=True)
class KeysetPage:
    """``size`` items after a keyset cursor (a driver's ``after()``), and the cursor of the
    page after them: ``None`` when there is none."""

    items: Sequence[Any]
    size: int
    next_cursor: str | None

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one."""
        return self.next_cursor is not None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


def paginate(
    session: Session,
    statement: Select[Any],
    *,
    page: int = 1,
    per_page: int = 20,
    count: bool = True,
) -> Page:
    """Page ``page`` of ``statement``'s results (ORM entities when it selects one entity).

    ``count`` runs a second ``SELECT count(*)`` for :attr:`Page.total`; without it the total
    is ``None`` and :attr:`Page.has_next` guesses from a full page.
    """
    for what, value in (("page", page), ("per_page", per_page)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"{what} must be a whole number of at least 1, not {value!r}")
    from sqlalchemy import func, select  # on use: import storekeeper.pagination stays light

    items = session.scalars(statement.limit(per_page).offset((page - 1) * per_page)).all()
    total = None
    if count:
        counted = select(func.count()).select_from(statement.order_by(None).subquery())
        total = session.execute(counted).scalar_one()
    return Page(items, page, per_page, total)
