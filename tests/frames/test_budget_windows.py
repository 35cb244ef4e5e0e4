"""Budget windows on the wire (spec §9): SYN windows, WINDOW_UPDATE, BUDGET_UPDATE. The
router's caps, usage and parallel calls are its ledger's: tests/router/test_budget.py.

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
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


def test_window_update_moves_the_streams_window_on_both_sides() -> None:
    """ATP-BUDGET-005: a WINDOW_UPDATE's window replaces the fields it names, on both
    sides, and reaches the router as a WindowUpdated event (its ledger enforces it:
    tests/router/test_budget.py)."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=4, max_tokens=1000))
    p.to_router()
    p.client.update_window(sid, BudgetWindow(max_tokens=800))
    upd = one(p.to_router(), WindowUpdated)
    assert upd.window == BudgetWindow(None, 800, None)
    assert p.router.budget_window(sid) == BudgetWindow(4, 800, None)  # the others stay
    assert p.client.budget_window(sid) == BudgetWindow(4, 800, None)
    p.router.reset_stream(sid)
    one(p.to_client(), StreamReset)
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
