"""A throwaway PostgreSQL server: ``initdb`` in a temporary folder, started on its own port,
tuned for tests (no fsync), removed when stopped.

``initdb`` refuses to run as root, so under root the cluster runs as the ``postgres`` system
user, or as an unprivileged user made for it. Local socket connections are trusted; TCP
connections check a password, so the URL the server gives is a real credentialed one::

    with PostgresServer() as server:
        engine = create_engine(server.url)

A server made with ``replication=True`` can have streaming replicas of its own
(:meth:`PostgresServer.standby`: ``pg_basebackup -R`` into another folder, started on another
port), for the tests of read replicas::

    with PostgresServer(replication=True) as primary, primary.standby() as replica:
        ...
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..backends.postgresql import find_program
from ..errors import ServiceUnavailable
from ..secret import mask

#: Settings for a server whose data may be lost: speed over durability.
TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
    "log_min_messages": "warning",
}

#: What a primary needs for streaming replicas (PostgreSQL 10 and later default to these
#: too; said here so that a distribution's other defaults cannot take them away).
REPLICATION_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "hot_standby": "on",
}
# Replication connections over TCP from loopback, checking the password as other ones do.
_REPLICATION_HBA = "host    replication     all             127.0.0.1/32            scram-sha-256"

_UNPRIVILEGED_USER = "storekeeper-pg"


def find_binary(name: str) -> str:
    """The path of PostgreSQL's server program ``name`` (``initdb``, ``postgres``)."""
    return find_program(
        name,
        install="install PostgreSQL's server package (Debian: apt-get install postgresql), or "
        "set STOREKEEPER_TEST_POSTGRES_URL to a server the tests may use",
    )


#: Where the data goes when there is room: a RAM-backed folder, since on a shared disk the cost
#: of CREATE DATABASE (which test templates are all about) follows the neighbours' I/O.
RAM_FOLDER = Path("/dev/shm")
RAM_NEEDED = 1 << 30


