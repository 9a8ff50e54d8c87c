"""``storekeeper admin``: serving the admin page with uvicorn, on loopback unless told
otherwise, and over TLS whenever it listens beyond this machine; ``set-password``."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput

if TYPE_CHECKING:
    from ..declare import App
    from ..site import Site

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool, certfile: str | None, keyfile: str | None) -> bool:
    """Refuse to listen beyond loopback unless ``allow_remote`` with TLS; returns whether the
    page is served over TLS."""
    if (certfile is None) != (keyfile is None):
        raise BadInput("--certfile and --keyfile go together: give both, or neither")
    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise BadInput(f"{option} {path!r}: no such file")
    tls = certfile is not None
    if not is_loopback(host):
        if not allow_remote:
            raise BadInput(
                f"--host {host!r} is not a loopback address: the admin page would be open to "
                "the network; pass --allow-remote with --certfile and --keyfile (TLS) to do so"
            )
        if not tls:
            raise BadInput(
                f"--host {host!r} with --allow-remote needs TLS: give --certfile and --keyfile "
                "(the login's password and cookie must not cross the network in clear)"
            )
    return tls


def serve(
    site: Site,
    apps: list[App],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_remote: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> int:
    """Serve the admin page until interrupted."""
    import uvicorn

    from . import create_app

    tls = check_bind(host, allow_remote=allow_remote, certfile=certfile, keyfile=keyfile)
    app = create_app(site, apps, secure_cookies=tls)
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"storekeeper admin on {scheme}://{shown}:{port}/ (Ctrl-C stops it)", file=sys.stderr)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        server_header=False,
    )
    return 0


def read_new_password(stdin_given: bool) -> str:
    """The new admin password: asked twice on a terminal, else one line of standard input
    (never an argument, which other users of the machine can read)."""
    if sys.stdin is not None and sys.stdin.isatty() and not stdin_given:
        import getpass

        first = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != first:
            raise BadInput("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    password = line.rstrip("\r\n")
    if not password:
        raise BadInput("no password on standard input; nothing was changed")
    return password
