"""Tenant quotas through Redis Sentinel: ``atp serve --redis redis+sentinel://HOST:PORT/NAME``
(issue 14, shared state that stays available).

Each test runs a real master, a real replica and a real Sentinel watching them
(``redis-server --sentinel``, atp_proto.testing.redis_server.RedisSentinelSet), two real
router processes given the Sentinel's URL, and real gRPC persona adapter processes. Then
the master goes: ``SENTINEL FAILOVER`` (the old master keeps running and, for seconds,
taking writes: a split brain a client must not write into), or SIGKILL. What is checked:
the budget is counted in the new master exactly as the FINALs reported (no stream lost,
none counted twice), streams refused meanwhile are EAGENTDOWN with ``retry_after_ms``
(fail closed, ATP-BUDGET-015; never run unlimited), and the quota still holds afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import trio

from atp_proto.client import StreamError
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import TRUST_S, RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.processes import RouterProcess, clean_env
from atp_proto.testing.redis_server import RedisSentinelSet, RedisUnavailable

from ._helpers_e2e import ROOT
from .test_e2e_redis import SECRET, _ask
from .test_e2e_redis import adapters as adapters  # noqa: PLC0414 (the fixture, by its name)

QUOTAS = """
[quota]
period_s = 3600
[quota.tenants.flow]
tokens = 1000000
[quota.tenants.capped]
tokens = 400
"""


@pytest.fixture
def sentinel() -> Iterator[RedisSentinelSet]:
    """A fresh master + replica + Sentinel per test (a failover changes who is who)."""
    try:
        s = RedisSentinelSet()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with s:
        yield s


@pytest.fixture
def routers(sentinel: RedisSentinelSet, adapters: dict[str, str]) -> Iterator[list[RouterProcess]]:
    env = clean_env({"ATP_JWT_KEY": SECRET})

    def start(_: int) -> RouterProcess:
        return RouterProcess(
            "--redis", sentinel.url, adapters=adapters, config_toml=QUOTAS, env=env, cwd=ROOT
        )

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(start, range(2)))
    try:
        yield procs
    finally:
        for r in procs:
            r.stop()


def _used(port: int, tenant: str) -> int:
    """The tenant's tokens this period, read from the server on ``port``."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return sum(
            int(client.hget(k, "t") or 0) for k in client.scan_iter(f"atp:q:{{{tenant}}}:b:*")
        )
    finally:
        client.close()


def _during(routers: list[RouterProcess], tenant: str, switch: Any, after_s: float) -> list[Any]:
    """Streams of ``tenant`` one after another on each router, while ``switch()`` runs on
    a thread and for ``after_s`` seconds after it returned; every result in order."""
    results: list[Any] = []

    async def run() -> None:
        done = trio.Event()

        async def client(router: RouterProcess) -> None:
            while not done.is_set():
                results.append(await _ask(router, tenant))
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for r in routers:
                nursery.start_soon(client, r)
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(switch)
            await trio.sleep(after_s)
            done.set()

    trio.run(run)
    return results


def _check(results: list[Any]) -> int:
    """Every stream got its FINAL or was refused for the store (fail closed); returns the
    tokens the FINALs reported."""
    refused = [r for r in results if isinstance(r, StreamError)]
    for r in refused:
        assert r.code == "EAGENTDOWN", r
        assert r.retry_after_ms and "quota store (Redis) is unreachable" in r.message
    served = [r for r in results if isinstance(r, dict)]
    assert len(served) + len(refused) == len(results)
    return sum(r["tokens"] for r in served)


