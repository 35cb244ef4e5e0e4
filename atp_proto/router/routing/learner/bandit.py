"""The learned ranker: contextual Thompson sampling over a multi-objective reward.

For each candidate the router estimated, the arm of that adapter (:mod:`.model`) gives a
posterior over the answer's quality for this prompt; one sample is drawn per candidate,
and candidates are ordered by ::

    reward = w_quality * sampled_quality - w_cost * cost / max_cost - w_latency * lat / max_lat

with the weights of the tenant's plan (:class:`Weights`), the guard-banded cost estimate
of the preflight and each arm's observed latency. Exploration is bounded per lane
(ATP-FEED-006): the sample's spread is scaled by the lane (gold least), and in gold an
adapter whose *mean* predicted quality is below the quality floor is never put first
while another candidate meets it. A decision between at most ``compete_max`` (2)
candidates is made greedily on the expected reward instead, exploring only among the
candidates that compete for the prompt, with a coin scaled by the same lane factor
(:meth:`BanditLearner._compete`; ``compete_c=0`` turns it off): the two-model sources
gain with it and the eleven-model one loses (benchmarks/RESULTS.md, "competing
candidates"), so larger decisions stay Thompson sampling.

What it learns from (ATP-FEED-005): a reported quality (feedback) for the adapter whose
answer the FINAL returned; without one, what the router saw: a failed call counts as
quality 0 at once; another adapter's answer that agreed (or not) with the chosen one
counts at a quarter weight; the winner's own confidence, when the adapter gave one,
counts (at half weight) once the decision expires unreported. Decisions wait for feedback in a
bounded TTL map (ATP-FEED-004): at most ``max_pending``, each for ``ttl_s``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from atp_proto.frames import QoS

from ..learning import CandidateView, Observation, Ranking, RouteQuery
from .features import DEFAULT_DIM, Featurizer
from .model import Arm, Vector

__all__ = ["BanditLearner", "LaneBounds", "Weights", "parse_weights"]


@dataclass(frozen=True, slots=True)
class Weights:
    """How a plan trades quality against cost and latency (all >= 0)."""

    quality: float = 1.0
    cost: float = 0.1  #: reward lost by the most expensive candidate, against a free one
    latency: float = 0.02  #: the same for the slowest candidate


@dataclass(frozen=True, slots=True)
class LaneBounds:
    """Exploration per lane: the spread of the samples, and gold's quality floor."""

    explore: Mapping[QoS, float] = field(
        default_factory=lambda: {QoS.GOLD: 0.2, QoS.SILVER: 1.0, QoS.BRONZE: 1.5}
    )
    gold_floor: float = 0.6  #: gold never puts first a candidate predicted below this


def parse_weights(text: str) -> dict[str, Weights]:
    """``PLAN=Q,C,L[;PLAN=...]`` (e.g. ``default=1,0.1,0.02;free=1,0.5,0``).

    Raises:
        ValueError: the message says what is wrong.
    """
    out: dict[str, Weights] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        plan, sep, nums = item.partition("=")
        parts = nums.split(",")
        if not sep or not plan.strip() or len(parts) != 3:
            raise ValueError(f"routing weights: expected PLAN=QUALITY,COST,LATENCY, got {item!r}")
        try:
            q, c, lat = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"routing weights: not numbers in {item!r}") from None
        if min(q, c, lat) < 0 or not all(map(np.isfinite, (q, c, lat))):
            raise ValueError(f"routing weights: must be finite and >= 0 in {item!r}")
        out[plan.strip()] = Weights(q, c, lat)
    return out


@dataclass(slots=True)
class _Pending:
    """A decision waiting for feedback. Its feature vector is kept sparse, in float32:
    a prompt sets a few dozen of the vector's entries, and the map holds up to
    ``max_pending`` decisions (a dense vector each would be 4 KiB: 400 MB at 100,000;
    sparse, a few hundred bytes). The values are kept exact (float64)."""

    idx: npt.NDArray[np.int32]
    val: npt.NDArray[np.float64]
    dim: int
    deadline: float
    tenant: str = ""
    winner: str | None = None
    confidence: float | None = None
    observed: bool = False

    @classmethod
    def of(cls, x: Vector, deadline: float, tenant: str) -> _Pending:
        idx = np.flatnonzero(x).astype(np.int32)
        return cls(idx, x[idx].copy(), len(x), deadline, tenant)

    @property
    def x(self) -> Vector:
        dense = np.zeros(self.dim, dtype=np.float64)
        dense[self.idx] = self.val
        return dense


