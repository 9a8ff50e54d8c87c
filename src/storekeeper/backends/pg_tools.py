"""PostgreSQL's client programs for backups (``pg_dump``, ``pg_restore``), chosen to match the
server's major version when several are installed.

A ``pg_dump`` refuses to dump a server newer than itself, and a ``pg_restore`` cannot read an
archive made by a newer ``pg_dump``; an older server is fine for both. So for a server of major
version N the program of version N is taken when there is one, else the oldest newer one, and
when only older ones are found the choice is refused, naming the Debian package to install.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServiceUnavailable

#: What to install when a client program is missing (Debian names).
INSTALL = "install PostgreSQL's client package (Debian: apt-get install postgresql-client)"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class ClientProgram:
    """One installed client program and its version."""

    path: str
    #: Its major version (15 for 15.4).
    major: int
    #: What ``--version`` said, like ``pg_dump (PostgreSQL) 15.4``.
    version: str


def server_major(version_num: int) -> int:
    """The major version of a ``server_version_num`` (15 for 150004)."""
    return version_num // 10000


def default_search() -> list[str]:
    """Where client programs are looked for: Debian's ``/usr/lib/postgresql/<N>/bin``, then
    the folders of ``PATH``."""
    return [
        *sorted(glob.glob("/usr/lib/postgresql/*/bin")),
        *os.environ.get("PATH", "").split(os.pathsep),
    ]


@functools.lru_cache(maxsize=32)
def _version_of(path: str) -> tuple[int, str] | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    found = _VERSION.search(done.stdout)
    return (int(found[1]), done.stdout.strip()) if found else None


def installed(name: str, search: Sequence[str] | None = None) -> list[ClientProgram]:
    """Every program ``name`` in ``search`` (default :func:`default_search`), each once."""
    seen: set[str] = set()
    found: list[ClientProgram] = []
    for folder in default_search() if search is None else search:
        path = Path(folder or ".") / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        version = _version_of(str(path))
        if version is not None:
            found.append(ClientProgram(str(path), *version))
    return found


def client_program(
    name: str, server_version_num: int, search: Sequence[str] | None = None
) -> ClientProgram:
    """The ``name`` to use with a server whose ``server_version_num`` is given: of the server's
    major version, else the oldest newer one; :class:`ServiceUnavailable` when there is none
    (naming what to install)."""
    major = server_major(server_version_num)
    programs = installed(name, search)
    if not programs:
        raise ServiceUnavailable(f"PostgreSQL's {name!r} program was not found: {INSTALL}")
    fitting = sorted((p for p in programs if p.major >= major), key=lambda p: p.major)
    if fitting:
        return fitting[0]
    newest = max(programs, key=lambda p: p.major)
    raise ServiceUnavailable(
        f"{name} {newest.major} ({newest.path}) is older than the PostgreSQL {major} server and "
        f"cannot work with it; install the client of version {major} or later (Debian: "
        f"apt-get install postgresql-client-{major})"
    )
