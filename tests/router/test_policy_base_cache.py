"""The base-decision cache of ``LayeredPolicy`` (``_base_cached``) against the general
path (``_base``): for any sequence of requests — with and without routing hints, valid
or not, several principals, task types, lanes and adapter sets, routing tables and
windows swapped between requests as a reload swaps them — the cached policy decides
exactly what ``_base`` decides afresh, and raises exactly what it raises."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from atp_proto.frames import ATPError, BudgetWindow, QoS
from atp_proto.messages import Task
from atp_proto.router.auth import Principal
from atp_proto.router.routing import policy as policy_mod
from atp_proto.router.routing.policy import HINT_KEYS, LayeredPolicy, PolicyInput, PolicyState
from atp_proto.router.routing.table import RouteEntry, RoutingTable

LANES = (QoS.GOLD, QoS.SILVER, QoS.BRONZE)
TABLES = (
    RoutingTable(),
    RoutingTable(
        default=RouteEntry(candidates=("b", "a"), strategy="cascade", fanout=2),
        tasks={
            "code": RouteEntry(lane=QoS.SILVER, min_confidence=0.4, quorum=3, hedge=True),
            "qa": RouteEntry(candidates=("c",), window=BudgetWindow(max_tokens=50)),
        },
        version="t1",
    ),
)
STATES = tuple(PolicyState(table=t) for t in TABLES)
WINDOWS = (BudgetWindow(), BudgetWindow(max_tokens=100, max_usd_micros=5))
#: mostly no swap, so that decisions stay cached across many requests
SWAPS = st.sampled_from([None] * 8 + [0, 1])

hint_values: dict[str, Any] = {
    "tool_permissions": st.sampled_from([["x"], "bad", []]),
    "data_scope": st.sampled_from([["d"], 3]),
    "adapters": st.sampled_from([["a"], ["b", "a", "b"], ["zz"], [], "a"]),
    "strategy": st.sampled_from(["consensus", "vote", "nope"]),
    "comparator": st.sampled_from(["exact", "numeric", "json:x", "???", 1]),
    "hedge": st.sampled_from([True, False, "yes"]),
    "fanout": st.sampled_from([1, 3, 0, 17, True]),
    "min_confidence": st.sampled_from([0.5, 1, float("nan"), "x"]),
    "min_quality": st.sampled_from([0.2, None]),
    "quorum": st.sampled_from([2, 99]),
}
metas = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from(["task_type", "trace", "x"]), st.integers(0, 3), max_size=2),
    st.fixed_dictionaries({}, optional=dict(hint_values.items()) | {"trace": st.just(1)}),
)
principals = st.builds(
    Principal,
    st.sampled_from(["alice", "bob"]),
    st.sampled_from(["acme", "other"]),
    st.sampled_from(LANES),
    st.sampled_from([None, frozenset({"qa"}), frozenset({"qa", "code"})]),
    st.just({}),
)
requests = st.tuples(
    principals,
    st.sampled_from(["qa", "code", "chat"]),
    st.sampled_from((*LANES, QoS.UNSPECIFIED)),
    metas,
    st.sampled_from([("a", "b", "c"), ("a", "b"), ("c",), ()]),
    SWAPS,  # swap the policy state (as a reload does) before it
    SWAPS,  # swap the policy's window before it
)


def _decide(f: Any) -> Any:
    try:
        return ("ok", f())
    except ATPError as exc:
        return ("error", exc.code, exc.message)


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=1, max_size=40), st.sampled_from([0.0, 0.3]))
def test_cached_base_decides_as_the_general_path(seq: list[Any], min_conf: float) -> None:
    policy = LayeredPolicy(STATES[0], min_confidence=min_conf)
    for principal, task_type, qos, meta, adapters, table, window in seq:
        if table is not None:
            policy.state = STATES[table]
        if window is not None:
            policy.window = WINDOWS[window]
        task = Task(task_type, "2+2?", {}, meta, BudgetWindow(), 0)
        inp = PolicyInput(principal, task, qos, adapters)
        want = _decide(lambda: policy._base(inp, policy.state.table))  # noqa: B023
        assert _decide(lambda: policy.decide(inp)) == want  # noqa: B023
        assert len(policy._cache) <= policy_mod.BASE_CACHE_MAX


def test_hint_free_requests_share_one_decision_and_hints_bypass_it() -> None:
    policy = LayeredPolicy()
    p = Principal("alice", "acme")
    plain = Task("qa", "x", {}, {"task_type": "qa"}, BudgetWindow(), 0)
    a = policy.decide(PolicyInput(p, plain, QoS.GOLD, ("a", "b")))
    b = policy.decide(PolicyInput(p, plain, QoS.GOLD, ("a", "b")))
    assert a is b  # the second stream did not decide again
    for key in sorted(HINT_KEYS):
        hinted = Task("qa", "x", {}, {key: None}, BudgetWindow(), 0)
        policy._cache.clear()
        with contextlib.suppress(ATPError):
            policy.decide(PolicyInput(p, hinted, QoS.GOLD, ("a", "b")))
        assert not policy._cache, key  # decided afresh, never stored
    policy.state = PolicyState(table=TABLES[1])  # a reload: the old decisions go
    c = policy.decide(PolicyInput(p, plain, QoS.GOLD, ("a", "b", "c")))
    assert c.candidates == ("c",) and c is not a


def test_the_cache_is_bounded_by_client_chosen_task_types() -> None:
    policy = LayeredPolicy()
    p = Principal("alice", "acme")
    for i in range(3 * policy_mod.BASE_CACHE_MAX):
        task = Task(f"t{i}", "x", {}, {}, BudgetWindow(), 0)
        policy.decide(PolicyInput(p, task, QoS.GOLD, ("a",)))
        assert len(policy._cache) <= policy_mod.BASE_CACHE_MAX
