"""The package's layers: ``import storekeeper`` stays light, and no circle of run-time imports
joins its modules (``lint-imports``, run by ``make lint``, checks the layers' order)."""

from __future__ import annotations

import subprocess
import sys

import grimp

from storekeeper import App, Kind, ServerSetting, Store
from storekeeper.declarations import AppDeclaration

#: What ``import storekeeper`` must not bring: the frameworks, the command line's libraries and
#: Alembic (loaded when a migration verb runs).
HEAVY = ["flask", "pyramid", "starlette", "celery", "click", "rich", "alembic"]


def test_import_storekeeper_imports_no_framework_click_rich_or_alembic() -> None:
    code = f"import sys, storekeeper; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_import_storekeeper_leaves_the_drivers_alone() -> None:
    # storekeeper.drivers imports SQLAlchemy's ORM at module level: loaded when an app uses it.
    code = "import sys, storekeeper; print('storekeeper.drivers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_no_circle_of_run_time_imports() -> None:
    graph = grimp.build_graph("storekeeper", exclude_type_checking_imports=True)
    circles = [
        f"{a} <-> {b}"
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if a < b and graph.chain_exists(importer=b, imported=a)
    ]
    assert circles == []


def test_declarations_are_plain_data_app_adds_the_run_time_half() -> None:
    # Old import paths keep working: the declarations are re-exported by declare.py.
    from storekeeper.declare import Kind as KindAgain
    from storekeeper.declare import Store as StoreAgain

    assert StoreAgain is Store and KindAgain is Kind
    app = App("layers_app", stores=[Store("one_db")], servers=[ServerSetting("pool")])
    assert isinstance(app, AppDeclaration)
    assert app.module == __name__  # found from the caller when not given
    assert app.setting_names() == ["one_db", "pool"]


def test_app_names_its_module_explicitly() -> None:
    app = App("layers_named", stores=[Store("one_db")], module="storekeeper.naming")
    assert app.module == "storekeeper.naming"
    assert app.home is not None and app.home.name == "storekeeper"
