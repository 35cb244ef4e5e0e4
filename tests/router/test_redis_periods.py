"""Period boundaries of the shared quota store, against a real Redis: periods are numbered
by Redis's clock (``TIME``) on the router's side too, whatever the router's own clock
says, and a dead router's hold is charged to the period it was taken in."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
import trio

from atp_proto.frames import BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

LEASE_MS = 300


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _redis_now(store: RedisQuotaStore) -> float:
    s, us = store.link.client.time()
    return float(s) + us / 1e6


async def _just_after_a_boundary(store: RedisQuotaStore, period: int) -> int:
    """Sleep until Redis's clock is a little past the start of a period; its number."""
    now = _redis_now(store)
    into = now % period
    if into > 0.05 * period:
        await trio.sleep(period - into + 0.05)
    return int(_redis_now(store) // period)


def _used(store: RedisQuotaStore, tenant: str, win: int) -> int:
    return int(store.link.client.hget(f"{store._keys(tenant)[0]}:{win}", "t") or 0)


async def test_spent_numbers_periods_by_redis_clock_not_the_routers(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-013] [ATP-BUDGET-016] Router B's clock is 1,000.5 s ahead (whole 2-second periods and
    a quarter of one). B's view of the tenant's spending in the
    current period is what Redis said for Redis's current period — 50 right after A
    spent it — and falls to 0 when Redis's period ends, not when B's clock says so.
    Router A (a true clock) and B agree on the period's number at every moment."""
    prefix = f"p{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    b = RedisQuotaStore(
        RedisLink(redis_server.url, prefix=prefix), clock=lambda: time.monotonic() + 1000.5
    )
    q, period = TenantQuota(tokens=1000), 2
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        win = await _just_after_a_boundary(a, period)
        ga = await a.admit("t", q, period)
        a.charge("t", 50, 0, period, ga.hold)
        await a.settle()
        gb = await b.admit("t", q, period, BudgetWindow(max_tokens=1))
        assert gb.tokens_left == 950
        assert a.window(period) == b.window(period) == win
        assert b.spent("t", period) == (50, 0)
        await trio.sleep(period - (_redis_now(a) % period) + 0.1)  # Redis's next period
        assert a.window(period) == b.window(period) == win + 1
        assert b.spent("t", period) == (0, 0)
        a.release("t", q, ga.hold)
        b.release("t", q, gb.hold)
        await a.settle()
        await b.settle()
        nursery.cancel_scope.cancel()


async def test_a_dead_routers_hold_is_charged_to_the_period_it_was_taken_in(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-017] Router A dies in period W with a stream of a 30-token share that
    had written 10. B's first admission after A's lease lapsed happens in period W+1: the
    20 A's stream had not settled are charged to W (where the stream was admitted, and
    where it shared the remainder), and the tenant starts W+1 with its whole quota."""
    prefix = f"p{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix), lease_ms=LEASE_MS)
    b = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix), lease_ms=LEASE_MS)
    q, period = TenantQuota(tokens=100), 2
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        win = await _just_after_a_boundary(b, period)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            g = await a.admit("t", q, period, BudgetWindow(max_tokens=30))
            a.charge("t", 10, 0, period, g.hold)
            await a.settle()
            router_a.cancel_scope.cancel()  # A dies (its writer gone, the hold left)
        assert _used(a, "t", win) == 10
        await trio.sleep(period - (_redis_now(b) % period) + 0.1)
        assert int(_redis_now(b) // period) == win + 1
        grant = await b.admit("t", q, period, BudgetWindow(max_tokens=1))
        assert grant.tokens_left == 100  # the new period owes nothing to A's stream
        assert _used(b, "t", win) == 30  # 10 written + the 20 left of the hold
        assert _used(b, "t", win + 1) == 0
        b.release("t", q, grant.hold)
        await b.settle()
        nursery.cancel_scope.cancel()
