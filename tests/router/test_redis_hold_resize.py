"""A stream's hold shrinks to its preflight's guard-banded estimate (ATP-BUDGET-017).

The store against a real Redis, the sizer's rule in process, and router processes in
front of real gRPC persona adapters: a router killed with streams in flight is charged
what those streams were estimated to spend, not the tenant's whole remainder each, so
the tenant's other streams are not refused for budget that would never have been spent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from atp_proto.client import StreamError, connect
from atp_proto.router.quota import HoldSizer, TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.http import http_get, metric_value
from atp_proto.testing.processes import RouterProcess, clean_env
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

from ._helpers_e2e import ROOT
from .test_e2e_redis import SECRET, _token
from .test_e2e_redis import adapters as adapters  # noqa: PLC0414 (the fixture, by its name)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _holds(store: RedisQuotaStore, tenant: str) -> dict[str, list[int]]:
    raw = store.link.client.hgetall(store._keys(tenant)[3])
    return {k.decode(): [int(x) for x in v.split()] for k, v in raw.items()}


async def test_a_hold_is_resized_less_what_its_stream_spent(redis_server: RedisServer) -> None:
    """The admitted share (100) lowered to 30, 10 spent (20 left), raised back to the
    share: 100 less the 10 spent. Each write takes the usage off first; the stream's end
    deletes the hold. A hold lowered and charged within one write keeps the share less
    the charge."""
    store = RedisQuotaStore(RedisLink(redis_server.url, prefix=f"z{secrets.token_hex(3)}:"))
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        g = await store.admit("t", q, 3600)
        assert g.hold is not None
        assert _holds(store, "t")[g.hold][:2] == [100, 0]
        store.resize_hold("t", 3600, g.hold, 30, None)
        await store.settle()
        assert _holds(store, "t")[g.hold][:2] == [30, 0]
        store.charge("t", 10, 0, 3600, g.hold)
        await store.settle()
        assert _holds(store, "t")[g.hold][:2] == [20, 0]
        store.resize_hold("t", 3600, g.hold, 100, None)
        await store.settle()
        assert _holds(store, "t")[g.hold][:2] == [90, 0]
        store.release("t", q, g.hold)
        await store.settle()
        assert _holds(store, "t") == {}
        store.resize_hold("t", 3600, g.hold, 5, None)  # after the end: nothing to resize
        assert store.pending == 0
        # lowered and charged before the writer runs (one write): 30 less the 10
        g2 = await store.admit("t", q, 3600)
        assert g2.hold is not None
        store.resize_hold("t", 3600, g2.hold, 30, None)
        store.charge("t", 10, 0, 3600, g2.hold)
        await store.settle()
        assert _holds(store, "t")[g2.hold][:2] == [20, 0]
        store.release("t", q, g2.hold)
        await store.settle()
        nursery.cancel_scope.cancel()


class _Resizes:
    """Records resize_hold calls (the sizer's rule, without Redis)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, int | None]] = []

    def resize_hold(
        self, tenant: str, period: int, hold: str, t: int | None, u: int | None
    ) -> None:
        self.calls.append((t, u))


def test_the_sizer_lowers_once_and_raises_back_when_outspent() -> None:
    """Lowered to the estimate rounded up (never above the share); usage up to it keeps
    the lowered hold; the charge that passes it raises the hold back to the share, once.
    An estimate that needs the whole share lowers nothing."""
    store = _Resizes()
    sizer = HoldSizer(store, "t", 3600, "r/1", (500, None))
    sizer.planned(42.3, 80.0)
    assert store.calls == [(43, None)]
    sizer.charged(43, 90)
    assert store.calls == [(43, None)]
    sizer.charged(44, 95)
    sizer.charged(60, 99)
    assert store.calls == [(43, None), (500, None)]
    whole = _Resizes()
    HoldSizer(whole, "t", 3600, "r/2", (40, 1000)).planned(41.0, 2000.0)
    assert whole.calls == []
    money = _Resizes()
    HoldSizer(money, "t", 3600, "r/3", (None, 1000)).planned(41.0, 99.5)
    assert money.calls == [(None, 100)]


QUOTAS = """
[quota]
period_s = 3600
[quota.tenants.spare]
tokens = 300
"""


async def _metric(router: RouterProcess, change: str) -> float | None:
    assert router.metrics_port is not None
    _, text = await http_get(router.metrics_port, "/metrics")
    return metric_value(text, "atp_quota_holds_resized_total", change=change)


def test_a_killed_routers_streams_are_charged_their_estimates(
    redis_server: RedisServer, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-017] A 300-token tenant; router A runs three streams without a client
    window (each admitted with the whole remainder), SIGKILLed once each had its first
    chunk. Their holds had been lowered to the preflight's guard-banded estimate
    (atp_quota_holds_resized_total{change="lowered"} = 3), so once A's lease lapsed,
    router B charges each stream the larger of what it wrote and its estimate — what
    Redis held, exactly — and B still admits the tenant's next stream with what is left.
    Before, each hold was the whole 300: the tenant was charged its quota and refused
    with EBUDGET for budget those streams would never have spent."""
    env = clean_env({"ATP_JWT_KEY": SECRET})
    a, b = (
        RouterProcess(
            "--redis", redis_server.url, adapters=adapters, config_toml=QUOTAS, env=env, cwd=ROOT
        )
        for _ in range(2)
    )
    probe = RedisQuotaStore(RedisLink(redis_server.url, prefix="atp:"))
    try:
        lowered: list[Any] = []

        async def kill_mid_flight() -> None:
            started = [trio.Event() for _ in range(3)]

            async def one(i: int) -> None:
                async with connect(a.ws_url, token=_token("spare")) as client:
                    try:
                        async with client.stream(
                            "how many tokens", meta={"adapters": ["slow"]}
                        ) as st:
                            async for _ in st:
                                started[i].set()
                    except StreamError:
                        pass  # the router died under the stream

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
                with trio.fail_after(20):
                    for ev in started:
                        await ev.wait()
                lowered.append(await _metric(a, "lowered"))
                a.kill()
                a.wait(5)

        trio.run(kill_mid_flight)
        assert lowered == [3.0]
        written = sum(
            int(probe.link.client.hget(k, "t") or 0)
            for k in probe.link.client.scan_iter("atp:q:{spare}:b:*")
        )
        holds = _holds(probe, "spare")
        assert len(holds) == 3
        left = sum(h[0] for h in holds.values())
        assert 0 < written + left < 300  # each an estimate (~43), not the remainder
        time.sleep(5.5)  # A's lease (5 s) lapses

        async def next_stream() -> Any:
            async with connect(b.ws_url, token=_token("spare")) as client:
                try:
                    return (await client.ask("how many", meta={"adapters": ["persona"]})).telemetry
                except StreamError as exc:
                    return exc

        after = trio.run(next_stream)
        assert isinstance(after, dict), after
        used = sum(
            int(probe.link.client.hget(k, "t") or 0)
            for k in probe.link.client.scan_iter("atp:q:{spare}:b:*")
        )
        assert used == written + left + after["tokens"]
        assert _holds(probe, "spare") == {}
    finally:
        probe.link.close()
        for r in (a, b):
            r.stop()
