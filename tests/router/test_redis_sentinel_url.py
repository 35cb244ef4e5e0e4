"""``--redis redis+sentinel://...``: the URL's forms, what is refused at start (exit 2 for
``atp serve``), and the password kept out of logs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atp_proto.router.config import ConfigError, build_config
from atp_proto.router.shared.link import RedisLink, redacted
from atp_proto.router.shared.urls import SentinelURL, parse_sentinel

from ._helpers_e2e import ROOT


def test_sentinel_url_forms() -> None:
    assert parse_sentinel("redis+sentinel://10.0.0.1:26379/main") == SentinelURL(
        (("10.0.0.1", 26379),), "main"
    )
    got = parse_sentinel(
        "rediss+sentinel://app:p%40ss@s1:26379,s2:26380,[::1]:26381/main?db=3&replicas=2&wait_ms=20"
    )
    assert got.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (got.master, got.db, got.username, got.password) == ("main", 3, "app", "p@ss")
    assert (got.ssl, got.replicas, got.wait_ms) == (True, 2, 20)
    assert parse_sentinel("redis+sentinel://h:1/m?replicas=0").replicas == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:1", "names the master"),
        ("redis+sentinel://h:1/", "names the master"),
        ("redis+sentinel://h/m", "HOST:PORT"),
        ("redis+sentinel://h:1,/m", "HOST:PORT"),
        ("redis+sentinel://h:99999/m", "HOST:PORT"),
        ("redis+sentinel://h:1/m?db=x", "DB must be a number"),
        ("redis+sentinel://h:1/m?replicas=-1", "whole numbers"),
        ("redis+sentinel://h:1/m?wait_ms=0", "whole numbers"),
        ("redis+sentinel://h:1/m?password=x", "unknown option"),
        ("redis+sentinel://h:1/m/2", "names the master"),
    ],
)
def test_bad_sentinel_urls_are_refused_at_start(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as exc:
        build_config(file=None, env={}, flags={"redis_url": url.replace("h:1", "u:sekrit@h:1")})
    assert "sekrit" not in str(exc.value)


def test_a_good_sentinel_url_is_taken() -> None:
    url = "redis+sentinel://s1:26379,s2:26379/main?db=1"
    assert build_config(file=None, env={}, flags={"redis_url": url}).redis_url == url


def test_the_password_never_reaches_a_log() -> None:
    url = "redis+sentinel://app:sekrit@s1:26379,s2:26379/main"
    assert redacted(url) == "redis+sentinel://app:***@s1:26379,s2:26379/main"
    assert redacted("redis+sentinel://s1:26379/main") == "redis+sentinel://s1:26379/main"
    link = RedisLink(url)  # connects lazily: made without a sentinel answering
    assert link.sentinel and link.replicas == 1 and link.wait_ms == 50
    assert RedisLink("redis://127.0.0.1:1/0").replicas == 0


def test_atp_serve_exits_2_on_a_bad_sentinel_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atp_proto", "serve", "--redis", "redis+sentinel://u:sekrit@h/m"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "HOST:PORT" in done.stderr and "sekrit" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_in_the_urls_query_is_redacted() -> None:
    """The client reads a password from ``?password=`` too: logs show neither it nor the
    user part's; the rest of the URL is kept as written."""
    cases = {
        "redis://127.0.0.1:6379/0?password=s3cret": "redis://127.0.0.1:6379/0?password=***",
        "unix:///run/redis.sock?db=1&password=s3cret": "unix:///run/redis.sock?db=1&password=***",
        "redis://u:s3cret@[::1]:6379/2": "redis://u:***@[::1]:6379/2",
        "redis+sentinel://:s3cret@a:1,b:2/m?db=1": "redis+sentinel://:***@a:1,b:2/m?db=1",
        "redis://h:1/0?socket_timeout=1": "redis://h:1/0?socket_timeout=1",
    }
    for url, want in cases.items():
        assert redacted(url) == want


def test_the_sentinels_own_password_is_taken_and_redacted() -> None:
    url = "redis+sentinel://s1:26379/main?sentinel_username=watch&sentinel_password=s%40nt"
    got = parse_sentinel(url)
    assert (got.sentinel_username, got.sentinel_password) == ("watch", "s@nt")
    assert (got.username, got.password) == (None, None)  # the master's stay apart
    assert got.min_other_sentinels == 0
    assert parse_sentinel("redis+sentinel://h:1/m?min_other_sentinels=2").min_other_sentinels == 2
    with pytest.raises(ValueError, match="min_other_sentinels"):
        parse_sentinel("redis+sentinel://h:1/m?min_other_sentinels=x")
    assert redacted(url) == (
        "redis+sentinel://s1:26379/main?sentinel_username=watch&sentinel_password=***"
    )


def test_a_sentinel_username_without_its_password_is_a_usage_error() -> None:
    """(Session 7 review.) The username alone was dropped without a word, and the
    sentinels asked with none; and no password shows in the parsed URL's repr (a log of
    the configuration must not carry it)."""
    with pytest.raises(ValueError, match="sentinel_username needs a sentinel_password"):
        parse_sentinel("redis+sentinel://h:1/m?sentinel_username=watch")
    got = parse_sentinel("redis+sentinel://:m4ster@h:1/m?sentinel_password=s3nt")
    assert got.password == "m4ster" and got.sentinel_password == "s3nt"
    assert "m4ster" not in repr(got) and "s3nt" not in repr(got)
