"""A throwaway Redis server (a Celery broker for tests): ``redis-server`` on a free port in a
temporary folder, persisting nothing, removed when stopped::

    with RedisServer() as redis:
        celery = Celery(broker=redis.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ServiceUnavailable
from .server import free_port


def find_redis_server() -> str:
    """The path of ``redis-server``: on ``PATH``, else Debian's ``/usr/bin/redis-server``."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if found is None:
        raise ServiceUnavailable(
            "the 'redis-server' program was not found: install Redis (Debian: apt-get install "
            "redis-server, or run make redis-binaries as root)"
        )
    return found


class RedisServer:
    """A Redis server of our own; ``url`` is ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def url_for(self, database: int) -> str:
        """The URL of logical database ``database`` (Celery: broker on 0, results on 1)."""
        return f"redis://127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return self.url_for(0)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        program = find_redis_server()
        self._folder = tempfile.TemporaryDirectory(prefix="storekeeper-redis-")
        folder = Path(self._folder.name)
        self.port = free_port()
        self._process = subprocess.Popen(
            [
                program,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(folder),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(folder / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._answers_ping():
                return self
            time.sleep(0.05)
        log = (folder / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise ServiceUnavailable(f"redis-server did not start on port {self.port}: {log}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
