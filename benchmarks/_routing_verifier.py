"""Answer-aware escalation (issue 13, the lever "what the router sees of the cheap
answer"), measured in-process on the bench's data before anything is built in the router.

In a cheap-first cascade the router has the cheap model's answer before it decides to
escalate. The replay adapters stream an answer of the recorded length and nothing else
(filler text, a constant confidence, always ``stop``): what a router can see of it is its
length. A *verifier* predicts the quality of THIS answer from the prompt's features plus
the answer's: log length, the length against what the model's own length model predicts
for the prompt (learned from every cheap answer: a cascade observes the cheap model on
every prompt), its square and quantile bins (the gap is U-shaped in length on GSM8K), each
also crossed with the task type.

* offline (pair APGR, as the bench's ``pair_apgr``): the prompt-only learner ranks by
  ``pred_strong - pred_weak``; the cascade by ``pred_strong - verifier_weak(answer)``.
  The cascade pays the weak call on every prompt: beside the APGR over the strong-call
  share (RouteLLM's axis) the APGR over the *cost-equivalent* share (``(cost - cost of
  always-weak) / (always-strong - always-weak)``, both calls counted), over the
  bench's rotated splits (:func:`._routing_spread.rotated_split`).
* multi-model (arena): the bench's rule picks the first model (best predicted quality
  minus a cost weight); the cascade then escalates to the best other model when its
  reward beats the verifier's prediction of the answer in hand by a margin; cost counts
  both calls; the cost cut at 95 % of always-strong quality on each rule's held-out
  frontier (:func:`._routing_levers.cost_cut_at`).
* online (bandit feedback only): the cascade always calls the weak model, escalates on
  Thompson draws of the strong arm against the verifier's, and the evaluator reports
  the quality of the answer returned (only that one); second-half APGR over the bench's
  seeds, beside the default learner's (:func:`._routing_spread.online_spread`; by cost
  too: :func:`default_online`); ``--no-answer`` runs the same cascade with the answer
  block left at 0, the control that separates the answer's part from the cascade's.

Run: ``python -m benchmarks._routing_verifier [--data FILE] [--seed 1] [--parts ...]``.
The figures and the verdict (not adopted) are in benchmarks/RESULTS.md, "answer-aware
escalation".
"""

from __future__ import annotations

import argparse
import json
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from atp_proto.router.routing.learner import BanditLearner, Weights
from atp_proto.router.routing.learner.model import PRIOR_QUALITY, Arm
from atp_proto.router.routing.learner.offline import train
from atp_proto.routing_data import PriceModel, Record, adapter_name

from ._routing_eval import curve_from_points, curve_from_scores, guarded_usd
from ._routing_levers import cost_cut_at
from ._routing_run import (
    DEFAULT_DATA,
    SWEEP,
    Source,
    _pair_records,
    _renamed,
    _row,
    _simulate,
    load_sources,
)
from ._routing_spread import ROTATIONS, SEEDS, _stats, online_spread, pair_apgr, rotated_split

Vector = npt.NDArray[np.float64]

ANSWER_BINS = 5
TASK_SLOTS = 16  #: hashed task-type copies of the answer block


