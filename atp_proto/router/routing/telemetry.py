"""Telemetry: the FINAL's ``ext.telemetry`` and the stream's metrics (ATP-BUDGET-012,
ATP-STRAT-007/008).

Savings (seed 000 §18, "Baseline − Actual"): the *strongest* candidate is the estimated
candidate with the highest predicted quality when the learner predicted one for every
candidate, else the highest estimate confidence (the costlier among equals). The
baseline is what it cost when the stream called it to the end, else its own preflight
estimate (mean, not guard-banded) for this task; savings = baseline − the stream's
actual ``usd_micros`` (negative when fan-out or hedges cost more than the strongest
alone); ``savings_pct`` = 100 · savings / baseline when the baseline is not 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from atp_proto.messages import U64_MAX, telemetry
from atp_proto.router.budget import BudgetLedger
from atp_proto.router.metrics import RouterMetrics

from ._model import Candidate, Outcome

__all__ = ["Savings", "final_ext", "record_savings", "record_stream", "savings", "strongest"]

_I64 = (1 << 63) - 1


def strongest(ranked: Sequence[Candidate], predicted: Mapping[str, float]) -> Candidate | None:
    """The candidate "always using the strongest" would call (see the module docstring)."""
    alive = [c for c in ranked if c.estimate is not None]
    if not alive:
        return None
    if predicted and all(c.name in predicted for c in alive):
        return max(alive, key=lambda c: (predicted[c.name], c.guarded_usd))
    return max(alive, key=lambda c: (c.estimate.confidence if c.estimate else 0.0, c.guarded_usd))


#: ``{strongest, baseline_usd_micros, savings_usd_micros, savings_pct?}``
Savings = dict[str, Any]


def savings(
    ranked: Sequence[Candidate],
    predicted: Mapping[str, float],
    outcomes: Sequence[Outcome],
    actual_usd_micros: int,
) -> Savings | None:
    """The stream's savings against always using the strongest candidate (ATP-STRAT-008)."""
    top = strongest(ranked, predicted)
    if top is None or top.estimate is None:
        return None
    called = [o for o in outcomes if o.adapter == top.name and o.finished]
    baseline = called[-1].usd_micros if called else top.estimate.usd_micros
    baseline = max(0, min(int(baseline), _I64))
    actual = max(0, min(int(actual_usd_micros), _I64))
    out: Savings = {
        "strongest": top.name,
        "baseline_usd_micros": baseline,
        "savings_usd_micros": baseline - actual,
    }
    if baseline:
        out["savings_pct"] = round(100.0 * (baseline - actual) / baseline, 2)
    return out


def record_savings(metrics: RouterMetrics, tenant: str, usd: int, saved: Savings | None) -> None:
    """Usage and savings per tenant (atp_usd_micros_total, atp_baseline_usd_micros_total,
    atp_savings_usd_micros)."""
    if usd:
        metrics.usd.inc(tenant, by=min(usd, U64_MAX))
    if saved is not None:
        if saved["baseline_usd_micros"]:
            metrics.baseline_usd.inc(tenant, by=saved["baseline_usd_micros"])
        metrics.savings_usd.inc(tenant, by=saved["savings_usd_micros"])


def final_ext(
    ledger: BudgetLedger,
    adapters: Sequence[str],
    latency_s: float,
    first_ext: dict[str, Any] | None,
) -> dict[str, Any]:
    """The FINAL's ext: ``{tokens, usd_micros, latency_ms, adapters}`` (counters
    saturating, never a bignum), plus the first frame's ext if no PARTIAL carried it."""
    ext: dict[str, Any] = {
        "telemetry": telemetry(ledger.tokens, ledger.usd_micros, round(latency_s * 1000), adapters)
    }
    if first_ext is not None:
        ext.update(first_ext)
    return ext


def record_stream(
    metrics: RouterMetrics, lane: str, outcome: str, latency_s: float, tenant: str, tokens: int
) -> None:
    """A finished stream's counters: outcome per lane, latency, tokens per tenant."""
    metrics.streams_active.inc(lane, by=-1)
    metrics.streams_total.inc(lane, outcome)
    metrics.stream_latency.observe(latency_s, lane)
    if tokens:
        metrics.tokens.inc(tenant, by=min(tokens, U64_MAX))
