"""A site places stores on its services under its database name format."""

from __future__ import annotations

from pathlib import Path

from conftest import write_app
from storekeeper.discover import load_apps
from storekeeper.site import Site


def test_a_site_with_a_name_format_keeps_its_stores_apart(
    project: Path, site: Site, app_name: str
) -> None:
    (app,) = load_apps([write_app(project, app_name)], [], project)
    test_site = Site(site.config, database_format="test_{name}")
    try:
        app.bind(test_site)
        app.sync()
        backend = test_site.backend(test_site.service("main"))
        assert app.placement("main_db").database == f"test_{app_name}_main_db"
        assert backend.exists(f"test_{app_name}_main_db")
        assert not backend.exists(f"{app_name}_main_db")
        with app.session("main_db") as session:
            used = session.connection().engine.url
        assert used == backend.database_url(f"test_{app_name}_main_db")
        app.drop_store("main_db")
        assert not backend.exists(f"test_{app_name}_main_db")
    finally:
        test_site.close()
