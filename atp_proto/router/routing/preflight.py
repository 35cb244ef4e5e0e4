"""Preflight: ask every candidate for an estimate at once, guard-band it, and keep those
that fit the budget (ATP-BUDGET-002, ATP-ADAPT-011).

An estimate is guard-banded as mean + k·sqrt(variance) with k = 2 gold, 1 silver, 0.5
bronze (money scaled alike); candidates whose guard-banded cost would overflow the
stream's budget (its live ledger) are not started (EBUDGET when none is left). The plan
ranks every estimated candidate cheap-first: failover and escalation pick from it later
against the live window, which a WINDOW_UPDATE may have raised or lowered.

An adapter whose last reply for the task's class allowed reuse (``max_age_ms``,
ATP-BUDGET-018) is answered from :class:`~.estimate_cache.EstimateCache` without a
round trip; the guard band is applied to a reused estimate exactly as to a fresh one. A
failed or timed-out ``Estimate`` drops the adapter's reusable estimates (ATP-BUDGET-019).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio

from atp_proto.adapters import AdapterError, CostEstimate, TaskRequest
from atp_proto.frames import ErrorCode, QoS
from atp_proto.router.budget import BudgetLedger
from atp_proto.router.metrics import RouterMetrics

from ._model import Candidate, StreamFailed, adapter_failure
from .estimate_cache import EstimateCache, Key, cache_key

__all__ = ["GUARD_K", "Plan", "estimate", "plan"]

log = logging.getLogger("atp.router")

GUARD_K = {QoS.GOLD: 2.0, QoS.SILVER: 1.0, QoS.BRONZE: 0.5}


@dataclass(frozen=True, slots=True)
class Plan:
    ranked: list[Candidate]  #: every estimated candidate, cheap first
    fitting: list[Candidate]  #: those that fit the budget now, cheap first


def _guard(c: Candidate, est: CostEstimate, k: float) -> None:
    """ATP-BUDGET-002: mean + k·sqrt(variance), money scaled alike."""
    c.estimate = est
    sd = math.sqrt(max(est.variance, 0.0))
    c.guarded_tokens = est.tokens + k * sd
    scale = c.guarded_tokens / est.tokens if est.tokens else 1.0
    c.guarded_usd = est.usd_micros * scale


async def estimate(
    candidates: list[Candidate],
    task: TaskRequest,
    lane: QoS,
    timeout_s: float,
    cache: EstimateCache | None = None,
    metrics: RouterMetrics | None = None,
) -> list[AdapterError]:
    """Fill each candidate's guard-banded estimate, all at once, each bounded by
    ``timeout_s``; a candidate ``cache`` holds a live estimate for is answered from it
    (ATP-BUDGET-018). Returns the estimate failures in the order they came."""
    k = GUARD_K.get(lane, 1.0)
    failures: list[AdapterError] = []
    key: Key | None = None  # computed only when an adapter has or gives a reusable one
    asked = candidates
    if cache is not None:
        now, asked = trio.current_time(), []
        for c in candidates:
            reused = None
            if cache.holds(c.name):
                key = key or cache_key(task)
                reused = cache.get(c.name, c.adapter, key, now)
            if reused is None:
                asked.append(c)
            else:
                _guard(c, reused, k)
                if metrics is not None:
                    metrics.estimates.inc(c.name, "reused")
        if not asked:
            return failures  # every candidate answered from a reused estimate

    async def one(c: Candidate) -> None:
        nonlocal key
        if metrics is not None:
            metrics.estimates.inc(c.name, "called")
        gen = None if cache is None else cache.generation(c.name)
        with trio.move_on_after(timeout_s) as scope:
            try:
                est = await c.adapter.estimate(task)
            except AdapterError as exc:
                log.info(
                    "estimate failed",
                    extra={"adapter": c.name, "code": exc.code, "detail": exc.message[:200]},
                )
                c.error = f"{c.name}: {exc.code}"  # details are logged, not sent
                c.failure = exc
                failures.append(exc)
                if cache is not None:
                    cache.drop(c.name)  # ATP-BUDGET-019
                return
            if cache is not None and (est.max_age_ms > 0 or cache.holds(c.name)):
                key = key or cache_key(task)
                cache.put(c.name, c.adapter, key, est, trio.current_time(), gen)
            _guard(c, est, k)
        if scope.cancelled_caught and cache is not None:
            cache.drop(c.name)  # no answer in time: a failure too (ATP-BUDGET-019)

    if len(asked) == 1:  # no concurrency to gain: skip a task spawn (latency)
        await one(asked[0])
        return failures
    async with trio.open_nursery() as nursery:
        for c in asked:
            nursery.start_soon(one, c)
    return failures


def _window_in_effect(ledger: BudgetLedger) -> str:
    """`` (max_tokens 30, capped by the router)``: the window the estimates did not fit,
    so that a client which sent none, or a larger one, sees where the limit is (a tenant
    window, a quota's remainder, a policy's window)."""
    w, cap = ledger.window, ledger.cap
    shown = [
        (name, value, getattr(cap, name))
        for name in ("max_tokens", "max_usd_micros")
        if (value := getattr(w, name)) is not None
    ]
    if not shown:
        return ""
    capped = any(limit is not None and limit == value for _, value, limit in shown)
    text = ", ".join(f"{name} {value}" for name, value, _ in shown)
    return f" ({text}{', capped by the router' if capped else ''})"


def plan(candidates: list[Candidate], ledger: BudgetLedger, failures: list[AdapterError]) -> Plan:
    """Rank the estimated candidates cheap-first and keep those that fit.

    Raises:
        StreamFailed: the last estimate failure's mapped code when none answered
            (ATP-ADAPT-011; EAGENTDOWN when one did not answer in time), EBUDGET when
            none fits.
    """
    alive = [c for c in candidates if c.estimate is not None]
    if not alive:
        reasons = "; ".join(c.error or f"{c.name}: no answer in time" for c in candidates)
        # ATP-ADAPT-011: the last failure decides the code; an adapter that did not
        # answer in time at all is down as far as this stream is concerned.
        timed_out = any(c.failure is None for c in candidates)
        last = None if timed_out else failures[-1]
        raise adapter_failure(last, f"no adapter answered the estimate ({reasons})")
    alive.sort(key=lambda c: (c.guarded_usd, c.guarded_tokens))  # cheap first (stable)
    fitting = [c for c in alive if ledger.fits(c.guarded_tokens, c.guarded_usd)]
    if not fitting:
        c = min(alive, key=lambda c: c.guarded_usd)
        raise StreamFailed(
            ErrorCode.EBUDGET,
            f"no adapter fits the budget window{_window_in_effect(ledger)}: cheapest "
            f"({c.name}) needs about {math.ceil(c.guarded_tokens)} tokens / "
            f"{math.ceil(c.guarded_usd)} usd_micros",
        )
    return Plan(alive, fitting)
