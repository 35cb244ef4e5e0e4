"""Writes Redis answers with an error, and what one operation reads (issue 14 item 5, the
failure cases a review left open), against a real ``redis-server``; each test failed
before its fix.

* Redis refusing writes for a while (``OOM`` past ``maxmemory``, ``READONLY`` on a
  demoted master): the router went on admitting (Redis lets a script whose first write
  adds no memory run to its end), and a READONLY connection was kept instead of made
  again (a DNS name that now names the new master was never asked again).
* A write Redis rejects for itself (a script error: here a key of the wrong type) was
  sent again and again, and every later write of the router waited behind it.
* Every operation on a tenant read (HGETALL) one flush-number field per router started
  in the last two periods: it grew with every restart.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio

from atp_proto.frames import ATPError, BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisSentinelSet, RedisServer, RedisUnavailable
from tests.router._redis import redis_or_skip

Q = TenantQuota(tokens=1000)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _used(store: RedisQuotaStore, tenant: str) -> int:
    client = store.link.client
    return sum(
        int(client.hget(k, "t") or 0) for k in client.scan_iter(f"{store._keys(tenant)[0]}:*")
    )


def _store(url: str, prefix: str, **kw: Any) -> RedisQuotaStore:
    return RedisQuotaStore(RedisLink(url, prefix=prefix), **kw)


async def _until(what: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.05)


async def _refused(store: RedisQuotaStore, tenant: str) -> ATPError:
    with pytest.raises(ATPError) as exc:
        await store.admit(tenant, Q, 3600)
    assert str(exc.value.code) == "EAGENTDOWN" and exc.value.retry_after_ms
    assert "the quota store (Redis) refuses" in exc.value.message  # writes, or the tenant's
    return exc.value


async def test_redis_out_of_memory_fails_closed_and_flushes_once_after(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-015] ``maxmemory`` reached (``noeviction``): the write of router A's
    usage fails with OOM; A refuses new streams (EAGENTDOWN, as with Redis away), its
    usage stays pending (merged: one entry per tenant) and counts in what A sees spent;
    the refusal is counted (``refused``). Memory given back: A's usage is written
    exactly once (100 + 200 + 300), A admits again, and router B sees the same total."""
    prefix = f"oom{secrets.token_hex(3)}:"
    a, b = _store(redis_server.url, prefix), _store(redis_server.url, prefix)
    admin = redis.Redis.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        g = await a.admit("t", Q, 3600)
        a.charge("t", 100, 0, 3600, g.hold)
        await a.settle()
        assert _used(a, "t") == 100
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            a.charge("t", 200, 0, 3600, g.hold)
            await _until(lambda: not a.up)
            await _refused(a, "t")
            a.charge("t", 300, 0, 3600, g.hold)
            await trio.sleep(1.5)  # retries, refused each time
            assert _used(a, "t") == 100
            assert a.pending <= 1 and a.spent("t", 3600) == (600, 0)
            await _refused(a, "t")
            assert a.write_errors["refused"] >= 1
        finally:
            admin.config_set("maxmemory", 0)
        await _until(lambda: a.up and not a.pending and a._unconfirmed is None)
        assert _used(a, "t") == 600
        assert (await a.admit("t", Q, 3600)).tokens_left == 400
        assert (await b.admit("t", Q, 3600)).tokens_left == 400
        nursery.cancel_scope.cancel()


