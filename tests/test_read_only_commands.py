"""Commands that only read (``status``, ``config show``, ``current``, ``history``, ``heads``,
``service list``) leave the folder they run in as it was: no catalog, no store folder."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import CLI
from storekeeper import migrate

APP = '''
"""An app with one store and one migration, kept outside the folder the commands run in."""
from sqlalchemy import MetaData, Table, Column, Integer

from storekeeper import App, Store

metadata = MetaData()
Table("items", metadata, Column("id", Integer, primary_key=True))

app = App("ro_app", stores=[Store("main_db", metadata=metadata)])
'''

# Each command, and what it must say about the app (a store not made yet, one migration).
READ_ONLY = {
    "status": (["status"], ["ro_app", "main_db", "no", "never"]),
    "config show": (["config", "show"], ["catalog", "local", "ro_app: stores main_db"]),
    "current": (["current"], ["ro_app.main_db", "base", "0001", "no database"]),
    "history": (["history", "ro_app.main_db"], ["<base> -> 0001 (head), first"]),
    "heads": (["heads", "ro_app.main_db"], ["0001"]),
    "service list": (["service", "list"], ["local", "sqlite", "built-in"]),
}


def everything_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def app_home(project: Path) -> Path:
    """A folder holding the app's module and its first migration."""
    home = project / "app"
    home.mkdir()
    (home / "ro_app.py").write_text(textwrap.dedent(APP))
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(APP), namespace)
    app = namespace["app"]
    app.migrations = home / "migrations"  # where the module's own app finds them
    migrate.init(app, "main_db")
    migrate.revision(app, "main_db", "first", rev_id="0001")
    return home


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    env["PYTHONPATH"] = str(home)
    return env


def test_read_only_commands_create_nothing_in_a_bare_folder(tmp_path: Path, app_home: Path) -> None:
    running = {}
    for name, (args, _) in READ_ONLY.items():
        bare = tmp_path / name.replace(" ", "_")
        bare.mkdir()
        running[name] = (
            bare,
            subprocess.Popen(
                [*CLI, "--app", "ro_app:app", *args],
                cwd=bare,
                env=environment(app_home),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    problems = []
    for name, (bare, process) in running.items():
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            problems.append(f"{name}: exit {process.returncode}: {err}")
        problems += [
            f"{name}: {said!r} not in {out!r}" for said in READ_ONLY[name][1] if said not in out
        ]
        if everything_in(bare):
            problems.append(f"{name} created {everything_in(bare)}")
    assert not problems, "\n".join(problems)
