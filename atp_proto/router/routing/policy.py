"""Policy: may this stream run, and how (ATP-SEC-004, ATP-SEC-015, ATP-BUDGET-001).

One :class:`Policy` protocol, asked once per stream before anything is spent:
``decide(PolicyInput) -> Decision``. A denial names the rule that denied (the stream
ends ESEC with it); an allowed stream gets its lane cap, its candidates in order, the
merge strategy, the fan-out width, the escalation rule (``min_confidence``; never to a
weaker challenger) and the router's default window (the cap on the client's window).

:class:`PrincipalPolicy` is the first implementation: today's token claims
(``task_types``, ``max_qos``) plus the request's routing hints (``meta.adapters``,
``meta.fanout``, ``meta.min_confidence``, and the strategy hints ``meta.strategy``,
``meta.quorum``, ``meta.comparator``, ``meta.min_quality``, ``meta.hedge``:
ATP-STRAT-009). A Rego or OPA policy plugs in behind the same protocol (and may forbid
the hints).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from atp_proto.frames import ATPError, BudgetWindow, ErrorCode, QoS
from atp_proto.messages import Task, meta_adapters, meta_int, meta_number

from .strategies import STRATEGIES, check_comparator

__all__ = ["Decision", "Policy", "PolicyInput", "PrincipalLike", "PrincipalPolicy"]


class PrincipalLike(Protocol):
    """What the claims policy reads of a principal (``router.auth.Principal``)."""

    @property
    def tenant(self) -> str: ...

    @property
    def task_types(self) -> frozenset[str] | None: ...

    @property
    def max_qos(self) -> QoS: ...

    def allows(self, task_type: str) -> bool: ...

    def cap_qos(self, qos: QoS) -> QoS: ...


@dataclass(frozen=True, slots=True)
class PolicyInput:
    principal: PrincipalLike
    task: Task
    qos: QoS  #: the lane the SYN asked for
    adapters: Sequence[str]  #: the configured adapters, in configuration order


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    rule: str = ""  #: the rule that decided a denial
    reason: str = ""  #: said to the client on a denial (ESEC)
    lane: QoS = QoS.SILVER
    candidates: tuple[str, ...] = ()
    #: how answers are chosen (merge / strategies): "consensus" (today's default),
    #: "cascade", "first_good", "quorum", "best_confidence", "vote"
    strategy: str = "consensus"
    fanout: int = 1
    min_confidence: float = 0.0  #: escalate while the champion is below this
    min_quality: float = 0.0  #: cascade: escalate while the predicted quality is below this
    quorum: int = 2  #: quorum: k answers must agree
    comparator: str = "exact"  #: quorum/vote: "exact", "numeric" or "json:FIELD"
    hedge: bool = False  #: hedged requests allowed for this stream
    plan: str = "default"  #: the tenant's plan: the learner's reward weights
    #: the router's cap on the client's window
    window: BudgetWindow = field(default_factory=BudgetWindow)


class Policy(Protocol):
    def decide(self, inp: PolicyInput) -> Decision:
        """The decision for one stream.

        Raises:
            ATPError: EPROTO for malformed routing hints, EAGENTDOWN when there is no
                adapter at all (a refusal of the request, not a policy denial).
        """
        ...


class PrincipalPolicy:
    """The token's claims decide; the router's configuration gives the defaults."""

    def __init__(self, *, min_confidence: float = 0.0, window: BudgetWindow | None = None) -> None:
        self.min_confidence = min_confidence
        self.window = window or BudgetWindow()

    def decide(self, inp: PolicyInput) -> Decision:
        p, task = inp.principal, inp.task
        if not p.allows(task.task_type):
            return Decision(
                allow=False,
                rule="task_types",
                reason=f"task type {task.task_type!r} is not allowed for this token",
            )
        lane = p.cap_qos(inp.qos)  # the max_qos claim is a floor (ATP-SEC-004)
        wanted = meta_adapters(task.meta)
        if wanted is None:
            names: tuple[str, ...] = tuple(inp.adapters)
        else:
            unknown = [n for n in wanted if n not in inp.adapters]
            if unknown:
                raise ATPError(ErrorCode.EPROTO, f"unknown adapter(s): {', '.join(unknown)}")
            names = tuple(wanted)
        if not names:
            raise ATPError(ErrorCode.EAGENTDOWN, "no adapters are configured", retry_after_ms=5000)
        strategy, comparator, hedge = strategy_hints(task.meta)
        return Decision(
            allow=True,
            lane=lane,
            candidates=names,
            strategy=strategy,
            fanout=meta_int(task.meta, "fanout", 1, 1, 16),
            min_confidence=meta_number(task.meta, "min_confidence", self.min_confidence),
            min_quality=meta_number(task.meta, "min_quality", 0.0),
            quorum=meta_int(task.meta, "quorum", 2, 1, 16),
            comparator=comparator,
            hedge=hedge,
            window=self.window,
        )


def strategy_hints(meta: Mapping[str, Any]) -> tuple[str, str, bool]:
    """``meta.strategy`` (default consensus), ``meta.comparator`` (default exact) and
    ``meta.hedge`` (default false), validated (ATP-STRAT-009).

    Raises:
        ATPError: EPROTO naming the bad hint.
    """
    strategy = meta.get("strategy", "consensus")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ATPError(ErrorCode.EPROTO, f'"meta.strategy" must be one of {", ".join(STRATEGIES)}')
    comparator = meta.get("comparator", "exact")
    try:
        if not isinstance(comparator, str):
            raise ValueError("not text")
        check_comparator(comparator)
    except ValueError:
        raise ATPError(
            ErrorCode.EPROTO, '"meta.comparator" must be exact, numeric or json:FIELD'
        ) from None
    hedge = meta.get("hedge", False)
    if not isinstance(hedge, bool):
        raise ATPError(ErrorCode.EPROTO, '"meta.hedge" must be true or false')
    return strategy, comparator, hedge
