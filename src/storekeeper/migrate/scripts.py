"""Where each store's and kind's Alembic script directory is, and making a new one.

A declared store has its own directory (``<app folder>/migrations/<store>``); a kind has one
that all its stores share (``<app folder>/migrations/kinds/<kind>``); a store made at run time
uses its kind's. This module does not import Alembic, so ``sync`` of apps without migrations
never pays for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotFound

if TYPE_CHECKING:
    from sqlalchemy import MetaData

    from ..declare import App

ENV_PY = '''"""Alembic environment of {label}: storekeeper gives the connection and metadata."""

from storekeeper.migrate.env import run

run()
'''

ALEMBIC_INI = """# Alembic script directory of {label}, managed with storekeeper:
#   storekeeper revision {target} -m "add a table" --autogenerate
#   storekeeper upgrade {target}
# Plain alembic works too, from the project folder (where storekeeper.toml is):
#   alembic -c {ini} upgrade head{kind_hint}
[alembic]
script_location = %(here)s
storekeeper_target = {target}
{app_line}"""

SCRIPT_MAKO = '''"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''


@dataclass(frozen=True)
class Scripts:
    """The Alembic script directory of one store (``kind`` is ``None``) or one kind."""

    app: App
    name: str
    kind: str | None
    path: Path | None
    metadata: MetaData | None

    @property
    def label(self) -> str:
        """``app.store`` or ``kind app.tenant``, for messages."""
        return f"kind {self.app.name}.{self.kind}" if self.kind else f"{self.app.name}.{self.name}"

    @property
    def target(self) -> str:
        """How the command line names this directory: ``APP.STORE`` or ``APP.KIND:*``."""
        return f"{self.app.name}.{self.kind}:*" if self.kind else f"{self.app.name}.{self.name}"

    @property
    def exists(self) -> bool:
        """Whether the directory has been made (it has an ``env.py``)."""
        return self.path is not None and (self.path / "env.py").is_file()

    def require(self, *, init_command: str | None = None) -> Path:
        """The directory's path; :class:`NotFound` with the command that makes it when missing
        (``init_command``, by default ``storekeeper revision APP.STORE --init``)."""
        if self.path is None:
            raise NotFound(
                f"store {self.app.name}.{self.name} was made at run time without a kind, so it "
                "has no migrations; make stores that need migrations from a kind"
            )
        if not self.exists:
            command = init_command or f"storekeeper revision {self.target} --init"
            raise NotFound(
                f"{self.label} has no migrations: no Alembic script directory at {self.path}; "
                f"create it with: {command}"
            )
        return self.path


def _root(app: App) -> Path | None:
    if app.migrations is not None:
        given = Path(app.migrations).expanduser()
        return given if given.is_absolute() or app.home is None else app.home / given
    return None if app.home is None else app.home / "migrations"


def _resolve(app: App, given: str | Path | None, default: tuple[str, ...]) -> Path | None:
    if given is not None:
        path = Path(given).expanduser()
        return path if path.is_absolute() or app.home is None else app.home / path
    root = _root(app)
    return None if root is None else root.joinpath(*default)


def kind_scripts(app: App, kind: str) -> Scripts:
    """The script directory shared by the stores of ``kind``."""
    declared = app.kind(kind)
    path = _resolve(app, declared.migrations, ("kinds", kind))
    return Scripts(app, kind, kind, path, declared.metadata)


def store_scripts(app: App, name: str) -> Scripts:
    """The script directory of store ``name`` (its kind's for a store made at run time)."""
    for store in app.stores:
        if store.name == name:
            return Scripts(
                app, name, None, _resolve(app, store.migrations, (name,)), store.metadata
            )
    record = app.site.runtime_store(app.name, name)
    if record is None:
        app.store(name)  # raises NotFound naming the app's stores
        raise AssertionError("unreachable")  # pragma: no cover
    if record.kind is None:
        return Scripts(app, name, None, None, None)
    return kind_scripts(app, record.kind)


def _app_spec(app: App) -> str | None:
    """``module:attribute`` that names ``app``, for plain ``alembic`` to import it."""
    module = sys.modules.get(app.module or "")
    if module is None:
        return None
    for attr, value in vars(module).items():
        if value is app:
            return f"{app.module}:{attr}"
    return None


def init(scripts: Scripts) -> Path:
    """Make the script directory (``env.py``, ``alembic.ini``, ``script.py.mako``,
    ``versions/``); returns its path. An existing directory is left alone."""
    if scripts.path is None:
        scripts.require()
    path = scripts.path
    assert path is not None
    if scripts.exists:
        return path
    versions = path / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / ".gitkeep").touch()
    (path / "env.py").write_text(ENV_PY.format(label=scripts.label))
    (path / "script.py.mako").write_text(SCRIPT_MAKO)
    spec = _app_spec(scripts.app)
    try:
        ini = path.relative_to(Path.cwd()) / "alembic.ini"
    except ValueError:
        ini = path / "alembic.ini"
    (path / "alembic.ini").write_text(
        ALEMBIC_INI.format(
            label=scripts.label,
            target=scripts.target,
            ini=ini,
            kind_hint=(
                f" -x store={scripts.app.name}.STORE (a store of the kind)" if scripts.kind else ""
            ),
            app_line=f"storekeeper_app = {spec}\n" if spec else "",
        )
    )
    return path
