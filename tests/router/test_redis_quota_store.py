"""The shared quota store (atp_proto.router.shared.redis_quota) against a real Redis:
what two routers' stores decide together, and a dead router's streams."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import trio

from atp_proto.frames import ATPError
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _stores(url: str, lease_ms: int = 5000) -> tuple[RedisQuotaStore, RedisQuotaStore]:
    prefix = f"s{secrets.token_hex(3)}:"
    return RedisQuotaStore(RedisLink(url, prefix=prefix), lease_ms=lease_ms), RedisQuotaStore(
        RedisLink(url, prefix=prefix), lease_ms=lease_ms
    )


async def test_budget_spent_through_two_stores(redis_server: RedisServer) -> None:
    """[ATP-BUDGET-013] Charges from either router count against one budget: spent, both
    refuse with EBUDGET naming the tenant's quota."""
    a, b = _stores(redis_server.url)
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        assert (await a.admit("t", q, 3600)).tokens_left == 100
        a.charge("t", 70, 1, 3600)
        await a.settle()
        assert (await b.admit("t", q, 3600)).tokens_left == 30
        b.charge("t", 30, 1, 3600)
        await b.settle()
        for store in (a, b):
            with pytest.raises(ATPError) as exc:
                await store.admit("t", q, 3600)
            assert str(exc.value.code) == "EBUDGET"
            assert (
                "tenant quota exhausted: 100 tokens used of the tenant's 100" in exc.value.message
            )
        nursery.cancel_scope.cancel()


async def test_a_dead_routers_streams_stop_counting(redis_server: RedisServer) -> None:
    """[ATP-BUDGET-014] One stream at once: router A's open stream refuses B's (EWINDOW,
    retry_after_ms; the refusal takes nothing); once A's lease on the tenant lapsed (A
    died: it stopped renewing it), B admits; a release brings the count down. While A
    lives, its lease is renewed (every second) past the lease's length."""
    a, b = _stores(redis_server.url, lease_ms=1500)
    q = TenantQuota(concurrent=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            await a.admit("t", q, 3600)
            await trio.sleep(2.5)  # longer than the lease: renewed
            for _ in range(3):
                with pytest.raises(ATPError) as exc:
                    await b.admit("t", q, 3600)
                assert str(exc.value.code) == "EWINDOW" and exc.value.retry_after_ms
            router_a.cancel_scope.cancel()  # A dies with its stream open...
        await trio.sleep(1.6)  # ...and its lease lapses
        await b.admit("t", q, 3600)
        with pytest.raises(ATPError):
            await b.admit("t", q, 3600)
        b.release("t", q)
        await b.settle()  # the writer has sent the release
        await b.admit("t", q, 3600)
        nursery.cancel_scope.cancel()
