"""Secrets: masking them in everything shown, and encrypting them at rest.

Masking
    :func:`mask` is the one function every output path uses (CLI, logs, errors, status,
    ``repr``), so a password in a URL is never printed; :func:`mask_url` shows one URL, parsed
    the way SQLAlchemy parses it.

Keys
    The master key comes from ``STOREKEEPER_SECRET_KEY``, or the file that
    ``STOREKEEPER_SECRET_KEY_FILE`` names, or is given to each function. It is either a Fernet
    key (44 characters of urlsafe base64 for 32 random bytes, as :func:`new_key` or
    ``storekeeper secret new-key`` makes), used as it is, or any other text: a passphrase, from
    which the key is derived with scrypt (n=2**14, r=8, p=1, a random 16-byte salt). The
    derived key is cached per (passphrase, salt) in the process, and a process seals with the
    salt of the first value it opened (or one new salt), so a catalog's values share few salts
    and opening them costs few derivations.

Envelopes
    Every object gets a random data key of its own, which encrypts the object; the master key
    only wraps (encrypts) the data key. A *wrapped key* is the text
    ``v2:KEY_ID:KDF:WRAPPED_DATA_KEY``, where ``KEY_ID`` names the master key (16 hex digits
    from an HMAC of the key; for a passphrase, of the key derived with this salt) and ``KDF``
    is ``fernet`` or ``scrypt.LOG2_N.R.P.SALT``: everything needed to open it but the key.
    Rotating the master key rewraps the data key (:func:`rewrap`) and leaves the data as it is,
    so a backup of gigabytes is rotated by rewriting its header (:class:`Envelope`).

Sealed values
    :func:`encrypt` gives ``enc:`` + a wrapped key + ``:`` + the value encrypted (Fernet) with
    its data key; :func:`decrypt` opens it. Values sealed by storekeeper 0.1 (``enc:v1:``, Fernet
    under ``sha256(passphrase)``) are still read, and :func:`reseal` (what ``storekeeper secret
    rotate`` runs on every catalog URL) rewrites them as ``enc:v2:``.

Without the ``cryptography`` package (``pip install 'storekeeper[crypto]'``) every function
that needs it raises :class:`~storekeeper.errors.ConfigError` saying so.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
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
    # On use: config imports this module, and `storekeeper --help` needs no SQLAlchemy.
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
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"masked_repr needs a dataclass instance, not {type(obj).__name__}")
    fields = ", ".join(
        f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj) if f.repr
    )
    return mask(f"{type(obj).__name__}({fields})")


# encryption at rest ------------------------------------------------------------------

ENV_KEY = "STOREKEEPER_SECRET_KEY"
_SEALED = "enc:"
_V1 = "enc:v1:"
_V2 = "v2"
_FERNET_KDF = "fernet"
#: scrypt's cost, as Django's scrypt password hasher: 2**14 * 8 * 128 bytes = 16 MiB, some
#: 50 ms per derivation.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 14, 8, 1
# What a stored value may ask for (a tampered catalog must not make us derive for minutes).
_SCRYPT_LIMITS = {"log2_n": (10, 20), "r": (1, 16), "p": (1, 4)}
_SALT_BYTES = 16
_KEY_ID_LABEL = b"storekeeper key id"
_MISSING = (
    f"encrypted secrets ({ENV_KEY}) need the 'cryptography' package, which is not installed: "
    "pip install 'storekeeper[crypto]'"
)


class _WrongKey(ConfigError):
    """A key that does not open a sealed value."""

    def __init__(self, message: str, sealed_with: str | None) -> None:
        super().__init__(message)
        #: The key id the value names (``None`` for an ``enc:v1:`` value).
        self.sealed_with = sealed_with


def _crypto() -> Any:
    """``cryptography.fernet``, or the friendly error when it is not installed."""
    try:
        from cryptography import fernet
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return fernet


def secret_key() -> str | None:
    """The master key, from ``STOREKEEPER_SECRET_KEY``, else from the file that
    ``STOREKEEPER_SECRET_KEY_FILE`` names (its text without surrounding white space)."""
    value = os.environ.get(ENV_KEY)
    if value:
        return value
    path = os.environ.get(f"{ENV_KEY}_FILE")
    if not path:
        return None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise ConfigError(f"{ENV_KEY}_FILE: cannot read {path!r}: {exc.strerror}") from None


def new_key() -> str:
    """A fresh random master key (a Fernet key), for ``STOREKEEPER_SECRET_KEY``."""
    return str(_crypto().Fernet.generate_key().decode())


def sealing_key_id(key: str | None = None) -> str:
    """The key id that values sealed now with ``key`` (default: ``STOREKEEPER_SECRET_KEY``)
    carry; for a passphrase, with this process's salt."""
    return _key_id(_key_for_sealing(_require_key(key, sealing=True))[0])


