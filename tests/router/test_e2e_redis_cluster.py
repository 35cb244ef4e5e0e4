"""Tenant quotas and learning shared through a real Redis *Cluster* (three primaries,
``redis-server --cluster-enabled`` joined by ``redis-cli --cluster create``) by real
router processes: ``atp serve --redis redis+cluster://HOST:PORT`` (issue 14 item 5).

Tenants are spread over the cluster's slots and nodes (each tenant's keys share its hash
tag); one flush of usage covers several tenants, so several slots (a transaction each).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import trio
from redis.crc import key_slot

from atp_proto.client import StreamError
from atp_proto.frames import BudgetWindow
from atp_proto.router.quota import TenantQuota
from atp_proto.router.routing.learner.bandit import BanditLearner
from atp_proto.router.shared.learning import SharedLearning
from atp_proto.router.shared.link import RedisLink
from atp_proto.router.shared.redis_quota import RedisQuotaStore
from atp_proto.testing.processes import clean_env
from atp_proto.testing.redis_server import RedisCluster, RedisUnavailable

from .test_e2e_redis import _kill_mid_flight, _routers, _sequential
from .test_e2e_redis import adapters as adapters  # noqa: PLC0414 (the fixture, by its name)

TENANTS = ("budget", "kill", "inflight", "outage")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    try:
        server = RedisCluster()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def _client(cluster: RedisCluster) -> Any:
    return redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)


def _used(cluster: RedisCluster, tenant: str) -> int:
    """The tenant's tokens this period, read from the cluster itself."""
    c = _client(cluster)
    try:
        keys = c.keys(f"atp:q:{{{tenant}}}:b:*", target_nodes=redis.RedisCluster.ALL_NODES)
        return sum(int(c.hget(k, "t") or 0) for k in keys)
    finally:
        c.close()


def test_tenants_land_on_several_nodes(cluster: RedisCluster) -> None:
    """The tenants these tests use live in different slots, on more than one node (so
    the writes below really cross the cluster)."""
    c = _client(cluster)
    try:
        nodes = {c.get_node_from_key(f"atp:q:{{{t}}}:c").name for t in TENANTS}
    finally:
        c.close()
    assert len({key_slot(f"atp:q:{{{t}}}:c".encode()) for t in TENANTS}) == len(TENANTS)
    assert len(nodes) >= 2


async def test_one_flush_of_many_tenants_writes_each_slot_once(cluster: RedisCluster) -> None:
    """Usage of four tenants (four slots, several nodes) queued at once is written by one
    flush, one transaction per slot, exactly; their holds settle and go."""
    store = RedisQuotaStore(RedisLink(cluster.url, prefix="atp:"))
    q = TenantQuota(tokens=10_000)
    names = [f"flush-{t}" for t in TENANTS]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        grants = {t: await store.admit(t, q, 3600, BudgetWindow(max_tokens=500)) for t in names}
        for i, t in enumerate(names):
            store.charge(t, 10 + i, 0, 3600, grants[t].hold)
            store.release(t, q, grants[t].hold)
        await store.settle()
        assert store.pending == 0 and store.up
        nursery.cancel_scope.cancel()
    assert [_used(cluster, t) for t in names] == [10, 11, 12, 13]
    c = _client(cluster)
    try:
        assert all(c.hlen(f"atp:q:{{{t}}}:h") == 0 for t in names)
    finally:
        c.close()


def test_budget_and_in_flight_holds_across_two_routers_on_a_cluster(
    cluster: RedisCluster, adapters: dict[str, str]
) -> None:
    """[ATP-BUDGET-013] [ATP-BUDGET-017] Two routers on the cluster: a 200-token budget
    spent through both never passes 200 and Redis holds exactly what the FINALs said; a
    third router SIGKILLed with three 150-token streams in flight of a 1,000-token tenant
    is charged their holds once its lease lapsed: what it had written and what its holds
    (each lowered from 150 to the preflight's estimate, ATP-BUDGET-017) still held,
    exactly."""
    shared = _routers(2, adapters, "--redis", cluster.url)
    try:
        results = _sequential(shared, "budget", 10)
        ok = [r["tokens"] for r in results if isinstance(r, dict)]
        first = next(i for i, r in enumerate(results) if isinstance(r, StreamError))
        assert {r.code for r in results[first:]} == {"EBUDGET"}
        assert len(ok) >= 2 and sum(ok) <= 200
        assert _used(cluster, "budget") == sum(ok)

        (victim,) = _routers(1, adapters, "--redis", cluster.url)
        try:
            _kill_mid_flight(victim, [("inflight", BudgetWindow(max_tokens=150))] * 3)
        finally:
            victim.stop()
        written = _used(cluster, "inflight")
        c = _client(cluster)
        try:
            holds = [v.split() for v in c.hgetall("atp:q:{inflight}:h").values()]
        finally:
            c.close()
        assert len(holds) == 3 and all(0 <= int(h[0]) < 150 for h in holds)
        held = sum(int(h[0]) for h in holds)
        assert written + held < 450
        time.sleep(5.5)  # the dead router's lease lapses
        (after,) = _sequential(shared[1:], "inflight", 1)
        assert isinstance(after, dict), after
        assert _used(cluster, "inflight") == written + held + after["tokens"]
        for r in shared:
            assert "CROSSSLOT" not in r.log() and "Redis unreachable" not in r.log()
    finally:
        for r in shared:
            r.stop()


def test_a_cluster_url_is_checked_at_start() -> None:
    """A cluster has only DB 0: another DB is refused at start (exit 2, one line)."""
    done = subprocess.run(
        [sys.executable, "-m", "atp_proto", "serve", "--redis", "redis+cluster://127.0.0.1:1/3"],
        capture_output=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "a Redis Cluster has only DB 0" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


async def test_learning_is_shared_through_the_cluster(cluster: RedisCluster) -> None:
    """Two learners syncing through the cluster's log (one key, a transaction in its
    slot) end with the posterior of one learner that saw both's observations."""
    a, b, ref = BanditLearner(seed=1), BanditLearner(seed=2), BanditLearner(seed=3)
    sa = SharedLearning(a, RedisLink(cluster.url, prefix="learn1:"))
    sb = SharedLearning(b, RedisLink(cluster.url, prefix="learn1:"))
    for learner, prompt, q in ((a, "what is six times seven", 0.9), (b, "sum 2 and 2", 0.3)):
        for target in (learner, ref):
            target.arm("mid").update(target.vector(prompt, "qa"), q)
    assert await sa.sync() and await sb.sync() and await sa.sync()
    for learner in (a, b):
        np.testing.assert_allclose(learner.arms["mid"].a_inv, ref.arms["mid"].a_inv, atol=1e-12)
        np.testing.assert_allclose(learner.arms["mid"].b, ref.arms["mid"].b, atol=1e-12)


def test_a_router_starts_and_fails_closed_while_the_cluster_is_away(
    adapters: dict[str, str],
) -> None:
    """[ATP-BUDGET-015] The cluster client connects when it is made: the router makes it on
    first use, so it starts with no cluster to discover, and refuses a budgeted tenant's
    stream with EAGENTDOWN naming the quota store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    (router,) = _routers(1, adapters, "--redis", f"redis+cluster://127.0.0.1:{port}")
    try:
        (down,) = _sequential([router], "budget", 1)
        assert isinstance(down, StreamError) and down.code == "EAGENTDOWN"
        assert "quota store (Redis) is unreachable" in down.message
        assert router.proc.poll() is None
    finally:
        router.stop()