@dataclass
class Verifier:
    """Per model: a length model (ridge of log1p(out tokens) on the prompt vector) and a
    quality model on [prompt vector, answer block] (an :class:`Arm` of the wider dim)."""

    dim: int
    ridge: float = 10.0
    answer_ridge: float = 1.0
    cross: bool = True
    use_answer: bool = True  #: False: the answer block stays 0 (the cascade's control)
    edges: Vector = field(default_factory=lambda: np.array([-0.5, -0.15, 0.15, 0.5]))
    length: dict[str, Arm] = field(default_factory=dict)
    quality: dict[str, Arm] = field(default_factory=dict)

    @property
    def block(self) -> int:
        return 3 + ANSWER_BINS

    @property
    def width(self) -> int:
        return self.dim + self.block * (1 + (TASK_SLOTS if self.cross else 0))

    def _len_arm(self, m: str) -> Arm:
        if m not in self.length:
            self.length[m] = Arm.prior(self.dim, self.ridge, 1.0)
        return self.length[m]

    def _q_arm(self, m: str) -> Arm:
        if m not in self.quality:
            arm = Arm.prior(self.width, self.ridge, 1.0)
            arm.a_inv[self.dim :, self.dim :] = np.eye(self.width - self.dim) / self.answer_ridge
            self.quality[m] = arm
        return self.quality[m]

    def expected_len(self, m: str, x: Vector) -> float:
        # the length arm stores log1p(out)/8 - 0.5 + 0.5 (PRIOR_QUALITY offset)
        mean, _ = self._len_arm(m).predict(x)
        return (mean - PRIOR_QUALITY) * 8.0 + 4.0

    def answer(self, m: str, x: Vector, out_tokens: int, task_type: str) -> Vector:
        lt = math.log1p(max(0, out_tokens))
        d = lt - self.expected_len(m, x)
        a = np.zeros(self.block)
        a[0] = lt / 6.0
        a[1] = d
        a[2] = d * d
        a[3 + int(np.searchsorted(self.edges, d))] = 1.0
        z = np.zeros(self.width)
        z[: self.dim] = x
        if not self.use_answer:
            return z
        z[self.dim : self.dim + self.block] = a
        if self.cross:
            slot = 1 + zlib.crc32(task_type.encode()) % TASK_SLOTS
            z[self.dim + slot * self.block : self.dim + (slot + 1) * self.block] = a
        return z

    def learn_length(self, m: str, x: Vector, out_tokens: int) -> None:
        # log1p(out) in [0, ~9]: stored as (log1p - 4) / 8 + 0.5 so Arm's clip to [0, 1] holds
        t = (math.log1p(max(0, out_tokens)) - 4.0) / 8.0 + PRIOR_QUALITY
        self._len_arm(m).update(x, t)

    def learn_length_batch(self, m: str, xs: Vector, outs: Sequence[int]) -> None:
        t = (np.log1p(np.maximum(0, np.asarray(outs, float))) - 4.0) / 8.0 + PRIOR_QUALITY
        self._len_arm(m).update_batch(xs, t)

    def predict(self, m: str, z: Vector) -> tuple[float, float]:
        return self._q_arm(m).predict(z)


def train_verifier(learner: BanditLearner, records: Sequence[Record], **kw: Any) -> Verifier:
    """Length models first (every record), then the quality models on their answers."""
    ver = Verifier(learner.features.dim, **kw)
    xs = {r.id: learner.vector(r.prompt, r.task_type) for r in records}
    by_model: dict[str, list[Record]] = {}
    for r in records:
        for m in r.models:
            by_model.setdefault(m, []).append(r)
    for m, rs in by_model.items():
        ver.learn_length_batch(
            m, np.array([xs[r.id] for r in rs]), [r.models[m].out_tokens for r in rs]
        )
    for m, rs in by_model.items():
        zs = np.array([ver.answer(m, xs[r.id], r.models[m].out_tokens, r.task_type) for r in rs])
        ver._q_arm(m).update_batch(zs, np.array([r.models[m].quality for r in rs]))
    return ver


def _trap(points: Sequence[tuple[float, float]]) -> float:
    return curve_from_points(points).apgr


def cascade_pair(
    learner: BanditLearner,
    ver: Verifier,
    held: Sequence[Record],
    s: Source,
    prices: dict[str, PriceModel],
) -> dict[str, float] | None:
    """Pair APGR on ``held`` of the prompt-only ranking (``pred_strong - pred_weak``, one
    call per prompt) and of the cascade (``pred_strong - verifier_weak``, the weak call on
    every prompt): by strong-call share and by cost-equivalent share."""
    pair = _pair_records(held, s)
    if len(pair) < 4:
        return None
    st, wk = adapter_name(s.strong), adapter_name(s.weak)
    prompt_only, casc = [], []
    for r in pair:
        x = learner.vector(r.prompt, r.task_type)
        p = learner.predict(x, [st, wk], clip=False)
        v, _ = ver.predict(wk, ver.answer(wk, x, r.models[wk].out_tokens, r.task_type))
        prompt_only.append(p[st] - p[wk])
        casc.append(p[st] - v)
    qs = np.array([r.models[st].raw for r in pair])
    qw = np.array([r.models[wk].raw for r in pair])
    cs = np.array([r.models[st].cost_usd for r in pair])
    cw = np.array([r.models[wk].cost_usd for r in pair])
    top, base = float(qs.mean()), float(qw.mean())
    c_all_w, c_all_s = float(cw.sum()), float(cs.sum())
    n = len(pair)
    out = {}
    for label, scores, cascade in (("prompt-only", prompt_only, False), ("cascade", casc, True)):
        out[f"{label} by share"] = curve_from_scores(scores, list(qs), list(qw)).apgr
        order = np.argsort(-np.asarray(scores), kind="stable")
        pts = []
        for k in range(101):
            m = round(k / 100 * n)
            sel = np.zeros(n, bool)
            sel[order[:m]] = True
            q = float(np.where(sel, qs, qw).mean())
            if cascade:  # weak on every prompt, strong where escalated
                cost = c_all_w + float(cs[sel].sum())
            else:
                cost = float(np.where(sel, cs, cw).sum())
            x_ = min(1.0, (cost - c_all_w) / (c_all_s - c_all_w))
            pts.append((x_, (q - base) / (top - base)))
        out[f"{label} by cost"] = _trap(pts)
    return out


