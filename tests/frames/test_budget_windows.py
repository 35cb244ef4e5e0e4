"""Budget windows (spec §9): SYN windows, WINDOW_UPDATE, caps, charging (the core's compat budget methods).

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    BudgetExceeded,
    BudgetReported,
    BudgetWindow,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    StreamClosedError,
    StreamReset,
    WindowUpdated,
    encode_frame,
)

from .helpers import ConnectionPair, one, opened_pair


def test_charge_over_the_budget_is_ebudget() -> None:
    """ATP-BUDGET-003: tokens or money past the window raise EBUDGET; usage is recorded."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_tokens=100, max_usd_micros=50))
    p.to_router()
    p.router.charge(sid, tokens=60, usd_micros=10)
    p.router.charge(sid, tokens=40)
    with pytest.raises(BudgetExceeded) as info:
        p.router.charge(sid, tokens=1)
    assert (
        info.value.code == ErrorCode.EBUDGET
        and info.value.stream_id == sid
        and "tokens" in info.value.message
    )
    with pytest.raises(BudgetExceeded, match="usd_micros"):
        p.router.charge(sid, tokens=-1, usd_micros=41)
    assert p.router.usage(sid) == {"tokens": 100, "usd_micros": 51, "parallel": 0}
    p.router.charge(999, tokens=10**9)  # unknown stream: nothing to charge
    assert p.router.usage(999) == {"tokens": 0, "usd_micros": 0, "parallel": 0}


def test_acquire_parallel_over_max_parallel_is_ewindow() -> None:
    """ATP-BUDGET-004: max_parallel calls at once; one more is EWINDOW."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=2))
    p.to_router()
    p.router.acquire_parallel(sid)
    p.router.acquire_parallel(sid)
    with pytest.raises(BudgetExceeded) as info:
        p.router.acquire_parallel(sid)
    assert info.value.code == ErrorCode.EWINDOW
    p.router.release_parallel(sid)
    p.router.acquire_parallel(sid)
    assert p.router.usage(sid)["parallel"] == 2
    for _ in range(3):
        p.router.release_parallel(sid)
    assert p.router.usage(sid)["parallel"] == 0  # never negative
    p.router.release_parallel(999)
    with pytest.raises(StreamClosedError):
        p.router.acquire_parallel(999)


def test_window_update_lowering_below_usage_ends_the_stream() -> None:
    """ATP-BUDGET-005: a window lowered below what is already used ends it with EBUDGET."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=4, max_tokens=1000))
    p.to_router()
    p.router.charge(sid, tokens=500)
    p.client.update_window(sid, BudgetWindow(max_tokens=800))
    upd = one(p.to_router(), WindowUpdated)
    assert upd.window == BudgetWindow(None, 800, None)
    assert p.router.budget_window(sid) == BudgetWindow(4, 800, None)  # the others stay
    assert p.client.budget_window(sid) == BudgetWindow(4, 800, None)
    p.client.update_window(sid, BudgetWindow(max_tokens=100))
    reset = one(p.to_router(), StreamReset)
    assert reset.code == ErrorCode.EBUDGET and reset.stream_id == sid
    client_reset = one(p.to_client(), StreamReset)
    assert client_reset.code == ErrorCode.EBUDGET and client_reset.by_peer
    with pytest.raises(StreamClosedError):
        p.client.update_window(sid, BudgetWindow(max_tokens=1))
    assert p.router.budget_window(sid) == BudgetWindow()


def test_client_ignores_budget_windows_from_the_router() -> None:
    p, sid = opened_pair()
    upd = one(
        p.client.receive_message(
            encode_frame(Frame.window_update(sid, window=BudgetWindow(max_tokens=1))), 0.0
        ),
        WindowUpdated,
    )
    assert (
        upd.window == BudgetWindow(max_tokens=1) and p.client.budget_window(sid) == BudgetWindow()
    )


def test_budget_update_router_to_client() -> None:
    """ATP-BUDGET-007, ATP-FRAME-014: BUDGET_UPDATE goes router -> client only."""
    p, sid = opened_pair()
    p.router.send_budget_update(sid, {"tokens": 5, "usd_micros": 1, "parallel": 1})
    rep = one(p.to_client(), BudgetReported)
    assert rep.stream_id == sid and rep.usage == {"tokens": 5, "usd_micros": 1, "parallel": 1}
    # malformed usage or unknown stream: ignored
    assert (
        p.client.receive_message(
            encode_frame(Frame(FrameType.BUDGET_UPDATE, 0, sid, ext={"usage": 3})), 0.0
        )
        == []
    )
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.BUDGET_UPDATE, 0, sid, ext={"usage": {}})), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and "router only" in reset.message
    with pytest.raises(StreamClosedError):
        p.router.send_budget_update(sid, {})


@pytest.mark.parametrize(
    "window", [5, "x", [1], {"max_tokens": -1}, {"max_parallel": True}, {"max_usd_micros": 1.5}]
)
def test_invalid_syn_window_is_refused(window: object) -> None:
    """ATP-BUDGET-008: an invalid SYN window is EPROTO on the stream, never "unlimited"."""
    p = ConnectionPair()
    syn = encode_frame(Frame.data(1, 1, flags=Flags.SYN, ext={"window": window}))
    reset = one(p.router.receive_message(syn, 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 1 and not p.router.closed
    assert p.router.open_streams == 0


def test_router_cap_bounds_the_clients_window() -> None:
    """ATP-BUDGET-001: the effective window is the minimum of the client's and the
    router's cap, also after a WINDOW_UPDATE tries to raise it."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=8, max_tokens=1000))
    p.to_router()
    p.router.cap_window(sid, BudgetWindow(max_parallel=2, max_usd_micros=50))
    assert p.router.budget_window(sid) == BudgetWindow(2, 1000, 50)
    p.router.cap_window(999, BudgetWindow(max_parallel=1))  # unknown stream: no-op
    p.client.update_window(sid, BudgetWindow(max_parallel=10, max_tokens=5000))
    one(p.to_router(), WindowUpdated)
    assert p.router.budget_window(sid) == BudgetWindow(2, 5000, 50)
