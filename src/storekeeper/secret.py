"""Secrets: masking them in everything shown, and encrypting them at rest in the catalog.

:func:`mask` is the one function every output path uses (CLI, logs, errors, status), so a
password in a URL is never printed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from .errors import ConfigError

MASK = "***"

# scheme://user:password@host  -> keep scheme and user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<pw>[^@\s/]*)@")
# key=value style (libpq connection strings, psycopg error texts): password=...
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\"[^\"]*\"|\S+)", re.I)

_ENCRYPTED_PREFIX = "enc:v1:"


def mask(text: str, *known: str | None) -> str:
    """Return ``text`` with passwords in URLs and ``password=`` pairs replaced by ``***``.

    Any of ``known`` secrets (for instance a password taken from a URL object) is hidden too,
    wherever it appears.
    """
    out = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    out = _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", out)
    for secret in known:
        if secret and len(secret) >= 3:
            out = out.replace(secret, MASK)
    return out


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