def offline(
    sources: Sequence[Source], prices: dict[str, PriceModel], share: float, **kw: Any
) -> dict[str, Any]:
    keys = ("prompt-only by share", "cascade by share", "prompt-only by cost", "cascade by cost")
    per: dict[str, dict[str, list[float | None]]] = {s.name: {k: [] for k in keys} for s in sources}
    bench: dict[str, list[float | None]] = {s.name: [] for s in sources}
    for k in range(ROTATIONS):
        parts = {s.name: rotated_split(s.records, k, ROTATIONS, share) for s in sources}
        learner = BanditLearner()
        tr = _renamed([r for t, _ in parts.values() for r in t])
        train(learner, tr)
        ver = train_verifier(learner, tr, **kw)
        for s in sources:
            bench[s.name].append(pair_apgr(learner, parts[s.name][1], s, prices))
            c = cascade_pair(learner, ver, _renamed(parts[s.name][1]), _renamed_source(s), prices)
            for key in keys:
                per[s.name][key].append(None if c is None else c[key])
    out: dict[str, Any] = {}
    for s in sources:
        d = per[s.name]
        out[s.name] = {"bench pair_apgr": _stats(bench[s.name])}
        out[s.name].update({k: _stats(v) for k, v in d.items()})
        for ax in ("share", "cost"):
            a_, b_ = d[f"cascade by {ax}"], d[f"prompt-only by {ax}"]
            out[s.name][f"paired by {ax}"] = _stats(
                [x - y for x, y in zip(a_, b_, strict=True) if x is not None and y is not None]
            )
    return out


def _renamed_source(s: Source) -> Source:
    return Source(s.name, s.records, adapter_name(s.strong), adapter_name(s.weak), s.kind)


_PR: dict[int, dict[str, PriceModel]] = {}


def prices_renamed(prices: dict[str, PriceModel]) -> dict[str, PriceModel]:
    if id(prices) not in _PR:
        _PR[id(prices)] = {**prices, **{adapter_name(m): p for m, p in prices.items()}}
    return _PR[id(prices)]


# ----------------------------------------------------------------- multi-model (arena)