def is_sealed(value: str) -> bool:
    """Whether ``value`` was written by :func:`encrypt` (any version)."""
    return value.startswith(_SEALED)


def _fernet_key_bytes(key: str) -> bytes | None:
    """The 32 bytes of ``key`` if it is a Fernet key, else ``None`` (a passphrase)."""
    if len(key) != 44:
        return None
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if len(raw) == 32 else None


@functools.lru_cache(maxsize=64)
def derive_key(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """The 32-byte master key scrypt derives from ``passphrase`` and ``salt`` (cached, since a
    derivation is made slow on purpose)."""
    try:
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return bytes(Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase.encode()))


# One salt per passphrase per process (the first one opened, or a new one): values sealed
# together share one derivation. Keyed by a digest, not the passphrase itself.
_SEAL_SALTS: dict[str, bytes] = {}


def _fingerprint(passphrase: str) -> str:
    return hashlib.sha256(passphrase.encode()).hexdigest()


def _key_for_sealing(key: str) -> tuple[bytes, str]:
    """The master key's bytes and the KDF text to store, for sealing with ``key``."""
    raw = _fernet_key_bytes(key)
    if raw is not None:
        return raw, _FERNET_KDF
    salt = _SEAL_SALTS.setdefault(_fingerprint(key), os.urandom(_SALT_BYTES))
    derived = derive_key(key, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    salt_text = base64.urlsafe_b64encode(salt).decode()
    return derived, f"scrypt.{SCRYPT_LOG2_N}.{SCRYPT_R}.{SCRYPT_P}.{salt_text}"


def _key_for_opening(key: str, kdf: str) -> bytes | None:
    """The master key's bytes for a value whose KDF text is ``kdf`` (``None`` when ``key`` is
    a passphrase and the value was sealed with a Fernet key)."""
    if kdf == _FERNET_KDF:
        return _fernet_key_bytes(key)
    name, _, rest = kdf.partition(".")
    parts = rest.split(".")
    if name != "scrypt" or len(parts) != 4:
        raise ConfigError(f"a sealed value names an unknown key derivation {kdf!r}")
    try:
        log2_n, r, p = (int(x) for x in parts[:3])
        salt = base64.urlsafe_b64decode(parts[3].encode())
    except (ValueError, binascii.Error):
        raise ConfigError(f"a sealed value has unreadable key derivation {kdf!r}") from None
    for (label, (low, high)), value in zip(_SCRYPT_LIMITS.items(), (log2_n, r, p), strict=True):
        if not low <= value <= high:
            raise ConfigError(
                f"a sealed value asks for key derivation {kdf!r}: {label} must be between "
                f"{low} and {high}; the catalog may have been tampered with"
            )
    return derive_key(key, salt, log2_n, r, p)


def _adopt_salt(key: str, kdf: str) -> None:
    """Seal with the salt of a value ``key`` just opened (a value that opened was sealed with
    this key, so its salt is not one planted by whoever can write the catalog)."""
    parts = kdf.split(".")
    if parts[:4] == ["scrypt", str(SCRYPT_LOG2_N), str(SCRYPT_R), str(SCRYPT_P)]:
        _SEAL_SALTS.setdefault(_fingerprint(key), base64.urlsafe_b64decode(parts[4].encode()))


def _key_id(master: bytes) -> str:
    return hmac.new(master, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _fernet(master: bytes) -> Any:
    return _crypto().Fernet(base64.urlsafe_b64encode(master))


def _require_key(key: str | None, *, sealing: bool = False) -> str:
    key = key if key is not None else secret_key()
    if key:
        return key
    if sealing:
        raise ConfigError(
            f"{ENV_KEY} is not set; set it to the master key (a passphrase, or a key from "
            "storekeeper secret new-key)"
        )
    raise ConfigError(
        f"the value is encrypted but {ENV_KEY} is not set; set it to the key used when "
        "the services were added"
    )


def _split_wrapped(wrapped: str) -> tuple[str, str, str]:
    parts = wrapped.split(":")
    if len(parts) != 4 or parts[0] != _V2:
        raise ConfigError("not a wrapped key of this storekeeper (expected v2:KEY_ID:KDF:KEY)")
    return parts[1], parts[2], parts[3]


def wrap_data_key(data_key: bytes, key: str | None = None) -> str:
    """Wrap ``data_key`` (a Fernet key) with the master key ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``); returns the wrapped key text to store beside the data."""
    master, kdf = _key_for_sealing(_require_key(key, sealing=True))
    token = _fernet(master).encrypt(data_key).decode()
    return f"{_V2}:{_key_id(master)}:{kdf}:{token}"


def unwrap_data_key(wrapped: str, key: str | None = None) -> bytes:
    """The data key that :func:`wrap_data_key` wrapped; :class:`ConfigError` when ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``) is not the master key that wrapped it."""
    return _unwrap(wrapped, _require_key(key), ENV_KEY if key is None else "the key given")


def _unwrap(wrapped: str, key: str, what: str) -> bytes:
    kid, kdf, token = _split_wrapped(wrapped)
    master = _key_for_opening(key, kdf)
    given = _key_id(master) if master is not None else None
    if master is None or not hmac.compare_digest(given or "", kid):
        raise _wrong_key(what, kid, given)
    fernet = _crypto()
    try:
        data_key = bytes(_fernet(master).decrypt(token.encode()))
    except fernet.InvalidToken:
        raise ConfigError(
            f"a value sealed with key id {kid} is damaged: its key id matches {what} but it "
            "does not decrypt"
        ) from None
    _adopt_salt(key, kdf)
    return data_key


def _wrong_key(what: str, sealed_with: str | None, given: str | None) -> _WrongKey:
    theirs = f"key id {sealed_with}" if sealed_with else "the key of storekeeper 0.1 (enc:v1)"
    mine = f" (key id {given})" if given else ""
    return _WrongKey(
        f"{what}{mine} does not decrypt a value sealed with {theirs}; set it to the key used "
        "when the services were added, or move them to a new key with: "
        "storekeeper secret rotate",
        sealed_with,
    )


def rewrap(wrapped: str, old_key: str, new_key: str) -> str:
    """``wrapped`` (from :func:`wrap_data_key`) wrapped again by ``new_key``: the data key,
    and so the data it encrypts, stays the same."""
    return wrap_data_key(_unwrap(wrapped, old_key, "the old key"), new_key)


@dataclass(frozen=True)
class Envelope:
    """A data key of one object and the same key wrapped by the master key.

    ``Envelope.new()`` makes one for a new object (a backup file...): encrypt with
    :meth:`encrypt`, store :attr:`wrapped` beside the result. ``Envelope.open(wrapped)`` gives
    it back to decrypt; :func:`rewrap` moves ``wrapped`` to a new master key.
    """

    #: The object's own key (a Fernet key): never stored unwrapped, never shown.
    data_key: bytes = field(repr=False)
    #: The data key wrapped by the master key, ``v2:KEY_ID:KDF:...``.
    wrapped: str

    @classmethod
    def new(cls, key: str | None = None) -> Envelope:
        """A random data key, wrapped by ``key`` (default: ``STOREKEEPER_SECRET_KEY``)."""
        data_key = bytes(_crypto().Fernet.generate_key())
        return cls(data_key, wrap_data_key(data_key, key))

    @classmethod
    def open(cls, wrapped: str, key: str | None = None) -> Envelope:
        """The envelope whose wrapped key is ``wrapped``, opened with ``key``."""
        return cls(unwrap_data_key(wrapped, key), wrapped)

    @property
    def key_id(self) -> str:
        """The id of the master key that wrapped the data key."""
        return _split_wrapped(self.wrapped)[0]

    def encrypt(self, data: bytes) -> bytes:
        """``data`` encrypted with the data key (a Fernet token)."""
        return bytes(_crypto().Fernet(self.data_key).encrypt(data))

    def decrypt(self, token: bytes) -> bytes:
        """The data :meth:`encrypt` encrypted; :class:`ConfigError` when damaged."""
        fernet = _crypto()
        try:
            return bytes(fernet.Fernet(self.data_key).decrypt(token))
        except fernet.InvalidToken:
            raise ConfigError(f"data sealed with key id {self.key_id} is damaged") from None


def encrypt(value: str, key: str | None = None) -> str:
    """Encrypt ``value`` in an envelope of its own under ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``); with no key at all, return it unchanged."""
    key = key if key is not None else secret_key()
    if not key:
        return value
    envelope = Envelope.new(key)
    return f"{_SEALED}{envelope.wrapped}:{envelope.encrypt(value.encode()).decode()}"


def _split_sealed(value: str) -> tuple[str, str]:
    """The wrapped key and the data token of an ``enc:v2:`` value."""
    wrapped, sep, token = value[len(_SEALED) :].rpartition(":")
    if not sep or not wrapped.startswith(f"{_V2}:"):
        raise ConfigError(
            "a sealed value has an unknown format (expected enc:v1: or enc:v2:); it was "
            "written by a newer storekeeper, or damaged"
        )
    return wrapped, token


def key_id(value: str) -> str | None:
    """The id of the master key a sealed value names (``None`` for plain and ``enc:v1:``)."""
    if not is_sealed(value) or value.startswith(_V1):
        return None
    return _split_wrapped(_split_sealed(value)[0])[0]


def decrypt(value: str, key: str | None = None) -> str:
    """Decrypt a value written by :func:`encrypt` (or by storekeeper 0.1) with ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``); a plain value is returned as it is."""
    if not is_sealed(value):
        return value
    what = ENV_KEY if key is None else "the key given"
    return _decrypt(value, _require_key(key), what)


def _decrypt(value: str, key: str, what: str) -> str:
    if value.startswith(_V1):
        fernet = _crypto()
        legacy = fernet.Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))
        try:
            return str(legacy.decrypt(value[len(_V1) :].encode()).decode())
        except fernet.InvalidToken:
            raise _wrong_key(what, None, None) from None
    wrapped, token = _split_sealed(value)
    return Envelope(_unwrap(wrapped, key, what), wrapped).decrypt(token.encode()).decode()


def reseal(value: str, old_key: str | None, new_key: str) -> str:
    """``value`` sealed under ``new_key``: an ``enc:v2:`` value is rewrapped (its data is not
    re-encrypted), an ``enc:v1:`` one decrypted and sealed again, a plain one sealed.

    A sealed value is opened with ``old_key``, or with ``new_key`` when it is already under
    that one; raises :class:`ConfigError` when neither opens it.
    """
    if not is_sealed(value):
        return encrypt(value, new_key)
    failure: _WrongKey | None = None
    for key in (old_key, new_key):
        if not key:
            continue
        try:
            if value.startswith(_V1):
                return encrypt(_decrypt(value, key, "the old key"), new_key)
            wrapped, token = _split_sealed(value)
            return f"{_SEALED}{rewrap(wrapped, key, new_key)}:{token}"
        except _WrongKey as exc:
            failure = failure or exc
    raise failure or _wrong_key("the old key", key_id(value), None)


#: The names :func:`encrypt` and :func:`decrypt` had before (kept working): "seal" now only
#: means what templates undergo between uses (:mod:`storekeeper.migrate.templates`).
seal = encrypt
unseal = decrypt
