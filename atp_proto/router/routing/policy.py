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
ATP-STRAT-009). :class:`LayeredPolicy` adds the routing table (:mod:`.table`) and a Rego
policy, in-process (:mod:`.rego`) or on an OPA server (:mod:`.opa`), which may forbid the
hints: the layers and the Rego contract are in ``docs/policy.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from atp_proto.frames import ATPError, BudgetWindow, ErrorCode, QoS
from atp_proto.messages import Task, meta_adapters, meta_int, meta_number
from atp_proto.router.auth import Principal

from .rego import PolicyEvalError
from .strategies import STRATEGIES
from .strategies import check_comparator as _comparator_ok
from .table import (
    LANES,
    RouteEntry,
    RoutingTable,
    TableError,
    check_comparator,
    check_strategy,
    check_window,
)

log = logging.getLogger("atp.router")

__all__ = [
    "Decision",
    "LayeredPolicy",
    "Policy",
    "PolicyInput",
    "PolicyState",
    "PrincipalLike",
    "PrincipalPolicy",
    "decide",
    "strategy_hints",
]


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


async def decide(policy: Policy, inp: PolicyInput) -> Decision:
    """Ask ``policy``: its ``decide_async`` when it has one (an OPA server is asked over
    the network), else ``decide``."""
    adecide = getattr(policy, "decide_async", None)
    if adecide is not None:
        result: Decision = await adecide(inp)
        return result
    return policy.decide(inp)


# ---------------------------------------------------------------------- Rego layers


class SyncEngine(Protocol):
    """A policy evaluated in-process (:class:`.rego.RegoEngine`)."""

    version: str

    def evaluate(self, doc: Mapping[str, Any]) -> Mapping[str, Any]: ...


