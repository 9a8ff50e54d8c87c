"""What the command lines print: each verb's report as a table, a progress bar, or JSON.

Both faces (``storekeeper`` and ``flask stores``) render through here, so they print the same
thing. On a terminal, tables and progress bars are drawn by ``rich`` (in colour, unless
``NO_COLOR`` is set); anywhere else the output is plain, stable text that scripts and tests
read, and ``rich`` is not even imported. Everything printed goes through
:func:`storekeeper.secret.mask`, then through the running face's :func:`spelling`, which
names its own commands in the hints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import TYPE_CHECKING, Any, TextIO

from .secret import mask

if TYPE_CHECKING:
    from pathlib import Path

    from .backup import Backup, BackupResult, BackupRun, PruneReport, RestoreReport
    from .catalog.rotate import RotationReport
    from .migrate import MigrateResult, Revision, Scripts
    from .migrate.commands import Checked, RevisionState
    from .migrate.fanout import FanoutReport
    from .provision import StoreResult, SyncReport
    from .site import ConfigReport, ServiceInfo

# lines ----------------------------------------------------------------------------------

_spell: Callable[[str], str] = str


@contextmanager
def spelling(spell: Callable[[str], str]) -> Iterator[None]:
    """While inside, every printed line goes through ``spell`` (after masking): a face
    rewrites the library's ``storekeeper VERB`` hints as its own commands."""
    global _spell
    saved, _spell = _spell, spell
    try:
        yield
    finally:
        _spell = saved


def spelled(text: str) -> str:
    """``text`` as the running face prints it: secrets masked, hints in its own commands."""
    return _spell(mask(text))


def say(text: str = "", *, file: TextIO | None = None) -> None:
    """Print ``text`` (a line, or several) with every secret masked."""
    print(spelled(text), file=file or sys.stdout, flush=True)


def warn(text: str) -> None:
    """Print ``text`` on standard error."""
    say(text, file=sys.stderr)


def emit_json(data: object) -> None:
    """Print ``data`` as JSON (secrets masked)."""
    say(json.dumps(data, indent=2, default=str))


def human_size(size: int | None) -> str | None:
    """Bytes as a short human-readable size."""
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # pragma: no cover


def _on_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


# tables ---------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain text table: upper-case headers, columns two spaces apart, ``-`` for None."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def show_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    """Print a table on standard output: drawn by rich on a terminal, else :func:`table`."""
    out = sys.stdout
    if not _on_terminal(out):
        say(table(rows, headers))
        return
    from rich.console import Console
    from rich.table import Table

    drawn = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:  # a narrow terminal wraps a long name; it never cuts one short
        drawn.add_column(header.upper(), overflow="fold")
    for row in rows:
        drawn.add_row(*(spelled("-" if c is None else str(c)) for c in row))
    Console(file=out, highlight=False).print(drawn)


# progress -------------------------------------------------------------------------------


