"""The learner on generated sources with more than two models (issue 13: data unlike
``public.jsonl``), in-process, fixed seeds, small data: offline it finds a model that is
strong on one category only; online, with bandit feedback only, it beats random routing
among the candidates over the second half of the run. (Not asserted, because it does not
hold: that online it beats the best single model in hindsight on every source -- on eight
models and 300 prompts it does not; benchmarks/RESULTS.md, "multi-model sources".)"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atp_proto.router.routing.learner import BanditLearner
from atp_proto.router.routing.learner.model import Arm
from atp_proto.router.routing.learner.offline import train
from atp_proto.routing_data import Record, read_records
from benchmarks._routing_eval import guarded_usd
from benchmarks._routing_run import _greedy, _renamed, _simulate, _split, load_sources
from benchmarks.routing_foreign_data import generate, generate_variant, hidden_rule


def test_offline_finds_the_one_category_specialist(tmp_path: Path) -> None:
    """Eight models on 1..5; ``glyph-code`` is cheap and strong on "code" prompts only.
    Trained on the lower buckets, the greedy choice on the held-out prompts at a moderate
    cost weight sends most code prompts to it and no other prompt."""
    data = tmp_path / "eight.jsonl"
    generate_variant(data, "eight-specialist", seed=2, prompts=300)
    sources, prices, _, _ = load_sources(data)
    (s,) = sources
    assert s.kind == "multi-model"
    tr, held = _split(s, 0.6)
    learner = BanditLearner()
    train(learner, _renamed(tr))
    picks = Counter((r.task_type == "code", _greedy(learner, r, prices, 0.6)) for r in held)
    code = sum(n for (is_code, _), n in picks.items() if is_code)
    assert picks[(True, "glyph-code")] >= 0.8 * code, picks
    assert picks[(False, "glyph-code")] == 0, picks


def test_online_beats_random_on_a_five_model_source(tmp_path: Path) -> None:
    """Five models, 240 prompts (``lab-quiz``), bandit feedback only, cost weight 0.3,
    five seeds: over the second half the router's mean reward (quality minus the cost
    weight times cost over the dearest candidate's) is above uniform random routing's
    expectation on the same prompts, by 0.03 or more on average (measured: 0.06)."""
    data = tmp_path / "foreign.jsonl"
    generate(data, 1, 400)
    sources, prices, _, _ = load_sources(data)
    s = next(x for x in sources if x.name == "lab-quiz")
    assert len({m for r in s.records for m in r.models}) == 5
    w = 0.3

    def reward(r: Record, m: str) -> float:
        cost = {k: guarded_usd(prices[k], o.in_tokens) for k, o in r.models.items()}
        return float(r.models[m].quality - w * cost[m] / max(cost.values()))

    margins = []
    for seed in range(1, 6):
        order = list(s.records)
        random.Random(seed).shuffle(order)
        chosen = _simulate(order, prices, w, seed)
        half = len(order) // 2
        second = order[half:]
        ours = np.mean([reward(r, c) for r, c in zip(second, chosen[half:], strict=True)])
        rand = np.mean([np.mean([reward(r, m) for m in r.models]) for r in second])
        margins.append(float(ours - rand))
    assert np.mean(margins) > 0.03, margins


def test_a_weaker_prior_on_the_prompt_shape_learns_its_rule_sooner(tmp_path: Path) -> None:
    """``BanditLearner(dense_ridge=1.0)`` (an option, off by default: it loses on
    public.jsonl's MT-Bench): the free model of the generated data is right on short
    prompts with digits and seldom on long ones; after the same 120 records its
    predicted gap between the two kinds is wider than the default prior's (whose dense
    features are held as tightly as a word's: ridge 10), and closer to the recorded one.
    ``dense_ridge`` equal to ``ridge`` is exactly the default prior."""
    data = tmp_path / "foreign.jsonl"
    generate(data, 1, 400)
    recs = [r for r in read_records(data) if r.source == "lab-quiz"][:120]
    free = "hearth/local-7b.q4"
    kinds = {k: [r for r in recs if hidden_rule(r.prompt) == k] for k in ("short-digits", "long")}

    def mean_gap(quality: Callable[[Record], float]) -> float:
        short, long = (np.mean([quality(r) for r in kinds[k] if free in r.models]) for k in kinds)
        return float(short - long)

    recorded = mean_gap(lambda r: r.models[free].quality)
    arm = "hearth_local-7b_q4"
    gaps = {}
    for dense in (None, 1.0):
        learner = BanditLearner(dense_ridge=dense)
        train(learner, _renamed(recs))
        gaps[dense] = mean_gap(
            lambda r, lr=learner: lr.predict(lr.vector(r.prompt, r.task_type), [arm])[arm]
        )
    assert recorded > 0.6, recorded
    assert gaps[1.0] > gaps[None] + 0.1, gaps
    assert abs(recorded - gaps[1.0]) < abs(recorded - gaps[None]), (recorded, gaps)
    assert np.array_equal(Arm.prior(64, 10.0, 1.0, 10.0).a_inv, Arm.prior(64, 10.0, 1.0).a_inv)
