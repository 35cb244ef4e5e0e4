"""Telemetry: the FINAL's ``ext.telemetry`` and the stream's metrics (ATP-BUDGET-012)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atp_proto.messages import U64_MAX, telemetry
from atp_proto.router.budget import BudgetLedger
from atp_proto.router.metrics import RouterMetrics

__all__ = ["final_ext", "record_stream"]


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
