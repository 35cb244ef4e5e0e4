"""The bandit's posteriors shared through Redis by every router of a fleet (``--redis``).

Each arm's model is Bayesian ridge regression (:mod:`..routing.learner.model`): its
sufficient statistics ``A = ridge*I + sum w x x^T``, ``b`` and the counters are sums over
observations, so routers share them by adding. Every ``interval_s`` a router sends what it
learned since its last sync (its local ``A - base``, ``b - base``, counter deltas; ``base``
is what it installed from Redis last time) and reads the fleet's sums back, in one Lua
script per arm (atomic: two routers adding at once both count). It installs
``prior + fleet sums + what it learned while the call was in flight``, so no local
observation is lost and none is counted twice.

Redis unreachable: the router keeps ranking and learning from its local state (the
deltas keep growing) and sends them when Redis answers again (README "Scale-out").
The moving latency average (``latency_ms``) and pending decisions stay per router.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from ..routing.learner.bandit import BanditLearner
from ..routing.learner.model import Arm
from .link import RedisError, RedisLink, redacted

__all__ = ["SharedLearning"]

log = logging.getLogger("atp.router")

Matrix = npt.NDArray[np.float64]

#: the additive counters of an arm
_COUNTS = ("n", "feedback_n", "q_sum", "failures")

_MERGE = """
local function add(field, delta)
  local d = cjson.decode(delta)
  if #d == 0 then return end
  local cur = redis.call('HGET', KEYS[1], field)
  local v = {}
  if cur then v = cjson.decode(cur) end
  for i = 1, #d do v[i] = (v[i] or 0) + d[i] end
  redis.call('HSET', KEYS[1], field, cjson.encode(v))
end
local meta = redis.call('HGET', KEYS[2], 'dim')
if meta and meta ~= ARGV[1] then return redis.error_reply('dimension ' .. meta) end
if not meta then redis.call('HSET', KEYS[2], 'dim', ARGV[1]) end
redis.call('SADD', KEYS[3], ARGV[2])
add('A', ARGV[3])
add('b', ARGV[4])
local counts = cjson.decode(ARGV[5])
for k, v in pairs(counts) do redis.call('HINCRBYFLOAT', KEYS[1], k, v) end
return 1
"""


class _Stats:
    """An arm's sufficient statistics as sums (A, not its inverse)."""

    __slots__ = ("a", "b", "counts")

    def __init__(self, a: Matrix, b: Matrix, counts: dict[str, float]) -> None:
        self.a, self.b, self.counts = a, b, counts

    @classmethod
    def of(cls, arm: Arm) -> _Stats:
        counts = {k: float(getattr(arm, k)) for k in _COUNTS}
        return cls(np.asarray(np.linalg.inv(arm.a_inv), dtype=np.float64), arm.b.copy(), counts)

    @classmethod
    def prior(cls, dim: int, ridge: float) -> _Stats:
        return cls(np.eye(dim) * ridge, np.zeros(dim), dict.fromkeys(_COUNTS, 0.0))

    def minus(self, other: _Stats) -> _Stats:
        return _Stats(
            self.a - other.a,
            self.b - other.b,
            {k: self.counts[k] - other.counts[k] for k in _COUNTS},
        )

    def plus(self, other: _Stats) -> _Stats:
        return _Stats(
            self.a + other.a,
            self.b + other.b,
            {k: self.counts[k] + other.counts[k] for k in _COUNTS},
        )

    def empty(self) -> bool:
        return not (np.any(self.a) or np.any(self.b) or any(self.counts.values()))

    def to_arm(self, like: Arm) -> Arm:
        inv = np.linalg.inv(self.a)
        return dataclasses.replace(
            like,
            a_inv=np.asarray((inv + inv.T) / 2, dtype=np.float64),
            b=self.b.copy(),
            n=self.counts["n"],
            feedback_n=round(self.counts["feedback_n"]),
            q_sum=self.counts["q_sum"],
            failures=round(self.counts["failures"]),
            _theta=None,
        )


