"""The one way the Redis tests get their server: a real ``redis-server`` started for the
module (each module keeps its own ``scope="module"`` fixture, which tests/_xdist_scheduling
reads to keep the module on one worker), and the module skipped with the reason when none
can be had (no binary and no apt-get)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atp_proto.testing.redis_server import RedisServer, RedisUnavailable


def redis_or_skip() -> Iterator[RedisServer]:
    """Start a :class:`RedisServer`, yield it, stop it; skip when none can be started."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server
