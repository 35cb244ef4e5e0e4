"""Credit windows (spec §8): grants, hysteresis, small windows, closed streams still flushing.

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    MAX_WINDOW,
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Limits,
    MessageReceived,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
    encode_frame,
)

from .helpers import ConnectionPair, frag, one, opened_pair, wire


def test_sender_never_exceeds_credit() -> None:
    """ATP-FLOW-001, ATP-FLOW-003: frames wait in the outbox; what is sent fits the credit."""
    window = 4096
    p = ConnectionPair(client_limits=Limits(initial_window=window))
    p.handshake()
    sid = p.open()
    p.to_router()
    assert p.router.send_credit(sid) == window
    for _ in range(10):
        p.router.send_message(sid, b"z" * 700, more=True)
    sent = wire(p.router)
    assert sum(len(encode_frame(f)) for f in sent) <= window
    assert p.router.send_credit(sid) == window - sum(len(encode_frame(f)) for f in sent)
    assert p.router.outbound_buffered(sid) == 10 * (724) - sum(len(encode_frame(f)) for f in sent)
    assert p.router.send_credit(999) == 0 and p.router.outbound_buffered(999) == 0


def test_receiver_rejects_over_credit() -> None:
    """ATP-FLOW-002: DATA beyond the credit granted is EWINDOW on the stream."""
    p, sid = opened_pair(router_limits=Limits(initial_window=1000))
    events = p.router.receive_message(encode_frame(Frame.data(sid, 2, raw=b"x" * 600)), 0.0)
    assert one(events, MessageReceived).size == 624
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid, 3, raw=b"x" * 400)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EWINDOW and "credit" in reset.message


def test_over_credit_on_the_general_path() -> None:
    """ATP-FLOW-002: a fragment (general path) over the credit is EWINDOW as well."""
    p, sid = opened_pair(router_limits=Limits(initial_window=1000))
    reset = one(
        p.router.receive_message(frag(sid, 2, 0, Flags.CONT, body=b"x" * 2000), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EWINDOW


def test_credit_is_returned_after_acknowledge() -> None:
    """ATP-FLOW-004, ATP-FLOW-005: credit comes back once half the window is consumed."""
    window = 4096
    p, sid = opened_pair(router_limits=Limits(initial_window=window))
    syn_cost = len(encode_frame(p.router_saw[-1]))  # returned at once, batched like the rest
    p.client.send_message(sid, b"a" * 1000)
    m1 = one(p.to_router(), MessageReceived)
    p.router.acknowledge(sid, m1.size)
    assert not p.router.has_data_to_send()  # under half the window: batched
    p.router.acknowledge(sid, 0)  # no-op
    p.router.acknowledge(999, 10)  # unknown: no-op
    p.client.send_message(sid, b"b" * 1000)
    m2 = one(p.to_router(), MessageReceived)
    p.router.acknowledge(sid, m2.size)
    (wu,) = wire(p.router)
    assert wu.type is FrameType.WINDOW_UPDATE and wu.ext == {"credit": syn_cost + m1.size + m2.size}
    before = p.client.send_credit(sid)
    upd = one(p.client.receive_message(encode_frame(wu), 0.0), WindowUpdated)
    assert (
        upd.credit == before + wu.ext["credit"] == p.client.send_credit(sid) and upd.window is None
    )


def test_window_update_zero_and_overflow() -> None:
    """ATP-FLOW-004: an increment of 0 is EPROTO, growing past 2^31-1 is EWINDOW."""
    p, sid = opened_pair()
    reset = one(
        p.client.receive_message(encode_frame(Frame.window_update(sid, credit=0)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO and "0" in reset.message
    p, sid = opened_pair()
    huge = MAX_WINDOW - p.client.send_credit(sid) + 1
    reset = one(
        p.client.receive_message(encode_frame(Frame.window_update(sid, credit=huge)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EWINDOW
    p, sid = opened_pair()
    exact = MAX_WINDOW - p.client.send_credit(sid)
    assert (
        one(
            p.client.receive_message(encode_frame(Frame.window_update(sid, credit=exact)), 0.0),
            WindowUpdated,
        ).credit
        == MAX_WINDOW
    )


@pytest.mark.parametrize(
    "ext",
    [
        {"credit": -1},
        {"credit": True},
        {"credit": "5"},
        {},
        {"window": 5},
        {"window": {"max_tokens": -1}},
        {"window": {"max_tokens": "x"}},
    ],
)
def test_bad_window_updates(ext: dict[str, object]) -> None:
    """ATP-FLOW-004, ATP-BUDGET-005: malformed WINDOW_UPDATE is EPROTO on the stream."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.WINDOW_UPDATE, 0, sid, ext=ext)), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO


def test_control_frames_on_stream_zero() -> None:
    """ATP-FRAME-012: WINDOW_UPDATE / BUDGET_UPDATE on stream 0 close the connection."""
    for frame in (
        Frame.window_update(0, credit=5),
        Frame(FrameType.BUDGET_UPDATE, 0, 0, ext={"usage": {}}),
    ):
        p = ConnectionPair()
        closed = one(p.client.receive_message(encode_frame(frame), 0.0), ConnectionClosed)
        assert closed.code == ErrorCode.EPROTO


def test_text_stream_without_caps_has_unlimited_credit() -> None:
    """ATP-FLOW-007, ATP-FLOW-008: a browser that sent no CAPABILITIES gets 2^31-1 credit
    and is never sent WINDOW_UPDATE."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert p.router.send_credit(opened.stream_id) == MAX_WINDOW
    p.router.acknowledge(opened.stream_id, 1 << 20)
    assert not p.router.has_data_to_send()


def test_bad_window_update_on_a_closed_stream_still_flushing() -> None:
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"y" * 3000, end_stream=True)
    reset = one(
        p.router.receive_message(encode_frame(Frame.window_update(sid, credit=0)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO
    assert p.router.stream_state(sid) is StreamState.CLOSED


@pytest.mark.parametrize("window", [100, 1000, 1024, 1100, 3000, 5000])
def test_small_windows_still_flow(window: int) -> None:
    """ATP-SEQ-008, ATP-FLOW-001: fragments fit the peer's window, however small, so a
    message larger than the window completes instead of waiting forever for credit."""
    p, sid = opened_pair(client_limits=Limits(initial_window=window))
    p.router.send_message(sid, b"w" * 5000, ext={"telemetry": {"tokens": 1}}, end_stream=True)
    _, c_events = p.pump()
    msg = one(c_events, MessageReceived)
    assert bytes(msg.payload) == b"w" * 5000 and msg.ext == {"telemetry": {"tokens": 1}}
    assert all(len(encode_frame(f)) <= window for f in p.client_saw if f.type == FrameType.DATA)
