"""The learning seam: which adapters a stream tries, and in what order, decided before any
call from what the router can know then; and what the router learns afterwards.

Fixed here so that the learner (bandit, offline training, feedback), the strategies that
consume its ranking (cascade, quorum, hedging) and the audit log that records it can be
built apart. :class:`CheapFirst` is the embedded default until a learned ranker is
configured: the candidates cheapest first by guard-banded estimate, no prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from atp_proto.frames import QoS

__all__ = ["CandidateView", "CheapFirst", "Learner", "Observation", "Ranking", "RouteQuery"]


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate as the learner sees it after preflight."""

    name: str
    est_tokens: float  #: guard-banded
    est_usd_micros: float  #: guard-banded
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """Everything known before the first adapter call."""

    decision_id: str  #: carried by the FINAL (ext ``telemetry.decision_id``) for feedback
    tenant: str
    plan: str  #: the tenant's plan: selects the reward weights (quality, cost, latency)
    task_type: str
    lane: QoS
    prompt: str
    candidates: tuple[CandidateView, ...]
    budget_usd_micros: int = 0  #: what the stream's window allows; 0 = no money limit


@dataclass(frozen=True, slots=True)
class Ranking:
    """The learner's answer: the order to try, and what it expects of each."""

    order: tuple[str, ...]  #: candidate names, the first to try first
    #: expected quality in [0, 1] per candidate (empty when the learner predicts nothing)
    predicted_quality: Mapping[str, float] = field(default_factory=dict)
    explored: bool = False  #: the order is an exploration, not the learner's best guess
    scores: Mapping[str, float] = field(default_factory=dict)  #: for the audit log
    model: str = "cheap-first"  #: which learner decided (audit log, telemetry)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one adapter call of a finished stream gave (what the router saw itself)."""

    adapter: str
    ok: bool
    confidence: float | None  #: the adapter's own, when it gave one
    tokens: int
    usd_micros: int
    latency_ms: float
    agreed: bool | None = None  #: its answer agreed with the chosen one (None: not compared)


class Learner(Protocol):
    def rank(self, query: RouteQuery) -> Ranking:
        """The order to try the candidates in (must be a permutation of a subset of
        ``query.candidates``; never empty when candidates is not). Fast: no I/O."""
        ...

    def observe(
        self, query: RouteQuery, observations: Sequence[Observation], winner: str | None
    ) -> None:
        """A stream finished (``winner`` None when it failed). Never blocks; no I/O."""
        ...

    def feedback(self, decision_id: str, quality: float, *, source: str = "client") -> bool:
        """Quality in [0, 1] of the answer a finished stream returned. False when the
        decision id is unknown (expired or never made)."""
        ...


class CheapFirst:
    """The default: cheapest guard-banded estimate first; learns nothing."""

    def rank(self, query: RouteQuery) -> Ranking:
        ordered = sorted(query.candidates, key=lambda c: (c.est_usd_micros, c.est_tokens))
        return Ranking(order=tuple(c.name for c in ordered))

    def observe(
        self, query: RouteQuery, observations: Sequence[Observation], winner: str | None
    ) -> None:
        return None

    def feedback(self, decision_id: str, quality: float, *, source: str = "client") -> bool:
        return False