def _settled(port: int, tenant: str, want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (got := _used(port, tenant)) != want and time.monotonic() < deadline:
        time.sleep(0.2)  # a write refused during the switch is sent again (backoff <= 2 s)
    return got


def test_budget_counted_exactly_across_a_sentinel_failover(
    sentinel: RedisSentinelSet, routers: list[RouterProcess]
) -> None:
    """[ATP-BUDGET-013] [ATP-BUDGET-015] Two routers stream a tenant's budget without a
    pause while the Sentinel fails the master over to the replica (the old one keeps
    answering writes until the Sentinel demotes it). The new master holds exactly the
    tokens the FINALs reported — none lost in the old master, none counted twice —
    streams refused during the switch are EAGENTDOWN with retry_after_ms, and streams
    are served again after it, by both routers, without a restart."""
    old = sentinel.master_port()
    new: list[int] = []
    results = _during(routers, "flow", lambda: new.append(sentinel.failover()), after_s=3.0)
    assert new and new[0] != old
    spent = _check(results)
    assert sum(isinstance(r, dict) for r in results[-6:]) >= 4, results[-6:]  # served again
    assert _settled(new[0], "flow", spent) == spent
    assert all(r.proc.poll() is None for r in routers)


def test_quota_holds_across_a_sentinel_failover(
    sentinel: RedisSentinelSet, routers: list[RouterProcess]
) -> None:
    """[ATP-BUDGET-013] A 400-token tenant spends part of its budget, the master fails
    over, and the two routers go on from what the new master holds: together they never
    serve past 400, once refused with EBUDGET they serve no more, and the new master's
    count is what the FINALs said."""

    async def some(n: int) -> list[Any]:
        return [await _ask(routers[i % 2], "capped") for i in range(n)]

    before = trio.run(some, 3)
    assert all(isinstance(r, dict) for r in before), before
    new = sentinel.failover()
    deadline = time.monotonic() + 10
    after: list[Any] = []
    while time.monotonic() < deadline:
        (r,) = trio.run(some, 1)
        after.append(r)
        if isinstance(r, StreamError) and r.code == "EBUDGET":
            break
    tail = trio.run(some, 4)
    served = [r["tokens"] for r in before + after if isinstance(r, dict)]
    assert isinstance(after[-1], StreamError) and after[-1].code == "EBUDGET", after
    # refused from then on: EBUDGET, or EAGENTDOWN from a router that found the old
    # master gone a moment ago (it asks Redis again after PROBE_S), never served
    assert all(isinstance(r, StreamError) for r in tail), tail
    assert {r.code for r in tail} <= {"EBUDGET", "EAGENTDOWN"} and "EBUDGET" in {
        r.code for r in tail
    }
    assert 400 - 2 * max(served) < sum(served) <= 400
    assert _settled(new, "capped", sum(served)) == sum(served)


def test_budget_counted_exactly_when_the_master_dies(
    sentinel: RedisSentinelSet, routers: list[RouterProcess]
) -> None:
    """[ATP-BUDGET-015] The master is SIGKILLed mid-run: streams are refused with
    EAGENTDOWN (fail closed) until the Sentinel has promoted the replica (about a second
    to notice, then the failover), then served again; the new master holds exactly the
    tokens of every FINAL, those of the streams before the kill included (each write
    counted only once a replica had it)."""
    old = sentinel.master_port()

    def kill() -> None:
        proc = sentinel.server(old).proc
        assert proc is not None
        proc.kill()
        proc.wait(5)
        deadline = time.monotonic() + 30
        while sentinel.master_port() == old:
            if time.monotonic() > deadline:
                raise AssertionError("the Sentinel promoted no replica")
            time.sleep(0.1)

    results = _during(routers, "flow", kill, after_s=3.0)
    new = sentinel.master_port()
    spent = _check(results)
    assert any(isinstance(r, StreamError) for r in results)  # the dead master was noticed
    assert sum(isinstance(r, dict) for r in results[-6:]) >= 4, results[-6:]
    assert _settled(new, "flow", spent) == spent
    assert all(r.proc.poll() is None for r in routers)


class _CountsSentinelQuestions(RedisLink):
    """A Sentinel link that counts how often it asks the sentinels whether its server is
    still the master (the real question, asked of the real Sentinel)."""

    asked = 0

    def _the_master(self, address: tuple[str, int]) -> bool:
        self.asked += 1
        return super()._the_master(address)


async def test_a_master_without_its_replica_is_asked_about_once_a_second() -> None:
    """[ATP-BUDGET-013] A Sentinel's master whose one replica is down: 30 admissions and
    their usage go on being stored and counted, and the sentinels are asked whether the
    server is still the master (after a WAIT that timed out) about once a second, not
    once per write (before: every admission and flush waited wait_ms and asked)."""
    try:
        sentinel = RedisSentinelSet()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with sentinel:
        master = sentinel.master_port()
        replica = next(s for s in sentinel.servers if s.port != master)
        await trio.to_thread.run_sync(replica.stop)
        link = _CountsSentinelQuestions(sentinel.url)
        store = RedisQuotaStore(link)
        q = TenantQuota(tokens=10_000)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            started = trio.current_time()
            for _ in range(30):
                g = await store.admit("short", q, 3600)
                store.charge("short", 3, 0, 3600, g.hold)
                store.release("short", q, g.hold)
                await store.settle()
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert store.up
        assert _used(master, "short") == 90
        assert 1 <= link.asked <= 2 + elapsed / TRUST_S, (link.asked, elapsed)
        link.close()
