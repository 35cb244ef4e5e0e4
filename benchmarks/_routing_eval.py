"""RouteLLM's metrics and the baselines for ``atp bench routing``, computed from records.

PGR = (q_router - q_weak) / (q_strong - q_weak) on the same prompts; the curve of PGR
against the share of calls sent to the strong model; APGR = the area under it by the
trapezoid over shares 0..100 % (and RouteLLM's own form, the mean over 10 evenly spaced
shares, beside it); CPT(x) = the smallest strong-call share whose PGR reaches x.
Everything here is pure (no I/O): the bench gives it the records and the choices.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atp_proto.routing_data import PriceModel, Record, adapter_name

__all__ = [
    "Curve",
    "baselines",
    "curve_from_points",
    "curve_from_scores",
    "outcome_of",
]

#: the preflight's guard band for silver (k in tokens + k * sqrt(variance), preflight.py)
SILVER_K = 1.0


def guarded_usd(prices: PriceModel, in_tokens: int) -> float:
    """The guard-banded cost the router's preflight gives a replayed model (silver)."""
    out, usd = prices.estimate(in_tokens)
    tokens = in_tokens + out
    return usd * (tokens + SILVER_K * np.sqrt(out)) / tokens if tokens else float(usd)


@dataclass(frozen=True, slots=True)
class Curve:
    shares: tuple[float, ...]  #: strong-call share, ascending, 0..1
    pgr: tuple[float, ...]

    def at(self, share: float) -> float:
        return float(np.interp(share, self.shares, self.pgr))

    @property
    def apgr(self) -> float:
        """Trapezoid over shares 0..100 %."""
        return float(np.trapezoid(self.pgr, self.shares))

    @property
    def apgr10(self) -> float:
        """RouteLLM's form: the mean PGR at 10, 20, ... 100 % strong calls."""
        return float(np.mean([self.at(s / 10) for s in range(1, 11)]))

    def cpt(self, target: float) -> float | None:
        """Smallest strong share with PGR >= target (linear between points)."""
        for i, (s, p) in enumerate(zip(self.shares, self.pgr, strict=True)):
            if p >= target:
                if i == 0:
                    return s
                s0, p0 = self.shares[i - 1], self.pgr[i - 1]
                return s0 + (s - s0) * (target - p0) / (p - p0) if p != p0 else s
        return None

    def to_json(self) -> dict[str, Any]:
        cpt50, cpt80 = self.cpt(0.5), self.cpt(0.8)
        return {
            "apgr": round(self.apgr, 4),
            "apgr_routellm10": round(self.apgr10, 4),
            "cpt50": None if cpt50 is None else round(cpt50, 4),
            "cpt80": None if cpt80 is None else round(cpt80, 4),
            "points": [
                [round(s, 4), round(p, 4)] for s, p in zip(self.shares, self.pgr, strict=True)
            ][:: max(1, len(self.shares) // 20)],
        }


def _pgr(q: float, q_weak: float, q_strong: float) -> float:
    gap = q_strong - q_weak
    return (q - q_weak) / gap if gap else 0.0


def curve_from_scores(
    scores: Sequence[float], q_strong: Sequence[float], q_weak: Sequence[float], steps: int = 100
) -> Curve:
    """Route the ``k`` highest-scored prompts to strong, for shares k/n = 0..1 in ``steps``."""
    n = len(scores)
    qs, qw = np.asarray(q_strong, float), np.asarray(q_weak, float)
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    top, base = float(qs.mean()), float(qw.mean())
    shares, pgr = [], []
    for k in range(steps + 1):
        m = round(k / steps * n)
        sel = np.zeros(n, bool)
        sel[order[:m]] = True
        shares.append(k / steps)
        pgr.append(_pgr(float(np.where(sel, qs, qw).mean()), base, top))
    return Curve(tuple(shares), tuple(pgr))


def curve_from_points(points: Sequence[tuple[float, float]]) -> Curve:
    """A curve through measured (share, PGR) points, anchored at (0, 0) and (1, 1) (the
    always-weak and always-strong routers); for a share measured twice, the mean."""
    by: dict[float, list[float]] = {0.0: [0.0], 1.0: [1.0]}
    for s, p in points:
        by.setdefault(round(s, 6), []).append(p)
    shares = sorted(by)
    return Curve(tuple(shares), tuple(float(np.mean(by[s])) for s in shares))


def outcome_of(records: Sequence[Record], chosen: Sequence[str]) -> dict[str, float]:
    """Mean raw quality and total cost ($) of answering each record with the model chosen."""
    q = [r.models[c].raw for r, c in zip(records, chosen, strict=True)]
    usd = [r.models[c].cost_usd for r, c in zip(records, chosen, strict=True)]
    return {"quality": float(np.mean(q)) if q else 0.0, "usd": float(np.sum(usd))}


def baselines(
    records: Sequence[Record], strong: str, weak: str, share: float, seed: int
) -> dict[str, dict[str, float]]:
    """Always-strong, always-weak, random at ``share`` strong calls (mean of 20 seeded
    draws), and the hindsight oracle (the cheapest model with the best recorded quality,
    over the pair and over every model of the record)."""
    rng = random.Random(seed)
    out = {
        "always_strong": outcome_of(records, [strong] * len(records)),
        "always_weak": outcome_of(records, [weak] * len(records)),
    }
    draws = [
        outcome_of(records, [strong if rng.random() < share else weak for _ in records])
        for _ in range(20)
    ]
    out["random_same_share"] = {
        "quality": float(np.mean([d["quality"] for d in draws])),
        "usd": float(np.mean([d["usd"] for d in draws])),
        "share": share,
    }

    def best(r: Record, names: Sequence[str]) -> str:
        return min(names, key=lambda m: (-r.models[m].quality, r.models[m].cost_usd))

    for name, names in (("oracle_pair", None), ("oracle_all", "all")):
        picks = [best(r, list(r.models) if names else [strong, weak]) for r in records]
        out[name] = outcome_of(records, picks)
        out[name]["share"] = sum(p == strong for p in picks) / max(1, len(picks))
    return out


def _frequent(records: Sequence[Record], share: float = 0.9) -> set[str]:
    counts: dict[str, int] = {}
    for r in records:
        for m in r.models:
            counts[m] = counts.get(m, 0) + 1
    return {m for m, c in counts.items() if c >= share * len(records)}


def pick_pair(
    sources: Mapping[str, Sequence[Record]], within: str | None = None
) -> tuple[str, str] | None:
    """The strong and weak models: among the models that nearly every record has (90 %) in
    every source (RouteLLM's setting: one pair on every benchmark) -- or, failing that,
    in source ``within`` -- the one with the best mean quality (averaged over sources) and
    the cheapest of the others."""
    groups = list(sources.values()) if within is None else [sources[within]]
    common: set[str] | None = None
    for rs in groups:
        common = _frequent(rs) if common is None else common & _frequent(rs)
    if not common or len(common) < 2:
        return None
    names = sorted(common)

    def mean(m: str, attr: str) -> float:
        per = [
            float(np.mean([getattr(r.models[m], attr) for r in rs if m in r.models]))
            for rs in groups
        ]
        return float(np.mean(per))

    quality = {m: mean(m, "quality") for m in names}
    cost = {m: mean(m, "cost_usd") for m in names}
    strong = max(names, key=lambda m: (quality[m], -cost[m]))
    weak = min((m for m in names if m != strong), key=lambda m: (cost[m], -quality[m]))
    return strong, weak


def arm(model: str) -> str:
    return adapter_name(model)
