"""The admin page's background jobs: a long action (sync, upgrade, backup...) on one store or
a selection runs in a worker thread while the page shows its progress.

A :class:`JobRunner` keeps its jobs in memory (the last :attr:`JobRunner.keep` of them), each
with its progress lines and, once done, the same summary the command line prints (the table,
its ``error:`` lines and its closing line, from :mod:`storekeeper.report`'s data). Each store
goes through :func:`storekeeper.admin.actions.run_action`, the page's one seam onto the core's
verbs, so a job records in the history who ran it and from where.

While a store waits for its lock (another admin, or a ``storekeeper`` command, is working on
it), the backend logs who holds it; the runner catches that line for the job whose thread
logged it, and the job page says the job is waiting and for whom.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import report as shown
from ..errors import BadInput, NotFound
from ..secret import mask
from .actions import ACTIONS, ActionResult, run_action

if TYPE_CHECKING:
    from ..declare import App

#: What a job is doing: ``queued`` (no worker free yet), ``running``, ``waiting`` (for a
#: store's lock), then ``done`` (every store went well) or ``failed`` (some did not).
STATES = ("queued", "running", "waiting", "done", "failed")
#: The actions the page runs as jobs (the others are quick, or need their form's answer).
BACKGROUND = ("sync", "upgrade", "backup")
#: The beginning of the line a backend logs while it waits for a store's lock.
WAITING = "waiting for the lock on "


@dataclass(frozen=True)
class Summary:
    """What a job did, as the command line prints it: a table, ``error:`` lines, a last line."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    errors: list[str]
    lines: list[str]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "headers": list(self.headers),
            "rows": [list(r) for r in self.rows],
            "errors": self.errors,
            "lines": self.lines,
        }


@dataclass
class Job:
    """One background action on one or more stores (``APP.STORE``), done in turn."""

    id: str
    action: str
    targets: list[str]
    options: dict[str, str]
    actor: str
    client: str
    created: float = field(default_factory=time.time)
    state: str = "queued"
    #: The store being worked on now, and while it waits for its lock, the line saying so.
    current: str | None = None
    waiting: str | None = None
    lines: list[str] = field(default_factory=list)
    results: list[ActionResult] = field(default_factory=list)
    summary: Summary | None = None
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is over (or ``timeout`` seconds pass); whether it is over."""
        return self._ended.wait(timeout)

    @property
    def over(self) -> bool:
        """Whether the job has finished (well or not)."""
        return self.state in ("done", "failed")

    @property
    def done(self) -> int:
        """How many of its stores are done."""
        return len(self.results)

    def say(self, line: str) -> None:
        """Add a progress line (secrets masked)."""
        with self._lock:
            self.lines.append(mask(line))

    def as_dict(self, since: int = 0) -> dict[str, Any]:
        """What the page polls: the state, the progress lines from number ``since`` on, the
        number to ask from next time, and the summary once the job is over."""
        with self._lock:
            return {
                "id": self.id,
                "action": self.action,
                "state": self.state,
                "over": self.over,
                "done": self.done,
                "total": len(self.targets),
                "current": self.current,
                "waiting": self.waiting,
                "lines": self.lines[max(0, since) :],
                "next": len(self.lines),
                "summary": self.summary.as_dict() if self.summary else None,
            }


def summarize(action: str, results: Sequence[ActionResult]) -> Summary:
    """The command line's summary of ``action`` over ``results``: for sync and upgrade the
    table, errors and last line that ``storekeeper sync`` / ``upgrade`` print, for backup the
    backups table, for restore its lines; for the others a row per store."""
    from ..migrate.fanout import FanoutReport
    from ..provision import SyncReport

    early = [f"error: {r.target}: {r.summary}" for r in results if r.report is None]
    if action == "sync":
        synced = SyncReport([s for r in results if r.report is not None for s in r.report.results])
        table = shown.synced_rows(synced.results)
        errors = shown.sync_errors(synced) + early
        last = shown.sync_line(synced) if synced.results else f"sync: {len(early)} failed"
        return _masked(shown.synced_headers(synced.results), table, errors, [last])
    if action in ("upgrade", "downgrade"):
        ran = FanoutReport([m for r in results if r.report is not None for m in r.report.results])
        errors = shown.fanout_errors(ran) + early
        last = shown.fanout_line(ran, action)
        if early:
            last += f", {len(early)} refused"
        headers = shown.migrated_headers(ran.results)
        return _masked(headers, shown.migrated_rows(ran.results), errors, [last])
    if action == "backup":
        taken = [r.report for r in results if r.ok and r.report is not None]
        errors = [f"error: {r.target}: {r.summary}" for r in results if not r.ok]
        last = f"backup: {len(taken)} ok, {len(errors)} failed"
        return _masked(shown.BACKUP_HEADERS, shown.backup_rows(taken), errors, [last])
    errors = [f"error: {r.target}: {r.summary}" for r in results if not r.ok]
    if action == "restore":
        lines = [line for r in results if r.ok for line in shown.restored_lines(r.report)]
        return _masked((), [], errors, lines)
    rows = [(r.target, f"{r.seconds:.2f}", r.summary if r.ok else "FAILED") for r in results]
    ok = sum(r.ok for r in results)
    last = f"{action}: {ok} ok, {len(results) - ok} failed"
    return _masked(("store", "seconds", "result"), rows, errors, [last])


def _masked(
    headers: Sequence[str], rows: Sequence[Sequence[str]], errors: list[str], lines: list[str]
) -> Summary:
    return Summary(
        tuple(headers),
        [tuple(mask(c) for c in row) for row in rows],
        [mask(e) for e in errors],
        [mask(line) for line in lines],
    )


class _JobLog(logging.Handler):
    """Hands what the core logs in a job's worker thread (a lock wait) to that job."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.jobs: dict[int, Job] = {}

    def emit(self, record: logging.LogRecord) -> None:
        job = self.jobs.get(record.thread or 0)
        if job is None:
            return
        try:
            line = mask(record.getMessage())
        except Exception:  # a bad log call never breaks the job
            return
        if line.startswith(WAITING):
            with job._lock:
                job.state, job.waiting = "waiting", line
        job.say(line)


