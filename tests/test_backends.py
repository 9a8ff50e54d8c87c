"""Backends against real servers: templates sealed and cloned, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from storekeeper import ProvisionError
from storekeeper.backends import Backend
from storekeeper.site import Site


def rows(backend: Backend, database: str) -> list[str]:
    engine = create_engine(backend.database_url(database), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT name FROM items ORDER BY name")).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def backend(site: Site) -> Backend:
    return site.backend(site.service("main"))


def test_a_sealed_template_is_cloned_with_its_data(backend: Backend, app_name: str) -> None:
    template, first, second = (f"{app_name}_{n}" for n in ("tpl", "one", "two"))
    backend.create(template)
    engine = create_engine(backend.database_url(template), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (name VARCHAR(20))"))
        conn.execute(text("INSERT INTO items VALUES ('a'), ('b')"))
    engine.dispose()

    assert backend.template_mark(template) is None
    backend.seal_template(template, mark="built from 'abc'")
    assert backend.template_mark(template) == "built from 'abc'"
    backend.clone(template, first)
    backend.clone(template, second)
    assert backend.template_mark(first) is None

    assert rows(backend, first) == rows(backend, second) == ["a", "b"]
    # The clones are separate databases.
    engine = create_engine(backend.database_url(first), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items"))
    engine.dispose()
    assert rows(backend, first) == []
    assert rows(backend, second) == ["a", "b"]

    with pytest.raises(ProvisionError, match=f"{second}.*template {template!r}"):
        backend.clone(template, second)
    with pytest.raises(ProvisionError, match="template"):
        backend.clone(f"{app_name}_missing", f"{app_name}_three")
    assert not backend.exists(f"{app_name}_three")

    backend.unseal_template(template)
    assert backend.template_mark(template) is None
    backend.seal_template(template, mark="again")
    backend.drop(template)
    assert backend.template_mark(template) is None


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_sealed_postgres_template_refuses_connections(backend: Backend, app_name: str) -> None:
    template = f"{app_name}_tpl"
    backend.create(template)
    backend.seal_template(template)
    engine = create_engine(backend.database_url(template), poolclass=NullPool)
    with pytest.raises(OperationalError, match="not currently accepting connections"):
        engine.connect()
    backend.unseal_template(template)
    with engine.connect() as conn:
        # A connection held open on the template: cloning it fails with a clear reason.
        assert conn.execute(text("SELECT 1")).scalar() == 1
        with pytest.raises(ProvisionError, match="being accessed by other users"):
            backend.clone(template, f"{app_name}_one")
    engine.dispose()
    assert not backend.exists(f"{app_name}_one")


def test_a_lock_holder_record_names_the_holder_and_never_its_secrets(
    backend: Backend, app_name: str
) -> None:
    name = f"{app_name}_locked"
    assert backend.lock_holder(name) is None
    doing = "copying postgresql://app:s3cret@db/x */ DROP DATABASE x; -- %s"
    with backend.lock(name, doing=doing):
        holder = backend.lock_holder(name)
        assert holder is not None
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
        assert holder.since is not None
        described = holder.describe()
        assert described.startswith(f"pid {os.getpid()} on {socket.gethostname()} since ")
        assert "doing: copying postgresql://app:***@db/x *? DROP DATABASE x? -- ?s" in described
        assert "s3cret" not in described
    assert backend.lock_holder(name) is None


def test_the_unfinished_mark_and_a_note_share_a_database_without_erasing_each_other(
    backend: Backend, app_name: str
) -> None:
    # The test plugin notes what it made; a first initialization marks the store unfinished
    # meanwhile. Neither may erase the other, or the plugin would leave its database behind.
    database = f"{app_name}_noted"
    backend.create(database)
    backend.set_note(database, "storekeeper test: run abc")
    backend.mark_unfinished(database, "pid 1 on here")
    assert backend.unfinished(database)
    assert backend.note(database) == "storekeeper test: run abc"
    backend.set_note(database, "storekeeper test: run def")
    assert backend.unfinished(database)
    backend.mark_finished(database)
    assert not backend.unfinished(database)
    assert backend.note(database) == "storekeeper test: run def"
    backend.drop(database)


@pytest.mark.parametrize("dialect", ["postgresql"])
def test_a_swap_that_fails_halfway_leaves_the_store_in_place(
    backend: Backend, app_name: str
) -> None:
    # restore swaps a freshly restored database in for the store's. The second rename is made
    # to fail after the first has run: another session holds a lock on the replacement, the
    # swap waits for it (seen in pg_stat_activity), then that session renames it away.
    from storekeeper.backends.postgresql import PostgresBackend, quote

    assert isinstance(backend, PostgresBackend)
    store, fresh, kept, gone = (f"{app_name}_{n}" for n in ("st", "fresh", "kept", "gone"))
    for name in (store, fresh):
        backend.create(name)
    engine = create_engine(backend.database_url(store), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (name VARCHAR(20))"))
        conn.execute(text("INSERT INTO items VALUES ('kept')"))
    engine.dispose()

    failure: list[BaseException] = []
    with backend.admin.connect() as blocker:
        blocker = blocker.execution_options(isolation_level="READ COMMITTED")
        blocker.begin()
        blocker.exec_driver_sql(f"ALTER DATABASE {quote(fresh)} RENAME TO {quote(gone)}")

        def swap() -> None:
            try:
                backend.swap(store, fresh, kept)
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=swap)
        worker.start()
        with backend.admin.connect() as watcher:
            waiting = 0
            while not waiting and worker.is_alive():
                waiting = watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'ALTER DATABASE %' AND pid <> :me"
                    ),
                    {"me": blocker.exec_driver_sql("SELECT pg_backend_pid()").scalar()},
                ).scalar()
        assert waiting, "the swap never waited for the replacement's lock"
        blocker.commit()
    worker.join(timeout=60)

    assert len(failure) == 1 and isinstance(failure[0], ProvisionError)
    assert "nothing was changed" in str(failure[0])
    # The first rename was undone with the second: the store is where it was, whole.
    assert backend.exists(store) and not backend.exists(kept)
    assert rows(backend, store) == ["kept"]
    for name in (store, gone):
        backend.drop(name)
