"""Passwords are masked in everything shown and encrypted at rest when a key is set."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import URL

from conftest import run_cli
from storekeeper import secret as secret_module
from storekeeper.errors import ConfigError
from storekeeper.secret import (
    MASK,
    Envelope,
    derive_key,
    key_id,
    mask,
    mask_url,
    new_key,
    reseal,
    rewrap,
    seal,
    sealing_key_id,
    unseal,
)
from storekeeper.site import Site


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
    assert "s3cret" not in sealed and sealed.startswith("enc:v2:")
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
FAST = settings(max_examples=100, deadline=None)


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
    # "rest of the URL survives" this test checks. One that is part of the mask itself ('*')
    # is hidden all the same, but "not in what is shown" cannot say so.
    bare = rest.replace(quote(MASK, safe=""), "")
    assume(password not in bare and quote(password, safe="") not in bare)
    assume(password not in MASK)
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


# item 14: a real KDF, raw Fernet keys, key ids, envelopes, legacy enc:v1 -----------------

PASSPHRASE = "correct horse battery staple"
FERNET_KEY = new_key()
OTHER_KEY = new_key()
URL_TEXT = "postgresql+psycopg://app:s3cret@db.example:5432/x"


def legacy_v1(value: str, passphrase: str) -> str:
    """A value as storekeeper 0.1 sealed it: Fernet under sha256(passphrase), no salt."""
    key = base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())
    return "enc:v1:" + Fernet(key).encrypt(value.encode()).decode()


@pytest.mark.parametrize("key", [PASSPHRASE, FERNET_KEY], ids=["passphrase", "fernet key"])
def test_seal_round_trips_and_names_its_key_and_kdf(key: str) -> None:
    sealed = seal(URL_TEXT, key)
    assert sealed.startswith("enc:v2:") and "s3cret" not in sealed
    assert unseal(sealed, key) == URL_TEXT
    # Each value has a data key of its own: the same value seals differently each time.
    again = seal(URL_TEXT, key)
    assert again != sealed and unseal(again, key) == URL_TEXT
    kid, kdf = sealed.split(":")[2:4]
    assert kid == key_id(sealed) == key_id(again)
    if key == FERNET_KEY:
        assert kdf == "fernet"
    else:
        # scrypt with its work factor and salt, stored beside the ciphertext.
        name, log_n, r, p, salt = kdf.split(".")
        assert (name, int(log_n), int(r), int(p)) == ("scrypt", 14, 8, 1)
        assert len(base64.urlsafe_b64decode(salt)) == 16


def test_a_raw_fernet_key_is_used_as_is() -> None:
    sealed = seal(URL_TEXT, FERNET_KEY)
    _, _, _, _, wrapped, token = sealed.split(":")
    data_key = Fernet(FERNET_KEY.encode()).decrypt(wrapped.encode())
    assert Fernet(data_key).decrypt(token.encode()).decode() == URL_TEXT


def test_the_env_key_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", FERNET_KEY)
    assert unseal(seal(URL_TEXT), FERNET_KEY) == URL_TEXT
    assert unseal(seal(URL_TEXT, FERNET_KEY)) == URL_TEXT


def test_legacy_v1_values_are_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    old = legacy_v1(URL_TEXT, PASSPHRASE)
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", PASSPHRASE)
    assert unseal(old) == URL_TEXT
    assert key_id(old) is None
    with pytest.raises(ConfigError, match="does not decrypt"):
        unseal(old, "another passphrase")


def test_a_wrong_key_names_both_key_ids_and_not_the_secret() -> None:
    sealed = seal(URL_TEXT, FERNET_KEY)
    with pytest.raises(ConfigError, match="does not decrypt") as info:
        unseal(sealed, OTHER_KEY)
    message = str(info.value)
    assert key_id(sealed) in message and key_id(seal("x", OTHER_KEY)) in message
    assert OTHER_KEY not in message and FERNET_KEY not in message
    with pytest.raises(ConfigError, match="does not decrypt"):
        unseal(seal(URL_TEXT, PASSPHRASE), "not the passphrase")
    with pytest.raises(ConfigError, match="does not decrypt"):
        unseal(sealed, PASSPHRASE)


def test_envelope_rotation_rewraps_the_data_key_and_leaves_the_data() -> None:
    envelope = Envelope.new(PASSPHRASE)
    token = envelope.encrypt(b"a backup of many gigabytes")
    assert envelope.data_key.decode() not in repr(envelope)
    rewrapped = rewrap(envelope.wrapped, PASSPHRASE, FERNET_KEY)
    assert rewrapped != envelope.wrapped and len(rewrapped) < 300
    assert Envelope.open(rewrapped, FERNET_KEY).decrypt(token) == b"a backup of many gigabytes"
    with pytest.raises(ConfigError, match="does not decrypt"):
        Envelope.open(rewrapped, PASSPHRASE)


def test_reseal_rewraps_v2_and_rewrites_v1_and_plain_values() -> None:
    sealed = seal(URL_TEXT, PASSPHRASE)
    moved = reseal(sealed, PASSPHRASE, FERNET_KEY)
    assert moved.split(":")[-1] == sealed.split(":")[-1], "the data is not re-encrypted"
    assert key_id(moved) == key_id(seal("x", FERNET_KEY))
    assert unseal(moved, FERNET_KEY) == URL_TEXT
    with pytest.raises(ConfigError, match="does not decrypt"):
        unseal(moved, PASSPHRASE)
    assert unseal(reseal(legacy_v1(URL_TEXT, PASSPHRASE), PASSPHRASE, FERNET_KEY), FERNET_KEY) == (
        URL_TEXT
    )
    assert unseal(reseal(URL_TEXT, None, FERNET_KEY), FERNET_KEY) == URL_TEXT


def test_the_derived_key_is_cached_per_passphrase_and_salt() -> None:
    sealed = seal(URL_TEXT, "a passphrase of its own")
    before = derive_key.cache_info()
    for _ in range(5):
        assert unseal(sealed, "a passphrase of its own") == URL_TEXT
    after = derive_key.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 5


def test_unreasonable_kdf_parameters_are_refused_before_deriving() -> None:
    sealed = seal(URL_TEXT, PASSPHRASE).split(":")
    salt = sealed[3].split(".")[-1]
    sealed[3] = f"scrypt.40.8.1.{salt}"
    with pytest.raises(ConfigError, match=r"scrypt\.40\.8\.1"):
        unseal(":".join(sealed), PASSPHRASE)


def test_a_missing_cryptography_package_gets_the_friendly_message(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog holding a sealed URL, made here with the real package...
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY", PASSPHRASE)
    site = Site.load()
    site.add_service("pg", URL_TEXT)
    site.close()
    # ...then real processes whose import of cryptography fails, as without the extra.
    shim = project / "shim" / "cryptography"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'cryptography'\", name='cryptography')\n"
    )
    blocked = {"STOREKEEPER_SECRET_KEY": PASSPHRASE, "PYTHONPATH": str(shim.parent)}
    for args in (["service", "list"], ["service", "add", "other", URL_TEXT]):
        result = run_cli(*args, cwd=project, env=blocked)
        assert result.returncode == 2, result.stderr
        assert "pip install 'storekeeper[crypto]'" in result.stderr
        assert "ModuleNotFoundError" not in result.stderr and "Traceback" not in result.stderr


def test_the_key_may_come_from_a_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "master.key").write_text(FERNET_KEY + "\n")
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY_FILE", str(project / "master.key"))
    sealed = seal(URL_TEXT)
    assert key_id(sealed) == sealing_key_id(FERNET_KEY) and unseal(sealed) == URL_TEXT
    monkeypatch.setenv("STOREKEEPER_SECRET_KEY_FILE", str(project / "missing.key"))
    with pytest.raises(ConfigError, match=r"missing\.key"):
        seal(URL_TEXT)


def test_a_process_seals_with_the_salt_of_a_value_it_opened() -> None:
    # Values added by many processes would each bring a salt (a derivation each to open);
    # a process that has opened one seals with its salt instead.
    passphrase = "one passphrase of this test"
    opened = seal(URL_TEXT, passphrase)
    salt = opened.split(":")[3]
    secret_module._SEAL_SALTS.clear()  # as in a new process
    assert unseal(opened, passphrase) == URL_TEXT
    assert seal("another URL", passphrase).split(":")[3] == salt


def test_encrypt_and_decrypt_keep_their_old_names() -> None:
    from storekeeper.secret import decrypt, encrypt

    assert seal is encrypt and unseal is decrypt
    assert decrypt(encrypt(URL_TEXT, FERNET_KEY), FERNET_KEY) == URL_TEXT
