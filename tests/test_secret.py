"""Passwords are masked in everything shown and encrypted at rest when a key is set."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import URL

from storekeeper.errors import ConfigError
from storekeeper.secret import MASK, mask, mask_url, seal, unseal


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


# item 13: passwords with /, @ or : in them, raw or percent-encoded ----------------------

SCHEMES = st.sampled_from(["postgresql", "postgresql+psycopg", "postgres", "mysql+pymysql"])
HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
# A user name typed raw in a URL cannot hold ':', '/', '@' or spaces (those are escaped).
RAW_USERS = st.from_regex(r"[A-Za-z0-9_.\-+~$!]{1,12}", fullmatch=True)
DATABASES = st.from_regex(r"[A-Za-z0-9_]{0,12}", fullmatch=True)
# Typed raw, a password can hold anything but white space (which would end the URL in text).
RAW_PASSWORDS = st.text(
    st.characters(exclude_categories=("Z", "C")), min_size=1, max_size=20
).filter(lambda pw: not any(ch.isspace() for ch in pw))
ANY_PASSWORDS = st.text(min_size=1, max_size=20)
FAST = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:pa/ss@host/db", "postgresql://app:***@host/db"),
        ("postgresql://app:p@ss@host/db", "postgresql://app:***@host/db"),
        ("postgresql://app:p:a:ss@host:5432/db", "postgresql://app:***@host:5432/db"),
        ("postgresql://app:p%2Fa%40s%3As@host/db", "postgresql://app:***@host/db"),
        ("in 'postgresql://app:p@ss@host/db' now", "in 'postgresql://app:***@host/db' now"),
    ],
)
def test_mask_hides_passwords_with_slash_at_or_colon(text: str, shown: str) -> None:
    assert mask(text) == shown


@FAST
@given(scheme=SCHEMES, user=RAW_USERS, password=RAW_PASSWORDS, host=HOSTS, db=DATABASES)
def test_mask_hides_any_raw_password_in_a_url_in_text(
    scheme: str, user: str, password: str, host: str, db: str
) -> None:
    url = f"{scheme}://{user}:{{}}@{host}:5432/{db}"
    shown = mask(f"cannot connect to {url.format(password)} (timeout)")
    assert shown == f"cannot connect to {url.format(MASK)} (timeout)"


@FAST
@given(scheme=SCHEMES, user=st.text(max_size=12), password=ANY_PASSWORDS, host=HOSTS, db=DATABASES)
def test_mask_hides_any_percent_encoded_password_in_a_url_in_text(
    scheme: str, user: str, password: str, host: str, db: str
) -> None:
    url = f"{scheme}://{quote(user, safe='')}:{{}}@{host}/{db}"
    shown = mask(f"error at {url.format(quote(password, safe=''))}: refused")
    assert shown == f"error at {url.format(MASK)}: refused"


@FAST
@given(scheme=SCHEMES, user=st.text(max_size=12), password=ANY_PASSWORDS, host=HOSTS, db=DATABASES)
def test_mask_url_hides_the_password_of_any_sqlalchemy_url(
    scheme: str, user: str, password: str, host: str, db: str
) -> None:
    url = URL.create(scheme, username=user or None, password=password, host=host, database=db)
    rest = url.set(password=MASK).render_as_string(hide_password=False)
    # A password that is also the user name or the host hides those too: safe, but not the
    # "rest of the URL survives" this test checks.
    bare = rest.replace(quote(MASK, safe=""), "")
    assume(password not in bare and quote(password, safe="") not in bare)
    shown = mask_url(url)
    assert shown == rest.replace(quote(MASK, safe=""), MASK)
    assert password not in shown and quote(password, safe="") not in shown


@FAST
@given(scheme=SCHEMES, user=RAW_USERS, password=RAW_PASSWORDS, host=HOSTS, db=DATABASES)
def test_mask_url_hides_a_raw_password_sqlalchemy_would_split(
    scheme: str, user: str, password: str, host: str, db: str
) -> None:
    # make_url reads 'p@ss@host' as password 'p' on host 'ss@host': the whole of it is hidden.
    assert mask_url(f"{scheme}://{user}:{password}@{host}/{db}") == (
        f"{scheme}://{user}:{MASK}@{host}/{db}"
    )


def test_mask_hides_known_secrets_also_percent_encoded() -> None:
    assert mask("tried p%40ss%2Fword", "p@ss/word") == "tried ***"
