"""What the router does with one stream, from SYN to FINAL (the seed's sequence diagram).

1. Task: the SYN payload (:func:`atp_proto.messages.parse_task`; EPROTO).
2. Policy: :meth:`Policy.decide` — allowed (ESEC naming the rule otherwise), the lane cap,
   the candidates (the configured adapters, or those named in ``meta.adapters``), the
   fan-out width, the escalation rule, the router's cap on the budget window.
3. Preflight: ``Estimate`` from every candidate at once, guard-banded; those that would
   overflow the budget are not started (EBUDGET when none is left) — :mod:`.preflight`.
4. Admission: a slot from the global, lane-aware :class:`Admission` (EPREEMPT if shed).
5. Fan-out and failover, charging the stream's :class:`BudgetLedger` — :mod:`.fanout`.
   The learner (:mod:`.learning`, ``RoutingContext.learner``) orders the plan: it sees
   the task, lane, tenant plan, prompt and the guard-banded estimates, and names the
   order to try; it observes every finished or failed stream. The decision id it is
   asked under is carried by the FINAL (``ext.telemetry.decision_id``) for feedback.
6. The strategy (:mod:`.execute`, :mod:`.strategies`): consensus and escalation
   (champion / challenger, :mod:`.merge`, :mod:`.escalation`), cascade, first_good,
   quorum, best_confidence, vote; ECONSENSUS when no answer qualifies. The stream's first
   call may be hedged (:mod:`.hedging`, ``Decision.hedge``).
7. FINAL (FIN) with the answer and telemetry: usage, adapters tried, winner and why,
   decision id, savings against the strongest candidate — :mod:`.telemetry`.
8. The decision log (``RoutingContext.audit``, :mod:`atp_proto.router.audit`): one
   record per stream, queued off the hot path.

The ledger is the only copy of the stream's budget: the session hands it every
WINDOW_UPDATE's window (``StreamOutput.on_window``), so a raise reaches failover and
escalation, and a lowering below what was spent ends the stream at once with EBUDGET
(ATP-BUDGET-005/010). The first DATA frame of a stream whose lane the policy lowered
carries ext ``lane`` (ATP-SEC-015).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import trio

from atp_proto.adapters import TaskRequest
from atp_proto.frames import (
    ATPError,
    BudgetExceeded,
    BudgetWindow,
    ErrorCode,
    ProtocolError,
    QoS,
    StreamOpened,
)
from atp_proto.frames._cbor import EncodedExt
from atp_proto.messages import final_body, final_body_streamed, meta_final_streamed, parse_task
from atp_proto.router.admission import Shed
from atp_proto.router.budget import BudgetLedger

from . import preflight
from ._emit import Emitter
from ._model import Candidate, Outcome, StreamFailed
from ._output import SessionInfo, StreamOutput
from .context import RoutingContext
from .execute import execute
from .fanout import FanOut
from .learning import CandidateView, Observation, Ranking, RouteQuery
from .policy import Decision, PolicyInput, decide
from .strategies import answer_key
from .telemetry import Savings, final_ext, record_savings, record_stream, savings

__all__ = ["TTL_GRACE_MS", "StreamRun"]

log = logging.getLogger("atp.router")

#: Adapter calls get the stream's TTL plus this much: the router's own TTL timer must
#: decide an expired stream (ETIMEOUT, ATP-TIME-001), not an adapter's deadline racing it.
TTL_GRACE_MS = 250

#: The smallest FINAL ext this router can send (ATP-STRAT-007's fallback: the keys of
#: ATP-BUDGET-006 and decision_id, zero counters, no adapter named): a stream whose window
#: cannot carry it is refused at the SYN, before any adapter is called or billed
#: (ATP-FLOW-014), not after the answer was paid for.
MIN_FINAL_EXT = len(
    EncodedExt(
        {
            "telemetry": {
                "tokens": 0,
                "usd_micros": 0,
                "latency_ms": 0,
                "adapters": [],
                "decision_id": "0" * 16,
            }
        }
    ).cbor
)


class StreamRun:
    """Runs one stream; created per SYN by the router's stream runner."""

    def __init__(
        self, ctx: RoutingContext, info: SessionInfo, ev: StreamOpened, output: StreamOutput
    ) -> None:
        self.ctx = ctx
        self.info = info
        self.ev = ev
        self.output = output
        self.ledger = BudgetLedger(ev.window, BudgetWindow(), stream_id=ev.stream_id)
        self.emit = Emitter(output, ctx.config.write_stall_s)
        self._scope = trio.CancelScope()
        self._stopped: BudgetExceeded | None = None  #: by a WINDOW_UPDATE
        self._finished = False
        #: the id the learner decided under (FINAL ext telemetry.decision_id, feedback)
        self.decision_id = secrets.token_hex(8)
        self._query: RouteQuery | None = None
        self._outcomes: list[Outcome] = []
        self._winner: str | None = None
        self.ev_task_type = ""
        self._decision: Decision | None = None
        self._plan: preflight.Plan | None = None
        self._ranking: Ranking | None = None
        self._why = ""
        self._saved: Savings | None = None
        #: told the guard-banded estimate of the work the preflight chose (tokens, usd):
        #: the tenant quota lowers the stream's hold to it (ATP-BUDGET-017); None: no hold
        self.on_plan: Callable[[float, float], None] | None = None

    def _on_window(self, window: BudgetWindow) -> None:
        """A WINDOW_UPDATE's budget window (called by the session, never blocks)."""
        try:
            self.ledger.apply(window)
        except BudgetExceeded as exc:
            if not self._finished and self._stopped is None:
                self._stopped = exc
                self._scope.cancel()  # stop the adapters now, not at the next chunk

    async def run(self) -> None:
        metrics, output = self.ctx.metrics, self.output
        started = trio.current_time()
        metrics.streams_active.inc(output.lane.label)
        outcome = "error"
        output.on_window = self._on_window
        try:
            with self._scope:
                await self._route(started)
            if self._stopped is not None:
                raise self._stopped
            outcome = "ok"
        except ProtocolError:
            raise  # the stream is gone under us (reset between checkpoints): the session knows
        except ATPError as exc:
            outcome = str(exc.code)
            output.send_error(exc.code, exc.message, exc.retry_after_ms)
        except trio.Cancelled:
            outcome = "reset" if output.reset is not None else "cancelled"
            raise
        finally:
            output.on_window = None
            self._observe()
            tenant = getattr(self.info.principal, "tenant", "")
            latency = trio.current_time() - started
            record_stream(metrics, output.lane.label, outcome, latency, tenant, self.ledger.tokens)
            record_savings(metrics, tenant, self.ledger.usd_micros, self._saved)
            if self.ctx.audit is not None:
                self._audit(outcome, tenant, latency)

    def _observe(self) -> None:
        """Tell the learner what the stream's adapter calls gave (never raises)."""
        query = self._query
        if query is None:
            return
        observations = [
            Observation(
                adapter=o.adapter,
                ok=o.finished and o.error is None,
                confidence=o.confidence if o.finished else None,
                tokens=o.tokens,
                usd_micros=o.usd_micros,
                latency_ms=o.latency_ms,
                agreed=self._agreed(o),
            )
            for o in self._outcomes
            if not o.cancelled  # a hedge's loser was cut short by the router
        ]
        try:
            self.ctx.learner.observe(query, observations, self._winner)
        except Exception:  # a learner's bug must not fail a stream that is done
            log.exception("learner.observe failed")

    def _agreed(self, o: Outcome) -> bool | None:
        """Whether a finished answer agreed with the winner's under the stream's comparator
        (None when there was nothing to compare it with)."""
        finished = [x for x in self._outcomes if x.finished and not x.cancelled]
        winner = next((x for x in finished if x.adapter == self._winner), None)
        if winner is None or len(finished) < 2 or not o.finished:
            return None
        comparator = self._decision.comparator if self._decision else "exact"
        key = answer_key(winner.answer, comparator)
        return key is not None and answer_key(o.answer, comparator) == key

    def _rank(self, lane: QoS, plan: preflight.Plan, prompt: str, plan_name: str) -> Ranking:
        """Ask the learner for the order to try the estimated candidates in."""
        views = tuple(CandidateView(c.name, c.guarded_tokens, c.guarded_usd) for c in plan.ranked)
        tenant = getattr(self.info.principal, "tenant", "")
        money = self.ledger.window.max_usd_micros
        self._query = query = RouteQuery(
            decision_id=self.decision_id,
            tenant=tenant,
            plan=plan_name,
            task_type=self.ev_task_type,
            lane=lane,
            prompt=prompt,
            candidates=views,
            budget_usd_micros=money or 0,
        )
        ranking = self.ctx.learner.rank(query)
        known = {c.name for c in plan.ranked}
        if not ranking.order or any(n not in known for n in ranking.order):
            log.warning("learner returned an invalid order; cheap-first is used")
            return Ranking(order=tuple(c.name for c in plan.ranked))
        return ranking

    def _move_lane(self, lane: QoS) -> None:
        """The policy capped the lane (before any output): the stream counts, and its
        output is scheduled, in the lane it runs in (ATP-SEC-004)."""
        active = self.ctx.metrics.streams_active
        active.inc(self.output.lane.label, by=-1)
        self.output.set_lane(lane)
        active.inc(lane.label)

    async def _route(self, started: float) -> None:
        ctx, ev, ledger, emit = self.ctx, self.ev, self.ledger, self.emit
        room = getattr(self.output, "max_ext_len", None)
        if room is not None and (have := room()) < MIN_FINAL_EXT:
            raise StreamFailed(
                ErrorCode.ETOOBIG,
                f"the stream's initial_window leaves {have} bytes for the FINAL's ext, and "
                f"its required telemetry needs at least {MIN_FINAL_EXT}: refused before any "
                "adapter call (ATP-FLOW-014)",
            )
        task = parse_task(ev)
        self.ev_task_type = task.task_type
        # ATP-FINAL-001: refused before any adapter is asked
        streamed = meta_final_streamed(task.meta, ev.stream_id)
        decision = await decide(
            ctx.policy, PolicyInput(self.info.principal, task, ev.qos, tuple(ctx.adapters))
        )
        self._decision = decision  # the decision log records denials too, with their rule
        if not decision.allow:
            raise StreamFailed(ErrorCode.ESEC, f"{decision.reason} (rule: {decision.rule})")
        lane = decision.lane
        if lane != self.output.lane:
            self._move_lane(lane)
        asked = ev.qos if ev.qos is not QoS.UNSPECIFIED else QoS.SILVER
        emit.first_ext = {"lane": lane.label} if lane > asked else None
        ledger.restrict(decision.window)
        request = TaskRequest(
            task_type=task.task_type,
            prompt=task.prompt,
            content=task.content,
            max_tokens=task.window.max_tokens,
            meta=task.meta,
            request_id=f"{self.info.session_id}-{ev.stream_id}",
            deadline_ms=task.ttl * 1000 + TTL_GRACE_MS if task.ttl else None,
        )
        if (shed := ctx.admission.refuse_now(lane)) is not None:
            # ATP-ADAPT-025: shed before the preflight's Estimate calls, not after them
            ctx.metrics.shed.inc(lane.label)
            raise shed
        candidates = [Candidate(n, ctx.adapters[n]) for n in decision.candidates]
        failures = await preflight.estimate(
            candidates, request, lane, ctx.config.estimate_timeout_s, ctx.estimates, ctx.metrics
        )
        plan = preflight.plan(candidates, ledger, failures)
        ranking = self._rank(lane, plan, task.prompt, decision.plan)
        position = {name: i for i, name in enumerate(ranking.order)}
        plan = preflight.Plan(
            sorted((c for c in plan.ranked if c.name in position), key=lambda c: position[c.name]),
            sorted((c for c in plan.fitting if c.name in position), key=lambda c: position[c.name]),
        )
        if not plan.fitting:
            raise StreamFailed(ErrorCode.EBUDGET, "no adapter the router chose fits the budget")
        width = min(decision.fanout, ledger.window.max_parallel or decision.fanout)
        if self.on_plan is not None:  # the calls the stream starts with, guard-banded
            starts = plan.fitting[: max(1, width)]
            self.on_plan(sum(c.guarded_tokens for c in starts), sum(c.guarded_usd for c in starts))
        try:
            await ctx.admission.acquire(lane)
        except Shed:
            ctx.metrics.shed.inc(lane.label)
            raise
        admitted = trio.current_time()
        fan = FanOut(ctx, request, ledger, emit)
        fan.hedge = decision.hedge
        self._outcomes = fan.outcomes
        self._plan, self._ranking = plan, ranking
        try:
            result = await execute(decision, ranking, plan, width, fan, emit)
        except BaseException as exc:
            # A client reset, a budget stop or a stalled reader says nothing about the
            # adapters: release without adapting the global limit (ATP-ERR-005). Every
            # adapter failing does: the limit backs off.
            ctx.admission.release(error=isinstance(exc, StreamFailed) and fan.all_failed)
            raise
        # Adapt on the time the adapters took (not the queueing before admission, nor
        # the waits for the client's credit).
        ctx.admission.release(latency_s=trio.current_time() - admitted - emit.client_wait_s)
        await emit.wait_writable()
        best = result.best
        self._winner, self._why = best.adapter, result.why
        self._saved = savings(
            plan.ranked, ranking.predicted_quality, fan.outcomes, ledger.usd_micros
        )
        ext = final_ext(ledger, fan.used, trio.current_time() - started, emit.take_first_ext())
        tel = ext["telemetry"]
        tel["decision_id"] = self.decision_id
        base = dict(tel)
        tel.update(
            strategy=decision.strategy,
            tried=[_tried(o) for o in fan.outcomes],
            winner=best.adapter,
            why=result.why,
        )
        if fan.hedged is not None:
            first, backup, won = fan.hedged
            tel["hedge"] = {"from": first, "to": backup, "won": won}
            if won:
                tel["why"] = self._why = (
                    f"{result.why}; hedged: {backup} answered first ({first} was slower "
                    "than its p95 to first chunk)"
                )
        if self._saved is not None:
            tel.update(self._saved)
        room = getattr(self.output, "max_ext_len", None)
        # encoded once, here: its size decides what it carries, and the session's sending
        # path and frame encoder take these bytes instead of encoding it twice more
        sent = EncodedExt(ext)
        if room is not None and len(sent.cbor) > room() // 2:
            # a small client window (ATP-FLOW-014): the required telemetry only (ATP-STRAT-007)
            ext["telemetry"] = base
            sent = EncodedExt(ext)
        if streamed and _answer_streamed(best, fan.outcomes):
            body = final_body_streamed(best.adapter, len(best.text), best.confidence)
        else:  # not asked, or the PARTIALs naming the winner are not its answer alone
            body = final_body(best.answer, best.adapter, best.confidence)
        self.output.send_final(body, ext=sent)
        self._finished = True

    def _audit(self, outcome: str, tenant: str, latency_s: float) -> None:
        """Queue the stream's decision record (ATP-AUDIT-001); never raises."""
        audit = self.ctx.audit
        assert audit is not None
        try:
            plan, ranking, decision = self._plan, self._ranking, self._decision
            record: dict[str, Any] = {
                "kind": "decision",
                "ts": round(time.time(), 3),
                "decision_id": self.decision_id,
                "tenant": tenant,
                "task_type": self.ev_task_type,
                "lane": self.output.lane.label,
                "allow": decision.allow if decision else None,
                "rule": decision.rule if decision else "",
                "strategy": decision.strategy if decision else None,
                "candidates": [_candidate(c, ranking) for c in plan.ranked] if plan else [],
                "choice": list(ranking.order) if ranking else [],
                "exploration": ranking.explored if ranking else False,
                "model": ranking.model if ranking else None,
                "scores": dict(ranking.scores) if ranking else {},
                "outcome": {
                    "status": outcome,
                    "winner": self._winner,
                    "why": self._why,
                    "tried": [_tried(o) for o in self._outcomes],
                    "tokens": self.ledger.tokens,
                    "usd_micros": self.ledger.usd_micros,
                    "latency_ms": round(latency_s * 1000),
                    **(self._saved or {}),
                },
                "reward": None,  #: a later "feedback" record carries it (ATP-AUDIT-002)
            }
            audit.append(record)
        except Exception:
            log.exception("audit record failed")


