"""Unit tests of the pure strategy choices, comparators, savings and the hedger's
quantiles and rate bucket (ATP-STRAT-001…008). End to end: test_e2e_strategies.py."""

from __future__ import annotations

import pytest

from atp_proto.adapters import CostEstimate
from atp_proto.router.routing import Candidate, Outcome
from atp_proto.router.routing.hedging import MIN_SAMPLES, Hedger
from atp_proto.router.routing.strategies import (
    answer_key,
    check_comparator,
    disagree,
    pick_best_confidence,
    pick_first_good,
    pick_quorum,
    pick_vote,
    strength,
)
from atp_proto.router.routing.telemetry import savings, strongest


def out(name: str, text: str, conf: float, *, finished: bool = True, usd: int = 0) -> Outcome:
    return Outcome(name, [text], conf, finished=finished, usd_micros=usd)


def cand(name: str, conf: float, usd: int) -> Candidate:
    est = CostEstimate(
        in_tokens=1, out_tokens=1, usd_micros=usd, latency_p95_ms=1, variance=0, confidence=conf
    )
    return Candidate(name, None, est, 2.0, float(usd))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("comparator", "a", "b", "agree"),
    [
        ("exact", "  Hello   World ", "hello world", True),
        ("exact", "Cafe\u0301", "Café", True),  # NFC
        ("exact", "42", "The answer is 42", False),
        ("numeric", "The answer is 1,234.50", "1234.5", True),
        ("numeric", "42.00", "it is 42", True),
        ("numeric", "steps: 3, 4 -> 41", "42", False),
        ("numeric", "-0.0", "0", True),
        ("json:answer", '{"answer": 42, "x": 1}', 'Sure: {"x": 2, "answer": 42}', True),
        ("json:a.b", '{"a": {"b": [1, 2]}}', '{"a": {"b": [1,2]}, "c": 0}', True),
        ("json:answer", '{"answer": 42}', '{"answer": "42"}', False),
    ],
)
def test_comparators_normalise(comparator: str, a: str, b: str, agree: bool) -> None:
    """[ATP-STRAT-003]"""
    ka, kb = answer_key(a, comparator), answer_key(b, comparator)
    assert ka is not None and kb is not None
    assert (ka == kb) is agree


def test_keyless_answers_never_agree() -> None:
    """[ATP-STRAT-003] no number / no JSON / no field: no key, and no agreement."""
    assert answer_key("no digits here", "numeric") is None
    assert answer_key("not json", "json:answer") is None
    assert answer_key('{"other": 1}', "json:answer") is None
    assert answer_key("x" * (1 << 21), "json:a") is None  # bounded: not parsed
    assert disagree([out("a", "none", 1), out("b", "none", 1)], "numeric")


@pytest.mark.parametrize("bad", ["", "fuzzy", "json:", "json:a..b", "json:" + "a." * 20 + "a"])
def test_bad_comparators_are_refused(bad: str) -> None:
    """[ATP-STRAT-009]"""
    with pytest.raises(ValueError, match="unknown comparator"):
        check_comparator(bad)


def test_quorum_vote_first_good_best() -> None:
    """[ATP-STRAT-001] [ATP-STRAT-002] [ATP-STRAT-004]"""
    answers = [
        out("a", "41", 0.9),
        out("b", "42", 0.5),
        out("c", "42.0", 0.3),
        out("d", "42", 0.99, finished=False),  # unfinished answers never count
    ]
    found = pick_quorum(answers, 2, "numeric")
    assert found is not None and found[0].adapter == "b" and found[1] == 2
    assert pick_quorum(answers, 3, "numeric") is None
    assert pick_quorum(answers, 2, "exact") is None  # "42" vs "42.0"
    voted = pick_vote(answers, "numeric")
    assert voted is not None and voted[0].adapter == "a"  # 0.9 > 0.5 + 0.3
    assert pick_vote([out("a", "1", 0.5), out("b", "2", 0.5)], "numeric") is None  # a tie
    assert pick_vote([out("a", "x", 0.5)], "numeric") is None  # nobody has a key
    assert pick_first_good(answers, 0.4) is answers[0]
    assert pick_first_good(answers[1:], 0.6) is None
    best = pick_best_confidence(answers)
    assert best is not None and best.adapter == "a"


def test_strength_prefers_predictions_for_every_candidate() -> None:
    """[ATP-STRAT-005] predicted quality when given for all; estimate confidence otherwise."""
    by = {"a": cand("a", 0.9, 10), "b": cand("b", 0.2, 5)}
    assert strength("a", by, {}) == 0.9
    assert strength("a", by, {"a": 0.1, "b": 0.8}) == 0.1
    assert strength("a", by, {"a": 0.1}) == 0.9  # partial predictions: not trusted


def test_savings_against_the_strongest() -> None:
    """[ATP-STRAT-008] baseline: the strongest's estimate, or its actual cost when called."""
    ranked = [cand("cheap", 0.3, 10), cand("strong", 0.9, 1000)]
    s = savings(ranked, {}, [out("cheap", "x", 0.3, usd=12)], 12)
    assert s == {
        "strongest": "strong",
        "baseline_usd_micros": 1000,
        "savings_usd_micros": 988,
        "savings_pct": 98.8,
    }
    s = savings(ranked, {}, [out("cheap", "x", 0.3, usd=12), out("strong", "y", 0.9, usd=900)], 912)
    assert s is not None and s["baseline_usd_micros"] == 900 and s["savings_usd_micros"] == -12
    top = strongest(ranked, {"cheap": 0.8, "strong": 0.7})
    assert top is not None and top.name == "cheap"  # by prediction


def test_hedger_quantile_and_rate_bucket() -> None:
    """[ATP-STRAT-006] no threshold before MIN_SAMPLES; p95 of the window; the bucket
    allows `burst` hedges, then `rate` per hedge-enabled stream."""
    h = Hedger(rate=0.1, burst=2)
    for i in range(MIN_SAMPLES - 1):
        h.observe_ttfc("a", 0.01 * (i + 1))
    assert h.threshold("a") is None
    for i in range(100 - MIN_SAMPLES + 1):
        h.observe_ttfc("a", 0.01 * (i + MIN_SAMPLES))
    threshold = h.threshold("a")
    assert threshold is not None and 0.94 <= threshold <= 0.96
    granted = 0
    for _ in range(100):
        h.offer()
        granted += h.take()
    assert granted == 2 + 10 - 1 or granted == 2 + 10  # burst, then 10 % of 100 streams
    with pytest.raises(ValueError):
        Hedger(rate=2.0)
