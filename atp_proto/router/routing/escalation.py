"""Escalation: champion / challenger (ATP-ADAPT-005).

While the champion's confidence is below the rule's ``min_confidence``, the router calls
an untried candidate whose estimate promises more confidence than the champion has —
never a weaker one — the most confident first (the costliest among equals), if it still
fits the stream's live budget (a WINDOW_UPDATE may have raised it since preflight:
ATP-BUDGET-005/010). The challenger's answer replaces the champion only when it finished
at least as confident. When the learner predicts quality, a challenger must also be
predicted at least as good as the champion (``floor`` / ``strength``, ATP-STRAT-005).
"""

from __future__ import annotations

from collections.abc import Callable

from atp_proto.router.budget import BudgetLedger

from ._emit import Emitter
from ._model import Candidate, Outcome
from .fanout import FanOut

__all__ = ["escalate", "next_challenger"]


def next_challenger(
    champion: Outcome,
    remaining: list[Candidate],
    ledger: BudgetLedger,
    *,
    floor: float | None = None,
    strength: Callable[[str], float] | None = None,
    strict: bool = False,
) -> Candidate | None:
    """The challenger to call next, taken off ``remaining`` with every stronger one that
    no longer fits; None when no untried candidate promises more and fits. With
    ``strength``, candidates weaker than ``floor`` (the champion's) never challenge;
    ``strict``: nor equal ones (ATP-STRAT-005: by estimate confidence, a challenger must
    be above the champion's estimate, not only above its answer's confidence)."""
    stronger = [
        c
        for c in remaining
        if c.estimate is not None
        and c.estimate.confidence > champion.confidence
        and (
            strength is None
            or floor is None
            or (strength(c.name) > floor if strict else strength(c.name) >= floor)
        )
    ]
    remaining[:] = stronger  # the weaker ones can never challenge again
    while remaining:
        challenger = max(
            remaining, key=lambda c: (c.estimate.confidence if c.estimate else 0.0, c.guarded_usd)
        )
        remaining.remove(challenger)
        if ledger.fits(challenger.guarded_tokens, challenger.guarded_usd):
            return challenger
    return None


async def escalate(
    champion: Outcome,
    remaining: list[Candidate],
    min_confidence: float,
    fan: FanOut,
    emit: Emitter,
    *,
    floor: float | None = None,
    strength: Callable[[str], float] | None = None,
    strict: bool = False,
) -> Outcome:
    """Challenge the champion until it is confident enough or nobody is left."""
    while champion.confidence < min_confidence:
        challenger = next_challenger(
            champion, remaining, fan.ledger, floor=floor, strength=strength, strict=strict
        )
        if challenger is None:
            break
        await emit.wait_writable()
        emit.notice(
            {
                "escalate": {
                    "from": champion.adapter,
                    "to": challenger.name,
                    "confidence": champion.confidence,
                }
            },
            champion.confidence,
        )
        fan.ctx.metrics.escalations.inc("consensus")
        outcome = await fan.call(challenger)
        if outcome.finished and outcome.confidence >= champion.confidence:
            champion = outcome
            if strength is not None:
                floor = strength(champion.adapter)
    return champion
