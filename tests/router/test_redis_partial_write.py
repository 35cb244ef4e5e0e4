"""A quota write whose script would fail part-way (session 7 review), against a real
``redis-server``: Redis undoes nothing, and a rejected write is sent again whole later
(redis_quota: a rejected write), so a script that wrote the tokens and then failed on the
usd counter counted the tokens again at every retry, a growing count every router of the
tenant reads. The scripts now check the values they compute with before writing
anything: a bad value fails the write whole, and the retry once repaired is exact."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio

from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip

Q = TenantQuota(tokens=100_000, usd_micros=100_000)
PERIOD = 3600


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


async def _until(what: Any, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.05)


def _window_key(store: RedisQuotaStore, admin: Any) -> str:
    secs, _ = admin.time()
    return f"{store._keys('t')[0]}:{int(secs) // PERIOD}"


async def test_a_bad_usd_counter_fails_the_write_whole_not_after_the_tokens(
    redis_server: RedisServer,
) -> None:
    """The period's ``u`` field holds no number (a hand edit, another tool): the write of
    5 tokens and 1 usd_micro is rejected before it writes anything, on every retry (before
    the fix each retry added the 5 tokens once more: 10, 15, ... while rejected). Repaired,
    the usage is written exactly once."""
    prefix = f"pw{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", Q, PERIOD)
        a.charge("t", 1, 1, PERIOD, g.hold)
        await a.settle()
        bkey = _window_key(a, admin)
        assert admin.hget(bkey, "t") == b"1"
        admin.hset(bkey, "u", "not a number")
        a.charge("t", 5, 1, PERIOD, g.hold)
        await _until(lambda: a.write_errors["rejected"] >= 3)  # the first write, 2 retries
        assert admin.hget(bkey, "t") == b"1"  # nothing written by a rejected write
        assert a.spent("t", PERIOD)[0] == 6
        admin.hset(bkey, "u", "1")
        await _until(lambda: not a.pending and a._unconfirmed is None)
        assert admin.hget(bkey, "t") == b"6" and admin.hget(bkey, "u") == b"2"
        nursery.cancel_scope.cancel()
    a.link.close()


async def test_a_bad_hold_fails_the_write_before_the_other_holds(
    redis_server: RedisServer,
) -> None:
    """Two streams' holds in one write, the second's value mangled: before the fix the
    first hold was lowered by its usage at every retry (its reservation shrinking below
    what its stream may still spend); now the write is rejected whole, and once the bad
    hold is repaired the first hold is lowered once."""
    prefix = f"ph{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        one = await a.admit("t", Q, PERIOD)
        two = await a.admit("t", Q, PERIOD)
        assert one.hold and two.hold
        hkey = a._keys("t")[3]
        before = admin.hget(hkey, one.hold)
        assert before is not None
        first = int(before.split()[0])
        good_two = admin.hget(hkey, two.hold)
        admin.hset(hkey, two.hold, "mangled")
        # the first hold first in the write's arguments
        a.charge("t", 10, 0, PERIOD, one.hold)
        a.charge("t", 10, 0, PERIOD, two.hold)
        await _until(lambda: a.write_errors["rejected"] >= 3)
        now = admin.hget(hkey, one.hold)
        assert now is not None and int(now.split()[0]) == first  # not lowered at all
        assert good_two is not None
        admin.hset(hkey, two.hold, good_two)
        await _until(lambda: not a.pending and a._unconfirmed is None)
        now = admin.hget(hkey, one.hold)
        assert now is not None and int(now.split()[0]) == first - 10
        nursery.cancel_scope.cancel()
    a.link.close()


async def test_a_bad_stream_counter_fails_the_write_before_the_usage(
    redis_server: RedisServer,
) -> None:
    """The router's count of open streams (a field of the counters) is no whole number:
    the write that charges 5 tokens and ends the stream failed at the count's HINCRBY,
    after the tokens, and every retry charged them again; now nothing is written until
    the count is repaired, then the tokens once."""
    prefix = f"pc{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    q = TenantQuota(tokens=100_000, concurrent=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", q, PERIOD)
        ckey = a._keys("t")[2]
        assert admin.hget(ckey, a.link.router_id) == b"1"
        admin.hset(ckey, a.link.router_id, "1.5")
        a.charge("t", 5, 0, PERIOD, g.hold)
        a.release("t", q, g.hold)
        await _until(lambda: a.write_errors["rejected"] >= 3)
        bkey = _window_key(a, admin)
        assert admin.hget(bkey, "t") is None  # nothing written by a rejected write
        admin.hset(ckey, a.link.router_id, "1")
        await _until(lambda: not a.pending and a._unconfirmed is None)
        assert admin.hget(bkey, "t") == b"5" and admin.hget(ckey, a.link.router_id) is None
        nursery.cancel_scope.cancel()
    a.link.close()


async def test_a_stop_writes_the_usage_of_a_tenant_waiting_for_its_retry(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A tenant's write was rejected (its holds' key a string), the key is repaired, and
    the router stops before the retry's wait (1 s) is over: the last write at the stop
    skipped that tenant, whose usage was lost without a log line; now the stop writes it.
    And a tenant still rejected at the stop is named in the stop's warning."""
    prefix = f"ps{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", Q, PERIOD)
        hkey = a._keys("t")[3]
        saved = admin.hgetall(hkey)
        admin.delete(hkey)
        admin.set(hkey, "not a hash")
        a.charge("t", 5, 0, PERIOD, g.hold)
        await _until(lambda: a.write_errors["rejected"] >= 1)
        admin.delete(hkey)
        admin.hset(hkey, mapping=saved)
        nursery.cancel_scope.cancel()  # well within the retry's 1 s
    bkey = _window_key(a, admin)
    assert admin.hget(bkey, "t") == b"5"
    a.link.close()
    # still rejected at the stop: said so
    b = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix + "2"))
    caplog.set_level(logging.WARNING, logger="atp.router")
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        g = await b.admit("t", Q, PERIOD)
        hkey = b._keys("t")[3]
        admin.delete(hkey)
        admin.set(hkey, "not a hash")
        b.charge("t", 5, 0, PERIOD, g.hold)
        await _until(lambda: b.write_errors["rejected"] >= 1)
        nursery.cancel_scope.cancel()
    assert b.pending == 1
    lines = [r for r in caplog.records if "at shutdown" in r.getMessage()]
    assert len(lines) == 1 and lines[0].tenants == 1  # type: ignore[attr-defined]
    admin.delete(hkey)
    b.link.close()


