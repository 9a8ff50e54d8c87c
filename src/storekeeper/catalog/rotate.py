"""Moving the catalog's sealed service URLs to a new master key (``storekeeper secret rotate``).

All or nothing, in one transaction: every URL is opened first (with the old key, or the new one
when it is already under it), and only when all open is any of them written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from ..errors import ConfigError
from ..secret import is_sealed, key_id, reseal, sealing_key_id
from . import tables as t

if TYPE_CHECKING:
    from . import Catalog


@dataclass(frozen=True)
class RotatedURL:
    """One service URL moved to the new key."""

    service: str
    #: How it was stored: ``plain``, ``enc:v1`` or ``key KEY_ID``.
    before: str


@dataclass
class RotationReport:
    """What :func:`rotate_secrets` did."""

    key_id: str
    rotated: list[RotatedURL] = field(default_factory=list)
    #: The encrypted backups whose data key was rewrapped (``storekeeper.backup``).
    backups: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _stored_as(value: str) -> str:
    if not is_sealed(value):
        return "plain"
    found = key_id(value)
    return f"key {found}" if found else "enc:v1"


def rotate_secrets(catalog: Catalog, new_key: str, old_key: str | None) -> RotationReport:
    """Seal every service URL of ``catalog`` under ``new_key``.

    Sealed URLs are opened with ``old_key`` (or ``new_key``, for those already under it); plain
    ones are sealed; ``enc:v1:`` ones rewritten as ``enc:v2:``. Raises :class:`ConfigError`
    naming the services whose URL neither key opens, and then changes nothing.
    """
    report = RotationReport(key_id=sealing_key_id(new_key))
    with catalog.engine.begin() as conn:
        rows = conn.execute(
            select(t.services.c.name, t.services.c.url)
            .order_by(t.services.c.name)
            .with_for_update()
        ).all()
        moved: dict[str, str] = {}
        refused: dict[str, str] = {}
        for name, stored in rows:
            try:
                moved[name] = reseal(stored, old_key, new_key)
            except ConfigError:
                refused[name] = _stored_as(stored)
        if refused:
            listed = ", ".join(f"{n!r} ({how})" for n, how in refused.items())
            if old_key:
                raise ConfigError(
                    f"the old key does not decrypt the URL of service(s) {listed}; nothing was "
                    "changed: give the key they were sealed with"
                )
            raise ConfigError(
                f"the URL of service(s) {listed} is sealed with another key than "
                "STOREKEEPER_SECRET_KEY (the new one); nothing was changed: give the old key "
                "with --old-key-file PATH, --old-key-env NAME or on standard input"
            )
        for name, stored in rows:
            conn.execute(
                update(t.services).where(t.services.c.name == name).values(url=moved[name])
            )
            report.rotated.append(RotatedURL(name, _stored_as(stored)))
    return report
