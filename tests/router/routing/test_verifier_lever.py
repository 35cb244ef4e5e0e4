"""The answer-aware escalation harness (``benchmarks/_routing_verifier.py``, issue 13): a
verifier that sees the cheap answer's length ranks escalations better than the prompt
only when the length tells, and not when it does not. Small fixed synthetic sets;
in-process."""

from __future__ import annotations

import random

from atp_proto.router.routing.learner import BanditLearner
from atp_proto.router.routing.learner.offline import train
from atp_proto.routing_data import Outcome, Record, price_model
from benchmarks._routing_run import Source, _split
from benchmarks._routing_verifier import cascade_pair, simulate_cascade, train_verifier


def _records(n: int, length_tells: bool, seed: int = 7) -> list[Record]:
    """Prompts whose words say nothing; the weak model fails half of them. When
    ``length_tells``, a failed weak answer is 4x shorter than a good one; else the
    lengths are drawn the same way whatever the outcome."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        weak_ok = rng.random() < 0.5
        strong_ok = rng.random() < 0.95
        short = (not weak_ok) if length_tells else rng.random() < 0.5
        weak_len = rng.randint(20, 40) if short else rng.randint(120, 200)
        models = {
            "weak": Outcome(float(weak_ok), float(weak_ok), 50, weak_len, 0.0001),
            "strong": Outcome(float(strong_ok), float(strong_ok), 50, 100, 0.002),
        }
        words = " ".join(rng.choice(("tell", "me", "about", "this", "one")) for _ in range(8))
        out.append(Record(f"v/{i}", "syn", "qa", f"{words} {i}", i % 100, models))
    return out


def _pair(recs: list[Record]) -> dict[str, float] | None:
    src = Source("syn", recs, "strong", "weak", "two-model")
    tr, held = _split(src, 0.6)
    learner = BanditLearner()
    train(learner, tr)
    ver = train_verifier(learner, tr)
    prices = {m: p for m in ("weak", "strong") if (p := price_model(recs, m)) is not None}
    return cascade_pair(learner, ver, held, src, prices)


def test_the_verifier_ranks_by_what_the_answer_tells() -> None:
    got = _pair(_records(400, length_tells=True))
    assert got is not None
    # the prompt says nothing: about random (0.5); the length separates the failures
    assert got["prompt-only by share"] < 0.65
    assert got["cascade by share"] > got["prompt-only by share"] + 0.2
    # the cascade pays the weak call everywhere, cheap here: by cost it still wins
    assert got["cascade by cost"] > got["prompt-only by cost"] + 0.15


def test_no_gain_when_the_length_says_nothing() -> None:
    got = _pair(_records(400, length_tells=False))
    assert got is not None
    assert abs(got["cascade by share"] - got["prompt-only by share"]) < 0.1


def test_online_cascade_learns_from_the_returned_answers_only() -> None:
    recs = _records(300, length_tells=True)
    src = Source("syn", recs, "strong", "weak", "two-model")
    prices = {m: p for m in ("weak", "strong") if (p := price_model(recs, m)) is not None}
    chosen, paid = simulate_cascade(recs, src, prices, 0.1, seed=3)
    second = list(zip(recs[150:], chosen[150:], paid[150:], strict=True))
    # a short (failed) weak answer is escalated, a long (good) one mostly kept
    short = [c for r, c, _ in second if r.models["weak"].out_tokens < 60]
    long_ = [c for r, c, _ in second if r.models["weak"].out_tokens >= 60]
    assert sum(c == "strong" for c in short) / len(short) > 0.8
    assert sum(c == "strong" for c in long_) / len(long_) < 0.5
    # an escalation pays both calls
    for r, c, usd in second:
        want = r.models["weak"].cost_usd + (r.models["strong"].cost_usd if c == "strong" else 0)
        assert abs(usd - want) < 1e-12