async def test_a_demoted_master_is_a_failover_reconnected_and_flushed_once(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-015] The server behind the URL becomes a replica (READONLY): the
    router fails closed as with Redis away, drops its connections (so that a name
    resolved again reaches the new master), and once the server is a master again the
    usage queued meanwhile is written once."""
    prefix = f"ro{secrets.token_hex(3)}:"
    a = _store(redis_server.url, prefix)
    admin = redis.Redis.from_url(redis_server.url)

    def connections() -> int:
        return int(admin.info("stats")["total_connections_received"])

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", Q, 3600)
        a.charge("t", 10, 0, 3600, g.hold)
        await a.settle()
        before = connections()
        # a master nobody answers at: the server keeps its data and refuses writes
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        try:
            a.charge("t", 20, 0, 3600, g.hold)
            await _until(lambda: not a.up)
            await _refused(a, "t")
            await trio.sleep(0.5)
        finally:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        await _until(lambda: a.up and not a.pending and a._unconfirmed is None)
        assert _used(a, "t") == 30
        assert connections() > before  # its connections were made again
        assert (await a.admit("t", Q, 3600)).tokens_left == 970
        nursery.cancel_scope.cancel()


async def test_a_write_redis_rejects_does_not_hold_back_the_others(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """[ATP-BUDGET-015] One tenant's write fails in Redis (its holds' key holds a string:
    WRONGTYPE, as a script error would): said in one log line, counted (``rejected``);
    the other tenant's usage is written as before (before the fix it waited forever
    behind the failing flush); the failing tenant's usage stays pending, merged (one
    entry), and its new streams are refused (fail closed). The key repaired, its usage
    is written once and it is admitted again."""
    prefix = f"rj{secrets.token_hex(3)}:"
    a = _store(redis_server.url, prefix)
    admin = redis.Redis.from_url(redis_server.url)
    caplog.set_level(logging.INFO, logger="atp.router")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        bad = await a.admit("bad", Q, 3600)
        good = await a.admit("good", Q, 3600)
        hkey = a._keys("bad")[3]
        admin.delete(hkey)
        admin.set(hkey, "not a hash")
        for _ in range(3):
            a.charge("bad", 5, 0, 3600, bad.hold)
            a.charge("good", 7, 0, 3600, good.hold)
            await trio.sleep(0.3)
        await _until(lambda: _used(a, "good") == 21)
        assert _used(a, "bad") == 0 and a.spent("bad", 3600) == (15, 0)
        assert list(a._pending) == ["bad"]
        assert a.write_errors["rejected"] >= 1
        await _refused(a, "bad")
        assert (await a.admit("good", Q, 3600)).tokens_left == 979
        lines = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert lines[0].tenant == "bad" and "WRONGTYPE" in lines[0].error  # type: ignore[attr-defined]
        admin.delete(hkey)
        await _until(lambda: not a.pending and a._unconfirmed is None, timeout=40)
        assert _used(a, "bad") == 15
        await a.admit("bad", Q, 3600)
        nursery.cancel_scope.cancel()


async def test_script_flush_is_survived(redis_server: RedisServer) -> None:
    """NOSCRIPT after ``SCRIPT FLUSH`` (a Redis restarted without persistence of its
    script cache, an operator): admissions and writes load their script again."""
    a = _store(redis_server.url, f"nf{secrets.token_hex(3)}:")
    admin = redis.Redis.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", Q, 3600)
        a.charge("t", 3, 0, 3600, g.hold)
        await a.settle()
        admin.script_flush()
        a.charge("t", 4, 0, 3600, g.hold)
        await _until(lambda: _used(a, "t") == 7)
        admin.script_flush()
        assert (await a.admit("t", Q, 3600)).tokens_left == 993
        assert a.write_errors == {"refused": 0, "rejected": 0}
        nursery.cancel_scope.cancel()


async def test_restarts_do_not_grow_what_one_operation_reads(redis_server: RedisServer) -> None:
    """Fifty routers, one after the other, each admitting a stream of the tenant, writing
    its usage and stopping: the tenant's counters hash (every admission and write reads
    it whole) holds no more fields after them than after the first (before: one flush
    number per router started in the last two periods, a minute at least)."""
    prefix = f"rs{secrets.token_hex(3)}:"
    admin = redis.Redis.from_url(redis_server.url)
    sizes: list[int] = []
    for i in range(50):
        store = _store(redis_server.url, prefix, lease_ms=200)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            g = await store.admit("t", Q, 3600)
            store.charge("t", 1, 0, 3600, g.hold)
            store.release("t", Q, g.hold)
            await store.settle()
            nursery.cancel_scope.cancel()
        store.link.close()
        if i in {0, 49}:
            await trio.sleep(0.3)  # the leases of the stopped routers lapse
            probe = _store(redis_server.url, prefix, lease_ms=200)
            await probe.admit("t", TenantQuota(concurrent=9), 3600)  # and are reaped
            ckey, hkey = probe._keys("t")[2], probe._keys("t")[3]
            sizes.append(int(admin.hlen(ckey)) + int(admin.hlen(hkey)))
            probe.link.close()
    assert sizes[1] == sizes[0], sizes  # the probe's own lease and count, nothing else
    assert _used(probe, "t") == 50


async def test_a_lease_set_before_redis_clock_went_back_lapses_within_a_lease(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-017] Redis's clock gone back an hour (Redis restarted, or failed over,
    onto a host whose clock is behind) leaves a dead router's lease an hour ahead of it
    (set here by hand, as such a restart leaves it): that router was presumed alive, its
    hold not counting, for the hour. Now a deadline further ahead than the longest lease
    counts from the script that sees it: the hold is charged a lease later."""
    from atp_proto.router.shared.quota_scripts import LEASE_MAX_MS

    prefix = f"ck{secrets.token_hex(3)}:"
    a, b = _store(redis_server.url, prefix), _store(redis_server.url, prefix)
    admin = redis.Redis.from_url(redis_server.url)
    q = TenantQuota(tokens=100)
    one = BudgetWindow(max_tokens=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        async with trio.open_nursery() as router_a:
            await router_a.start(a.run)
            await a.admit("t", q, 3600)  # a hold of the 100
            router_a.cancel_scope.cancel()  # A dies with its stream open
        ckey, field = a._keys("t")[2], f"@{a.link.router_id}"
        admin.hset(ckey, field, int(admin.hget(ckey, field) or 0) + 3_600_000)
        assert (await b.admit("t", q, 3600, one)).tokens_left == 100
        assert int(admin.hget(ckey, field) or 0) <= _redis_ms(admin) + LEASE_MAX_MS
        await trio.sleep(LEASE_MAX_MS / 1000 + 0.5)
        with pytest.raises(ATPError) as exc:
            await b.admit("t", q, 3600, one)
        assert str(exc.value.code) == "EBUDGET"  # A's hold was charged
        nursery.cancel_scope.cancel()


def _redis_ms(admin: Any) -> int:
    secs, micros = admin.time()
    return int(secs) * 1000 + int(micros) // 1000


async def test_sentinels_that_require_a_password(caplog: pytest.LogCaptureFixture) -> None:
    """Sentinels with a password of their own (``requirepass``; here set through ACL on
    the running one): a URL with ``?sentinel_password=`` finds the master through them
    and admits; one without is refused by them and the router fails closed (EAGENTDOWN),
    as it does when it asks for a sentinel that sees another (``min_other_sentinels=1``)
    and the one there is sees none. The password appears in no log record."""
    try:
        sentinels = RedisSentinelSet()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    caplog.set_level(logging.DEBUG, logger="atp.router")
    try:
        admin = redis.Redis(port=sentinels.sentinel_port)
        admin.execute_command(
            "ACL", "SETUSER", "default", "on", "resetpass", ">s3cret", "~*", "&*", "+@all"
        )
        prefix = f"sp{secrets.token_hex(3)}:"
        good = _store(f"{sentinels.url}?sentinel_password=s3cret", prefix)
        bad = _store(sentinels.url, prefix)
        assert (await good.admit("t", Q, 3600)).tokens_left == 1000
        with pytest.raises(ATPError) as exc:
            await bad.admit("t", Q, 3600)
        assert str(exc.value.code) == "EAGENTDOWN"
        # a lone sentinel (it sees no other) is not believed when one other is asked for
        lone = _store(f"{sentinels.url}?sentinel_password=s3cret&min_other_sentinels=1", prefix)
        with pytest.raises(ATPError) as exc:
            await lone.admit("t", Q, 3600)
        assert str(exc.value.code) == "EAGENTDOWN"
        lone.link.close()
        assert caplog.records  # the refused ones said so
        for record in caplog.records:
            assert "s3cret" not in str(record.__dict__), record.__dict__
        good.link.close()
        bad.link.close()
    finally:
        sentinels.close()
