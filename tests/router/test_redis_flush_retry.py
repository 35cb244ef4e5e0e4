"""A quota write whose reply is lost is sent again and counted once (real Redis).

The loss is injected between Redis and the store: the write runs in Redis, then the call
raises as a connection cut after EXEC would. Before flush numbers the batch was put back
and written again: the usage counted twice."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from atp_proto.router.quota import TenantQuota
from atp_proto.router.shared.link import RedisError, RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.redis_server import RedisServer
from tests.router._redis import redis_or_skip


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


class _LosesReplies(RedisLink):
    """A link whose next ``lose`` transactions run in Redis and then fail."""

    lose = 0

    def pipelined(
        self, fill: Callable[[Any], None], *, transaction: bool, raise_on_error: bool = True
    ) -> list[Any]:
        replies = super().pipelined(fill, transaction=transaction, raise_on_error=raise_on_error)
        if transaction and self.lose > 0:
            self.lose -= 1
            raise RedisError("Connection closed by server (injected after EXEC)")
        return replies


def _used(store: RedisQuotaStore, tenant: str) -> int:
    client = store.link.client
    return sum(
        int(client.hget(k, "t") or 0) for k in client.scan_iter(f"{store._keys(tenant)[0]}:*")
    )


async def test_a_write_whose_reply_was_lost_counts_once(redis_server: RedisServer) -> None:
    """[ATP-BUDGET-013] Usage of 40 tokens, written, its reply lost twice: the store sends
    the same flush again until Redis confirms it; Redis holds 40, not 120. A later
    charge is written as usual (and the stream's hold settled once)."""
    link = _LosesReplies(redis_server.url, prefix=f"r{secrets.token_hex(3)}:")
    store = RedisQuotaStore(link)
    q = TenantQuota(tokens=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        grant = await store.admit("t", q, 3600)
        link.lose = 2
        store.charge("t", 40, 0, 3600, grant.hold)
        with trio.fail_after(10):
            while link.lose or store._unconfirmed is not None:
                await trio.sleep(0.05)
        assert _used(store, "t") == 40
        assert not store.up or store.pending == 0
        store.charge("t", 2, 0, 3600, grant.hold)
        store.release("t", q, grant.hold)
        await store.settle()
        assert _used(store, "t") == 42
        assert link.client.hgetall(store._keys("t")[3]) == {}  # the hold settled and gone
        nursery.cancel_scope.cancel()