@runtime_checkable
class AsyncEngine(Protocol):
    """A policy evaluated elsewhere (:class:`.opa.OpaEngine`)."""

    version: str

    async def evaluate_async(self, doc: Mapping[str, Any]) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What one decision reads: swapped whole by a reload (never half of it)."""

    engine: SyncEngine | AsyncEngine | None = None
    table: RoutingTable = field(default_factory=RoutingTable)

    @property
    def version(self) -> str:
        """``policy@table`` versions, shown in /metrics (``atp_policy_info``)."""
        engine = self.engine.version if self.engine is not None else "none"
        return f"{engine}@{self.table.version or 'none'}"


#: Every ``meta`` key the claims-and-table layer (``LayeredPolicy._base``) reads: a
#: request without any of them gets the same base decision as every other stream of its
#: task type, lane, claims and adapters, so that decision is computed once and reused.
HINT_KEYS = frozenset(
    {
        "tool_permissions",
        "data_scope",
        "adapters",
        "strategy",
        "comparator",
        "hedge",
        "fanout",
        "min_confidence",
        "min_quality",
        "quorum",
    }
)
#: Base decisions kept (the key holds the client's task_type: bounded, cleared when full)
BASE_CACHE_MAX = 256

#: Claims that change with every token: never policy input (they would defeat the cache).
VOLATILE_CLAIMS = frozenset({"exp", "iat", "nbf", "jti"})
#: Bounds of meta.tool_permissions / meta.data_scope (a peer controls them).
MAX_SCOPE_ITEMS = 64
MAX_SCOPE_LEN = 128


def meta_names(meta: Mapping[str, Any], key: str) -> list[str]:
    """``meta.tool_permissions`` / ``meta.data_scope``: a list of short strings.

    Raises:
        ATPError: EPROTO when it is not one (ATP-SEC-016).
    """
    value = meta.get(key)
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_SCOPE_ITEMS
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_SCOPE_LEN for v in value)
    ):
        raise ATPError(
            ErrorCode.EPROTO,
            f'"meta.{key}" must be a list of at most {MAX_SCOPE_ITEMS} names '
            f"of 1..{MAX_SCOPE_LEN} characters",
        )
    return sorted(set(value))


#: a policy's rule name and reason go into an ERROR message: bounded
MAX_RULE_LEN = 64
MAX_REASON_LEN = 300


def _deny(rule: str, reason: str) -> Decision:
    return Decision(allow=False, rule=rule[:MAX_RULE_LEN], reason=reason[:MAX_REASON_LEN])


def _policy_error(message: str) -> Decision:
    """A policy that cannot answer denies (fail closed)."""
    return _deny("policy_error", f"the policy failed: {message}")


class LayeredPolicy:
    """Claims, then the routing table, then the client's hints, then the Rego policy.

    1. the token's claims (``task_types``, ``max_qos``: ATP-SEC-004), as
       :class:`PrincipalPolicy`;
    2. the routing table's entry for the task type (candidates, strategy, escalation
       rules, default window and lane);
    3. the request's hints (``meta.adapters``, ``meta.fanout``, ``meta.min_confidence``);
    4. the Rego policy's ``data.atp.policy`` document: ``deny`` rules end the stream ESEC
       naming the rule, ``lane_cap`` can only lower the lane, ``candidates`` can only
       narrow the adapters, ``window`` can only lower the window; the rest overrides
       (ATP-SEC-013, ATP-SEC-016..018).

    ``state`` is replaced whole on reload (:mod:`.reload`); a decision reads it once.
    """

    def __init__(
        self,
        state: PolicyState | None = None,
        *,
        min_confidence: float = 0.0,
        window: BudgetWindow | None = None,
    ) -> None:
        self.state = state or PolicyState()
        self.min_confidence = min_confidence
        self.window = window or BudgetWindow()
        #: base decisions of hint-free requests, valid for `_cached_for` (see _base_cached)
        self._cache: dict[tuple[Any, ...], Decision] = {}
        self._cached_for: tuple[PolicyState, BudgetWindow, float] | None = None

    # The two entry points share everything but the engine call.

    def decide(self, inp: PolicyInput) -> Decision:
        state = self.state
        base = self._base_cached(inp, state)
        engine = state.engine
        if engine is None or not base.allow:
            return base
        if isinstance(engine, AsyncEngine):
            raise TypeError("an OPA policy is asked with decide_async")
        try:
            answer = engine.evaluate(self.document(inp, base))
        except PolicyEvalError as exc:
            log.warning("policy evaluation failed: %s", exc)
            return _policy_error(str(exc))
        return self._apply(base, answer, inp)

    async def decide_async(self, inp: PolicyInput) -> Decision:
        state = self.state
        engine = state.engine
        # `engine is None` first: isinstance against a runtime-checkable Protocol costs
        # ~10 us, on every stream of a router without a Rego layer
        if engine is None or not isinstance(engine, AsyncEngine):
            return self.decide(inp)
        base = self._base_cached(inp, state)
        if not base.allow:
            return base
        # ATPError(EAGENTDOWN) when OPA cannot answer: fail closed (ATP-SEC-017)
        answer = await engine.evaluate_async(self.document(inp, base))
        return self._apply(base, answer, inp)

    def _base_cached(self, inp: PolicyInput, state: PolicyState) -> Decision:
        """``_base(inp, state.table)``, reused for requests without routing hints.

        Such a decision reads only the task type, the lane asked for, the principal's
        ``task_types`` and ``max_qos`` (a :class:`Principal`'s ``allows`` and ``cap_qos``
        read nothing else), the configured adapters, the routing table (``state``) and
        this policy's window and min_confidence: those are the key and the cache's
        validity. Decisions are frozen, so streams can share one. A request with any of
        :data:`HINT_KEYS`, or another principal type, is decided afresh; so is one whose
        decision raises (nothing is stored)."""
        p, task = inp.principal, inp.task
        if type(p) is not Principal or not task.meta.keys().isdisjoint(HINT_KEYS):
            return self._base(inp, state.table)
        cache = self._cache
        cached_for = self._cached_for
        if (
            cached_for is None
            or cached_for[0] is not state
            or cached_for[1] is not self.window
            or cached_for[2] != self.min_confidence
        ):
            cache.clear()
            self._cached_for = (state, self.window, self.min_confidence)
        key = (task.task_type, inp.qos, p.task_types, p.max_qos, tuple(inp.adapters))
        decision = cache.get(key)
        if decision is None:
            decision = self._base(inp, state.table)
            if len(cache) >= BASE_CACHE_MAX:
                cache.clear()
            cache[key] = decision
        return decision

    def _base(self, inp: PolicyInput, table: RoutingTable) -> Decision:
        p, task = inp.principal, inp.task
        if not p.allows(task.task_type):
            return _deny(
                "task_types", f"task type {task.task_type!r} is not allowed for this token"
            )
        for key in ("tool_permissions", "data_scope"):  # EPROTO, policy or not (ATP-SEC-016)
            meta_names(task.meta, key)
        route: RouteEntry = table.entry(task.task_type)
        lane = p.cap_qos(inp.qos)  # the max_qos claim is a floor (ATP-SEC-004)
        if route.lane is not None:  # the table's lane is a cap too
            lane = QoS(max(int(lane), int(route.lane)))
        wanted = meta_adapters(task.meta)
        defaults = route.candidates or tuple(inp.adapters)
        if wanted is None:
            names: tuple[str, ...] = tuple(n for n in defaults if n in inp.adapters)
        else:
            unknown = [n for n in wanted if n not in inp.adapters]
            if unknown:
                raise ATPError(ErrorCode.EPROTO, f"unknown adapter(s): {', '.join(unknown)}")
            names = tuple(wanted)
        if not names:
            raise ATPError(ErrorCode.EAGENTDOWN, "no adapters are configured", retry_after_ms=5000)
        window = self.window.clamp(route.window) if route.window else self.window
        meta = task.meta
        # the request's strategy hints (validated: EPROTO) over the table's defaults
        strategy, comparator, hedge = strategy_hints(meta)
        return Decision(
            allow=True,
            lane=lane,
            candidates=names,
            strategy=strategy if "strategy" in meta else (route.strategy or "consensus"),
            fanout=meta_int(meta, "fanout", route.fanout or 1, 1, 16),
            min_confidence=meta_number(
                meta,
                "min_confidence",
                route.min_confidence if route.min_confidence is not None else self.min_confidence,
            ),
            min_quality=meta_number(meta, "min_quality", route.min_quality or 0.0),
            quorum=meta_int(meta, "quorum", route.quorum or 2, 1, 16),
            comparator=comparator if "comparator" in meta else (route.comparator or "exact"),
            hedge=hedge if "hedge" in meta else bool(route.hedge),
            window=window,
        )

    @staticmethod
    def document(inp: PolicyInput, base: Decision) -> dict[str, Any]:
        """The policy's input (docs/policy.md): what a decision may depend on, no more
        (the prompt is not in it: the answers are cached by it).

        Raises:
            ATPError: EPROTO for a malformed ``meta.tool_permissions`` / ``meta.data_scope``.
        """
        p, task = inp.principal, inp.task
        claims = getattr(p, "claims", None) or {}
        doc: dict[str, Any] = {
            "tenant": p.tenant,
            "claims": {k: v for k, v in claims.items() if k not in VOLATILE_CLAIMS},
            "task_type": task.task_type,
            "tool_permissions": meta_names(task.meta, "tool_permissions"),
            "data_scope": meta_names(task.meta, "data_scope"),
            "lane": base.lane.label,
            "requested_adapters": meta_adapters(task.meta),
            "candidates": list(base.candidates),
            "adapters": list(inp.adapters),
            "window": task.window.to_dict(),
        }
        return doc

    def _apply(self, base: Decision, answer: Mapping[str, Any], inp: PolicyInput) -> Decision:
        """The policy's document over ``base`` (a malformed answer denies: fail closed)."""
        try:
            return _apply(base, answer, inp)
        except (TableError, TypeError, ValueError) as exc:
            log.warning("policy answer rejected: %s", exc)
            return _policy_error(str(exc))