class Progress:
    """Progress over ``total`` steps on standard error: a rich bar on a terminal (lines worth
    keeping printed above it), else one line per step, ``[done/total] line``."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.done = 0
        self._bar: Any = None
        if _on_terminal(sys.stderr) and total > 0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr, highlight=False),
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def step(self, line: str, *, keep: bool = True) -> None:
        """One step done; ``line`` says what it did (on a terminal, shown when ``keep``)."""
        self.done += 1
        if self._bar is None:
            warn(f"[{self.done}/{self.total}] {line}")
            return
        if keep:
            self._bar.console.print(spelled(line), markup=False)
        self._bar.advance(self._task)
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        """Stop drawing the bar (idempotent)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to standard output meanwhile to standard error instead: Python's
    ``sys.stdout`` and, in a real process, file descriptor 1 (child processes, C code)."""
    try:
        sys.stdout.flush()
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # closed or replaced streams (tests, embedding)
        out_fd = err_fd = -1
    saved = os.dup(out_fd) if out_fd >= 0 else -1
    if saved >= 0:
        os.dup2(err_fd, out_fd)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        if saved >= 0:
            os.dup2(saved, out_fd)
            os.close(saved)


# sync and status ------------------------------------------------------------------------


def describe(result: StoreResult) -> str:
    """What ``sync`` did to one store, in a few words."""
    if not result.ok:
        return f"FAILED: {result.error}"
    parts = [result.action]
    if result.tables_added:
        parts.append(f"tables added: {', '.join(result.tables_added)}")
    if result.initialized:
        parts.append("initialized (first time)" if result.first_time else "initializer ran")
    return ", ".join(parts)


def sync_progress(total: int) -> Callable[[StoreResult], None]:
    """The ``progress`` callback of :func:`storekeeper.provision.sync` for ``total`` stores."""
    shown = Progress(total, "sync")

    def progress(result: StoreResult) -> None:
        shown.step(f"{result.app}.{result.store}: {describe(result)}")

    return progress


def sync_json(report: SyncReport | None, error: str | None = None) -> None:
    """``sync --json``: one document, also when the run stopped with ``error``."""
    if report is None:
        emit_json({"changed": False, "stores": [], "failed": [], "error": error})
        return
    emit_json(
        {
            "changed": report.changed,
            "stores": [r.as_dict() for r in report.results],
            "failed": [f"{r.app}.{r.store}" for r in report.failed],
        }
    )


def print_sync(report: SyncReport) -> None:
    """What ``sync`` did: its table, each failure on stderr, and a summary line."""
    if not report.results:
        say("no stores to sync")
        return
    print_synced(report.results)
    for line in sync_errors(report):
        warn(line)
    say(sync_line(report))


def sync_errors(report: SyncReport) -> list[str]:
    """The ``error: ...`` line of each store ``sync`` failed on."""
    lines = []
    for r in report.failed:
        label = f"{r.app}.{r.store}"
        lines.append(f"error: {r.error if label in r.error else f'{label}: {r.error}'}")
    return lines


def sync_line(report: SyncReport) -> str:
    """The line closing what ``sync`` did: counts by outcome, or that nothing changed."""
    counts: dict[str, int] = {}
    for r in report.results:
        if r.ok:
            counts[r.action] = counts.get(r.action, 0) + 1
    done = ", ".join(f"{n} {action}" for action, n in counts.items())
    if report.failed:
        return f"sync: {done + ', ' if done else ''}{len(report.failed)} failed"
    if report.changed:
        return f"synced: {done}"
    return f"no changes: all {len(report.results)} stores are up to date"


#: The columns of :func:`synced_rows`.
SYNCED_HEADERS = ("store", "service", "seconds", "result")


def _backed_up(results: Sequence[Any]) -> bool:
    """Whether any store of a run was backed up before migrating (its tables then have a
    ``backup`` column)."""
    return any(getattr(r, "backup", None) for r in results)


def synced_headers(results: Sequence[StoreResult]) -> tuple[str, ...]:
    """The columns of :func:`synced_rows` for ``results``."""
    return SYNCED_HEADERS + (("backup",) if _backed_up(results) else ())


def synced_rows(results: Sequence[StoreResult]) -> list[tuple[str, ...]]:
    """The rows of the table of what ``sync`` did, store by store (every face's)."""
    backed_up = _backed_up(results)
    return [
        (
            f"{r.app}.{r.store}",
            r.service or "-",
            f"{r.seconds:.2f}",
            r.action if r.ok else "FAILED",
            *([r.backup or "-"] if backed_up else []),
        )
        for r in results
    ]


def print_synced(results: Sequence[StoreResult]) -> None:
    """The table of what ``sync`` did, store by store (with the automatic backups taken
    before migrating, when there were some)."""
    show_table(synced_rows(results), synced_headers(results))


def _revision_cell(row: Any) -> str | None:
    """``rev (head)``, ``rev (behind head)``... or ``None`` for a store without migrations."""
    state = getattr(row, "migration_state", None)
    if state is None:
        return None
    at = row.revision or "base"
    if state == "at head":
        return f"{at} (head)"
    return f"{at} ({state}, head {row.head or 'base'})"


def print_status(rows: Sequence[Any]) -> None:
    """The status table (also the end of ``storekeeper demo``); a revision column when some
    store has migrations."""
    if not rows:
        say("no stores: no apps found (name them with --app MODULE:ATTR or in storekeeper.toml)")
        return
    migrated = any(getattr(r, "migration_state", None) for r in rows)
    replicated = any(getattr(r, "replicas", None) for r in rows)
    headers = ["app", "store", "service", "database", "exists", "size"]
    headers += ["revision", "last sync"] if migrated else ["last sync"]
    headers.append("last backup")
    headers += ["replicas (lag)"] if replicated else []
    show_table(
        [
            (
                r.app,
                r.store,
                r.service or "unassigned",
                r.database,
                "yes" if r.exists else ("no" if r.exists is False else "?"),
                human_size(r.size),
                *([_revision_cell(r)] if migrated else []),
                r.last_sync or "never",
                f"{r.last_backup_at} ({r.last_backup})" if r.last_backup else "never",
                *([", ".join(x.describe() for x in r.replicas) or "none"] if replicated else []),
            )
            for r in rows
        ],
        headers,
    )
    for r in rows:
        if r.problem:
            say(f"  {r.app}.{r.store}: {r.problem}")
        for kept in r.pre_restore:
            say(
                f"  {r.app}.{r.store}: kept by a restore: {kept} (not a backup; backups prune "
                "drops it after keep_pre_restore days)"
            )
        for replica in getattr(r, "replicas", ()):
            if replica.problem:
                say(f"  {r.app}.{r.store}: replica {replica.service}: {replica.problem}")


# migrations -----------------------------------------------------------------------------


def print_init(scripts: Scripts, path: Path, *, existed: bool) -> None:
    """The line saying where the script directory is, and whether it was just made."""
    say(f"{scripts.label}: script directory {path} " + ("already exists" if existed else "created"))


def print_revision(made: Revision | None) -> None:
    """The line saying where a new migration was written (or that autogenerate found nothing
    to write), and its notes on stderr."""
    if made is None:
        say(
            "no changes detected: the models match what the migrations build; nothing written "
            "(--empty writes an empty migration all the same)"
        )
        return
    say(f"new revision {made.revision} ({made.message}) in {made.path}")
    for note in made.notes:
        warn(f"note: {note}")


def fanout_progress(total: int, action: str) -> Progress:
    """The progress of a run over ``total`` stores (:func:`migrate_progress` reports on it)."""
    return Progress(total, action)


def migrate_progress(shown: Progress) -> Callable[[MigrateResult, int, int], None]:
    """The ``progress`` callback of :func:`storekeeper.migrate.fanout.migrate_many`: on a
    terminal the bar, with only the failures printed; else a line per store."""

    def progress(result: MigrateResult, done: int, total: int) -> None:
        outcome = "ok" if result.ok else "FAILED"
        shown.step(
            f"{result.app}.{result.store}: {result.before or 'base'} -> "
            f"{result.after or 'base'} ({result.seconds:.2f} s) {outcome}",
            keep=not result.ok,
        )

    return progress


def fanout_json(report: FanoutReport) -> None:
    """``upgrade/downgrade/stamp --json``."""
    emit_json(
        {
            "stores": [r.as_dict() for r in report.results],
            "failed": [f"{r.app}.{r.store}" for r in report.failed],
            "not_run": report.not_run,
        }
    )


def print_fanout(report: FanoutReport, action: str) -> None:
    """What a run over many stores did: its table, failures, what was not run, a summary."""
    if not report.results:
        say(f"no stores to {action}")
        return
    print_migrated(report.results)
    for line in fanout_errors(report):
        warn(line)
    say(fanout_line(report, action))


def fanout_errors(report: FanoutReport) -> list[str]:
    """The ``error: ...`` line of each failed store, and the stores not run after one."""
    lines = [f"error: {r.app}.{r.store}: {r.error}" for r in report.failed]
    if report.not_run:
        lines.append(
            f"not run after the failure ({len(report.not_run)}): {', '.join(report.not_run)}; "
            "pass --continue-on-error to go on past failures"
        )
    return lines


def fanout_line(report: FanoutReport, action: str) -> str:
    """The line closing a run over many stores: how many went well, failed, were not run."""
    ok = len(report.results) - len(report.failed)
    return f"{action}: {ok} ok, {len(report.failed)} failed, {len(report.not_run)} not run"


#: The columns of :func:`migrated_rows`.
MIGRATED_HEADERS = ("store", "from", "to", "seconds", "result")


def migrated_rows(results: Sequence[MigrateResult]) -> list[tuple[str, ...]]:
    """The rows of the table of what ``upgrade``, ``downgrade`` or ``stamp`` did (every
    face's)."""
    backed_up = _backed_up(results)
    return [
        (
            f"{r.app}.{r.store}",
            r.before or "base",
            r.after or "base",
            f"{r.seconds:.2f}",
            ("ok" if r.changed else "up to date") if r.ok else "FAILED",
            *([r.backup or "-"] if backed_up else []),
        )
        for r in results
    ]


def migrated_headers(results: Sequence[MigrateResult]) -> tuple[str, ...]:
    """The columns of :func:`migrated_rows` for ``results``."""
    return MIGRATED_HEADERS + (("backup",) if _backed_up(results) else ())


def print_migrated(results: Sequence[MigrateResult]) -> None:
    """The table of what ``upgrade``, ``downgrade`` or ``stamp`` did, store by store, with the
    backup taken automatically before each (when some were)."""
    show_table(migrated_rows(results), migrated_headers(results))


def print_current(rows: Sequence[RevisionState]) -> None:
    """The table of each store's revision against its head."""
    if not rows:
        say("no stores with migrations")
        return
    show_table(
        [(r.store, r.revision or "base", r.head or "base", r.state) for r in rows],
        ["store", "revision", "head", "state"],
    )


def print_history(revisions: Sequence[Revision], target: str) -> None:
    """The migrations of ``target``, newest first, one line each."""
    if not revisions:
        say(f"{target}: no revisions yet")
    for r in revisions:
        down = ",".join(r.down_revisions) or "<base>"
        say(f"{down} -> {r.revision}{' (head)' if r.is_head else ''}, {r.message}")


def print_heads(found: Sequence[str], target: str, merge: str) -> None:
    """The head revisions of ``target``; when there are several, how to join them with
    ``merge`` (the command that writes a merge migration, without its message)."""
    say("\n".join(found) if found else f"{target}: no revisions yet")
    if len(found) > 1:
        warn(f"several heads: merge them with {merge} -m 'merge heads'")


def print_backups(found: Sequence[Backup], target: str) -> None:
    """Backups as a table: store, id, when, revision, size, checksum prefix, pin, note."""
    if not found:
        say(f"{target}: no backups yet")
        return
    show_table(backup_rows(found), BACKUP_HEADERS)


#: The columns of :func:`backup_rows`.
BACKUP_HEADERS = ("store", "id", "when (UTC)", "revision", "size", "sha256", "pinned", "note")


def backup_rows(found: Sequence[Backup]) -> list[tuple[str, ...]]:
    """The rows of the backups table (every face's)."""
    return [
        (
            f"{b.app}.{b.store}",
            b.id,
            b.taken_at[:19].replace("T", " "),
            b.revision or "-",
            human_size(b.size) or "-",
            b.sha256[:12],
            f"pinned ({b.reason})" if b.pinned else "-",
            b.note,
        )
        for b in found
    ]


def print_pruned(pruned: Sequence[PruneReport]) -> None:
    """What ``backups prune`` did, store by store: backups removed and kept, databases
    dropped."""
    if not pruned:
        say("no stores to prune")
        return
    show_table(
        [
            (
                f"{p.app}.{p.store}",
                len(p.removed),
                p.kept,
                ", ".join(p.dropped) or "-",
                "keep everything" if not p.policy.limits_backups else _rules(p),
            )
            for p in pruned
        ],
        ["store", "removed", "kept", "dropped (pre_restore)", "retention"],
    )
    for p in pruned:
        for b in p.removed:
            say(f"  {p.app}.{p.store}: removed backup {b.id}")


def _rules(pruned: PruneReport) -> str:
    rules = ("keep_last", "keep_daily", "keep_weekly")
    values = {k: getattr(pruned.policy, k) for k in rules}
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None)