async def test_an_admission_in_flight_does_not_end_the_writers_refusal(
    redis_server: RedisServer,
) -> None:
    """Past ``maxmemory`` Redis runs an admission whose first write adds no memory (an
    EXPIRE) to its end, and refuses the writer's flush. An admission already on its way
    when the flush was refused came back admitted and cleared the refusal: the router
    then admitted every stream again while its usage could not be written, until the
    writer's next retry. Only a write that goes through ends the refusal now. (The
    admission is held at its thread's start by a wrapper, to order the two; the script
    and the server are the real ones.)"""
    import threading

    prefix = f"pr{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    go = threading.Event()
    real = a._admit

    def held(*args: Any, **kw: Any) -> Any:
        go.wait(10)
        return real(*args, **kw)

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("x", Q, PERIOD)  # the period's totals exist: EXPIRE comes first
        a.charge("x", 1, 0, PERIOD, g.hold)
        await a.settle()
        gt = await a.admit("t", Q, PERIOD)
        a._admit = held  # type: ignore[assignment]
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            admitted: list[Any] = []

            async def in_flight() -> None:
                admitted.append(await a.admit("x", Q, PERIOD))

            nursery.start_soon(in_flight)
            await trio.sleep(0.2)  # on its way, past the refusal check
            a.charge("t", 5, 0, PERIOD, gt.hold)
            await _until(lambda: a.write_errors["refused"] >= 1)
            go.set()
            await _until(lambda: bool(admitted))  # admitted: Redis ran it to its end
            a._admit = real  # type: ignore[assignment]
            with pytest.raises(Exception) as exc:
                await a.admit("x", Q, PERIOD)
            assert "refuses writes (OOM)" in str(exc.value)
            assert not a.up  # atp_redis_up stays 0 while the writes are refused
        finally:
            admin.config_set("maxmemory", 0)
        await _until(lambda: a.up and not a.pending and a._unconfirmed is None)
        await a.admit("x", Q, PERIOD)
        nursery.cancel_scope.cancel()
    a.link.close()


async def test_usage_charged_while_a_rejected_write_is_in_flight_is_merged_not_lost(
    redis_server: RedisServer,
) -> None:
    """A charge that arrives while the write Redis then rejects is on its way goes to the
    queue beside it; the rejected write's usage is put back merged with it (the tests of
    the rejection above charged only between writes, so dropping that later usage went
    unseen). Repaired, all of it is written once: 5 + 7 tokens, the hold lowered by both.
    (The write is held at its thread's start to order the two; real script and server.)"""
    import threading

    prefix = f"pm{secrets.token_hex(3)}:"
    a = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))
    admin = redis.Redis.from_url(redis_server.url)
    go, entered = threading.Event(), threading.Event()
    real = a._write

    def held(*args: Any, **kw: Any) -> Any:
        entered.set()
        go.wait(10)
        return real(*args, **kw)

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        g = await a.admit("t", Q, PERIOD)
        hkey = a._keys("t")[3]
        saved = admin.hgetall(hkey)
        first = int(saved[g.hold.encode()].split()[0]) if g.hold else 0
        admin.delete(hkey)
        admin.set(hkey, "not a hash")
        a._write = held  # type: ignore[assignment]
        a.charge("t", 5, 0, PERIOD, g.hold)
        await _until(entered.is_set)  # the write of the 5 is on its way
        a.charge("t", 7, 0, PERIOD, g.hold)
        go.set()
        await _until(lambda: a.write_errors["rejected"] >= 1)
        a._write = real  # type: ignore[assignment]
        assert a.pending == 1 and a.spent("t", PERIOD)[0] == 12
        admin.delete(hkey)
        admin.hset(hkey, mapping=saved)
        await _until(lambda: not a.pending and a._unconfirmed is None)
        assert admin.hget(_window_key(a, admin), "t") == b"12"
        left = admin.hget(hkey, g.hold or "")
        assert left is not None and int(left.split()[0]) == first - 12
        nursery.cancel_scope.cancel()
    a.link.close()
