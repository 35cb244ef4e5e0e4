"""Holds and leases of the shared quota store against a real Redis (ATP-BUDGET-017):
what a router that dies with streams in flight is charged, and what is not counted while
it lives. The router processes' version (SIGKILL) is in test_e2e_redis.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import trio

from atp_proto.frames import ATPError, BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer, RedisUnavailable
from tests.router._redis import redis_or_skip

LEASE_MS = 600


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _pair(url: str) -> tuple[RedisQuotaStore, RedisQuotaStore]:
    prefix = f"h{secrets.token_hex(3)}:"
    return (
        RedisQuotaStore(RedisLink(url, prefix=prefix), lease_ms=LEASE_MS),
        RedisQuotaStore(RedisLink(url, prefix=prefix), lease_ms=LEASE_MS),
    )


def _holds(store: RedisQuotaStore, tenant: str) -> dict[str, str]:
    key = store._keys(tenant)[3]
    raw = store.link.client.hgetall(key)
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_a_hold_is_the_admitted_share_settled_as_usage_arrives(
    redis_server: RedisServer,
) -> None:
    """The hold is what is left of the budget, or the client's window when smaller; a
    write takes the usage off it; the stream's end deletes it. A live router's holds do
    not count against the tenant: another router still admits with the whole remainder
    less what was spent (streams share the remainder, ATP-BUDGET-016)."""
    a, b = _pair(redis_server.url)
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        g1 = await a.admit("t", q, 3600, BudgetWindow(max_tokens=30))
        g2 = await a.admit("t", q, 3600)
        assert g1.hold and g2.hold and g1.hold != g2.hold
        # "tokens usd token-limit usd-limit window" (-1: no limit; the period it was
        # taken in, by Redis's clock)
        win = int(a.link.client.time()[0]) // 3600
        assert _holds(a, "t") == {g1.hold: f"30 0 100 -1 {win}", g2.hold: f"100 0 100 -1 {win}"}
        a.charge("t", 12, 0, 3600, g1.hold)
        await a.settle()
        assert _holds(a, "t")[g1.hold] == f"18 0 100 -1 {win}"
        g3 = await b.admit("t", q, 3600)
        assert g3.tokens_left == 88  # A's holds do not count while A lives
        a.release("t", q, g1.hold)
        a.release("t", q, g2.hold)
        await a.settle()
        assert list(_holds(a, "t")) == [g3.hold]
        nursery.cancel_scope.cancel()


async def test_a_dead_routers_holds_are_charged_once_its_lease_lapses(
    redis_server: RedisServer,
) -> None:
    """Router A dies with two streams in flight: one had 10 of its 30-token share written,
    one had 5 charged in the process but never written (A died before its writer ran).
    While A's lease runs, B sees only what was written; once it lapsed, B's next admission
    charges what A's streams had not settled (20 + 30), so the tenant has spent
    10 + 20 + 30 = 60 of 100: the larger of written and held, for each stream; the holds
    and A's lease are gone, and charging happened once."""
    a, b = _pair(redis_server.url)
    q = TenantQuota(tokens=100, concurrent=5)
    cap = BudgetWindow(max_tokens=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            g1 = await a.admit("t", q, 3600, cap)
            a.charge("t", 10, 0, 3600, g1.hold)
            await a.settle()
            router_a.cancel_scope.cancel()  # A's writer is gone...
        g2 = await a.admit("t", q, 3600, cap)
        a.charge("t", 5, 0, 3600, g2.hold)  # ...so this never reaches Redis: A "died"
        assert (await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))).tokens_left == 90
        await trio.sleep(LEASE_MS / 1000 + 0.2)
        grant = await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))
        assert grant.tokens_left == 40
        assert all(h.startswith(b.link.router_id) for h in _holds(b, "t"))
        ckey = b._keys("t")[2]
        fields = {k.decode() for k in b.link.client.hgetall(ckey)}
        # A's lease and counter are gone; its last flush number stays (a retry's while),
        # in a key of its own (not in the counters every script reads whole)
        assert {f for f in fields if a.link.router_id in f} == set()
        assert b.link.client.get(a._seq_key("t")) is not None
        assert (await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))).tokens_left == 40
        nursery.cancel_scope.cancel()