def _how(b: Backup) -> str:
    """A backup's format, jobs and encryption, in a few words."""
    how = b.format + (f" --jobs {b.jobs}" if b.jobs > 1 else "")
    return how + (f", encrypted (key id {b.key_id})" if b.encrypted else "")


def backup_progress(shown: Progress) -> Callable[[BackupResult, int, int], None]:
    """The ``progress`` callback of :func:`storekeeper.backup.backup_many`: on a terminal the
    bar, with only the failures printed; else a line per store."""

    def progress(result: BackupResult, done: int, total: int) -> None:
        outcome = f"ok ({_how(result.backup)})" if result.backup else "FAILED"
        shown.step(
            f"{result.app}.{result.store}: backup ({result.seconds:.2f} s) {outcome}",
            keep=not result.ok,
        )

    return progress


def print_backup_run(run: BackupRun) -> None:
    """What ``backup`` did over its stores: a table, the failures, a summary."""
    if not run.results:
        say("no stores to back up")
        return
    show_table(
        [
            (
                f"{r.app}.{r.store}",
                r.backup.id if r.backup else None,
                human_size(r.backup.size) if r.backup else None,
                _how(r.backup) if r.backup else None,
                f"{r.seconds:.2f}",
                "ok" if r.ok else "FAILED",
            )
            for r in run.results
        ],
        ["store", "backup", "size", "format", "seconds", "result"],
    )
    for r in run.failed:
        warn(f"error: {r.app}.{r.store}: {r.error}")
    ok = len(run.results) - len(run.failed)
    say(f"backup: {ok} ok, {len(run.failed)} failed")


