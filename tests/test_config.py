"""Configuration: one documented precedence, each value with the place it came from.

Lowest first: built-in defaults < storekeeper.toml < its [env.NAME] overlay < the catalog <
environment variables. Each test shows one step overriding the step before it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_config
from storekeeper import config
from storekeeper.catalog import tables
from storekeeper.config import BUILTIN, Sourced
from storekeeper.errors import ConfigError, InvalidName
from storekeeper.site import Site


def sqlite_folder(site: Site, service: str) -> Path:
    """The folder a SQLite service keeps its stores in."""
    return Path(str(site.service(service).url.database))


# 1. built-in defaults ------------------------------------------------------------------


def test_builtin_defaults_are_a_local_sqlite_service_and_catalog_in_var(project: Path) -> None:
    cfg = config.load()
    assert cfg.file is None
    assert cfg.root == project
    assert cfg.default_service == Sourced("local", BUILTIN)
    assert cfg.catalog.source == BUILTIN

    site = Site(cfg)
    try:
        local = site.service("local")
        assert local.source == BUILTIN
        assert local.url.get_backend_name() == "sqlite"
        assert sqlite_folder(site, "local") == project / "var" / "stores"
        assert site.catalog.url.database == str(project / "var" / "catalog.sqlite")
        assert site.assignment("my_app", "example_db") == Sourced(
            "local", f"default_service ({BUILTIN})"
        )
    finally:
        site.close()


# 2. storekeeper.toml -------------------------------------------------------------------


def test_the_file_overrides_the_builtin_defaults(project: Path) -> None:
    write_config(
        project,
        """
        default_service = "main"
        catalog = "sqlite:///data/catalog.sqlite"
        [services]
        local = "sqlite:///elsewhere"
        main = "sqlite:///main_stores"
        [assign]
        "my_app.example_db" = "local"
        """,
    )
    cfg = config.load()
    assert cfg.file == project / "storekeeper.toml"
    assert cfg.default_service == Sourced("main", "storekeeper.toml")
    assert cfg.catalog == Sourced("sqlite:///data/catalog.sqlite", "storekeeper.toml")

    site = Site(cfg)
    try:
        assert site.service("local").source == "storekeeper.toml"
        assert sqlite_folder(site, "local") == project / "elsewhere"
        assert sqlite_folder(site, "main") == project / "main_stores"
        assert site.catalog.url.database == str(project / "data" / "catalog.sqlite")
        assert site.assignment("my_app", "example_db") == Sourced("local", "storekeeper.toml")
    finally:
        site.close()


# 3. the environment's overlay ----------------------------------------------------------

OVERLAYS = """
    default_service = "main"
    [services]
    main = "sqlite:///main_stores"
    [assign]
    "my_app.example_db" = "main"

    [env.test]
    default_service = "testing"
    [env.test.services]
    main = "sqlite:///test_stores"
    testing = "sqlite:///testing_stores"
    [env.test.assign]
    "my_app.example_db" = "testing"

    [env.production]
    default_service = "prod"
    [env.production.services]
    prod = "sqlite:///prod_stores"
    """


def test_the_test_overlay_is_chosen_under_pytest_and_overrides_the_file(project: Path) -> None:
    write_config(project, OVERLAYS)
    cfg = config.load()
    overlay = "storekeeper.toml [env.test]"
    assert config.current_env() == "test"
    assert cfg.env == "test"
    assert cfg.default_service == Sourced("testing", overlay)
    assert cfg.services["main"] == Sourced("sqlite:///test_stores", overlay)
    assert cfg.assignments[("my_app", "example_db")] == Sourced("testing", overlay)
    assert "prod" not in cfg.services


def test_storekeeper_env_chooses_the_overlay(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, OVERLAYS)
    monkeypatch.setenv("STOREKEEPER_ENV", "production")
    cfg = config.load()
    assert cfg.env == "production"
    assert cfg.default_service == Sourced("prod", "storekeeper.toml [env.production]")
    assert cfg.services["main"] == Sourced("sqlite:///main_stores", "storekeeper.toml")
    assert "testing" not in cfg.services

    # An empty STOREKEEPER_ENV means no overlay at all, even under pytest.
    monkeypatch.setenv("STOREKEEPER_ENV", "")
    cfg = config.load()
    assert cfg.env is None
    assert cfg.default_service == Sourced("main", "storekeeper.toml")


# 4. the catalog ------------------------------------------------------------------------


def test_the_catalog_overrides_the_overlay(project: Path) -> None:
    write_config(project, OVERLAYS)
    site = Site.load()
    try:
        assert site.service("main").source == "storekeeper.toml [env.test]"
        site.add_service("main", "sqlite:///catalog_stores")
        site.assign("my_app", "example_db", "main")

        assert site.service("main").source == "catalog"
        assert sqlite_folder(site, "main") == project / "catalog_stores"
        assert site.assignment("my_app", "example_db") == Sourced("main", "catalog")
    finally:
        site.close()

    # Another process (a new site on the same catalog) sees the same.
    again = Site.load()
    try:
        assert again.service("main").source == "catalog"
        assert again.assignment("my_app", "example_db") == Sourced("main", "catalog")
    finally:
        again.close()


# 5. environment variables --------------------------------------------------------------


def test_environment_variables_override_the_catalog(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, OVERLAYS)
    site = Site.load()
    try:
        site.add_service("main", "sqlite:///catalog_stores")
    finally:
        site.close()
    secret_file = project / "other.url"
    secret_file.write_text("sqlite:///from_file\n")
    monkeypatch.setenv("STOREKEEPER_SERVICE_MAIN", "sqlite:///env_stores")
    monkeypatch.setenv("STOREKEEPER_SERVICE_OTHER_FILE", str(secret_file))
    monkeypatch.setenv("STOREKEEPER_DEFAULT_SERVICE", "other")

    site = Site.load()
    try:
        main = site.service("main")
        assert main.source == "env STOREKEEPER_SERVICE_MAIN"
        assert sqlite_folder(site, "main") == project / "env_stores"
        other = site.service("other")
        assert other.source == "env STOREKEEPER_SERVICE_OTHER_FILE"
        assert sqlite_folder(site, "other") == project / "from_file"
        assert site.config.default_service == Sourced("other", "env STOREKEEPER_DEFAULT_SERVICE")
    finally:
        site.close()


def test_storekeeper_catalog_overrides_the_files_catalog(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, 'catalog = "sqlite:///file_catalog.sqlite"\n')
    assert config.load().catalog.source == "storekeeper.toml"
    monkeypatch.setenv("STOREKEEPER_CATALOG", "sqlite:///env_catalog.sqlite")
    cfg = config.load()
    assert cfg.catalog == Sourced("sqlite:///env_catalog.sqlite", "env STOREKEEPER_CATALOG")
    site = Site(cfg)
    try:
        assert site.catalog.schema_version() == tables.SCHEMA_VERSION
        assert (project / "env_catalog.sqlite").is_file()
        assert not (project / "file_catalog.sqlite").exists()
    finally:
        site.close()


def test_an_empty_default_service_variable_switches_the_default_off(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_DEFAULT_SERVICE", "")
    site = Site.load()
    try:
        assert site.assignment("my_app", "example_db") is None
    finally:
        site.close()


# where the file is found ---------------------------------------------------------------


def test_tool_storekeeper_in_pyproject_is_found(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n'
        '[tool.storekeeper]\ndefault_service = "main"\n\n'
        '[tool.storekeeper.services]\nmain = "sqlite:///stores"\n'
    )
    cfg = config.load()
    assert cfg.file == project / "pyproject.toml"
    assert cfg.default_service == Sourced("main", "pyproject.toml [tool.storekeeper]")
    assert cfg.services["main"].source == "pyproject.toml [tool.storekeeper]"


def test_a_pyproject_without_the_table_is_passed_over(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, 'default_service = "main"\n[services]\nmain = "sqlite:///s"\n')
    sub = project / "package"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "x"\n')
    monkeypatch.chdir(sub)
    cfg = config.load()
    assert cfg.file == project / "storekeeper.toml"
    assert cfg.default_service.value == "main"


def test_a_config_in_a_parent_folder_is_found_and_paths_are_relative_to_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "secrets").mkdir()
    (project / "secrets" / "other.url").write_text("sqlite:///other_stores\n")
    write_config(
        project,
        """
        catalog = "sqlite:///var/my_catalog.sqlite"
        [services]
        main = "sqlite:///stores"
        [services.other]
        url_file = "secrets/other.url"
        """,
    )
    deeper = project / "src" / "pkg"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)

    site = Site.load()
    try:
        assert site.config.file == project / "storekeeper.toml"
        assert site.config.root == project
        assert sqlite_folder(site, "main") == project / "stores"
        assert sqlite_folder(site, "other") == project / "other_stores"
        assert sqlite_folder(site, "local") == project / "var" / "stores"
        assert site.catalog.url.database == str(project / "var" / "my_catalog.sqlite")
    finally:
        site.close()


def test_services_as_tables_with_url_file_and_production(project: Path) -> None:
    secret = project / "main.url"
    secret.write_text("postgresql://app:s3cretpw@db.example:5432\n")
    write_config(
        project,
        f"""
        [services.main]
        url_file = "{secret}"
        [services.prod]
        url = "postgresql://app@prod.example:5432"
        production = true
        """,
    )
    site = Site.load()
    try:
        main = site.service("main")
        assert main.url.password == "s3cretpw"
        assert main.url.host == "db.example"
        assert main.source == "storekeeper.toml"
        assert "s3cretpw" not in main.display_url and "s3cretpw" not in repr(main)
        assert site.service("prod").production is True
        assert main.production is False
    finally:
        site.close()


def test_a_missing_url_file_is_a_config_error_naming_it(project: Path) -> None:
    write_config(project, '[services.main]\nurl_file = "nowhere/main.url"\n')
    with pytest.raises(ConfigError, match=r"services\.main\.url_file.*nowhere/main\.url"):
        config.load()


def test_an_explicit_path_that_does_not_exist_is_a_config_error(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        config.load(project / "missing.toml")


# bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ('colour = "red"\n', "storekeeper.toml", "colour"),
        ('[services.main]\nuri = "sqlite:///x"\n', "storekeeper.toml", "uri"),
        ('[env.test]\napps = ["x:app"]\n', "storekeeper.toml [env.test]", "apps"),
    ],
)
def test_unknown_keys_are_config_errors_naming_file_and_key(
    project: Path, text: str, where: str, key: str
) -> None:
    write_config(project, text)
    with pytest.raises(ConfigError) as info:
        config.load()
    assert where in str(info.value)
    assert repr(key) in str(info.value) or key in str(info.value)


def test_invalid_toml_is_a_config_error_naming_the_file(project: Path) -> None:
    path = write_config(project, "default_service = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        config.load()
    assert str(path) in str(info.value)


def test_a_bad_service_name_in_the_file_is_an_invalid_name(project: Path) -> None:
    write_config(project, '[services]\n"Bad Name" = "sqlite:///x"\n')
    with pytest.raises(InvalidName, match="'Bad Name'"):
        config.load()


def test_a_bad_service_name_in_the_environment_names_the_variable(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_SERVICE_1BAD", "sqlite:///x")
    with pytest.raises(InvalidName, match="STOREKEEPER_SERVICE_1BAD"):
        config.load()


# the environment must be one the configuration defines ---------------------------------


def test_a_misspelled_storekeeper_env_is_an_error_naming_the_known_ones(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(project, OVERLAYS)
    monkeypatch.setenv("STOREKEEPER_ENV", "prodution")
    with pytest.raises(ConfigError) as info:
        config.load()
    message = str(info.value)
    assert "'prodution'" in message and "STOREKEEPER_ENV" in message
    assert "production, test" in message
    assert "storekeeper.toml" in message


def test_an_environment_given_by_name_must_be_defined(project: Path) -> None:
    write_config(project, OVERLAYS)
    with pytest.raises(ConfigError, match=r"'prod'.*production, test"):
        config.load(env="prod")


def test_an_environment_without_any_configuration_file_is_an_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOREKEEPER_ENV", "production")
    with pytest.raises(ConfigError, match=r"'production'.*no configuration file"):
        config.load()


def test_an_explicit_empty_overlay_is_a_defined_environment(project: Path) -> None:
    write_config(project, 'default_service = "main"\n[services]\nmain = "sqlite:///s"\n')
    with (project / "storekeeper.toml").open("a") as fh:
        fh.write("[env.staging]\n")
    cfg = config.load(env="staging")
    assert cfg.env == "staging"
    assert cfg.overlays == {"staging"}
    assert cfg.default_service == Sourced("main", "storekeeper.toml")


def test_test_under_pytest_needs_no_overlay(project: Path) -> None:
    write_config(project, '[env.production]\ndefault_service = ""\n')
    assert config.load().env == "test"  # chosen because this runs under pytest
    assert config.load(env="test").env == "test"  # as the pytest plugin asks for it
    assert config.load(env="test").default_service == Sourced("local", BUILTIN)


def test_a_bad_assign_key_in_the_file_names_the_key_as_written(project: Path) -> None:
    write_config(project, '[assign]\n"my.app.main" = "local"\n')
    with pytest.raises(InvalidName, match=r"storekeeper.toml: assign key 'my.app.main': "):
        config.load()
