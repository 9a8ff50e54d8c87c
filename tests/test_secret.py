"""Passwords are masked in everything shown and encrypted at rest when a key is set."""

from __future__ import annotations

import pytest

from storekeeper.errors import ConfigError
from storekeeper.secret import mask, seal, unseal


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "postgresql+psycopg://app:s3cret@db:5432/x",
            "postgresql+psycopg://app:***@db:5432/x",
        ),
        ("error at postgres://u:p%40ss@h/ now", "error at postgres://u:***@h/ now"),
        ("host=db password=s3cret user=app", "host=db password=*** user=app"),
        ("password = 'two words'", "password = ***"),
        ("sqlite:///var/stores", "sqlite:///var/stores"),
        ("postgresql://app@db:5432", "postgresql://app@db:5432"),
    ],
)
def test_mask_hides_passwords_in_urls_and_pairs(text: str, shown: str) -> None:
    assert mask(text) == shown


def test_mask_hides_known_secrets_anywhere() -> None:
    assert mask("the token hunter2 leaked", "hunter2") == "the token *** leaked"


def test_seal_without_a_key_stores_the_value_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOREKEEPER_SECRET_KEY", raising=False)
    assert seal("postgresql://u:p@h") == "postgresql://u:p@h"


def test_seal_with_a_key_encrypts_and_unseal_decrypts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "correct horse")
    sealed = seal("postgresql://u:s3cret@h")
    assert "s3cret" not in sealed and sealed.startswith("enc:v1:")
    assert unseal(sealed) == "postgresql://u:s3cret@h"


def test_unseal_with_the_wrong_key_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "one key")
    sealed = seal("postgresql://u:s3cret@h")
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", "another key")
    with pytest.raises(ConfigError, match="does not decrypt"):
        unseal(sealed)
    monkeypatch.delenv("STOREKEEPER_SECRET_KEY")
    with pytest.raises(ConfigError, match="STOREKEEPER_SECRET_KEY is not set"):
        unseal(sealed)