def arena(
    sources: Sequence[Source], prices: dict[str, PriceModel], share: float, **kw: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    multi = [s for s in sources if s.kind == "multi-model"]
    per: dict[str, dict[str, list[float | None]]] = {
        s.name: {"bench rule": [], "cascade": []} for s in multi
    }
    pr = prices_renamed(prices)
    for k in range(ROTATIONS if multi else 0):
        parts = {s.name: rotated_split(s.records, k, ROTATIONS, share) for s in sources}
        learner = BanditLearner()
        tr = _renamed([r for t, _ in parts.values() for r in t])
        train(learner, tr)
        ver = train_verifier(learner, tr, **kw)
        for s in multi:
            strong = adapter_name(s.strong)
            held = [r for r in _renamed(parts[s.name][1]) if strong in r.models]
            q_strong = float(np.mean([r.models[strong].raw for r in held]))
            c_strong = float(sum(r.models[strong].cost_usd for r in held))
            pre = []
            for r in held:
                x = learner.vector(r.prompt, r.task_type)
                p = learner.predict(x, list(r.models), clip=False)
                c = {m: guarded_usd(pr[m], r.models[m].in_tokens) for m in r.models}
                v = {
                    m: ver.predict(m, ver.answer(m, x, r.models[m].out_tokens, r.task_type))[0]
                    for m in r.models
                }
                pre.append((p, c, v))
            bench_pts, casc_pts = [], []
            for w in np.linspace(0.0, 6.0, 61):
                firsts = []
                for p, c, _v in pre:
                    topc = max(c.values()) or 1.0
                    firsts.append(max(p, key=lambda m: p[m] - w * c[m] / topc))
                q = float(np.mean([r.models[f].raw for r, f in zip(held, firsts, strict=True)]))
                usd = sum(r.models[f].cost_usd for r, f in zip(held, firsts, strict=True))
                bench_pts.append((q / q_strong, 1 - usd / c_strong))
                for margin in (-0.1, 0.0, 0.05, 0.1, 0.2, 0.3, 1e9):
                    qs_, usd_ = [], 0.0
                    for r, (p, c, v), f in zip(held, pre, firsts, strict=True):
                        topc = max(c.values()) or 1.0
                        usd_ += r.models[f].cost_usd
                        others = [m for m in p if m != f and p[m] >= p[f]]
                        if others:
                            alt = max(others, key=lambda m: p[m] - w * c[m] / topc)
                            if p[alt] - w * c[alt] / topc > v[f] + margin:
                                usd_ += r.models[alt].cost_usd
                                qs_.append(r.models[alt].raw)
                                continue
                        qs_.append(r.models[f].raw)
                    casc_pts.append((float(np.mean(qs_)) / q_strong, 1 - usd_ / c_strong))
            per[s.name]["bench rule"].append(cost_cut_at(bench_pts))
            per[s.name]["cascade"].append(cost_cut_at(casc_pts))
    for name, d in per.items():
        out[name] = {k: _stats(v) for k, v in d.items()}
        out[name]["paired"] = _stats(
            [
                a - b
                for a, b in zip(d["cascade"], d["bench rule"], strict=True)
                if a is not None and b is not None
            ]
        )
    return out


# ----------------------------------------------------------------- online


def simulate_cascade(
    order: Sequence[Record],
    s: Source,
    prices: dict[str, PriceModel],
    w: float,
    seed: int,
    **kw: Any,
) -> tuple[list[str], list[float]]:
    """Weak first on every prompt; escalate when a Thompson draw of the strong arm minus
    its cost beats a draw of the verifier on the weak answer; feedback: the quality of the
    answer returned, for that adapter only. Returns the model returned and the cost paid."""
    learner = BanditLearner(weights={"default": Weights(1.0, w, 0.0)}, seed=seed)
    ver = Verifier(learner.features.dim, **kw)
    rng = np.random.default_rng(seed)
    st, wk = adapter_name(s.strong), adapter_name(s.weak)
    chosen, paid = [], []
    noise = learner.noise
    for r0 in order:
        r = _renamed([r0])[0]
        if st not in r.models or wk not in r.models:
            chosen.append(s.weak if s.weak in r0.models else next(iter(r0.models)))
            paid.append(0.0)
            continue
        x = learner.vector(r.prompt, r.task_type)
        z = ver.answer(wk, x, r.models[wk].out_tokens, r.task_type)
        ver.learn_length(wk, x, r.models[wk].out_tokens)  # observed on every prompt
        ms, vs = learner.arm(st).predict(x)
        mv, vv = ver.predict(wk, z)
        ds = ms + noise * math.sqrt(vs) * float(rng.standard_normal())
        dv = mv + noise * math.sqrt(vv) * float(rng.standard_normal())
        if ds - w * 1.0 > dv:  # cost of strong / most expensive candidate = 1
            learner.arm(st).update(x, r.models[st].quality)
            chosen.append(s.strong)
            paid.append(r.models[st].cost_usd + r.models[wk].cost_usd)
        else:
            ver._q_arm(wk).update(z, r.models[wk].quality)
            chosen.append(s.weak)
            paid.append(r.models[wk].cost_usd)
    return chosen, paid


def online(
    s: Source, prices: dict[str, PriceModel], seed: int, seeds: int = SEEDS, **kw: Any
) -> dict[str, Any]:
    by_share, by_cost = [], []
    for sd in range(seed, seed + seeds):
        order = list(s.records)
        random.Random(sd).shuffle(order)
        half = len(order) // 2
        sec = order[half:]
        pr = _pair_records(sec, s)
        ids = {r.id for r in pr}
        pts, cpts = [], []
        cw_all = sum(r.models[s.weak].cost_usd for r in pr)
        cs_all = sum(r.models[s.strong].cost_usd for r in pr)
        for w in SWEEP:
            ch, paid = simulate_cascade(order, s, prices, w, sd, **kw)
            keep = [
                (c, p) for r, c, p in zip(sec, ch[half:], paid[half:], strict=True) if r.id in ids
            ]
            row = _row(pr, [c for c, _ in keep], s)
            pts.append((row["share"], row["pgr"]))
            cost = sum(p for _, p in keep)
            cpts.append((min(1.0, (cost - cw_all) / (cs_all - cw_all)), row["pgr"]))
        by_share.append(curve_from_points(pts).apgr)
        by_cost.append(curve_from_points(cpts).apgr)
    return {"cascade by share": _stats(by_share), "cascade by cost": _stats(by_cost)}


def default_online(
    s: Source, prices: dict[str, PriceModel], seed: int, seeds: int
) -> dict[str, Any]:
    """The default learner's second-half APGR (:func:`._routing_run._simulate`, as
    :func:`._routing_spread.online_spread`) by strong-call share and by cost-equivalent
    share (one call per prompt)."""
    by_share, by_cost = [], []
    for sd in range(seed, seed + seeds):
        order = list(s.records)
        random.Random(sd).shuffle(order)
        half = len(order) // 2
        sec = order[half:]
        pr = _pair_records(sec, s)
        ids = {r.id for r in pr}
        cw_all = sum(r.models[s.weak].cost_usd for r in pr)
        cs_all = sum(r.models[s.strong].cost_usd for r in pr)
        pts, cpts = [], []
        for w in SWEEP:
            ch = _simulate(order, prices, w, sd)
            keep = [(r, c) for r, c in zip(sec, ch[half:], strict=True) if r.id in ids]
            row = _row(pr, [c for _, c in keep], s)
            pts.append((row["share"], row["pgr"]))
            cost = sum(r.models[c].cost_usd for r, c in keep)
            cpts.append((min(1.0, (cost - cw_all) / (cs_all - cw_all)), row["pgr"]))
        by_share.append(curve_from_points(pts).apgr)
        by_cost.append(curve_from_points(cpts).apgr)
    return {"default by share": _stats(by_share), "default by cost": _stats(by_cost)}


def _show(d: dict[str, Any]) -> None:
    for src, per in d.items():
        print(
            src,
            {k: (v["mean"], v["std"]) for k, v in per.items() if isinstance(v, dict)},
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--share", type=float, default=0.6)
    ap.add_argument("--answer-ridge", type=float, default=1.0)
    ap.add_argument("--no-cross", action="store_true")
    ap.add_argument("--no-answer", action="store_true", help="the cascade without answer features")
    ap.add_argument("--default-only", action="store_true", help="online: only the default")
    ap.add_argument("--parts", default="offline,arena,online")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--out", default="")
    ap.add_argument("--source", default="", help="online: only this source")
    ap.add_argument("--no-baseline", action="store_true", help="online: skip the default")
    a = ap.parse_args(argv)
    sources, prices, _, _ = load_sources(__import__("pathlib").Path(a.data))
    kw = {"answer_ridge": a.answer_ridge, "cross": not a.no_cross, "use_answer": not a.no_answer}
    res: dict[str, Any] = {"settings": vars(a)}
    parts = a.parts.split(",")
    if "offline" in parts:
        res["offline"] = offline(sources, prices, a.share, **kw)
        _show(res["offline"])
    if "arena" in parts:
        res["arena"] = arena(sources, prices, a.share, **kw)
        _show(res["arena"])
    if "online" in parts:
        res["online"] = {}
        for s in sources:
            if s.kind != "two-model" or (a.source and s.name != a.source):
                continue
            if a.default_only:
                res["online"][s.name] = default_online(s, prices, a.seed, a.seeds)
            else:
                c = online(s, prices, a.seed, a.seeds, **kw)
                b = online_spread(s, prices, a.seed, False) if not a.no_baseline else None
                res["online"][s.name] = {"default": b, **c}
            print(s.name, json.dumps(res["online"][s.name]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