def print_restored(restored: RestoreReport) -> None:
    """What a restore did, in a line or two."""
    for line in restored_lines(restored):
        (warn if line.startswith("hint: ") else say)(line)


def restored_lines(restored: RestoreReport) -> list[str]:
    """What a restore did, in a line or two (every face's)."""
    where = f"{restored.app}.{restored.store}"
    if not restored.in_place:
        lines = [f"{where}: backup {restored.backup} restored as database {restored.database}"]
    else:
        lines = [f"{where}: restored backup {restored.backup} into {restored.database}"]
        if restored.kept_as:
            lines.append(f"the database it replaced is kept as {restored.kept_as}")
    if restored.hint:
        lines.append(f"hint: {restored.hint}")
    return lines


#: What ``check`` says to do about a drift, by :attr:`storekeeper.migrate.Checked.action`.
CHECK_ADVICE = {
    "revision": "write a migration ({}) or fix the models",
    "upgrade": "its database is behind its migrations: {}",
    "stamp": "record the revision its schema has: {}",
}


def check_json(found: Mapping[str, Checked]) -> None:
    """``check --json``."""
    drifted = {label: c for label, c in found.items() if c.differences}
    emit_json(
        {
            "ok": not drifted,
            "differences": {label: c.differences for label, c in found.items()},
            "next": {label: c.next for label, c in drifted.items()},
        }
    )


