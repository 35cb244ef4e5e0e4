"""Merge: choose the answer among the finished outcomes (consensus)."""

from __future__ import annotations

from collections.abc import Sequence

from ._model import Outcome

__all__ = ["STRATEGIES", "choose"]

STRATEGIES = ("consensus",)


def choose(outcomes: Sequence[Outcome], strategy: str = "consensus") -> Outcome:
    """Agreement- and confidence-weighted choice among the finished answers: an answer's
    confidence counts half alone and half by the share of answers equal to it.

    Raises:
        ValueError: an unknown strategy, or no finished outcome.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown merge strategy {strategy!r}")
    done = [o for o in outcomes if o.finished]
    if not done:
        raise ValueError("no finished outcome to choose from")
    if len(done) == 1:
        return done[0]
    answers = [o.answer for o in done]

    def score(o: Outcome) -> float:
        agree = sum(1 for a in answers if a == o.answer) / len(answers)
        return o.confidence * (0.5 + 0.5 * agree)

    return max(done, key=score)