class BanditLearner:
    """:class:`~atp_proto.router.routing.learning.Learner` with learned quality models."""

    name = "bandit"

    def __init__(
        self,
        *,
        dim: int = DEFAULT_DIM,
        ridge: float = 10.0,
        bias_ridge: float | None = 1.0,
        dense_ridge: float | None = None,
        noise: float = 0.25,
        weights: Mapping[str, Weights] | None = None,
        lanes: LaneBounds | None = None,
        ttl_s: float = 3600.0,
        max_pending: int = 100_000,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        context_explore: float = 1.0,
        shared_draw: bool = False,
        task_weight: float = 1.0,
        compete_c: float = 20.0,
        compete_z: float = 3.0,
        compete_pick: str = "draw",
        compete_max: int = 2,
    ) -> None:
        #: ``task_weight``: the value of the task type's own feature (1.0: as before; a
        #: larger value is a weaker prior on it, see :class:`.features.Featurizer`)
        self.features = Featurizer(dim, task_weight=task_weight)
        #: one standard normal per decision, shared by every candidate's draw, instead of
        #: one per candidate (:meth:`rank`)
        self.shared_draw = shared_draw
        #: how much more the prompt's own features (hashed words, not the dense head)
        #: count in a Thompson draw's spread than the posterior gives them; 1.0 is plain
        #: Thompson sampling, the default: a larger factor was tried for the online goal
        #: and lost (benchmarks/RESULTS.md, routing levers); kept to reproduce that A/B
        if not context_explore > 0 or not np.isfinite(context_explore):
            raise ValueError("context_explore must be a finite number > 0")
        self.context_explore = context_explore
        #: ``compete_c`` > 0 (20, the default): choose greedily on the expected reward
        #: and explore only among the candidates that compete for the prompt
        #: (:meth:`_compete`), in decisions among at most ``compete_max``; 0 is plain
        #: Thompson sampling everywhere. ``compete_z``: how many posterior
        #: standard deviations make two candidates' intervals overlap; ``compete_pick``:
        #: whom the coin puts first, the least-observed competitor ("least", forced
        #: exploration) or the best of a Thompson draw among the competitors ("draw").
        if not compete_c >= 0 or not np.isfinite(compete_c):
            raise ValueError("compete_c must be a finite number >= 0")
        if not compete_z >= 0 or not np.isfinite(compete_z):
            raise ValueError("compete_z must be a finite number >= 0")
        if compete_pick not in ("least", "draw"):
            raise ValueError("compete_pick must be 'least' or 'draw'")
        if compete_max < 0:
            raise ValueError("compete_max must be >= 0")
        #: the option applies to decisions among at most ``compete_max`` candidates (2 by
        #: default: the two-model sources gain with it, the eleven-model one loses,
        #: benchmarks/RESULTS.md); larger decisions are plain Thompson sampling
        self.compete_max = compete_max
        self.compete_c = compete_c
        self.compete_z = compete_z
        self.compete_pick = compete_pick
        self.ridge = ridge
        self.bias_ridge = bias_ridge
        #: the prior precision of the dense shape features (lengths, numbers; 1..7), None:
        #: ``ridge`` as the words (the default). 1.0 learns a prompt-shape rule far sooner
        #: (generated data) but loses on public.jsonl's MT-Bench offline and arena online
        #: (benchmarks/RESULTS.md, "on data it has never seen"): kept for that A/B
        self.dense_ridge = dense_ridge
        self.noise = noise
        self.weights: dict[str, Weights] = {"default": Weights(), **(weights or {})}
        self.lanes = lanes or LaneBounds()
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self.arms: dict[str, Arm] = {}
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.updates = 0  #: quality updates since start (persistence: dirty when it moves)
        self.decisions = 0
        self.explorations = 0

    # ------------------------------------------------------------------ model access

    def arm(self, name: str) -> Arm:
        arm = self.arms.get(name)
        if arm is None:
            arm = self.arms[name] = Arm.prior(
                self.features.dim, self.ridge, self.bias_ridge, self.dense_ridge
            )
        return arm

    def vector(self, prompt: str, task_type: str) -> Vector:
        return self.features.vector(prompt, task_type)

    def predict(self, x: Vector, names: Sequence[str], *, clip: bool = True) -> dict[str, float]:
        """Mean predicted quality per adapter (clipped to [0, 1] unless ``clip`` is False:
        :meth:`rank` compares unclipped means); no sampling."""
        idx = np.flatnonzero(x)
        means = {n: self.arm(n).predict(x, idx)[0] for n in names}
        return {n: min(1.0, max(0.0, m)) for n, m in means.items()} if clip else means

    # ------------------------------------------------------------------ Learner

    def rank(self, query: RouteQuery) -> Ranking:
        now = self.clock()
        self._expire(now)
        if not query.candidates:
            return Ranking(order=(), model=self.name)
        x = self.vector(query.prompt, query.task_type)
        w = self.weights.get(query.plan) or self.weights["default"]
        spread = self.lanes.explore.get(query.lane, 1.0) * self.noise
        names = [c.name for c in query.candidates]
        max_cost = max((c.est_usd_micros for c in query.candidates), default=0.0)
        lats = {n: self.arm(n).latency_ms for n in names}
        max_lat = max(lats.values(), default=0.0)
        means: dict[str, float] = {}
        sampled: dict[str, float] = {}
        expected: dict[str, float] = {}
        idx = np.flatnonzero(x)  # once for every candidate (Arm.predict)
        if self.compete_c > 0 and len(query.candidates) <= self.compete_max:
            return self._compete(query, x, idx, w, max_cost, lats, max_lat, now)
        z = float(self.rng.standard_normal()) if self.shared_draw else 0.0
        for c in query.candidates:
            arm = self.arm(c.name)
            mean, var = arm.predict(x, idx)
            if self.context_explore != 1.0:
                var = arm.variance(x, idx, self.context_explore)
            e = z if self.shared_draw else float(self.rng.standard_normal())
            draw = mean + spread * np.sqrt(var) * e
            penalty = _penalty(c, w, max_cost, lats[c.name], max_lat)
            means[c.name] = min(1.0, max(0.0, mean))
            sampled[c.name] = w.quality * draw - penalty
            expected[c.name] = w.quality * mean - penalty
        order = sorted(names, key=lambda n: -sampled[n])
        best = max(names, key=lambda n: expected[n])
        return self._decided(query, x, now, order, best, means, sampled)

    def _compete(
        self,
        query: RouteQuery,
        x: Vector,
        idx: npt.NDArray[np.intp],
        w: Weights,
        max_cost: float,
        lats: Mapping[str, float],
        max_lat: float,
        now: float,
    ) -> Ranking:
        """Greedy with exploration among the competitors (``compete_c`` > 0).

        The candidates are ordered by expected reward (the posterior mean, no draw). The
        ones that *compete* for this prompt are those whose interval, expected reward
        plus ``compete_z`` posterior standard deviations (``noise * sqrt(var)``), reaches
        the best's minus its own: with probability ``lane factor * compete_c / (1 + n)``,
        ``n`` the answer weight of the least-observed competitor, the first place goes to
        that competitor (``compete_pick="least"``) or to the best of a Thompson draw among
        the competitors only (``"draw"``; the lane factor scales the draw's spread as in
        plain Thompson sampling). A candidate known to be worse for this
        kind of prompt is not a competitor and is not explored; early on every candidate
        competes and the coin is nearly sure (Thompson sampling); as the competitors
        are observed the coin fades and the choice is the greedy one, which does not
        randomise the choices near the trade-off threshold. Gold's quality floor still
        applies afterwards (ATP-FEED-006), and gold's factor (the smallest) makes it
        explore least.
        """
        factor = self.lanes.explore.get(query.lane, 1.0)
        names = [c.name for c in query.candidates]
        means: dict[str, float] = {}
        expected: dict[str, float] = {}
        sd: dict[str, float] = {}
        for c in query.candidates:
            mean, var = self.arm(c.name).predict(x, idx)
            penalty = _penalty(c, w, max_cost, lats[c.name], max_lat)
            means[c.name] = min(1.0, max(0.0, mean))
            expected[c.name] = w.quality * mean - penalty
            sd[c.name] = w.quality * self.noise * float(np.sqrt(var))
        order = sorted(names, key=lambda n: -expected[n])
        best = order[0]
        low = expected[best] - self.compete_z * sd[best]
        rivals = [n for n in order if expected[n] + self.compete_z * sd[n] >= low]
        scores = dict(expected)
        if len(rivals) > 1:
            least = min(self.arm(n).n for n in rivals)
            coin = min(1.0, factor * self.compete_c / (1.0 + least))
            if self.rng.random() < coin:
                if self.compete_pick == "least":
                    first = min(rivals, key=lambda n: self.arm(n).n)
                else:
                    draw = {
                        n: expected[n] + factor * sd[n] * float(self.rng.standard_normal())
                        for n in rivals
                    }
                    first = max(rivals, key=lambda n: draw[n])
                    scores.update(draw)
                order = [first, *(n for n in order if n != first)]
        return self._decided(query, x, now, order, best, means, scores)

    def _decided(
        self,
        query: RouteQuery,
        x: Vector,
        now: float,
        order: list[str],
        best: str,
        means: dict[str, float],
        scores: Mapping[str, float],
    ) -> Ranking:
        """The ranking of ``order`` (gold's quality floor applied), counted as explored
        when its first is not ``best`` (the greatest expected reward), and remembered for
        the decision's feedback."""
        if query.lane is QoS.GOLD:
            order = self._gold_floor(order, means)
        explored = order[0] != best
        self.decisions += 1
        self.explorations += explored
        self._remember(query.decision_id, x, now, query.tenant)
        return Ranking(
            order=tuple(order),
            predicted_quality=means,
            explored=explored,
            scores={c.name: round(scores[c.name], 6) for c in query.candidates},
            model=self.name,
        )

    def _gold_floor(self, order: list[str], means: Mapping[str, float]) -> list[str]:
        """Gold: the first candidate meets the quality floor when any candidate does."""
        floor = self.lanes.gold_floor
        if means[order[0]] >= floor:
            return order
        good = [n for n in order if means[n] >= floor]
        if not good:  # none meets it: the best predicted quality first
            first = max(order, key=lambda n: means[n])
        else:
            first = good[0]
        return [first, *(n for n in order if n != first)]

    def observe(
        self, query: RouteQuery, observations: Sequence[Observation], winner: str | None
    ) -> None:
        now = self.clock()
        pending = self.pending.get(query.decision_id)
        x = pending.x if pending is not None else self.vector(query.prompt, query.task_type)
        for o in observations:
            arm = self.arm(o.adapter)
            if o.ok:
                arm.observe_latency(o.latency_ms)
                if o.agreed is not None and o.adapter != winner:
                    # agreeing with the chosen answer is weak evidence of quality
                    arm.update(x, 1.0 if o.agreed else 0.0, weight=0.25)
                    self.updates += 1
            else:
                arm.failures += 1
                arm.update(x, 0.0)  # the router saw it fail: no answer is quality 0
                self.updates += 1
        if pending is None:
            return
        pending.observed = True
        pending.winner = winner
        pending.deadline = now + self.ttl_s
        self.pending.move_to_end(query.decision_id)  # keeps the map ordered by deadline
        if winner is None:
            self.pending.pop(query.decision_id, None)  # nothing to report on
            return
        for o in observations:
            if o.adapter == winner and o.ok:
                pending.confidence = o.confidence

    def feedback(self, decision_id: str, quality: float, *, source: str = "client") -> bool:
        """Quality in [0, 1] of the answer of finished stream ``decision_id``; True when it
        was taken (the decision is known, finished with an answer, and not reported yet)."""
        self._expire(self.clock())
        if not 0.0 <= quality <= 1.0:  # NaN fails this too
            return False
        pending = self.pending.get(decision_id)
        if pending is None or not pending.observed or pending.winner is None:
            return False
        del self.pending[decision_id]
        arm = self.arm(pending.winner)
        arm.update(pending.x, quality)
        arm.feedback_n += 1
        self.updates += 1
        return True

    # ------------------------------------------------------------------ bookkeeping

    def owner(self, decision_id: str) -> str | None:
        """The tenant a pending decision was made for (None: unknown or expired)."""
        p = self.pending.get(decision_id)
        return None if p is None else p.tenant

    def _remember(self, decision_id: str, x: Vector, now: float, tenant: str) -> None:
        self.pending[decision_id] = _Pending.of(x, now + self.ttl_s, tenant)
        while len(self.pending) > self.max_pending:
            _, old = self.pending.popitem(last=False)
            self._settle(old)

    def _expire(self, now: float) -> None:
        # deadlines only grow along the map's order except for observed entries, which
        # are re-dated: scan from the oldest while expired
        while self.pending:
            key, first = next(iter(self.pending.items()))
            if first.deadline > now:
                break
            del self.pending[key]
            self._settle(first)

    def _settle(self, p: _Pending) -> None:
        """An unreported decision leaves the map: the adapter's confidence stands in."""
        if p.observed and p.winner is not None and p.confidence is not None:
            self.arm(p.winner).update(p.x, p.confidence, weight=0.5)
            self.updates += 1


def _penalty(c: CandidateView, w: Weights, max_cost: float, lat: float, max_lat: float) -> float:
    """What a candidate's cost and latency take off its reward (each over the largest of
    the candidates), and the whole quality weight for a known-unhealthy adapter (last)."""
    penalty = w.cost * (c.est_usd_micros / max_cost if max_cost > 0 else 0.0)
    penalty += w.latency * (lat / max_lat if max_lat > 0 else 0.0)
    if not c.healthy:
        penalty += w.quality
    return penalty
