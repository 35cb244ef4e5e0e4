"""Routers whose clocks disagree share one tenant budget through a real Redis: periods are
numbered by Redis's clock on both sides (ATP-BUDGET-016 / 017).

Router B runs under libfaketime (Debian's ``faketime``, installed by the fixture when
missing) one whole period ahead (``FAKETIME=+3600s``; the monotonic clock, which trio
runs on, is left alone): before, B numbered the period by its own clock, found the
totals Redis had answered to be of another period, and let streams open at once each
spend the whole remainder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.client import StreamError
from atp_proto.testing.processes import RouterProcess, clean_env
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

from ._helpers_e2e import ROOT
from .test_review14_quota import QUOTAS, SECRET, _ask, _used
from .test_review14_quota import slow_adapter as slow_adapter  # noqa: PLC0414 (the fixture)

_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime")


def _libfaketime() -> str | None:
    for d in _LIBS:
        lib = Path(d) / "libfaketime.so.1"
        if lib.exists():
            return str(lib)
    return None


@pytest.fixture(scope="module")
def libfaketime() -> str:
    lib = _libfaketime()
    if lib is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "faketime"]):
            subprocess.run(cmd, check=False, capture_output=True, env=env, timeout=600)
        lib = _libfaketime()
    if lib is None:
        pytest.skip("libfaketime is missing and cannot be installed (apt-get install faketime)")
    return lib


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def test_a_router_an_hour_ahead_shares_the_budget_by_redis_clock(
    redis_server: RedisServer, slow_adapter: str, libfaketime: str
) -> None:
    """[ATP-BUDGET-013] [ATP-BUDGET-016] Eight streams of a 60-token tenant opened together on a router
    whose clock is a period (an hour) ahead of Redis's: it still cuts them short once the tenant's total passes the quota (EBUDGET naming it), so
    Redis counts no more than the quota plus a chunk per stream and a write's lag."""
    skewed = clean_env(
        {
            "ATP_JWT_KEY": SECRET,
            "LD_PRELOAD": libfaketime,
            "FAKETIME": "+3600s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
    router = RouterProcess(
        "--redis",
        redis_server.url,
        adapters={"slow": slow_adapter},
        config_toml=QUOTAS,
        env=skewed,
        cwd=ROOT,
    )
    try:
        results: list[Any] = []

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(8):

                    async def one() -> None:
                        results.append(await _ask(router, "share"))

                    nursery.start_soon(one)

        trio.run(run)
    finally:
        router.stop()
    cut = [r for r in results if isinstance(r, StreamError)]
    used = _used(redis_server, "share")
    assert cut and {r.code for r in cut} == {"EBUDGET"}, results
    assert all("tenant quota exhausted" in r.message for r in cut)
    assert used <= 60 + 8 * 12, used