async def test_a_dead_routers_holds_never_charge_past_the_quota(
    redis_server: RedisServer,
) -> None:
    """Four streams without a client window each hold the whole remainder (the first had
    10 written; 90 left each); they shared it (ATP-BUDGET-016), so together they could not
    have spent more: the reaper charges the holds up to the 100-token quota, not
    10 + 4 x 90, and the tenant is refused with EBUDGET until the period ends."""
    a, b = _pair(redis_server.url)
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            g = await a.admit("t", q, 3600)
            a.charge("t", 10, 0, 3600, g.hold)
            await a.settle()
            for _ in range(3):
                await a.admit("t", q, 3600)
            router_a.cancel_scope.cancel()  # A dies
        await trio.sleep(LEASE_MS / 1000 + 0.2)
        with pytest.raises(ATPError) as exc:
            await b.admit("t", q, 3600)
        assert str(exc.value.code) == "EBUDGET"
        (bkey,) = b.link.client.keys(b._keys("t")[0] + ":*")
        assert int(b.link.client.hget(bkey, "t")) == 100
        nursery.cancel_scope.cancel()


async def test_a_router_cut_off_and_back_is_charged_exactly_in_the_end(
    redis_server: RedisServer,
) -> None:
    """Router A alive but cut off from Redis longer than its lease (its writer stopped, as
    while Redis is away): B presumes it dead and charges its 30-token hold (10 written +
    20 held: 30). A comes back and writes 15 more of that stream: covered by the forfeited
    hold, not charged again (30); the stream ends: what the hold charged beyond the
    stream's usage is given back, so the tenant has spent exactly 25."""
    a, b = _pair(redis_server.url)
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            g = await a.admit("t", q, 3600, BudgetWindow(max_tokens=30))
            a.charge("t", 10, 0, 3600, g.hold)
            await a.settle()
            router_a.cancel_scope.cancel()  # cut off: no writes, no renewals
        await trio.sleep(LEASE_MS / 1000 + 0.2)
        assert (await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))).tokens_left == 70
        async with trio.open_nursery() as router_a:  # A is back
            await router_a.start(a.run)
            a.charge("t", 15, 0, 3600, g.hold)
            await a.settle()
            assert a.spent("t", 3600) == (30, 0)
            a.release("t", q, g.hold)
            await a.settle()
            assert a.spent("t", 3600) == (25, 0)
            router_a.cancel_scope.cancel()
        assert (await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))).tokens_left == 75
        nursery.cancel_scope.cancel()


def test_every_key_of_a_script_is_in_the_tenants_cluster_slot(redis_server: RedisServer) -> None:
    """Redis Cluster requires one slot per script: every key the store builds for a
    tenant (and the period windows the scripts derive) hashes to one slot, for awkward
    tenant names too (computed with the redis client's CRC16 slot function)."""
    from redis.crc import key_slot

    store = RedisQuotaStore(RedisLink(redis_server.url, prefix="atp:"))
    for tenant in ("acme", "a:b", "with space", "{braces}", "x}y", "ünï"):
        keys = [*store._keys(tenant), store._keys(tenant)[0] + ":123456"]
        assert len({key_slot(k.encode()) for k in keys}) == 1, (tenant, keys)


async def test_an_idle_store_notices_redis_going_and_coming_back() -> None:
    """With no stream and nothing to write, the store still asks Redis once a second, so
    ``up`` (atp_redis_up{use="quota"}) follows Redis: false after it stopped, true again
    after it restarted, without any admission."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        store = RedisQuotaStore(RedisLink(server.url, timeout_s=0.2))
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await trio.sleep(1.3)
            assert store.up
            await trio.to_thread.run_sync(server.stop)
            with trio.fail_after(5):
                while store.up:
                    await trio.sleep(0.1)
            await trio.to_thread.run_sync(server.restart)
            with trio.fail_after(8):
                while not store.up:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
