"""Names become database names, file names and env var names: only a portable shape passes."""

from __future__ import annotations

import pytest

from storekeeper.errors import InvalidName
from storekeeper.naming import (
    check_identifier,
    env_var_for_service,
    format_database_name,
    physical_name,
    split_target,
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("my'app", 'invalid store name "my\'app"'),
        ('my"app', "invalid store name 'my\"app'"),
        ("my app", "invalid store name 'my app'"),
        ("x;drop database y", "invalid store name 'x;drop database y'"),
        ("Example", "invalid store name 'Example'"),
        ("café", "invalid store name 'café'"),
        ("../x", "invalid store name '../x'"),
        ("/etc/x", "invalid store name '/etc/x'"),
        ("1abc", "invalid store name '1abc'"),
        ("", "store name is empty"),
        ("select", "'select': it is an SQL reserved word"),
        ("user", "'user': it is an SQL reserved word"),
    ],
)
def test_bad_names_are_refused_with_the_value_in_the_message(value: str, message: str) -> None:
    with pytest.raises(InvalidName) as caught:
        check_identifier(value, "store")
    assert message in str(caught.value)


def test_a_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidName, match="must be a string, got int 5"):
        check_identifier(5, "app")


@pytest.mark.parametrize("value", ["a", "example_db", "my_first_app", "t0", "x" * 63])
def test_portable_names_pass(value: str) -> None:
    assert check_identifier(value, "store") == value


def test_a_name_over_63_bytes_is_refused() -> None:
    with pytest.raises(InvalidName, match="64 characters, at most 63"):
        check_identifier("x" * 64, "store")


def test_physical_name_joins_app_and_store() -> None:
    assert physical_name("my_first_app", "example_db") == "my_first_app_example_db"


def test_physical_name_over_postgresql_limit_names_both_parts() -> None:
    with pytest.raises(InvalidName) as caught:
        physical_name("a" * 40, "b" * 30)
    text = str(caught.value)
    assert "71 bytes" in text and "at most 63" in text and "shorten" in text


def test_split_target_needs_app_dot_setting() -> None:
    assert split_target("my_app.example_db") == ("my_app", "example_db")
    for bad in ("nodot", ".x", "x.", "a.b.c"):
        with pytest.raises(InvalidName, match=r"APP\.SETTING|invalid"):
            split_target(bad)


def test_service_env_var_is_upper_case() -> None:
    assert env_var_for_service("pg_main") == "STOREKEEPER_SERVICE_PG_MAIN"


def test_database_name_format_is_applied_and_checked() -> None:
    assert format_database_name("test_{name}", "app_db") == "test_app_db"
    assert format_database_name("test_{name}_gw1", "app_db") == "test_app_db_gw1"
    for bad in ("test_", "{other}", "Test_{name}", "x {name}", "{name}{0}"):
        with pytest.raises(InvalidName, match="database name format"):
            format_database_name(bad, "app_db")
    with pytest.raises(InvalidName, match="at most 63"):
        format_database_name("test_{name}", "a" * 60)
