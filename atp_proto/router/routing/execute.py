"""Run a stream's strategy: which adapters are called, when, and whose answer wins
(ATP-STRAT-001…005). :mod:`.strategies` holds the pure choices; every call goes through
the stream's :class:`FanOut` (budget, ``max_parallel``, failover, hedging).

Every strategy that stops escalating short of an answer that qualifies ends the stream
with ECONSENSUS (``first_good``, ``quorum``, ``vote``); ``consensus``, ``best_confidence``
and ``cascade`` return their best answer when no stronger adapter is left. An escalation
(``consensus``, ``best_confidence``, ``cascade``) never calls an adapter weaker than the
champion (:func:`strategies.strength`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atp_proto.frames import ErrorCode

from . import merge
from ._emit import Emitter
from ._model import Candidate, Outcome, StreamFailed, adapter_failure
from .escalation import escalate
from .fanout import FanOut
from .learning import Ranking
from .policy import Decision
from .preflight import Plan
from .strategies import (
    STRATEGIES,
    answer_key,
    disagree,
    largest_group,
    pick_best_confidence,
    pick_first_good,
    pick_quorum,
    pick_vote,
    strength,
)

__all__ = ["Result", "execute"]

log = logging.getLogger("atp.router")


@dataclass
class Result:
    best: Outcome
    why: str  #: said in FINAL ext telemetry.why
    escalations: list[str] = field(default_factory=list)  #: adapters escalated to


def _econsensus(message: str) -> StreamFailed:
    return StreamFailed(ErrorCode.ECONSENSUS, message)


def _cost(c: Candidate) -> tuple[float, float]:
    return (c.guarded_usd, c.guarded_tokens)


class _Run:
    def __init__(
        self,
        decision: Decision,
        ranking: Ranking,
        plan: Plan,
        width: int,
        fan: FanOut,
        emit: Emitter,
    ) -> None:
        self.d, self.ranking, self.plan, self.width, self.fan, self.emit = (
            decision,
            ranking,
            plan,
            width,
            fan,
            emit,
        )
        self.by_name = {c.name: c for c in plan.ranked}
        self.pq = ranking.predicted_quality
        self.predicted = bool(self.pq) and all(n in self.pq for n in self.by_name)
        self.escalations: list[str] = []

    def strength(self, name: str) -> float:
        return strength(name, self.by_name, self.pq)

    def untried(self) -> list[Candidate]:
        """Candidates not called yet, or whose only call was a hedge the router cancelled
        before it said anything (it may still be escalated to)."""
        tried = {o.adapter for o in self.fan.outcomes if not o.cancelled}
        return [c for c in self.plan.ranked if c.name not in tried]

    def fits(self, c: Candidate) -> bool:
        return self.fan.ledger.fits(c.guarded_tokens, c.guarded_usd)

    async def step_to(self, champion: Outcome | None, cand: Candidate, reason: str) -> Outcome:
        """Call ``cand`` after ``champion`` did not do (a notice says why)."""
        await self.emit.wait_writable()
        if champion is None or not champion.finished:
            note: dict[str, Any] = {
                "failover": {"from": champion.adapter if champion else "", "to": cand.name}
            }
            self.emit.notice(note, 0.0)
        else:
            note = {
                "escalate": {
                    "from": champion.adapter,
                    "to": cand.name,
                    "confidence": champion.confidence,
                    "reason": reason,
                }
            }
            self.emit.notice(note, champion.confidence)
            self.escalations.append(cand.name)
            self.fan.ctx.metrics.escalations.inc(self.d.strategy)
        return await self.fan.call(cand)

    # ------------------------------------------------------------------ strategies

    async def consensus(self, pick: Callable[[list[Outcome]], Outcome | None], why: str) -> Result:
        outcomes = await self.fan.run(self.plan.fitting, self.plan.ranked, self.width)
        best = pick(outcomes)
        assert best is not None  # fan.run returns at least one finished outcome
        before = len(self.fan.outcomes)
        champion = await escalate(
            best,
            self.untried(),
            self.d.min_confidence,
            self.fan,
            self.emit,
            # ATP-STRAT-005: never weaker than the champion by the predicted quality (at
            # least equal), else by the estimate confidence (above it, as well as above
            # the answer's confidence, which next_challenger checks)
            floor=self.strength(best.adapter),
            strength=self.strength,
            strict=not self.predicted,
        )
        self.escalations += [o.adapter for o in self.fan.outcomes[before:]]
        if champion is not best:
            why = f"escalated: {best.adapter} answered with confidence {best.confidence:g}"
        return Result(champion, why, self.escalations)

    async def first_good(self) -> Result:
        floor = self.d.min_confidence
        last: Outcome | None = None
        done: list[Outcome] = []
        order = list(self.plan.ranked)
        first = True
        for cand in order:
            if not self.fits(cand) or any(
                o.adapter == cand.name and not o.cancelled for o in self.fan.outcomes
            ):
                continue  # too dear now, or called already (a hedge that answered)
            if first:
                out = await self.fan.first_call(cand, [c for c in order if c is not cand])
                first = False
            else:
                assert last is not None
                out = await self.step_to(last, cand, f"confidence below {floor:g}")
            done.append(out)
            good = pick_first_good([out], floor)
            if good is not None:
                why = "first answer with confidence >= " + format(floor, "g")
                return Result(good, why, self.escalations)
            last = out
        return self._none_qualifies(done, f"no answer reached min_confidence {floor:g}")

    def _none_qualifies(self, done: list[Outcome], message: str) -> Result:
        finished = [o for o in self.fan.outcomes if o.finished]
        if not finished:
            self.fan.all_failed = bool(self.fan.outcomes)  # the admission limit backs off
            errors = [o.error for o in self.fan.outcomes if o.error is not None]
            last = errors[-1] if errors else None
            raise adapter_failure(
                last, f"every adapter failed (last: {last.code if last else 'none tried'})"
            )
        best = pick_best_confidence(finished)
        assert best is not None
        raise _econsensus(f"{message} (best: {best.adapter} at {best.confidence:g})")

    async def quorum(self) -> Result:
        k, comp = self.d.quorum, self.d.comparator
        limit = self.fan.ledger.window.max_parallel
        # at least one call: max_parallel 0 is EWINDOW from the ledger, not "none tried"
        n = max(self.width, k) if limit is None else max(1, min(max(self.width, k), limit))
        outcomes = await self.fan.run(self.plan.fitting, self.plan.ranked, n)
        done = list(outcomes)
        while True:
            found = pick_quorum(done, k, comp)
            if found is not None:
                best, size = found
                return Result(best, f"quorum: {size} of {len(done)} answers agree ({comp})")
            left = [c for c in self.untried() if self.fits(c)]
            have = largest_group(done, comp)
            if not left or have + len(left) < k:
                answered = sum(1 for o in done if o.finished)
                keys = {answer_key(o.answer, comp) for o in done if o.finished}
                raise _econsensus(
                    f"quorum of {k} not reached: {answered} answers in {len(keys)} "
                    f"groups ({comp}), at most {have} agree"
                )
            champion = pick_best_confidence(done)
            done.append(await self.step_to(champion, left[0], f"{have} of {k} agree"))

    async def vote(self) -> Result:
        comp = self.d.comparator
        limit = self.fan.ledger.window.max_parallel
        n = max(self.width, 2) if limit is None else max(1, min(max(self.width, 2), limit))
        outcomes = await self.fan.run(self.plan.fitting, self.plan.ranked, n)
        found = pick_vote(outcomes, comp)
        if found is None:
            raise _econsensus(
                f"the confidence-weighted vote over {len(outcomes)} answers has no winner ({comp})"
            )
        best, share = found
        return Result(best, f"vote: {share:.0%} of the confidence weight ({comp})")

    async def cascade(self) -> Result:
        d = self.d
        fitting = self.plan.fitting
        if self.predicted:
            good = sorted((c for c in fitting if self.pq[c.name] >= d.min_quality), key=_cost)
            starts = good or [max(fitting, key=lambda c: self.pq[c.name])]
        else:
            starts = list(fitting)  # the learner's order (cheap-first by default)
        step = await self.fan.run(starts, self.plan.ranked, self.width)
        best = pick_best_confidence(step)
        assert best is not None
        champion, why = best, f"cascade: {best.adapter} was good enough"
        while True:
            reason = self._escalate_reason(champion, step)
            if reason is None:
                break
            floor = self.strength(champion.adapter)
            if not self.predicted:
                floor = max(floor, champion.confidence)
            stronger = [c for c in self.untried() if self.strength(c.name) > floor and self.fits(c)]
            if not stronger:
                why = f"cascade: {reason}; no stronger adapter left"
                break
            challenger = min(stronger, key=_cost)
            out = await self.step_to(champion, challenger, reason)
            if out.finished:
                why = f"cascade: escalated from {champion.adapter} ({reason})"
                champion, step = out, [out]
        return Result(champion, why, self.escalations)

    def _escalate_reason(self, champion: Outcome, step: list[Outcome]) -> str | None:
        d = self.d
        if champion.confidence < d.min_confidence:
            return f"confidence {champion.confidence:g} < {d.min_confidence:g}"
        if self.predicted and self.pq[champion.adapter] < d.min_quality:
            return f"predicted quality {self.pq[champion.adapter]:.2f} < {d.min_quality:g}"
        if disagree(step, d.comparator):
            return "answers disagree"
        return None


async def execute(
    decision: Decision, ranking: Ranking, plan: Plan, width: int, fan: FanOut, emit: Emitter
) -> Result:
    """The stream's answer by ``decision.strategy``.

    Raises:
        StreamFailed: ECONSENSUS when no answer qualifies; the adapters' mapped code when
            every call failed; EBUDGET / ETIMEOUT as the fan-out raises them.
    """
    run = _Run(decision, ranking, plan, width, fan, emit)
    s = decision.strategy
    if s not in STRATEGIES:  # a policy's bug: say it, and answer as the default would
        log.error("unknown strategy %r from the policy; consensus is used", s[:40])
    if s == "cascade":
        return await run.cascade()
    if s == "first_good":
        return await run.first_good()
    if s == "quorum":
        return await run.quorum()
    if s == "vote":
        return await run.vote()
    if s == "best_confidence":
        return await run.consensus(pick_best_confidence, "highest confidence")
    return await run.consensus(merge.choose, "consensus: agreement- and confidence-weighted")