def _apply(base: Decision, answer: Mapping[str, Any], inp: PolicyInput) -> Decision:
    deny = answer.get("deny", [])
    if isinstance(deny, dict):  # a partial object rule: {rule: reason}
        deny = [{"rule": k, "reason": v} for k, v in deny.items()]
    if not isinstance(deny, list):
        raise TypeError("deny must be a set of {rule, reason} objects")
    denials = []
    for item in deny:
        if isinstance(item, str):
            denials.append((item, "denied by policy"))
        elif isinstance(item, dict) and isinstance(item.get("rule"), str):
            denials.append((item["rule"], str(item.get("reason") or "denied by policy")))
        else:
            raise TypeError("deny must be a set of {rule, reason} objects")
    if denials:
        rule, reason = min(denials)  # deterministic: the first rule by name
        return _deny(rule, reason)
    if "allow" in answer and answer["allow"] is not True:
        return _deny("allow", "not allowed by policy")
    changes: dict[str, Any] = {}
    if "lane_cap" in answer:
        cap = answer["lane_cap"]
        if cap not in LANES:
            raise ValueError(f"lane_cap must be gold, silver or bronze, got {cap!r}")
        changes["lane"] = QoS(max(int(base.lane), int(LANES[cap])))
    if "candidates" in answer:
        allowed = answer["candidates"]
        if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
            raise TypeError("candidates must be a list of adapter names")
        names = tuple(n for n in base.candidates if n in allowed)  # narrowed, in order
        if not names:
            return _deny("candidates", "no adapter the policy allows can serve this stream")
        changes["candidates"] = names
    if "strategy" in answer:
        changes["strategy"] = check_strategy(answer["strategy"], "strategy")
    if "comparator" in answer:
        changes["comparator"] = check_comparator(answer["comparator"], "comparator")
    for key, lo, hi in (("fanout", 1, 16), ("quorum", 1, 16)):
        if key in answer:
            v = answer[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{key} must be an integer within {lo}..{hi}")
            changes[key] = v
    for key in ("min_confidence", "min_quality"):
        if key in answer:
            v = answer[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ValueError(f"{key} must be a number within 0..1")
            changes[key] = float(v)
    if "hedge" in answer:
        if not isinstance(answer["hedge"], bool):
            raise TypeError("hedge must be true or false")
        changes["hedge"] = answer["hedge"]
    if "plan" in answer:
        if not isinstance(answer["plan"], str) or not answer["plan"]:
            raise TypeError("plan must be a name")
        changes["plan"] = answer["plan"]
    if "window" in answer:
        changes["window"] = base.window.clamp(check_window(answer["window"], "window"))
    return replace(base, **changes)


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
        _comparator_ok(comparator)
    except ValueError:
        raise ATPError(
            ErrorCode.EPROTO, '"meta.comparator" must be exact, numeric or json:FIELD'
        ) from None
    hedge = meta.get("hedge", False)
    if not isinstance(hedge, bool):
        raise ATPError(ErrorCode.EPROTO, '"meta.hedge" must be true or false')
    return strategy, comparator, hedge