class SharedLearning:
    """Syncs one :class:`BanditLearner` with the fleet's sums in Redis."""

    def __init__(
        self,
        learner: BanditLearner,
        link: RedisLink,
        *,
        interval_s: float = 1.0,
        publish_loaded: bool = True,
    ) -> None:
        self.learner = learner
        self.link = link
        self.interval_s = interval_s
        dim, ridge = learner.features.dim, learner.ridge
        self._prior = _Stats.prior(dim, ridge)
        #: per arm: what it held after the last sync (all it had published, plus the fleet's)
        self._base: dict[str, _Stats] = {}
        if not publish_loaded:  # the state file another worker publishes: not ours to add
            self._base = {n: _Stats.of(a) for n, a in learner.arms.items()}
        self._merge = link.client.register_script(_MERGE)
        self.up = True
        self.syncs = 0
        p = link.prefix
        self._meta, self._names = f"{p}learn:meta", f"{p}learn:arms"

    @classmethod
    def maybe(cls, learner: Any, link: RedisLink, **kw: Any) -> SharedLearning | None:
        """Sharing for a bandit learner; None for a learner with no learned state."""
        return cls(learner, link, **kw) if isinstance(learner, BanditLearner) else None

    def _arm_key(self, name: str) -> str:
        return f"{self.link.prefix}learn:arm:{name}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: one sync at start (the fleet's state before the first stream,
        when Redis answers), then one every ``interval_s``."""
        with trio.move_on_after(3):  # each call is bounded by the link's timeout anyway
            await self.sync()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.sync()

    async def sync(self) -> bool:
        """Send the local deltas, read the fleet's sums, install them; False (and local
        state kept) when Redis did not answer."""
        learner = self.learner
        sent = {n: _Stats.of(a) for n, a in learner.arms.items()}
        deltas = {n: s.minus(self._base.get(n, self._prior)) for n, s in sent.items()}
        dim = str(learner.features.dim)
        keys = (self._meta, self._names)

        def exchange() -> dict[str, dict[bytes, bytes]]:
            client = self.link.client
            pipe = client.pipeline(transaction=False)
            for name, d in deltas.items():
                if d.empty():
                    continue
                args = [
                    dim,
                    name,
                    json.dumps(d.a.ravel().tolist()),
                    json.dumps(d.b.tolist()),
                    json.dumps(d.counts),
                ]
                self._merge(keys=[self._arm_key(name), *keys], args=args, client=pipe)
            pipe.execute()
            names = sorted(n.decode() for n in client.smembers(self._names))
            read = client.pipeline(transaction=False)
            for name in names:
                read.hgetall(self._arm_key(name))
            return dict(zip(names, read.execute(), strict=True))

        try:
            fleet = await self.link.call(exchange)
        except RedisError as exc:
            if self.up:
                self.up = False
                log.warning(
                    "Redis unreachable: routing keeps learning from local state",
                    extra={"redis": redacted(self.link.url), "error": str(exc)},
                )
            return False
        if not self.up:
            self.up = True
            log.info("Redis reachable again: routing state shared", extra={"arms": len(fleet)})
        self._install(fleet, sent)
        self.syncs += 1
        return True

    def _install(self, fleet: dict[str, dict[bytes, bytes]], sent: dict[str, _Stats]) -> None:
        learner = self.learner
        dim = learner.features.dim
        for name, fields in fleet.items():
            try:
                a = np.asarray(json.loads(fields.get(b"A", b"[]")), dtype=np.float64)
                b = np.asarray(json.loads(fields.get(b"b", b"[]")), dtype=np.float64)
                counts = {k: float(fields.get(k.encode(), b"0")) for k in _COUNTS}
            except (ValueError, TypeError):
                log.warning("routing state in Redis unreadable", extra={"arm": name})
                continue
            if a.size == 0:
                a = np.zeros(dim * dim)
            if b.size == 0:
                b = np.zeros(dim)
            if a.size != dim * dim or b.size != dim:
                continue
            total = self._prior.plus(_Stats(a.reshape(dim, dim), b, counts))
            arm = learner.arms.get(name)
            if arm is not None:  # what it learned while the exchange was in flight
                since = _Stats.of(arm).minus(sent.get(name, self._prior))
                mine = total.plus(since)
            else:
                arm = Arm.prior(dim, learner.ridge)
                mine = total
            try:
                learner.arms[name] = mine.to_arm(arm)
            except np.linalg.LinAlgError:
                continue
            self._base[name] = total