def _answer_streamed(best: Outcome, outcomes: list[Outcome]) -> bool:
    """Whether the PARTIALs naming the winner's adapter carry its answer and nothing else
    (ATP-FINAL-002): every text of the winning call went out as one PARTIAL
    (:meth:`FanOut.call` keeps a text once sent), and no other call of the stream under
    the same name sent any (this router calls an adapter once, but a hedge's cancelled
    call may be escalated to later: it sent nothing)."""
    return all(o is best or o.adapter != best.adapter or not o.text for o in outcomes)


def _tried(o: Outcome) -> dict[str, Any]:
    """One adapter call as telemetry and the decision log say it."""
    if o.cancelled:
        status = "cancelled"
    elif o.error is not None:
        status = str(o.error.code)
    else:
        status = "ok" if o.finished else "stopped"
    item: dict[str, Any] = {"adapter": o.adapter, "status": status}
    if o.finished:
        item["confidence"] = o.confidence
    item["usd_micros"] = o.usd_micros
    return item


def _candidate(c: Candidate, ranking: Ranking | None) -> dict[str, Any]:
    est = c.estimate
    item: dict[str, Any] = {
        "name": c.name,
        "est_tokens": round(c.guarded_tokens, 1),
        "est_usd_micros": round(c.guarded_usd, 1),
        "confidence": est.confidence if est else None,
    }
    if ranking is not None and c.name in ranking.predicted_quality:
        item["predicted_quality"] = ranking.predicted_quality[c.name]
    return item
