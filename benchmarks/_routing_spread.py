"""How much the routing figures move with the split and the seed, and what a decision
costs (``atp bench routing``).

The bench's headline figures come from one split (offline: the lowest buckets holding the
train share of each source train, the rest is held out) and one seed (online: the order
of the prompts and Thompson sampling's draws). On a small source one prompt moves APGR by
a few hundredths (MT-Bench: 32 held-out prompts), so beside them the bench reports

* offline: the pair APGR over ``ROTATIONS`` rotated bucket splits (:func:`rotated_split`:
  split ``k`` holds out a window of ``1 - train share`` of each source's records, by
  bucket, starting at ``k / ROTATIONS``, and trains on the rest of every source), mean +-
  standard deviation; the bench's own split holds out the top buckets, the window that
  starts at ``train share``: with the default 0.6, rotation 3 of 5 is the bench's split;
* online: the second-half APGR of the in-process bandit replay for ``SEEDS`` consecutive
  seeds from the bench's ``--seed``, mean +- standard deviation.

Nothing here tunes anything: these are the same learner and the same sweep, evaluated on
more splits and seeds, so the reader can tell a real difference from noise.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from atp_proto.frames import QoS
from atp_proto.router.routing.learner import BanditLearner
from atp_proto.router.routing.learner.offline import train
from atp_proto.routing_data import PriceModel, Record, adapter_name

from ._routing_eval import curve_from_points, curve_from_scores, guarded_usd
from ._routing_run import (
    QUICK_PROMPTS,
    QUICK_SWEEP,
    SWEEP,
    Settings,
    Source,
    _pair_records,
    _query,
    _renamed,
    _row,
    _simulate,
    _split,
    load_sources,
)

__all__ = ["ROTATIONS", "SEEDS", "add_spreads", "decision_us", "rotated_split"]

ROTATIONS = 5
SEEDS = 5
#: online replays per seed cost one bandit run per cost weight: only the small sources
#: (where one seed's figure is noise-dominated) get them
MAX_ONLINE_PROMPTS = 400


def rotated_split(
    records: Sequence[Record], k: int, rotations: int, train_share: float
) -> tuple[list[Record], list[Record]]:
    """Split ``k`` of ``rotations`` by bucket. The source's records sorted by bucket, a
    bucket's place is the index of its last record (a source need not use every bucket);
    held out are the buckets placed in a window of ``n - int(n * train_share)`` records
    from ``int(n * k / rotations)`` on (wrapping round). Records of one bucket stay
    together; the window starting at ``train_share`` is the bench's own split (the
    lowest buckets holding the train share train)."""
    ranked = sorted(r.bucket for r in records)
    n = len(ranked)
    lo, count = int(n * k / rotations), n - int(n * train_share)

    def held(b: int) -> bool:
        return (bisect.bisect_right(ranked, b) - 1 - lo) % max(1, n) < count

    return [r for r in records if not held(r.bucket)], [r for r in records if held(r.bucket)]


def pair_apgr(
    learner: BanditLearner, held: Sequence[Record], s: Source, prices: dict[str, PriceModel]
) -> float | None:
    """The offline pair APGR of a trained learner on ``held`` (as the bench computes it)."""
    pair = _pair_records(held, s)
    if len(pair) < 4:
        return None
    scores = []
    arms = [adapter_name(s.strong), adapter_name(s.weak)]
    for r in pair:
        p = learner.predict(learner.vector(r.prompt, r.task_type), arms, clip=False)
        cs = guarded_usd(prices[s.strong], r.models[s.strong].in_tokens)
        cw = guarded_usd(prices[s.weak], r.models[s.weak].in_tokens)
        gain = p[arms[0]] - p[arms[1]]
        scores.append(gain / max(1e-9, 1 - cw / cs) if cs > 0 else gain)
    curve = curve_from_scores(
        scores, [r.models[s.strong].raw for r in pair], [r.models[s.weak].raw for r in pair]
    )
    return curve.apgr


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    vs = [v for v in values if v is not None]
    return {
        "mean": round(float(np.mean(vs)), 4) if vs else None,
        "std": round(float(np.std(vs)), 4) if vs else None,
        "values": [None if v is None else round(v, 4) for v in values],
    }


def offline_spread(
    sources: Sequence[Source],
    prices: dict[str, PriceModel],
    train_share: float,
    make: Callable[[], BanditLearner] = BanditLearner,
) -> dict[str, dict[str, Any]]:
    """Pair APGR per source over the rotated splits, for learners built by ``make``."""
    per: dict[str, list[float | None]] = {s.name: [] for s in sources}
    for k in range(ROTATIONS):
        parts = {s.name: rotated_split(s.records, k, ROTATIONS, train_share) for s in sources}
        learner = make()
        train(learner, _renamed([r for tr, _ in parts.values() for r in tr]))
        for s in sources:
            per[s.name].append(pair_apgr(learner, parts[s.name][1], s, prices))
    return {name: _stats(v) for name, v in per.items()}


def online_spread(
    s: Source,
    prices: dict[str, PriceModel],
    seed: int,
    quick: bool,
    context_explore: float = 1.0,
    **opts: Any,
) -> dict[str, Any]:
    """Second-half APGR of the in-process replay over ``SEEDS`` seeds from ``seed``, for
    the default learner or one with ``context_explore`` / ``opts`` (:func:`_simulate`)."""
    values: list[float | None] = []
    sweep = QUICK_SWEEP if quick else SWEEP
    for sd in range(seed, seed + SEEDS):
        order = list(s.records)
        random.Random(sd).shuffle(order)
        if quick:
            order = order[:QUICK_PROMPTS]
        half = len(order) // 2
        pr = _pair_records(order[half:], s)
        ids = {r.id for r in pr}
        points = []
        for w in sweep:
            ch = _simulate(order, prices, w, sd, context_explore, **opts)
            keep = [c for r, c in zip(order[half:], ch[half:], strict=True) if r.id in ids]
            row = _row(pr, keep, s)
            points.append((row["share"], row["pgr"]))
        values.append(curve_from_points(points).apgr if pr else None)
    out = _stats(values)
    out["seeds"] = [seed, seed + SEEDS - 1]
    return out


def decision_us(
    sources: Sequence[Source], prices: dict[str, PriceModel], train_share: float
) -> dict[str, dict[str, float]]:
    """What one ranking costs the router (features, then a Thompson draw per candidate):
    in-process, on a state trained on the bench's split, over up to 200 held-out prompts
    per source; median and p99 microseconds per decision."""
    learner = BanditLearner(seed=0)
    train(learner, _renamed([r for s in sources for r in _split(s, train_share)[0]]))
    out = {}
    for s in sources:
        held = _split(s, train_share)[1][:200]
        times = []
        for i, r in enumerate(held):
            q = _query(r, prices, QoS.SILVER, i)
            t0 = time.perf_counter()
            learner.rank(q)
            times.append((time.perf_counter() - t0) * 1e6)
        learner.pending.clear()  # decisions nobody will report on
        if times:
            out[s.name] = {
                "p50": round(float(np.median(times)), 1),
                "p99": round(float(np.percentile(times, 99)), 1),
                "candidates": round(float(np.mean([len(r.models) for r in held])), 1),
            }
    return out


def add_spreads(results: dict[str, Any], settings: Settings) -> None:
    """Add ``offline.apgr_rotations`` and (small two-model sources) ``online.
    second_half_apgr_seeds`` to the bench's results, in place."""
    sources, prices, _, _ = load_sources(settings.data, settings.score_scales)
    if "offline" in settings.modes and not settings.quick:
        for name, st in offline_spread(sources, prices, settings.train_share).items():
            off = results["sources"].get(name, {}).get("offline")
            if off is not None:
                off["apgr_rotations"] = st
                off.setdefault("notes", []).append(
                    f"pair APGR over {ROTATIONS} rotated bucket splits: {st['mean']} "
                    f"+- {st['std']} (how the split moves it)"
                )
    if "offline" in settings.modes:
        for name, d in decision_us(sources, prices, settings.train_share).items():
            off = results["sources"].get(name, {}).get("offline")
            if off is not None:
                off["decision_us"] = d
    if "online" in settings.modes:
        for s in sources:
            on = results["sources"].get(s.name, {}).get("online")
            small = len(s.records) <= MAX_ONLINE_PROMPTS
            if on is None or s.kind != "two-model" or not small:
                continue
            st = online_spread(s, prices, settings.seed, settings.quick)
            on["second_half_apgr_seeds"] = st
            on.setdefault("notes", []).append(
                f"second-half APGR over seeds {st['seeds'][0]}..{st['seeds'][1]}: "
                f"{st['mean']} +- {st['std']} (in-process replay)"
            )
