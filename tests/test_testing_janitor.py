"""The test plugin's janitor, without an inner pytest run: the names it gives, the mark on
every database it makes, and its refusal to drop a database without that mark."""

from __future__ import annotations

import pytest

from storekeeper import App, Store
from storekeeper.errors import ConfigError, InvalidName
from storekeeper.site import Site
from storekeeper.testing.janitor import TestSite, drop_test_database, test_database_name


@pytest.mark.parametrize("name", ["test", "test_shop"])
def test_an_app_whose_databases_would_start_with_test_is_refused(name: str) -> None:
    with pytest.raises(InvalidName, match=f"app name {name!r}.*test_"):
        App(name, stores=[Store("main_db")])
    # Names that only look alike stay allowed.
    App("tests", stores=[Store("main_db")])
    App("testing", stores=[Store("main_db")])


def test_only_a_database_the_plugin_marked_is_dropped(site: Site) -> None:
    service = site.service("main")
    backend = site.backend(service)
    stranger = "test_" + "made_by_someone_else"
    backend.create(stranger)
    test_site = TestSite(site.config, run="r1a2b3c4", worker="main")
    try:
        with pytest.raises(ConfigError, match=f"{stranger!r}.*not marked"):
            drop_test_database(test_site.backend(service), stranger)
        assert backend.exists(stranger)
        # What the plugin's site makes carries the run's mark, and only that is dropped.
        ours = test_site.database_name("shop_main_db")
        assert ours.startswith("test_r1a2b3c4_main_")
        test_site.backend(service).create(ours)
        assert backend.note(ours) == "storekeeper test: run r1a2b3c4"
        drop_test_database(test_site.backend(service), ours)
        assert not backend.exists(ours)
        with pytest.raises(ConfigError, match="only creates, drops or clones databases"):
            drop_test_database(test_site.backend(service), "shop_main_db")
    finally:
        backend.drop(stranger)
        test_site.close()


def test_test_database_names_fit_postgresql_and_stay_apart() -> None:
    long = "a" * 30 + "_" + "b" * 32
    names = {test_database_name("0123abcd", worker, long) for worker in ("main", "gw0", "gw1")}
    assert len(names) == 3
    assert all(len(n) <= 63 and n.startswith("test_0123abcd_") for n in names)
    assert test_database_name("0123abcd", "gw3", "shop_db") == "test_0123abcd_gw3_shop_db"
