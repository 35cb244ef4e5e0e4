"""The bandit's posteriors shared through a real Redis (atp_proto.router.shared.learning).

Two learners stand for two routers; each syncs with the same ``redis-server`` (Debian's
package, started by the fixture). The reference is one learner that saw every
observation itself: sharing by sufficient statistics must give the same posterior.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from atp_proto.router.routing.learner.bandit import BanditLearner
from atp_proto.router.shared.learning import OBS_PER_ENTRY, SharedLearning
from atp_proto.router.shared.link import RedisError, RedisLink
from atp_proto.testing.redis_server import RedisServer, RedisUnavailable
from tests.router._redis import redis_or_skip


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


def _learn(learner: BanditLearner, arm: str, prompt: str, quality: float) -> None:
    learner.arm(arm).update(learner.vector(prompt, "qa"), quality)


def _pair(
    url: str, prefix: str
) -> tuple[BanditLearner, SharedLearning, BanditLearner, SharedLearning]:
    a, b = BanditLearner(seed=1), BanditLearner(seed=2)
    return (
        a,
        SharedLearning(a, RedisLink(url, prefix=prefix)),
        b,
        SharedLearning(b, RedisLink(url, prefix=prefix)),
    )


def _same(x: BanditLearner, y: BanditLearner, arm: str) -> None:
    ax, ay = x.arms[arm], y.arms[arm]
    np.testing.assert_allclose(ax.a_inv, ay.a_inv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ax.b, ay.b, rtol=1e-9, atol=1e-12)
    assert ax.n == pytest.approx(ay.n) and ax.q_sum == pytest.approx(ay.q_sum)


async def test_two_routers_learn_as_one(redis_server: RedisServer) -> None:
    """What one router learns reaches the other; when both learn at once, every
    observation counts once: both end with the posterior of a single learner that saw all
    of them."""
    a, sa, b, sb = _pair(redis_server.url, "t1:")
    assert sa.applied == 0
    ref = BanditLearner(seed=3)
    for learner in (a, ref):
        _learn(learner, "mid", "what is six times seven", 0.9)
        _learn(learner, "cheap", "what is six times seven", 0.2)
    assert await sa.sync() and await sb.sync()
    _same(b, ref, "mid")
    _same(b, ref, "cheap")
    # both learn between syncs
    for learner, prompt, q in ((a, "translate hello", 0.7), (b, "sum 2 and 2", 0.4)):
        _learn(learner, "mid", prompt, q)
        _learn(ref, "mid", prompt, q)
    assert await sa.sync() and await sb.sync() and await sa.sync()
    _same(a, ref, "mid")
    _same(b, ref, "mid")
    _same(a, ref, "cheap")
    assert sb.applied == 3 and sa.applied == 1  # each applied only the other's
    # syncing again with nothing new changes nothing (nothing counted twice)
    assert await sb.sync() and await sa.sync()
    _same(a, ref, "mid")
    _same(b, ref, "mid")


async def test_redis_unreachable_keeps_local_learning() -> None:
    """Redis stopped: sync says so and the router keeps what it learned locally; what it
    learned meanwhile is sent by the first sync after Redis is back (the same link,
    reconnecting by itself), and another router then holds the same posterior."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        a, sa, b, sb = _pair(server.url, "t2:")
        _learn(a, "mid", "online prompt", 1.0)
        assert await sa.sync()
        server.stop()
        _learn(a, "mid", "offline prompt", 0.0)
        before = a.arms["mid"].a_inv.copy()
        assert await sa.sync() is False
        assert not sa.up
        np.testing.assert_array_equal(a.arms["mid"].a_inv, before)  # local state kept
        server.restart()
        assert await sa.sync() and sa.up
        assert await sb.sync()
        _same(b, a, "mid")
        assert b.arms["mid"].n == pytest.approx(2.0)


async def test_a_large_sync_is_split_and_applied_whole(redis_server: RedisServer) -> None:
    """More observations than one log entry holds (OBS_PER_ENTRY) go as several entries
    of one transaction; the other router applies every one."""
    a, sa, b, sb = _pair(redis_server.url, "t3:")
    n = OBS_PER_ENTRY + 44
    for i in range(n):
        _learn(a, "mid", f"prompt number {i}", (i % 10) / 10)
    assert await sa.sync() and await sb.sync()
    assert sb.applied == n
    _same(b, a, "mid")


class _LosesOneReply(RedisLink):
    """A link whose next call runs in Redis and then fails, as a reply lost would."""

    lose = False

    async def call(self, fn: Callable[[], Any]) -> Any:
        result = await super().call(fn)
        if self.lose:
            self.lose = False
            raise RedisError("Connection closed by server (injected after the reply)")
        return result


async def test_learning_sent_again_after_a_lost_reply_counts_once(
    redis_server: RedisServer,
) -> None:
    """Router A's sync writes its three observations and a feedback count to the log and
    loses the reply; its next sync sends them again. Router B applies each once: its
    posterior is that of one learner that saw the three (before: six, and the feedback
    twice)."""
    prefix = f"l{secrets.token_hex(3)}:"
    a, b, ref = BanditLearner(seed=1), BanditLearner(seed=2), BanditLearner(seed=3)
    link = _LosesOneReply(redis_server.url, prefix=prefix)
    sa = SharedLearning(a, link)
    sb = SharedLearning(b, RedisLink(redis_server.url, prefix=prefix))
    for learner in (a, ref):
        for prompt, quality in (("six times seven", 0.9), ("translate hi", 0.4), ("2+2", 0.7)):
            learner.arm("mid").update(learner.vector(prompt, "qa"), quality)
        learner.arm("mid").feedback_n += 1
    link.lose = True
    assert await sa.sync() is False
    assert await sa.sync()
    assert await sb.sync()
    assert sb.applied == 3
    np.testing.assert_allclose(b.arms["mid"].a_inv, ref.arms["mid"].a_inv, rtol=1e-9)
    np.testing.assert_allclose(b.arms["mid"].b, ref.arms["mid"].b, rtol=1e-9)
    assert b.arms["mid"].feedback_n == 1
