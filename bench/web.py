"""What storekeeper's web integrations cost per request, against their usual peers.

1. Flask: ``GET /gauge/1`` doing one primary-key lookup through ``storekeeper.flask``
   (``stores.session.get``) against the same endpoint on Flask-SQLAlchemy (``db.session.get``).
2. Starlette (FastAPI's routing and dependency injection on Starlette): the same lookup with
   ``Depends(stores.dependency())`` against a hand-written ``async_sessionmaker`` dependency
   with the same contract (commit on success, roll back on error, close).

Requests go through each framework's in-process client (Flask's test client; httpx2's
``ASGITransport`` in one event loop), so the numbers are framework + session + database and
no network stack. PostgreSQL is a throwaway cluster (or STOREKEEPER_TEST_POSTGRES_URL); SQLite
rows are shown too. Contenders alternate within each round; each figure is the median over
rounds of the mean time per request. Ends with ``ratio NAME VALUE`` lines (ours / theirs).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx2
from fastapi import Depends, FastAPI
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gauges.model import Base, StreamGage, init_stream_db
from sessions import compare, on_both_dialects
from storekeeper import App, Store
from storekeeper.config import load
from storekeeper.flask import StoreKeeper
from storekeeper.site import Site
from storekeeper.starlette import StoreKeeper as AsyncStoreKeeper

STORE = "stream_db"


def flask_contenders(app: App) -> dict[str, Callable[[], object]]:
    ours = Flask("ours")
    stores = StoreKeeper(ours, app)

    @ours.get("/gauge/<int:ident>")
    def ours_gauge(ident: int) -> str:
        return str(stores.session.get(StreamGage, ident).value)  # type: ignore[union-attr]

    theirs = Flask("theirs")
    theirs.config["SQLALCHEMY_DATABASE_URI"] = app.url(STORE).render_as_string(hide_password=False)
    db = SQLAlchemy(theirs)

    @theirs.get("/gauge/<int:ident>")
    def theirs_gauge(ident: int) -> str:
        return str(db.session.get(StreamGage, ident).value)  # type: ignore[union-attr]

    ours_client, theirs_client = ours.test_client(), theirs.test_client()
    assert ours_client.get("/gauge/1").text == theirs_client.get("/gauge/1").text == "1"
    return {
        "storekeeper": lambda: ours_client.get("/gauge/1"),
        "flask-sqlalchemy": lambda: theirs_client.get("/gauge/1"),
    }


def starlette_contenders(
    app: App, loop: asyncio.AbstractEventLoop, engine: AsyncEngine
) -> dict[str, Callable[[], object]]:
    stores = AsyncStoreKeeper(app)
    ours = FastAPI()

    ours_session = Depends(stores.dependency())

    @ours.get("/gauge/{ident}")
    async def ours_gauge(ident: int, session: AsyncSession = ours_session) -> int:
        return (await session.get(StreamGage, ident)).value  # type: ignore[union-attr]

    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def handwritten() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    theirs = FastAPI()

    theirs_session = Depends(handwritten)

    @theirs.get("/gauge/{ident}")
    async def theirs_gauge(ident: int, session: AsyncSession = theirs_session) -> int:
        return (await session.get(StreamGage, ident)).value  # type: ignore[union-attr]

    def client(api: FastAPI) -> Callable[[], object]:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=api), base_url="http://b")
        return lambda: loop.run_until_complete(http.get("/gauge/1"))

    ours_get, theirs_get = client(ours), client(theirs)
    assert ours_get().text == theirs_get().text == "1"  # type: ignore[attr-defined]
    return {"storekeeper": ours_get, "handwritten": theirs_get}


def web_bench(service_url: str, folder: Path, rounds: int, ops: int) -> dict[str, float]:
    (folder / "storekeeper.toml").write_text(
        f'default_service = "bench"\n[services]\nbench = "{service_url}"\n'
    )
    site = Site(load(folder / "storekeeper.toml", env=None))
    app = App("web", stores=[Store(STORE, metadata=Base.metadata, initializer=init_stream_db)])
    app.bind(site).sync(refresh=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    url = app.url(STORE)
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    engine = create_async_engine(url)
    try:
        flask = compare(flask_contenders(app), rounds, ops)
        starlette = compare(starlette_contenders(app, loop, engine), rounds, ops)
        return {
            "flask": flask["storekeeper"],
            "flask-sqlalchemy": flask["flask-sqlalchemy"],
            "starlette": starlette["storekeeper"],
            "handwritten": starlette["handwritten"],
        }
    finally:
        loop.run_until_complete(engine.dispose())
        loop.run_until_complete(site.dispose_async_engines())
        loop.close()
        app.drop_store(STORE)
        site.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    args = parser.parse_args()
    rounds, ops = (5, 200) if args.quick else (15, 1000)

    results = on_both_dialects(web_bench, rounds, ops)

    print(f"one primary-key lookup per request, median of {rounds} rounds x {ops} requests (us)")
    print(
        f"{'dialect':<12}{'flask':>9}{'flask-sqla':>12}{'ratio':>8}"
        f"{'starlette':>12}{'handwritten':>13}{'ratio':>8}"
    )
    for dialect, r in results.items():
        print(
            f"{dialect:<12}{r['flask'] * 1e6:>9.1f}{r['flask-sqlalchemy'] * 1e6:>12.1f}"
            f"{r['flask'] / r['flask-sqlalchemy']:>8.3f}{r['starlette'] * 1e6:>12.1f}"
            f"{r['handwritten'] * 1e6:>13.1f}{r['starlette'] / r['handwritten']:>8.3f}"
        )
    pg, lite = results["postgresql"], results["sqlite"]
    print()
    print(f"ratio flask_vs_flask_sqlalchemy {pg['flask'] / pg['flask-sqlalchemy']:.3f}")
    print(f"ratio starlette_vs_handwritten {pg['starlette'] / pg['handwritten']:.3f}")
    print(f"ratio flask_vs_flask_sqlalchemy_sqlite {lite['flask'] / lite['flask-sqlalchemy']:.3f}")
    print(f"ratio starlette_vs_handwritten_sqlite {lite['starlette'] / lite['handwritten']:.3f}")


if __name__ == "__main__":
    main()
