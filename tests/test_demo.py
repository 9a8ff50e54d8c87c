"""``storekeeper demo`` on a bare machine: the stream gages app on the embedded SQLite default."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_twice(tmp_path: Path) -> None:
    first = run_cli("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    out = first.stdout
    assert "storekeeper demo: app 'gauges' on service(s) local" in out
    assert "gauges.stream_db: created" in out
    assert "sync: changed" in out
    # The gages of the tutorial, then the status table.
    assert "stream gages:" in out
    assert "40.23812952992122" in out and "-111.7101001739502" in out
    header = next(line for line in out.splitlines() if line.startswith("APP "))
    assert header.split()[:4] == ["APP", "STORE", "SERVICE", "DATABASE"]
    status_row = out.splitlines()[out.splitlines().index(header) + 1].split()
    assert status_row[:5] == ["gauges", "stream_db", "local", "gauges_stream_db", "yes"]

    second = run_cli("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "no changes" in second.stdout
    assert "gauges.stream_db: up to date" in second.stdout

    store = tmp_path / "var" / "stores" / "gauges_stream_db.sqlite"
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM stream_gages").fetchone() == (2,)
    assert (tmp_path / "var" / "catalog.sqlite").is_file()
