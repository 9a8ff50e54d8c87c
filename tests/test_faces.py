"""The two command lines, ``storekeeper`` and ``flask stores``, are one set of verbs: for the
same verb on the same store they print the same tables and exit with the same code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storekeeper.site import Site

FACES_APP = """
from flask import Flask
from sqlalchemy import Column, Integer, MetaData, String, Table

from storekeeper import App, Store
from storekeeper.flask import StoreKeeper

metadata = MetaData()
Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))
app = App("{name}", stores=[Store("main_db", metadata=metadata)])
web = Flask(__name__)
StoreKeeper(web, app)
"""


def run(command: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``stdin`` piped to it (empty: at once end of input)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "FLASK_"))}
    return subprocess.run(
        command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def timeless(text: str) -> str:
    """``text`` with the seconds a store took (which differ from run to run) zeroed."""
    text = re.sub(r'"seconds": [\d.e-]+', '"seconds": 0', text)  # --json
    return re.sub(r"\b\d+\.\d\d\b", "0.00", text)  # the tables' SECONDS column


def error_starts(stderr: str) -> list[str]:
    """How each error line of ``stderr`` starts (``error:`` or click's ``Error:``)."""
    return [
        line.split(":")[0] + ":"
        for line in stderr.splitlines()
        if line.lower().startswith("error:")
    ]


@pytest.mark.parametrize("dialect", ["sqlite"])  # the faces render; the core is tested on both
def test_storekeeper_and_flask_stores_print_the_same_tables_and_exit_codes(
    project: Path, site: Site, app_name: str
) -> None:
    (project / "faces_app.py").write_text(FACES_APP.format(name=app_name))
    storekeeper = [sys.executable, "-m", "storekeeper", "--app", "faces_app:app"]
    flask = [sys.executable, "-m", "flask", "--app", "faces_app:web", "stores"]
    target = f"{app_name}.main_db"

    def both(
        sk_args: list[str], flask_args: list[str], *, same_output: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the verb in both faces (storekeeper first); assert they agree."""
        ours = run([*storekeeper, *sk_args], project)
        theirs = run([*flask, *flask_args], project)
        assert ours.returncode == theirs.returncode, (sk_args, ours.stderr, theirs.stderr)
        if same_output:
            assert timeless(ours.stdout) == timeless(theirs.stdout), sk_args
        assert "Traceback" not in ours.stderr + theirs.stderr
        # Errors start the same way: storekeeper's own ``error:``, click's usage ``Error:``.
        assert error_starts(ours.stderr) == error_starts(theirs.stderr), sk_args
        return ours

    made = run([*storekeeper, "revision", target, "--init"], project)
    assert made.returncode == 0, made.stderr
    made = run([*flask, "migrate", "-m", "items", "--rev-id", "r1"], project)
    assert made.returncode == 0, made.stderr

    before = both(["status"], ["status"])
    assert before.stdout.splitlines()[1].split()[4] == "no"  # EXISTS: not created yet
    both(["status", "--json"], ["status", "--json"])

    first = run([*storekeeper, "sync"], project)  # creates it: the first run differs
    assert first.returncode == 0, first.stderr
    synced = both(["sync"], ["sync"])
    assert f"{target}  main" in synced.stdout and "up to date" in synced.stdout
    assert synced.stderr == f"[1/1] {target}: up to date\n"
    assert timeless(synced.stderr) == timeless(run([*flask, "sync"], project).stderr)
    refreshed = both(["sync", "--refresh", "--yes"], ["sync", "--refresh", "--yes"])
    assert "recreated" in refreshed.stdout
    both(["sync", "--json"], ["sync", "--json"])

    current = both(["current", target], ["current"])
    assert re.search(rf"{target}\s+r1\s+r1\s+at head", current.stdout)
    both(["current", target, "--json"], ["current", "--json"])
    both(["upgrade", target], ["upgrade"])
    both(["history", target], ["history"])
    both(["heads", target], ["heads"])
    both(["check", target], ["check"])
    both(["status"], ["status"])
    both(["service", "list"], ["service", "list"])
    both(["config", "show", "--json"], ["config", "show", "--json"])
    shown = both(["config", "show"], ["config", "show"])
    assert f"  {app_name}: stores main_db" in shown.stdout

    # Failures: the same exit codes (each face names the store its own way in the message).
    unknown = both(["upgrade", target, "--to", "zzz"], ["upgrade", "--to", "zzz"])
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: ")
    # No answer to --refresh's question: nothing done (both ask on stderr, stdout stays empty).
    declined = both(["sync", "--refresh"], ["sync", "--refresh"])
    assert declined.returncode == 2 and declined.stdout == ""
    usage = both(["sync", "--bogus-option"], ["sync", "--bogus-option"])
    assert usage.returncode == 2
    assert "Error: No such option '--bogus-option'" in usage.stderr  # click's own, in both


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_both_faces_take_the_refresh_answer_from_a_pipe_the_same_way(
    project: Path, site: Site, app_name: str
) -> None:
    (project / "faces_app.py").write_text(FACES_APP.format(name=app_name))
    faces = [
        [sys.executable, "-m", "storekeeper", "--app", "faces_app:app", "sync", "--refresh"],
        [sys.executable, "-m", "flask", "--app", "faces_app:web", "stores", "sync", "--refresh"],
    ]
    target = f"{app_name}.main_db"
    question = f"Drop and recreate {target}? All their data is lost. [y/N]: "
    made = run(faces[0][:-1], project)  # sync once: then both faces recreate it alike
    assert made.returncode == 0, made.stderr
    for stdin, code in (("y\n", 0), ("", 2), ("maybe\n", 2)):
        ours, theirs = (run(face, project, stdin) for face in faces)
        assert ours.returncode == theirs.returncode == code, (stdin, ours.stderr, theirs.stderr)
        assert timeless(ours.stdout) == timeless(theirs.stdout), stdin
        assert ours.stderr == theirs.stderr, stdin
        assert ours.stderr.startswith(question + "\n"), stdin
    # "y": refreshed (the table says so); no answer, or another: declined, nothing changed.
    answered = run(faces[1], project, "yes\n")
    assert answered.returncode == 0 and f"{target}: recreated" in answered.stderr
    declined = run(faces[0], project, "")
    assert "error: refresh not confirmed (no answer); nothing was changed" in declined.stderr
    assert "pass --yes to refresh without the question" in declined.stderr
    assert declined.stdout == ""
    other = run(faces[1], project, "maybe\n")
    assert "error: refresh not confirmed; nothing was changed; pass --yes" in other.stderr


def at_a_terminal(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with a real terminal (a pty, 200 columns) as its stdout and stderr;
    its exit code and all it wrote there."""
    import pty

    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREKEEPER_", "FLASK_"))}
    env.update(COLUMNS="200", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=cwd, env=env
    )
    os.close(terminal)
    written = b""
    while True:  # read as it writes, so a full terminal never blocks it
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        written += chunk
    os.close(controller)
    return process.wait(timeout=120), written.decode(errors="replace")


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_at_a_terminal_tables_and_progress_are_drawn_by_rich(
    project: Path, site: Site, app_name: str
) -> None:
    (project / "faces_app.py").write_text(FACES_APP.format(name=app_name))
    storekeeper = [sys.executable, "-m", "storekeeper", "--app", "faces_app:app"]
    flask = [sys.executable, "-m", "flask", "--app", "faces_app:web", "stores"]
    assert run([*flask, "init"], project).returncode == 0
    assert run([*flask, "migrate", "-m", "items", "--rev-id", "r1"], project).returncode == 0
    for face, upgrade in (
        (storekeeper, ["upgrade", f"{app_name}.main_db"]),
        (flask, ["upgrade"]),
    ):
        code, shown = at_a_terminal([*face, "sync"], project)
        assert code == 0, shown
        assert "1/1" in shown and f"{app_name}.main_db" in shown  # the bar, then the table
        assert "\x1b[" in shown  # styled: a terminal gets colour and bold
        code, shown = at_a_terminal([*face, "status"], project)
        assert code == 0, shown
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
        assert re.search(r"APP\s+STORE\s+SERVICE\s+DATABASE", plain), shown
        assert f"{app_name}_main_db" in shown
        code, shown = at_a_terminal([*face, *upgrade], project)  # a fan-out's bar
        assert code == 0, shown
        assert "1/1" in shown and "upgrade: 1 ok, 0 failed, 0 not run" in shown


def test_import_storekeeper_imports_neither_click_nor_rich() -> None:
    # ... nor Alembic; and storekeeper --help needs click only, not rich.
    code = (
        "import sys, storekeeper, storekeeper.report; "
        "print(sorted(m for m in ('click', 'rich', 'alembic', 'flask') if m in sys.modules)); "
        "from storekeeper.cli import main; main(['--help']); "
        "print(sorted(m for m in ('click', 'rich', 'alembic', 'flask') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert lines[-1] == "['click']"