def print_check(found: Mapping[str, list[str]]) -> None:
    """Each store's or kind's differences between models and schema, or that they agree."""
    for label, differences in found.items():
        if differences:
            say(f"{label}: models and schema differ:")
            for line in differences:
                say(f"  - {line}")
        else:
            say(f"{label}: ok, models and schema agree")


def check_failures(found: Mapping[str, Checked]) -> list[str]:
    """One message per drifted store or kind: what to do about it."""
    return [
        f"check failed for {label}: {CHECK_ADVICE[c.action or 'revision'].format(c.next)}"
        for label, c in found.items()
        if c.differences
    ]


# services, configuration, secrets -------------------------------------------------------


def print_services(services: Sequence[ServiceInfo], *, as_json: bool) -> None:
    """``service list``: each service, its dialect, URL (password masked) and source."""
    if as_json:
        emit_json([s.as_dict() for s in services])
        return
    show_table(
        [(s.name, s.dialect, s.url, s.source) for s in services],
        ["service", "dialect", "url", "source"],
    )


def print_config(found: ConfigReport, *, as_json: bool) -> None:
    """``config show``: the effective configuration and where each value came from."""
    if as_json:
        emit_json(found.as_dict())
        return
    say(f"config file      {found.file or 'none (built-in defaults)'}")
    say(f"root             {found.root}")
    say(f"environment      {found.environment or 'none'}")
    say(f"catalog          {found.catalog}   [{found.catalog_source}]")
    say(f"default service  {found.default_service or '(none)'}   [{found.default_service_source}]")
    say(f"lock timeout     {found.lock_timeout} s   [{found.lock_timeout_source}]")
    say("services:")
    for s in found.services:
        flag = "  production" if s.production else ""
        say(f"  {s.name}  {s.url}   [{s.source}]{flag}")
    say("assignments:")
    if not found.assignments:
        say("  (none: stores use the default service)")
    for a in found.assignments:
        say(f"  {a.app}.{a.setting} -> {a.service}   [{a.source}]")
    if found.replicas:
        say(
            f"replicas (max lag {found.max_replica_lag_seconds:g} s   "
            f"[{found.max_replica_lag_source}]):"
        )
        for r in found.replicas:
            say(f"  {r.app}.{r.setting} reads from {r.service}   [{r.source}]")
    say("apps:")
    for each in found.apps:
        say(
            f"  {each.name}: stores {', '.join(each.stores) or '-'}"
            + (f"; servers {', '.join(each.servers)}" if each.servers else "")
        )
    if not found.apps:
        say("  (none found)")


def print_rotated(report: RotationReport, *, as_json: bool) -> None:
    """``secret rotate``: the service URLs re-encrypted, and under which key."""
    if as_json:
        emit_json(report.as_dict())
        return
    if report.rotated:
        show_table([(r.service, r.before) for r in report.rotated], ["service", "was"])
    count = len(report.rotated)
    say(f"rotated {count} service URL{'' if count == 1 else 's'} to key id {report.key_id}")
    if report.backups:
        n = len(report.backups)
        say(f"rewrapped the data key of {n} encrypted backup{'' if n == 1 else 's'}")
