"""The admin page's locks: the password's hash, server-side sessions behind an opaque cookie,
CSRF tokens, the rate limit on logins, and the security headers of every response.

Sessions live in the catalog (:meth:`storekeeper.catalog.Catalog.admin_session`): the cookie
holds a random token and an HMAC of it under the signing key, the catalog only the token's
SHA-256. A forged cookie fails its HMAC before any lookup; an expired, logged-out or
password-changed one finds no row. The signing key is made on first use and kept in the
catalog, sealed with ``STOREKEEPER_SECRET_KEY`` when that is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import BadInput
from ..secret import decrypt, encrypt

if TYPE_CHECKING:
    from ..catalog import Catalog

COOKIE = "storekeeper_admin"
LOGIN_COOKIE = "storekeeper_admin_login"
_KEY_SETTING = "admin_signing_key"
#: The shortest admin password accepted.
MIN_PASSWORD = 10

# Argon2id with argon2-cffi's defaults (RFC 9106's second recommended setting).
_HASHER = PasswordHasher()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def hash_password(password: str) -> str:
    """The Argon2id hash of ``password``; refuses a short one."""
    if len(password) < MIN_PASSWORD:
        raise BadInput(
            f"the admin password must have at least {MIN_PASSWORD} characters "
            f"(it has {len(password)})"
        )
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant time, by Argon2)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's."""
    return _HASHER.check_needs_rehash(password_hash)


def set_password(catalog: Catalog, user: str, password: str) -> None:
    """Make ``user`` the admin user with ``password`` (hashed); every session ends."""
    from ..naming import check_identifier

    check_identifier(user, "admin user")
    catalog.set_admin_user(user, hash_password(password))
    catalog.record("", "", "admin password", ok=True, detail=f"password of {user!r} set")


def signing_key(catalog: Catalog) -> bytes:
    """The catalog's signing key for cookies and CSRF tokens, made on first use."""
    kept = catalog.setting_or_default(_KEY_SETTING, encrypt(secrets.token_urlsafe(32)))
    return decrypt(kept).encode()


def _sign(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    """What the catalog keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Login:
    """A session as a request sees it: the user, and its CSRF token."""

    user: str
    token_hash: str
    csrf: str


class Sessions:
    """Opening, finding and ending sessions of one admin page."""

    def __init__(self, catalog: Catalog, *, lifetime: dt.timedelta) -> None:
        self.catalog = catalog
        self.lifetime = lifetime
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = signing_key(self.catalog)
        return self._key

    def open(self, user: str, client: str) -> str:
        """A new session of ``user``; returns the cookie's value."""
        token = secrets.token_urlsafe(32)
        expires = dt.datetime.now(dt.UTC) + self.lifetime
        self.catalog.add_admin_session(token_hash(token), user, client, expires)
        return f"{token}.{_sign(self.key, token)}"

    def find(self, cookie: str | None) -> Login | None:
        """The session behind a cookie's value, or ``None`` (forged, expired, ended)."""
        if not cookie:
            return None
        token, _, signature = cookie.rpartition(".")
        if not token or not hmac.compare_digest(signature, _sign(self.key, token)):
            return None
        hashed = token_hash(token)
        found = self.catalog.admin_session(hashed)
        if found is None:
            return None
        return Login(found.user, hashed, self.csrf_for(hashed))

    def end(self, login: Login) -> None:
        """End a session (logout)."""
        self.catalog.end_admin_session(login.token_hash)

    def csrf_for(self, value: str) -> str:
        """The CSRF token of a session (or of a login form's cookie)."""
        return _sign(self.key, f"csrf:{value}")

    def csrf_ok(self, value: str, given: object) -> bool:
        """Whether ``given`` is the CSRF token of ``value``."""
        return isinstance(given, str) and hmac.compare_digest(given, self.csrf_for(value))


class LoginLimit:
    """At most ``per_client`` failed logins per client address, and ``overall`` for all, in
    ``window`` seconds; a client over its limit is refused until its oldest failure ages out."""

    def __init__(self, per_client: int = 5, overall: int = 50, window: float = 300.0) -> None:
        self.per_client, self.overall, self.window = per_client, overall, window
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _prune(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, client: str) -> int:
        """Seconds ``client`` must wait before trying again (0: it may try now)."""
        now = time.monotonic()
        with self._lock:
            mine = self._failures.get(client, deque())
            self._prune(mine, now)
            self._prune(self._all, now)
            waits = []
            if len(mine) >= self.per_client:
                waits.append(mine[0] + self.window - now)
            if len(self._all) >= self.overall:
                waits.append(self._all[0] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, client: str) -> None:
        """Count a failed login of ``client``."""
        now = time.monotonic()
        with self._lock:
            self._failures.setdefault(client, deque()).append(now)
            self._all.append(now)

    def succeeded(self, client: str) -> None:
        """A client that logged in starts afresh."""
        with self._lock:
            self._failures.pop(client, None)


#: Content-Security-Policy: the page's own files only, no inline script or style, no frames.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware adding the security headers to every response, and ``no-store`` to
    every response but the static files."""

    def __init__(self, app: ASGIApp, *, secure: bool) -> None:
        self.app = app
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                if self.secure:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                headers += [(k, v) for k, v in extra if k not in names]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
