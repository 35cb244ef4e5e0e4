"""Latency histograms: HDR histograms (the ``hdrhistogram`` package, 3 significant digits,
1 µs .. 10 min) recorded in microseconds in each load process, shipped to the parent
encoded (compressed, a few hundred bytes) and merged there.

Why HDR and not a list of samples: a worker records ~2 µs per value whatever the run's
length, the parent merges processes exactly (same buckets), and p99.9 / max stay right.
Coordinated omission: open-loop latencies are taken from each stream's *intended* send
time (its slot in the schedule), not from when the worker got round to sending it, so a
stall of the client or of the router counts against every stream that should have been
sent during it (:mod:`.worker`).
"""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  #: 10 min
DIGITS = 3

#: the percentiles every summary reports
PERCENTILES = (50.0, 95.0, 99.0)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_s(h: HdrHistogram, seconds: float) -> None:
    """Record a duration given in seconds (clamped into the histogram's range)."""
    us = int(seconds * 1e6)
    h.record_value(min(HIGHEST_US, max(LOWEST_US, us)))


def encode(h: HdrHistogram) -> bytes:
    return bytes(h.encode())


def merge_into(h: HdrHistogram, encoded: bytes) -> None:
    if encoded:
        h.decode_and_add(encoded)


def decode(encoded: bytes) -> HdrHistogram:
    h = new()
    merge_into(h, encoded)
    return h


def summary_ms(h: HdrHistogram) -> dict[str, Any]:
    """n, p50 / p95 / p99 / max / mean in milliseconds (zeros when empty)."""
    n = h.get_total_count()
    if not n:
        return {"n": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    out: dict[str, Any] = {"n": n}
    for p in PERCENTILES:
        out[f"p{p:g}"] = h.get_value_at_percentile(p) / 1000
    out["max"] = h.get_max_value() / 1000
    out["mean"] = h.get_mean_value() / 1000
    return out


def cdf_ms(h: HdrHistogram, points: int = 60) -> list[tuple[float, float]]:
    """(percentile, latency ms) pairs on a log scale of 1/(1-p), for distribution plots."""
    if not h.get_total_count():
        return []
    out = []
    for i in range(points):
        # 0% .. 99.999%: spread evenly in log10(1 / (1 - p))
        p = 100.0 * (1 - 10 ** (-5 * i / (points - 1)))
        out.append((p, h.get_value_at_percentile(p) / 1000))
    return out
