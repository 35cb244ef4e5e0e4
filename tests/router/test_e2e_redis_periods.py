"""A router killed with a stream in flight near the end of a period, its hold reaped by
another router periods later: the hold is charged to the period the stream was admitted
in, not to the one the reaper runs in (ATP-BUDGET-017). Real router processes, real gRPC
persona adapters, a real Redis; the periods are Redis's (4 s here)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from atp_proto.frames import BudgetWindow
from atp_proto.testing.processes import RouterProcess, clean_env
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

from ._helpers_e2e import ROOT
from .test_e2e_redis import SECRET, _kill_mid_flight, _sequential
from .test_e2e_redis import adapters as adapters  # noqa: PLC0414 (the fixture, by its name)

PERIOD = 4  #: shorter than A's lease (5 s), longer than half the budget keys' life (2 periods)
QUOTAS = f"""
[quota]
period_s = {PERIOD}
[quota.tenants.inflight]
tokens = 400
"""


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _by_window(server: RedisServer, tenant: str) -> dict[int, int]:
    client = redis.Redis.from_url(server.url)
    try:
        return {
            int(k.rsplit(b":", 1)[1]): int(client.hget(k, "t") or 0)
            for k in client.scan_iter(f"atp:q:{{{tenant}}}:b:*")
        }
    finally:
        client.close()


def _holds(server: RedisServer, tenant: str) -> list[list[int]]:
    client = redis.Redis.from_url(server.url)
    try:
        return [
            [int(x) for x in v.split()] for v in client.hgetall(f"atp:q:{{{tenant}}}:h").values()
        ]
    finally:
        client.close()


def test_a_killed_routers_hold_is_charged_to_its_own_period(
    redis_server: RedisServer, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-017] Router A is SIGKILLed with two streams of a 400-token tenant in
    flight (200-token client windows), in Redis's period W. Router B's first stream of
    the tenant after A's lease lapsed (5 s: periods later) reaps A's holds into W — W then
    counts what A's streams wrote and what their holds still held, exactly — while B's
    own period gains its stream's usage alone. Before, the holds were charged into B's
    period."""
    env = clean_env({"ATP_JWT_KEY": SECRET})

    def router() -> RouterProcess:
        return RouterProcess(
            "--redis", redis_server.url, adapters=adapters, config_toml=QUOTAS, env=env, cwd=ROOT
        )

    a, b = router(), router()
    try:
        _kill_mid_flight(a, [("inflight", BudgetWindow(max_tokens=200))] * 2)
        holds = _holds(redis_server, "inflight")
        assert len(holds) == 2
        windows = {h[4] for h in holds}  # the period each was taken in (Redis's clock)
        assert len(windows) == 1
        (w,) = windows
        before = _by_window(redis_server, "inflight")
        held = sum(h[0] for h in holds)
        time.sleep(5.5)  # A's lease lapses, and the period W is long over
        (after,) = _sequential([b], "inflight", 1)
        assert isinstance(after, dict), after
        now = _by_window(redis_server, "inflight")
        added = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        wb = max(now)  # B's period (A's streams may have written into W+1 too)
        assert wb > w
        assert added == {w: held, wb: after["tokens"]}
        # (what A's streams wrote before the kill may be 0: A flushes usage in batches, and
        # the kill comes at their first chunk; the holds are what the test is about)
        assert held > 0 and _holds(redis_server, "inflight") == []
    finally:
        for r in (a, b):
            r.stop()
