"""Loose ends of the shared quota store (session 8), against a real ``redis-server``;
each test failed before its fix.

* A tenant whose writes Redis rejects (its holds key of another type) had its lease
  renewed only with its writes: after ``lease_ms`` the others took this live router for
  dead, charged its holds and counted its streams out while they ran.
* Before Redis 7 a refusal met inside a script (OOM, READONLY...) comes as a plain
  ``ERR Error running script ...: -OOM ...``: classed "rejected" (the tenant's write),
  not "refused" (Redis's state).
* The forfeits key ``q:{T}:f`` grew for as long as routers kept dying (each reap renewed
  its expiry).
* The lease field stayed ``lease_ms`` after a clean stop.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio

from atp_proto.frames import ATPError, BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink, refuses_writes
from atp_proto.router.shared.quota_scripts import FORFEITS_MAX
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

Q = TenantQuota(tokens=1000)
BIG = TenantQuota(tokens=10**9)
LEASE_MS = 1500  #: renewed every second (a shorter lease lapses between renewals)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _store(url: str, prefix: str, lease_ms: int = LEASE_MS) -> RedisQuotaStore:
    return RedisQuotaStore(RedisLink(url, prefix=prefix), lease_ms=lease_ms)


def _redis_ms(admin: Any) -> int:
    secs, micros = admin.time()
    return int(secs) * 1000 + int(micros) // 1000


def _lease(store: RedisQuotaStore, tenant: str) -> int | None:
    raw = store.link.client.hget(store._keys(tenant)[2], f"@{store.link.router_id}")
    return None if raw is None else int(raw)


async def _until(what: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.05)


async def test_the_lease_is_renewed_while_the_tenants_writes_are_rejected(
    redis_server: RedisServer,
) -> None:
    """Router A's writes of tenant "bad" are rejected (its holds key holds a string); its
    stream runs on. Three leases later A's lease there still runs; the key repaired, router
    B's admission (its reaper runs first) does not take A's stream counter away: with
    ``concurrent = 1`` B is refused while A's stream is open. Before: the lease lapsed after
    one lease, and B was admitted beside A's stream."""
    prefix = f"l8a{secrets.token_hex(3)}:"
    a, b = _store(redis_server.url, prefix), _store(redis_server.url, prefix)
    admin = redis.Redis.from_url(redis_server.url)
    one = TenantQuota(tokens=1000, concurrent=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("bad", one, 3600)
        hkey = a._keys("bad")[3]
        admin.delete(hkey)
        admin.set(hkey, "not a hash")
        a.charge("bad", 5, 0, 3600, g.hold)
        await _until(lambda: a.write_errors["rejected"] >= 1)
        await trio.sleep(3 * LEASE_MS / 1000)
        lease = _lease(a, "bad")
        assert lease is not None and lease > _redis_ms(admin), (lease, _redis_ms(admin))
        assert "bad" in a._pending  # still rejected: the usage waits in A
        admin.delete(hkey)  # repaired, while A waits for its next retry
        with pytest.raises(ATPError, match="at most 1 concurrent streams"):
            await b.admit("bad", one, 3600)
        nursery.cancel_scope.cancel()


def test_a_refusal_inside_a_script_before_redis_7_is_a_refusal(
    redis_server: RedisServer,
) -> None:
    """The error replies Redis 6 sends for OOM / READONLY met by a script's write (a plain
    ERR quoting the code), as a real server sends them and the client parses them, are
    refusals; a script's own error (ours, naming a tenant "READONLY") is not."""
    admin = redis.Redis.from_url(redis_server.url)

    def reply(text: str) -> redis.ResponseError:
        with pytest.raises(redis.ResponseError) as exc:
            admin.eval("return redis.error_reply(ARGV[1])", 0, text)
        return exc.value

    oom6 = (
        "ERR Error running script (call to f_8426c8df41c64d8177dce3ecbbe9146ef3759cd2): "
        "@user_script:6: @user_script: 6: -OOM command not allowed when used memory > "
        "'maxmemory'. "
    )
    ro6 = (
        "ERR Error running script (call to f_ac5b6905f1d2186b86ee8868aaacb38eda65596e): "
        "@user_script:4: @user_script: 4: -READONLY You can't write against a read only "
        "replica. "
    )
    assert refuses_writes(reply(oom6)) == "OOM"
    assert refuses_writes(reply(ro6)) == "READONLY"
    assert refuses_writes(reply("NOREPLICAS Not enough good replicas to write.")) == "NOREPLICAS"
    assert refuses_writes(reply("ERR OOM command not allowed")) == "OOM"
    ours = "ERR the quota key atp:q:{x -READONLY y}:c field n holds no whole number"
    assert refuses_writes(reply(ours)) is None
    script_bug = "ERR Error running script (call to f_1): @user_script:9: attempt to compare nil"
    assert refuses_writes(reply(script_bug)) is None


async def _dead_router_holds(url: str, prefix: str, tenant: str, n: int) -> None:
    """``n`` holds of a router that dies at once (its writer never runs: no renewal)."""
    dead = _store(url, prefix, lease_ms=200)
    for _ in range(n):
        await dead.admit(tenant, BIG, 3600, BudgetWindow(max_tokens=1))


async def test_forfeits_are_bounded(redis_server: RedisServer) -> None:
    """Forfeits of periods before the last one go at the next reap (nothing left to give
    back to), and past FORFEITS_MAX the oldest go: the key no longer grows while routers
    keep dying. Fresh forfeits of the current period are kept."""
    prefix = f"l8f{secrets.token_hex(3)}:"
    admin = redis.Redis.from_url(redis_server.url)
    live = _store(redis_server.url, prefix)
    await live.admit("t", BIG, 3600)  # the current period's number
    fkey = live._keys("t")[4]
    win = live.window(3600)
    assert win is not None
    # what routers that died in earlier periods left (the reaper's own format)
    admin.hset(fkey, mapping={f"old{i}/1": f"5 0 {win - 2 - i % 3}" for i in range(300)})
    admin.hset(fkey, mapping={f"last/{i}": f"5 0 {win - 1}" for i in range(5)})
    await _dead_router_holds(redis_server.url, prefix, "t", 3)
    await trio.sleep(0.4)
    await live.admit("t", BIG, 3600)  # reaps the dead router: its 3 forfeits, the rest trimmed
    left = {k.decode(): v.decode() for k, v in admin.hgetall(fkey).items()}
    assert not [k for k in left if k.startswith("old")], len(left)
    assert len([k for k in left if k.startswith("last/")]) == 5
    assert len(left) == 8, left
    # past the cap: the oldest go first
    admin.hset(fkey, mapping={f"many{i}/1": f"1 0 {win - 1}" for i in range(FORFEITS_MAX)})
    await _dead_router_holds(redis_server.url, prefix, "t", 2)
    await trio.sleep(0.4)
    await live.admit("t", BIG, 3600)
    assert admin.hlen(fkey) == FORFEITS_MAX
    fresh = [v for v in admin.hvals(fkey) if v.decode().endswith(f" {win}")]
    assert len(fresh) == 3 + 2  # this period's forfeits all kept, the older ones cut


async def test_a_clean_stop_deletes_the_lease(redis_server: RedisServer) -> None:
    """A router that stops cleanly (its streams ended) deletes its lease fields at once;
    before, they ran on for lease_ms (5 s by default) after it had gone."""
    prefix = f"l8s{secrets.token_hex(3)}:"
    a = _store(redis_server.url, prefix, lease_ms=5000)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        for tenant in ("t1", "t2"):
            g = await a.admit(tenant, Q, 3600)
            a.charge(tenant, 3, 0, 3600, g.hold)
            a.release(tenant, Q, g.hold)
        await a.settle()
        assert _lease(a, "t1") is not None and _lease(a, "t2") is not None
        nursery.cancel_scope.cancel()
    assert _lease(a, "t1") is None and _lease(a, "t2") is None
