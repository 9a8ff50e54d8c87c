"""Service URLs as users type them: every malformed one is bad input that names what is wrong.

``parse_service_url`` is fed generated URLs of every shape (hypothesis): it returns a URL
storekeeper can use, or raises :class:`BadInput`; nothing else. A few real ``storekeeper
service add`` processes show the same on the command line (exit 2, never "unexpected").
"""

from __future__ import annotations

import json
import os
import string
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import CLI
from storekeeper.backends import Service, backend_for, parse_service_url
from storekeeper.errors import BadInput

ROOT = Path("/srv/project")

# Parts of URLs: mostly plain, often with the characters that make URLs go wrong
# (separators, brackets, escapes, spaces), sometimes any text but control characters, which
# ``service_urls`` adds on their own now and then.
plain = st.text(alphabet=string.ascii_lowercase + string.digits + "_-.", min_size=1, max_size=10)
tricky = st.text(alphabet=":/@?#[]%+ =&\\~é", max_size=6)
printable = st.text(st.characters(exclude_categories=["Cc"]), max_size=8)
pieces = st.one_of(plain, plain, st.tuples(plain, tricky, plain).map("".join), printable)

schemes = st.one_of(
    st.sampled_from(["postgresql", "postgresql+psycopg", "postgres", "sqlite"]),
    st.sampled_from(
        [
            "postgresql+psycopg2",
            "postgresql+asyncpg",
            "postgresql+",
            "+psycopg",
            "PostgreSQL",
            "sqlite+pysqlite",
            "mysql",
            "",
            "1pg",
            "post gres",
        ]
    ),
    pieces,
)
separators = st.one_of(st.just("://"), st.sampled_from([":///", ":/", "//", ":", ""]))
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "db.example", "[::1]", "[fe80::1%eth0]", ""]),
    st.sampled_from(["[::1", "::1]", "::1", "[nothex]", "h ost", "ho/st", "例え.jp"]),
    pieces,
)
ports = st.one_of(
    st.sampled_from(["5432", "65535", "", "0", "65536", "99999", "-1", "notaport", "54 32"]),
    st.integers(-(10**6), 10**6).map(str),
    pieces,
)


@st.composite
def service_urls(draw: st.DrawFn) -> str:
    """A URL-shaped string: scheme, user and password, host, port, path, query."""
    url = draw(schemes) + draw(separators)
    if draw(st.booleans()):
        url += draw(pieces)
        if draw(st.booleans()):
            url += ":" + draw(pieces)
        url += "@"
    url += draw(hosts)
    if draw(st.booleans()):
        url += ":" + draw(ports)
    if draw(st.booleans()):
        url += "/" + draw(pieces)
    if draw(st.booleans()):
        url += "?" + draw(pieces)
    if draw(st.integers(0, 9)) == 5:  # now and then (0 and 9 come up more often)
        at = draw(st.integers(0, len(url)))
        url = url[:at] + draw(st.characters(categories=["Cc"])) + url[at:]
    return url


def usable(text: str) -> None:
    """Parse ``text`` as ``service add`` does; accepted URLs must work where URLs are used."""
    try:
        url = parse_service_url(text, ROOT, what="URL of service 'x'")
    except BadInput as exc:
        assert str(exc).startswith("URL of service 'x'"), str(exc)
        return
    assert url.get_backend_name() in ("postgresql", "sqlite")
    assert url.port is None or 1 <= url.port <= 65535
    service = Service("x", url)
    backend_for(service)
    assert service.display_url
    rendered = url.render_as_string(hide_password=False)
    assert not any(ord(c) < 32 or ord(c) == 127 for c in rendered), rendered
    rendered.encode("utf-8")
    if url.get_backend_name() == "sqlite":
        assert Path(str(url.database)).is_absolute()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service_urls())
@example("postgresql+psycopg://u@127.0.0.1:notaport/x")
@example("postgresql://u@[::1:5432/x")
@example("postgresql://u@h:99999/x")
@example("postgresql://u@h:0/x")
@example("postgresql://u:p@h:/x")
@example("postgresql://u@h:5432:77/x")
@example("postgresql://u@h\x00st/x")
@example("sqlite:///stores\x00")
@example("sqlite:///~nosuchuser_for_storekeeper/stores")
@example("postgresql://u@h\udcff/x")
def test_a_generated_url_is_usable_or_bad_input(text: str) -> None:
    usable(text)


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_any_text_is_usable_or_bad_input(text: str) -> None:
    usable(text)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql+psycopg://u@127.0.0.1:notaport/x", "port 'notaport'"),
        ("postgresql://u:pw@db.example:99999/x", "port 99999"),
        ("postgresql://u@db.example:0", "port 0"),
        ("postgresql://u@db.example:/x", "port ''"),
        ("postgresql://u@[::1:5432/x", "'['"),
        ("sqlite:///~nosuchuser_for_storekeeper/stores", "'~nosuchuser_for_storekeeper'"),
        ("postgresql://u@db\x00/x", "'\\x00'"),
    ],
)
def test_a_malformed_url_names_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_service_url(url, ROOT, what="URL of service 'x'")
    assert named in str(info.value)
    assert "pw" not in str(info.value)


def test_service_add_of_a_malformed_url_exits_2_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREKEEPER_")}
    for url, named in [
        ("postgresql+psycopg://u@127.0.0.1:notaport/x", b"port 'notaport'"),
        ("postgresql://u:s3cretpw@[::1/x", b"host '['"),
        (b"postgresql://u@db.example\xff/x", b"not valid UTF-8"),  # as a shell passes it
    ]:
        result = subprocess.run(
            [*CLI, "service", "add", "x", url], cwd=tmp_path, env=env, capture_output=True
        )
        assert result.returncode == 2, result.stderr
        assert named in result.stderr
        assert b"unexpected" not in result.stderr and b"Traceback" not in result.stderr
        assert b"s3cretpw" not in result.stdout + result.stderr
    listed = subprocess.run(
        [*CLI, "service", "list", "--json"], cwd=tmp_path, env=env, capture_output=True
    )
    assert listed.returncode == 0, listed.stderr
    assert [s["name"] for s in json.loads(listed.stdout)] == ["local"]  # nothing was added