def data_parent() -> Path | None:
    """The folder to make the server's folder in: :data:`RAM_FOLDER` when it is writable with
    a GiB free, else ``None`` (the system's temporary folder)."""
    try:
        if (
            RAM_FOLDER.is_dir()
            and os.access(RAM_FOLDER, os.W_OK)
            and shutil.disk_usage(RAM_FOLDER).free >= RAM_NEEDED
        ):
            return RAM_FOLDER
    except OSError:
        pass
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) to run the server as: ``None`` when not root."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", _UNPRIVILEGED_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            _UNPRIVILEGED_USER,
        ],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(_UNPRIVILEGED_USER)
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """A PostgreSQL cluster of its own for tests and benchmarks.

    ``settings`` are added to (and override) :data:`TEST_SETTINGS`. The superuser is
    ``user``, its password random; :attr:`url` connects to the ``postgres`` database over TCP.
    The data lives in ``parent`` (default: :func:`data_parent`, RAM when there is room).
    ``replication=True`` makes a primary that :meth:`standby` servers can stream from.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "storekeeper",
        settings: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        parent: str | Path | None = None,
        replication: bool = False,
    ) -> None:
        self.port = port
        self.user = user
        self.password = secrets.token_hex(12)
        self.replication = replication
        self.settings = {
            **TEST_SETTINGS,
            **(REPLICATION_SETTINGS if replication else {}),
            **(settings or {}),
        }
        self.start_timeout = start_timeout
        self.parent = Path(parent) if parent is not None else data_parent()
        self.folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # the URL --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``postgresql+psycopg://user:password@127.0.0.1:port/postgres`` (has the password)."""
        if self.port is None or self._process is None:
            raise ServiceUnavailable("the throwaway PostgreSQL server is not started")
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"127.0.0.1:{self.port}" if self.port else "no port"
        return f"PostgresServer({where}, {state})"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # life cycle -----------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb and start; returns when the server accepts connections."""
        owner = _run_as()
        self.folder = Path(tempfile.mkdtemp(prefix="storekeeper-pg-", dir=self.parent))
        extra: dict[str, Any] = {}
        if owner is not None:
            os.chown(self.folder, *owner)
            extra = {"user": owner[0], "group": owner[1], "extra_groups": []}
        data = self.folder / "data"
        self._make_data(data, extra)
        return self._launch(data, extra)

    def _make_data(self, data: Path, extra: dict[str, Any]) -> None:
        """Make the cluster's data folder: ``initdb``, with the superuser's password."""
        assert self.folder is not None
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if extra:
            os.chown(pwfile, extra["user"], extra["group"])
        initdb = subprocess.run(
            [
                find_binary("initdb"),
                "-D",
                str(data),
                "-U",
                self.user,
                "--pwfile",
                str(pwfile),
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            **extra,
        )
        pwfile.unlink()
        if initdb.returncode != 0:
            self._cleanup()
            raise ServiceUnavailable(
                f"initdb failed for the throwaway PostgreSQL server: "
                f"{mask(initdb.stderr.strip() or initdb.stdout.strip())}"
            )
        if self.replication:
            hba = data / "pg_hba.conf"
            lines = hba.read_text().splitlines()
            if _REPLICATION_HBA.split() not in [line.split() for line in lines]:
                hba.write_text("\n".join([*lines, _REPLICATION_HBA, ""]))

    def _launch(self, data: Path, extra: dict[str, Any]) -> PostgresServer:
        """Start the server on ``data`` (on a free port, tried again if another process took
        it first); returns when it accepts connections."""
        assert self.folder is not None
        for attempt in range(5):
            port = self.port or free_port()
            options = [f"-c{k}={v}" for k, v in self.settings.items()]
            log = (self.folder / "server.log").open("ab")
            self._process = subprocess.Popen(
                [
                    find_binary("postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(self.folder),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    *options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **extra,
            )
            log.close()
            if self._wait_ready(port):
                self.port = port
                return self
            self._kill()
            if self.port is not None or attempt == 4:
                break
        tail = self.log_tail()
        self._cleanup()
        raise ServiceUnavailable(f"the throwaway PostgreSQL server did not start: {tail}")

    def _wait_ready(self, port: int) -> bool:
        import psycopg

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=self.user,
                    password=self.password,
                    dbname="postgres",
                    connect_timeout=2,
                ).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        if self.folder is None:
            return ""
        path = self.folder / "server.log"
        if not path.is_file():
            return ""
        return mask(" | ".join(path.read_text(errors="replace").splitlines()[-lines:]))

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: end sessions, no waiting on clients.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        self._kill()
        self._cleanup()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def standby(self, *, settings: dict[str, str] | None = None) -> PostgresStandby:
        """A streaming replica of this server (made with ``replication=True`` and started),
        not yet started: ``with server.standby() as replica:`` copies this server with
        ``pg_basebackup -R`` and starts the copy on its own port. ``settings`` are its own
        (``{"recovery_min_apply_delay": "1s"}`` makes its lag real)."""
        if not self.replication:
            raise ServiceUnavailable(
                "a standby needs a primary made with PostgresServer(replication=True)"
            )
        return PostgresStandby(self, settings=settings)


class PostgresStandby(PostgresServer):
    """A hot standby streaming from a :class:`PostgresServer`: the same superuser and password,
    its data copied with ``pg_basebackup -R`` (which writes ``primary_conninfo`` and the
    ``standby.signal`` file), read only, on a port of its own."""

    def __init__(self, primary: PostgresServer, *, settings: dict[str, str] | None = None):
        super().__init__(
            user=primary.user,
            settings=settings,
            start_timeout=primary.start_timeout,
            parent=primary.parent,
        )
        self.password = primary.password
        self.primary = primary

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"127.0.0.1:{self.port}" if self.port else "no port"
        return f"PostgresStandby({where}, {state}, of {self.primary!r})"

    def _make_data(self, data: Path, extra: dict[str, Any]) -> None:
        if not self.primary.running or self.primary.port is None:
            self._cleanup()
            raise ServiceUnavailable("the standby's primary server is not running")
        backup = subprocess.run(
            [
                find_program(
                    "pg_basebackup",
                    install="install PostgreSQL's client package (Debian: apt-get install "
                    "postgresql-client)",
                ),
                "-D",
                str(data),
                "-R",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                self.user,
                "-w",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.password},
            **extra,
        )
        if backup.returncode != 0:
            self._cleanup()
            raise ServiceUnavailable(
                "pg_basebackup failed for the throwaway standby: "
                f"{mask(backup.stderr.strip() or backup.stdout.strip(), self.password)}"
            )