_LOG = _JobLog()
_LOG_INSTALLED = threading.Lock()


def _install_log() -> None:
    with _LOG_INSTALLED:
        logger = logging.getLogger("storekeeper")
        if _LOG not in logger.handlers:
            logger.addHandler(_LOG)


class JobRunner:
    """Runs the admin page's jobs on ``workers`` threads and keeps the last ``keep`` of them."""

    def __init__(self, apps: Sequence[App], *, workers: int = 4, keep: int = 200) -> None:
        self.apps = list(apps)
        self.keep = keep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="storekeeper-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        _install_log()

    def submit(
        self,
        action: str,
        targets: Sequence[str],
        options: Mapping[str, str] | None = None,
        *,
        actor: str,
        client: str,
    ) -> Job:
        """Start ``action`` on ``targets`` (``APP.STORE`` each) in the background; returns
        the job at once. An unknown action or no store is refused here (nothing starts)."""
        if action not in ACTIONS:
            raise BadInput(f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
        chosen = list(dict.fromkeys(t.strip() for t in targets if t.strip()))
        if not chosen:
            raise BadInput("choose at least one store; nothing was done")
        job = Job(secrets.token_urlsafe(9), action, chosen, dict(options or {}), actor, client)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`NotFound` when there is none (or it was forgotten)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (jobs are kept in memory until the page restarts)")
        return job

    def recent(self) -> list[Job]:
        """The jobs kept, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop taking jobs; with ``wait``, let the running ones finish."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _forget_old(self) -> None:
        while len(self._jobs) > self.keep:
            oldest = next((k for k, j in self._jobs.items() if j.over), None)
            if oldest is None:
                return
            del self._jobs[oldest]

    def _run(self, job: Job) -> None:
        me = threading.get_ident()
        _LOG.jobs[me] = job
        total = len(job.targets)
        try:
            job.state = "running"
            for number, target in enumerate(job.targets, 1):
                job.current = target
                job.say(f"[{number}/{total}] {target}: {job.action}...")
                result = run_action(
                    self.apps,
                    job.action,
                    target,
                    job.options,
                    actor=job.actor,
                    client=job.client,
                )
                with job._lock:
                    job.results.append(result)
                    job.state, job.waiting = "running", None
                outcome = result.summary if result.ok else f"FAILED: {result.summary}"
                job.say(f"[{number}/{total}] {target}: {outcome} ({result.seconds:.2f} s)")
            job.summary = summarize(job.action, job.results)
        except Exception as exc:  # the page shows it; the worker thread goes on
            job.say(f"error: unexpected {type(exc).__name__}: {exc}")
            job.summary = Summary((), [], [mask(f"error: {exc}")], [f"{job.action}: stopped"])
        finally:
            _LOG.jobs.pop(me, None)
            with job._lock:
                ok = bool(job.results) and all(r.ok for r in job.results)
                job.state = "done" if ok and len(job.results) == total else "failed"
                job.current, job.waiting, job.finished = None, None, time.time()
            job._ended.set()
