"""Regression unit tests from the review of the routing brain (issue 13): pure logic."""

from __future__ import annotations

from atp_proto.router.routing import Outcome
from atp_proto.router.routing.strategies import answer_key, disagree, pick_quorum, pick_vote


def _done(adapter: str, text: str, confidence: float) -> Outcome:
    return Outcome(adapter, [text] if text else [], confidence, finished=True)


def test_empty_answers_have_no_key_and_agree_with_nothing() -> None:
    """[ATP-STRAT-003] an answer that says nothing (empty, or white space only) has no key
    under ``exact``: two silent adapters are not a quorum, nor do they outvote a real
    answer (they were: "" was the key both shared)."""
    assert answer_key("", "exact") is None and answer_key(" \n\t ", "exact") is None
    assert answer_key(" Forty  Two ", "exact") == "forty two"
    silent = [_done("a", "", 0.9), _done("b", "  ", 0.9)]
    assert pick_quorum(silent, 2, "exact") is None
    found = pick_vote([*silent, _done("c", "42", 0.5)], "exact")
    assert found is not None and found[0].adapter == "c"
    assert disagree(silent, "exact")  # the cascade escalates past them
