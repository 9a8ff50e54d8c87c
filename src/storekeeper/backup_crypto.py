"""Backups encrypted at rest: a stream of authenticated chunks under a data key of their own.

Each encrypted backup gets a random 256-bit data key, wrapped by the master key
(``STOREKEEPER_SECRET_KEY``) with :func:`storekeeper.secret.wrap_data_key`; the wrapped key, and
so the id of the master key, goes in the backup's manifest, never in the file. Rotating the
master key (``storekeeper secret rotate``) rewraps it there and leaves the file as it is.

The file is ``MAGIC`` (8 bytes), the plaintext chunk size (4 bytes, big-endian), then the
chunks: each is the next ``chunk_size`` bytes of the dump (the last one shorter, possibly
empty) encrypted with AES-256-GCM, its 16-byte tag appended. Chunk ``i``'s nonce is ``i`` (12
bytes, big-endian: a data key encrypts one file only, so a nonce never repeats under a key) and
its associated data is ``MAGIC + i (8 bytes) + final (1 byte)``: a chunk moved elsewhere fails
its index, and a file cut at a chunk boundary fails the final flag of its last chunk. Neither
side ever holds more than a chunk or two in memory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import IO, Any

from .errors import BadInput, ConfigError
from .secret import ENV_KEY, rewrap, secret_key, unwrap_data_key, wrap_data_key

MAGIC = b"SKBKAG01"
CIPHER = "AES-256-GCM"
#: Plaintext bytes per chunk.
CHUNK_SIZE = 1 << 20
_TAG = 16
_HEADER = struct.Struct(">8sI")
_MISSING = (
    "encrypted backups need the 'cryptography' package, which is not installed: "
    "pip install 'storekeeper[crypto]'"
)


def _aead(data_key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return AESGCM(data_key)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _associated(index: int, final: bool) -> bytes:
    return MAGIC + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def new_data_key(key: str | None = None) -> tuple[bytes, str]:
    """A random data key and the same key wrapped by master key ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``); :class:`ConfigError` when there is no master key."""
    data_key = os.urandom(32)
    return data_key, wrap_data_key(data_key, key)


def key_id_of(wrapped: str) -> str:
    """The id of the master key that wrapped ``wrapped``."""
    return wrapped.split(":")[1]


def open_data_key(wrapped: str, what: str, key: str | None = None) -> bytes:
    """The data key of backup ``what``: unwrapped with ``key`` (default:
    ``STOREKEEPER_SECRET_KEY``), or a :class:`ConfigError` saying which key it needs."""
    given = key if key is not None else secret_key()
    if not given:
        raise ConfigError(
            f"{what} is encrypted (key id {key_id_of(wrapped)}) but {ENV_KEY} is not set: set "
            "it to the key the backup was taken with; nothing was changed"
        )
    try:
        data_key = unwrap_data_key(wrapped, given)
    except ConfigError:
        source = ENV_KEY if key is None else "the key given"
        raise ConfigError(
            f"{what} is encrypted with key id {key_id_of(wrapped)}, which {source} is not: set "
            "it to the key the backup was taken with (or the key `storekeeper secret rotate` "
            "moved it to); nothing was changed"
        ) from None
    if len(data_key) != 32:
        raise ConfigError(f"{what}: its wrapped key is not a backup's data key")
    return data_key


def rewrap_key(wrapped: str, old_key: str | None, new_key: str) -> str:
    """``wrapped`` moved to ``new_key``: opened with ``old_key``, or with ``new_key`` when it is
    already under that one; :class:`ConfigError` when neither opens it."""
    for key in (old_key, new_key):
        if not key:
            continue
        try:
            unwrap_data_key(wrapped, key)
        except ConfigError:
            continue
        return rewrap(wrapped, key, new_key)
    raise ConfigError(f"neither key opens the data key of key id {key_id_of(wrapped)}")


class EncryptingWriter:
    """A binary file-like object: what is written to it lands in ``out`` encrypted, one chunk
    at a time; :meth:`close` writes the final chunk (and does not close ``out``).

    ``on_write`` sees every byte written to ``out`` (a running checksum of the file)."""

    def __init__(
        self,
        out: IO[bytes],
        data_key: bytes,
        *,
        chunk_size: int = CHUNK_SIZE,
        on_write: Callable[[bytes], object] | None = None,
    ) -> None:
        self._out = out
        self._aead = _aead(data_key)
        self._chunk = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._on_write = on_write
        self._emit(_HEADER.pack(MAGIC, chunk_size))

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        if self._on_write is not None:
            self._on_write(data)

    def _seal(self, plain: bytes, final: bool) -> None:
        index = self._index
        self._emit(self._aead.encrypt(_nonce(index), plain, _associated(index, final)))
        self._index += 1

    def write(self, data: bytes) -> int:
        """Encrypt ``data`` (buffered up to a chunk)."""
        self._buffer += data
        # A full chunk is held back until more follows: the last one must carry the final flag.
        while len(self._buffer) > self._chunk:
            self._seal(bytes(self._buffer[: self._chunk]), final=False)
            del self._buffer[: self._chunk]
        return len(data)

    def close(self) -> None:
        """Write the last chunk, flagged final."""
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()


def encrypt_stream(
    source: IO[bytes],
    out: IO[bytes],
    data_key: bytes,
    *,
    chunk_size: int = CHUNK_SIZE,
    on_write: Callable[[bytes], object] | None = None,
) -> None:
    """Encrypt everything ``source`` gives into ``out``."""
    writer = EncryptingWriter(out, data_key, chunk_size=chunk_size, on_write=on_write)
    while block := source.read(chunk_size):
        writer.write(block)
    writer.close()


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        block = source.read(size)
        if not block:
            break
        parts.append(block)
        size -= len(block)
    return b"".join(parts)


def decrypt_stream(source: IO[bytes], out: IO[bytes], data_key: bytes, what: str) -> None:
    """Decrypt a file :func:`encrypt_stream` wrote from ``source`` into ``out``, chunk by chunk;
    :class:`BadInput` naming ``what`` when it is damaged, cut short, reordered or not one."""
    header = _read_exactly(source, _HEADER.size)
    if len(header) < _HEADER.size or header[:8] != MAGIC:
        raise BadInput(f"{what} is not an encrypted storekeeper backup (no {MAGIC!r} header)")
    (_, chunk_size) = _HEADER.unpack(header)
    if not 0 < chunk_size <= 64 << 20:
        raise BadInput(f"{what}: its header names an impossible chunk size {chunk_size}")
    aead = _aead(data_key)
    from cryptography.exceptions import InvalidTag

    sealed = chunk_size + _TAG
    index = 0
    current = _read_exactly(source, sealed)
    while True:
        following = _read_exactly(source, sealed) if len(current) == sealed else b""
        final = not following
        if len(current) < _TAG:
            raise BadInput(f"{what} is truncated: chunk {index} is cut short")
        try:
            plain = aead.decrypt(_nonce(index), current, _associated(index, final))
        except InvalidTag:
            raise BadInput(
                f"{what} is damaged, truncated or reordered: chunk {index} does not authenticate"
            ) from None
        out.write(plain)
        if final:
            return
        current, index = following, index + 1
