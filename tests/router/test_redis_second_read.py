"""Second reading of the shared quota store (issue 14 item 5): defects found and fixed,
each test failing before its fix, against a real ``redis-server`` (a real Redis Cluster
for the hash tags). The link's (Sentinel, redaction), the learning's and the CLI's are
in test_e2e_redis_sentinel.py, test_redis_sentinel_url.py, test_redis_learning.py and
test_review14_quota.py.

* A router cut off from Redis longer than its lease, whose last write ran in Redis but
  whose reply was lost, sent that write again when it was back and it counted twice: the
  reaper of its lapsed lease deleted its last flush number with the lease.
* Each probe of an admission while Redis was known away counted a stream of the tenant
  out (in case its script had run): a few seconds of outage wiped the router's count of
  its open streams, and the tenant's limit of concurrent streams let more run.
* A tenant named with a ``}`` first (or holding one early) gave its keys an empty hash
  tag: on a Redis Cluster every admission was refused (CROSSSLOT) and the flush that
  released it failed again and again, holding back every later write of the router.
* Redis away at shutdown logged three chained tracebacks; now one line.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from atp_proto.frames import ATPError, BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisError, RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore, key_tag
from atp_proto.testing.redis_server import RedisCluster, RedisServer, RedisUnavailable
from tests.router._redis import redis_or_skip

LEASE_MS = 600


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _used(store: RedisQuotaStore, tenant: str) -> int:
    client = store.link.client
    return sum(
        int(client.hget(k, "t") or 0) for k in client.scan_iter(f"{store._keys(tenant)[0]}:*")
    )


class _CutAfterWrite(RedisLink):
    """A link whose next transaction runs in Redis and then loses its reply, the link
    then cut (every call fails before sending anything) until :attr:`down` is cleared."""

    cut_next = False
    down = False

    def pipelined(
        self, fill: Callable[[Any], None], *, transaction: bool, raise_on_error: bool = True
    ) -> list[Any]:
        if self.down:
            raise RedisError("Connection refused (injected)")
        replies = super().pipelined(fill, transaction=transaction, raise_on_error=raise_on_error)
        if transaction and self.cut_next:
            self.cut_next, self.down = False, True
            raise RedisError("Connection closed by server (injected after EXEC)")
        return replies


async def test_a_write_sent_again_after_the_router_was_presumed_dead_counts_once(
    redis_server: RedisServer,
) -> None:
    """[ATP-BUDGET-013] [ATP-BUDGET-017] Router A's stream (a 30-token share) writes 10
    tokens; Redis runs the write, the reply is lost and A is cut off for longer than its
    lease. B presumes A dead and charges the hold (10 + 20). A is back: it sends its
    unconfirmed write again (skipped: its number is kept), then the stream's end (the
    forfeited hold's 20 given back). The tenant has spent exactly 10 (before: 20, the
    write counted twice)."""
    prefix = f"c{secrets.token_hex(3)}:"
    link = _CutAfterWrite(redis_server.url, prefix=prefix)
    a = RedisQuotaStore(link, lease_ms=LEASE_MS)
    b = RedisQuotaStore(RedisLink(redis_server.url, prefix=prefix))  # renewed within its lease
    q = TenantQuota(tokens=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        g = await a.admit("t", q, 3600, BudgetWindow(max_tokens=30))
        link.cut_next = True
        a.charge("t", 10, 0, 3600, g.hold)
        with trio.fail_after(5):
            while not link.down:
                await trio.sleep(0.01)
        assert _used(b, "t") == 10  # the write ran; A does not know it
        await trio.sleep(LEASE_MS / 1000 + 0.3)
        gb = await b.admit("t", q, 3600, BudgetWindow(max_tokens=1))
        assert gb.tokens_left == 70  # A's hold charged: 10 written + 20 held
        link.down = False  # A is back
        a.release("t", q, g.hold)
        with trio.fail_after(10):
            while a.pending or a._unconfirmed is not None:
                await trio.sleep(0.05)
        assert _used(b, "t") == 10
        b.release("t", q, gb.hold)
        await b.settle()
        nursery.cancel_scope.cancel()


async def test_probes_while_redis_is_away_leave_the_open_streams_counted() -> None:
    """[ATP-BUDGET-014] A tenant allowed 3 streams at once has 2 open on router A when
    Redis stops; A's admissions meanwhile are refused (EAGENTDOWN) as they probe Redis.
    Redis back, router B may open exactly 1 more (before: each refused probe had counted
    one of A's streams out, and B opened 3)."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        prefix = f"p{secrets.token_hex(3)}:"
        a = RedisQuotaStore(RedisLink(server.url, prefix=prefix, timeout_s=0.3))
        b = RedisQuotaStore(RedisLink(server.url, prefix=prefix, timeout_s=0.3))
        q = TenantQuota(concurrent=3)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.admit("t", q, 3600)
            await a.admit("t", q, 3600)
            await trio.to_thread.run_sync(server.stop)
            with trio.fail_after(5):
                while a.up:  # the writer's renewal finds Redis away
                    await trio.sleep(0.05)
            for _ in range(4):
                await trio.sleep(0.6)  # past PROBE_S: each admission asks Redis
                with pytest.raises(ATPError) as exc:
                    await a.admit("t", q, 3600)
                assert str(exc.value.code) == "EAGENTDOWN"
            await trio.to_thread.run_sync(server.restart)
            with trio.fail_after(10):
                while not a.up or a.pending or a._unconfirmed is not None:
                    await trio.sleep(0.05)
            admitted = 0
            with trio.fail_after(10):
                while True:
                    try:
                        await b.admit("t", q, 3600)
                    except ATPError as refused:
                        if str(refused.code) == "EAGENTDOWN":  # B's first call since
                            await trio.sleep(0.6)
                            continue
                        assert str(refused.code) == "EWINDOW"
                        break
                    admitted += 1
            assert admitted == 1
            nursery.cancel_scope.cancel()


AWKWARD = ("}x", "}", "a}b", "{}", "x{", "%", "%7D", "a%b", "acme", "a:b", "ünï")


def test_awkward_tenant_names_keep_their_keys_in_one_slot_and_apart() -> None:
    """Every key of a tenant hashes to one Cluster slot, for tenants starting with or
    holding a brace too (before: '}x' and '{}' had keys in five slots), and no two
    tenants share a key; plain names keep their keys as they were."""
    from redis.crc import key_slot

    store = RedisQuotaStore(RedisLink("redis://127.0.0.1:1/0", prefix="atp:"))
    seen: dict[str, str] = {}
    for tenant in AWKWARD:
        keys = [*store._keys(tenant), store._keys(tenant)[0] + ":123456"]
        assert len({key_slot(k.encode()) for k in keys}) == 1, (tenant, keys)
        assert keys[0] not in seen, (tenant, seen.get(keys[0]))
        seen[keys[0]] = tenant
    assert store._keys("acme")[0] == "atp:q:{acme}:b" and key_tag("a:b") == "a:b"
    assert key_tag("") != key_tag("%")


async def test_a_tenant_named_with_a_brace_on_a_cluster_blocks_no_write() -> None:
    """[ATP-BUDGET-013] On a real Redis Cluster, tenant '}x' is admitted and charged, and
    the usage of tenant 'plain' queued after it is written (before: '}x' was refused
    EAGENTDOWN, and the flush releasing it failed for ever, holding back 'plain')."""
    try:
        cluster = RedisCluster()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        store = RedisQuotaStore(RedisLink(cluster.url, prefix="atp:"))
        q = TenantQuota(tokens=1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            g = await store.admit("}x", q, 3600)
            store.charge("}x", 7, 0, 3600, g.hold)
            store.release("}x", q, g.hold)
            p = await store.admit("plain", q, 3600)
            store.charge("plain", 5, 0, 3600, p.hold)
            store.release("plain", q, p.hold)
            await store.settle()
            assert store.up and store.pending == 0 and store._unconfirmed is None
            nursery.cancel_scope.cancel()
        assert (_used(store, "}x"), _used(store, "plain")) == (7, 5)
        store.link.close()


async def test_redis_away_at_shutdown_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A router stopped while Redis is away with usage queued says so in one line (the
    tenants not written, the redacted URL, the error), no traceback (before: three
    chained tracebacks)."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        url = server.url.replace("redis://", "redis://:s3cret@", 1)
        await trio.to_thread.run_sync(
            lambda: RedisLink(server.url).client.config_set("requirepass", "s3cret")
        )
        store = RedisQuotaStore(RedisLink(url, prefix="down:", timeout_s=0.2))
        q = TenantQuota(tokens=100)
        caplog.set_level(logging.INFO, logger="atp.router")
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            g = await store.admit("t", q, 3600)
            await trio.to_thread.run_sync(server.stop)
            store.charge("t", 5, 0, 3600, g.hold)
            store.release("t", q, g.hold)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    at_stop = [r for r in caplog.records if "shutdown" in r.getMessage()]
    assert len(at_stop) == 1, [r.getMessage() for r in caplog.records]
    (record,) = at_stop
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.tenants == 1  # type: ignore[attr-defined]
    assert "s3cret" not in record.redis and record.error  # type: ignore[attr-defined]
