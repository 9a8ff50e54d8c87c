"""Secrets: masking them in everything shown, and encrypting them at rest in the catalog.

:func:`mask` is the one function every output path uses (CLI, logs, errors, status, ``repr``),
so a password in a URL is never printed; :func:`mask_url` shows one URL, parsed the way
SQLAlchemy parses it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from .errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import URL

MASK = "***"

# scheme://user:password@host -> keep scheme and user, hide the password. Typed raw, a password
# may hold '/', ':' and '@' (libpq and SQLAlchemy read up to the last '@' of the authority), so
# it runs to the last '@' before white space: hiding too much is safe, too little is not.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#\s]*):(?P<pw>\S*)@(?P<host>[^@\s]*)"
)
# key=value style (libpq connection strings, psycopg error texts): password=...
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\"[^\"]*\"|\S+)", re.I)


def mask(text: str, *known: str | None) -> str:
    """Return ``text`` with passwords in URLs and ``password=`` pairs replaced by ``***``.

    A URL's password is hidden whether it is percent-encoded or typed raw with ``/``, ``:`` or
    ``@`` in it. Any of ``known`` secrets (for instance a password taken from a URL object)
    is hidden too, wherever it appears, as typed or percent-encoded.
    """
    out = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@{m['host']}", text)
    out = _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", out)
    for secret in known:
        if secret and len(secret) >= 3:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                out = out.replace(form, MASK)
    return out


def mask_url(url: URL | str) -> str:
    """``url`` for display, its password hidden.

    A :class:`sqlalchemy.URL` is rendered by SQLAlchemy with ``hide_password=True``. A string
    is read with :func:`sqlalchemy.make_url` when it parses, and masked as text as well, since
    a raw ``@`` in a password makes ``make_url`` take part of the password for the host.
    """
    from sqlalchemy import URL as URLType
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    if isinstance(url, URLType):
        return mask(url.render_as_string(hide_password=True), url.password)
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    return mask(url, password)


def masked_repr(obj: object) -> str:
    """The ``repr`` a dataclass would have, with every password in it masked.

    For ``__repr__`` of objects that hold URLs, or objects that hold those.
    """
    import dataclasses

    assert dataclasses.is_dataclass(obj)
    fields = ", ".join(
        f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj) if f.repr
    )
    return mask(f"{type(obj).__name__}({fields})")


_ENCRYPTED_PREFIX = "enc:v1:"


def _fernet(key: str):  # type: ignore[no-untyped-def]
    try:
        from cryptography.fernet import Fernet
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "STOREKEEPER_SECRET_KEY is set but the 'cryptography' package is missing: "
            "pip install 'storekeeper[crypto]'"
        ) from exc
    digest = hashlib.sha256(key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def secret_key() -> str | None:
    """The key for encrypting secrets at rest, from ``STOREKEEPER_SECRET_KEY``, if set."""
    return os.environ.get("STOREKEEPER_SECRET_KEY") or None


def seal(value: str) -> str:
    """Encrypt ``value`` for the catalog when a secret key is set; else return it unchanged."""
    key = secret_key()
    if key is None:
        return value
    token: bytes = _fernet(key).encrypt(value.encode())
    return _ENCRYPTED_PREFIX + token.decode()


def unseal(value: str) -> str:
    """Decrypt a value written by :func:`seal`."""
    if not value.startswith(_ENCRYPTED_PREFIX):
        return value
    key = secret_key()
    if key is None:
        raise ConfigError(
            "the catalog holds encrypted service URLs but STOREKEEPER_SECRET_KEY is not set; "
            "set it to the key used when the services were added"
        )
    from cryptography.fernet import InvalidToken

    try:
        plain: bytes = _fernet(key).decrypt(value[len(_ENCRYPTED_PREFIX) :].encode())
    except InvalidToken:
        raise ConfigError(
            "STOREKEEPER_SECRET_KEY does not decrypt the service URLs in the catalog; "
            "set it to the key used when the services were added"
        ) from None
    return plain.decode()
