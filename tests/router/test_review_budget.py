"""Review of issue 14's quota holds against a real Redis (ATP-BUDGET-014/017): an
admission whose script ran but whose answer was lost (the link failed on the way back)
must not leave the stream counted, or a tenant's concurrent limit shrinks for as long as
the router lives (its own admissions never reap its counters)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from atp_proto.frames import ATPError, BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisError, RedisLink
from atp_proto.router.shared.redis_quota import PROBE_S, RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _lose_the_next_answer(store: RedisQuotaStore) -> None:
    """The next call runs on Redis, then its answer is lost (a RedisError on the way back)."""
    real = store.link.call

    async def call(fn: Callable[[], Any]) -> Any:
        store.link.call = real  # type: ignore[method-assign]
        await real(fn)
        raise RedisError("connection reset while reading the answer")

    store.link.call = call  # type: ignore[method-assign]


@pytest.mark.parametrize("budgeted", [False, True])
async def test_an_admission_whose_answer_was_lost_is_not_counted(
    redis_server: RedisServer, budgeted: bool
) -> None:
    """ATP-BUDGET-014: one router, concurrent limit 1. The first admission ran in Redis
    but the router saw an error and refused the stream (EAGENTDOWN): nothing runs, so once
    the writer has caught up the next stream is admitted (and, budgeted, no hold is left)."""
    store = RedisQuotaStore(RedisLink(redis_server.url, prefix=f"r{secrets.token_hex(3)}:"))
    q = TenantQuota(concurrent=1, tokens=100 if budgeted else None)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        _lose_the_next_answer(store)
        with pytest.raises(ATPError):
            await store.admit("t", q, 3600)
        ckey, hkey = store._keys("t")[2:4]
        assert store.link.client.hget(ckey, store.link.router_id) == b"1"  # the script ran
        await trio.sleep(PROBE_S + 0.1)
        await store.settle()
        grant = await store.admit("t", q, 3600)  # refused (concurrent limit) before the fix
        assert store.link.client.hget(ckey, store.link.router_id) == b"1"
        held = {k.decode() for k in store.link.client.hkeys(hkey)}
        assert held == ({grant.hold} if budgeted else set())
        store.release("t", q, grant.hold)
        await store.settle()
        assert store.link.client.hget(ckey, store.link.router_id) is None
        nursery.cancel_scope.cancel()


async def test_a_stop_writes_the_holds_of_the_streams_it_cancels(
    redis_server: RedisServer,
) -> None:
    """ATP-BUDGET-017: a router stopping cancels its streams and its writer at once. A
    stream that unwinds after the writer (its own shielded cleanup, such as closing the
    adapter's call, takes a moment) still has its hold deleted in Redis: else the hold
    outlives the router and the other routers charge it once the lease lapses, for a
    stream that had settled (its usage is written too)."""
    store = RedisQuotaStore(RedisLink(redis_server.url, prefix=f"r{secrets.token_hex(3)}:"))
    q = TenantQuota(tokens=100)
    hkey = store._keys("t")[3]

    async def stream(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        grant = await store.admit("t", q, 3600)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)  # the stream's own cleanup
            store.charge("t", 7, 0, 3600, grant.hold)
            store.release("t", q, grant.hold)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await nursery.start(stream)
        assert len(store.link.client.hkeys(hkey)) == 1
        nursery.cancel_scope.cancel()
    assert store.link.client.hkeys(hkey) == []  # left in Redis before the fix
    other = RedisQuotaStore(RedisLink(redis_server.url, prefix=store.link.prefix))
    assert (await other.admit("t", TenantQuota(tokens=100), 3600)).tokens_left == 93


async def test_holds_charged_by_a_renewal_leave_the_period_key_expiring(
    redis_server: RedisServer,
) -> None:
    """ATP-BUDGET-017: router A dies holding a stream's share before the tenant spent
    anything this period; router B, with a stream of its own open, reaps A's hold in the
    write that renews its lease (no usage of its own). The period's counters it creates
    expire like every period's, instead of staying in Redis for ever."""
    prefix = f"r{secrets.token_hex(3)}:"
    a, b = (RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix), lease_ms=600) for _ in "ab")
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            await a.admit("t", q, 60)
            router_a.cancel_scope.cancel()  # A dies with its stream's hold
        await b.admit("t", q, 60, BudgetWindow(max_tokens=1))  # A still live: nothing reaped
        await nursery.start(b.run)
        bpattern = b._keys("t")[0] + ":*"
        with trio.fail_after(5):
            while not b.link.client.keys(bpattern):  # B's renewal reaps A's hold
                await trio.sleep(0.1)
        (bkey,) = b.link.client.keys(bpattern)
        assert int(b.link.client.hget(bkey, "t")) == 100
        assert 0 < b.link.client.ttl(bkey) <= 120  # -1 (no expiry) before the fix
        nursery.cancel_scope.cancel()
