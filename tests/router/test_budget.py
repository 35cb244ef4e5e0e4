"""The router's per-stream budget ledger (spec §9), sans-IO: charging, parallel calls,
caps and WINDOW_UPDATE windows. Moved from the core's tests when the ledger left the core
(tests/frames/test_budget_windows.py keeps the wire side); the same rules end to end, with
a real router and adapter processes: tests/router/test_streams.py (a WINDOW_UPDATE
raising or lowering the window mid-stream)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import BudgetExceeded, BudgetWindow, ErrorCode
from atp_proto.router.budget import BudgetLedger, BudgetUsage


def test_charge_over_the_budget_is_ebudget() -> None:
    """ATP-BUDGET-003: tokens or money past the window raise EBUDGET; usage is recorded."""
    led = BudgetLedger(BudgetWindow(max_tokens=100, max_usd_micros=50), BudgetWindow(), stream_id=3)
    led.charge(60, 10)
    led.charge(40, 0)
    with pytest.raises(BudgetExceeded) as info:
        led.charge(1, 0)
    assert (
        info.value.code == ErrorCode.EBUDGET
        and info.value.stream_id == 3
        and "tokens" in info.value.message
    )
    with pytest.raises(BudgetExceeded, match="usd_micros"):
        led.charge(-1, 41)
    assert led.usage == BudgetUsage(tokens=100, usd_micros=51, parallel=0)


def test_acquire_parallel_over_max_parallel_is_ewindow() -> None:
    """ATP-BUDGET-004: max_parallel calls at once; one more is EWINDOW."""
    led = BudgetLedger(BudgetWindow(max_parallel=2), BudgetWindow())
    led.acquire_parallel()
    led.acquire_parallel()
    with pytest.raises(BudgetExceeded) as info:
        led.acquire_parallel()
    assert info.value.code == ErrorCode.EWINDOW
    led.release_parallel()
    led.acquire_parallel()
    assert led.usage.parallel == 2
    for _ in range(3):
        led.release_parallel()
    assert led.usage.parallel == 0  # never negative


def test_window_update_lowering_below_usage_is_ebudget() -> None:
    """ATP-BUDGET-005: a window lowered below what is already used ends the stream with
    EBUDGET; the fields a WINDOW_UPDATE does not name stay."""
    led = BudgetLedger(BudgetWindow(max_parallel=4, max_tokens=1000), BudgetWindow())
    led.charge(500, 0)
    led.apply(BudgetWindow(max_tokens=800))
    assert led.window == BudgetWindow(4, 800, None)
    with pytest.raises(BudgetExceeded) as info:
        led.apply(BudgetWindow(max_tokens=100))
    assert info.value.code == ErrorCode.EBUDGET
    assert led.window == BudgetWindow(4, 100, None)  # applied all the same


def test_router_cap_bounds_the_clients_window() -> None:
    """ATP-BUDGET-001: the effective window is the minimum of the client's and the
    router's cap, also after a WINDOW_UPDATE tries to raise it."""
    led = BudgetLedger(BudgetWindow(max_parallel=8, max_tokens=1000), BudgetWindow())
    led.restrict(BudgetWindow(max_parallel=2, max_usd_micros=50))
    assert led.window == BudgetWindow(2, 1000, 50)
    led.apply(BudgetWindow(max_parallel=10, max_tokens=5000))
    assert led.window == BudgetWindow(2, 5000, 50)
    assert led.fits(4999, 50) and not led.fits(5001, 0) and not led.fits(0, 51)


def test_router_cap_survives_repeated_raises() -> None:
    """ATP-BUDGET-001 (a hostile client): raising the window again and again never moves it
    past the router's cap, and spending past the cap is EBUDGET."""
    led = BudgetLedger(BudgetWindow(max_tokens=1000), BudgetWindow())
    led.restrict(BudgetWindow(max_tokens=50))
    assert led.window.max_tokens == 50
    for _ in range(2):
        led.apply(BudgetWindow(max_tokens=10_000))
        assert led.window.max_tokens == 50
    with pytest.raises(BudgetExceeded):
        led.charge(60, 0)


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("charge"), st.integers(0, 300), st.integers(0, 30)),
            st.tuples(
                st.just("apply"), st.none() | st.integers(0, 4), st.none() | st.integers(0, 2000)
            ),
            st.tuples(st.just("acquire"), st.none(), st.none()),
            st.tuples(st.just("release"), st.none(), st.none()),
        ),
        max_size=40,
    ),
    cap_tokens=st.none() | st.integers(0, 1500),
)
def test_ledger_invariants(
    steps: list[tuple[str, int | None, int | None]], cap_tokens: int | None
) -> None:
    """ATP-BUDGET-001/003/004/005 as properties (the core's state machine used to check
    them when the core kept the budget): usage is always recorded; a charge or a window
    raises EBUDGET exactly when usage is past the window; calls in flight never pass
    max_parallel; the window is never past the cap."""
    cap = BudgetWindow(max_tokens=cap_tokens)
    led = BudgetLedger(BudgetWindow(max_parallel=2, max_tokens=1000), cap)
    tokens = 0
    for op, a, b in steps:
        if op == "charge":
            assert a is not None and b is not None
            tokens += a
            over = led.window.max_tokens is not None and tokens > led.window.max_tokens
            try:
                led.charge(a, 0)
                assert not over
            except BudgetExceeded as exc:
                assert over and exc.code == ErrorCode.EBUDGET
            assert led.tokens == tokens
        elif op == "apply":
            try:
                led.apply(BudgetWindow(max_parallel=a, max_tokens=b))
            except BudgetExceeded as exc:
                assert exc.code == ErrorCode.EBUDGET
                assert led.window.max_tokens is not None and tokens > led.window.max_tokens
        elif op == "acquire":
            before, limit = led.parallel, led.window.max_parallel
            try:
                led.acquire_parallel()
                assert limit is None or before < limit
            except BudgetExceeded as exc:
                assert exc.code == ErrorCode.EWINDOW and limit is not None and before >= limit
        else:
            led.release_parallel()
        assert led.parallel >= 0
        if cap_tokens is not None:
            assert led.window.max_tokens is not None and led.window.max_tokens <= cap_tokens
