"""Stream lifecycle on an in-memory pair: SYN/FIN/RST, ids increase, errors on streams, frames for closed streams (spec §7.1).

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import cbor2
import pytest

from atp_proto.frames import (
    HEADER_SIZE,
    BudgetWindow,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    encode_frame,
    encode_frames,
)

from .helpers import ConnectionPair, of, one, opened_pair, wire


def test_full_exchange_syn_partial_final() -> None:
    """ATP-STREAM-001, ATP-SEQ-002, ATP-SEQ-003: SYN 1, PARTIAL 2, FINAL 3 completes."""
    p = ConnectionPair()
    sid = p.open(
        "q", qos=QoS.GOLD, ttl=8, window=BudgetWindow(4, 500, None), meta={"task_type": "qa"}
    )
    assert sid == 1 and p.client.stream_state(sid) is StreamState.OPEN
    opened = one(p.to_router(), StreamOpened)
    assert (opened.stream_id, opened.msg_seq, opened.qos, opened.ttl) == (1, 1, QoS.GOLD, 8)
    assert opened.window == BudgetWindow(4, 500, None) and opened.meta == {"task_type": "qa"}
    assert opened.ext["window"] == {"max_parallel": 4, "max_tokens": 500}
    assert opened.encoding is Encoding.BINARY and not opened.end_stream
    assert p.router_saw[0].flags == Flags.SYN and p.router_saw[0].frag_seq == 0
    assert p.router.budget_window(sid) == BudgetWindow(4, 500, None)

    p.router.send_message(sid, cbor2.dumps("part"), more=True)
    p.router.send_message(
        sid, cbor2.dumps("done"), end_stream=True, ext={"telemetry": {"tokens": 3}}
    )
    assert p.router.stream_state(sid) is StreamState.CLOSED  # router FIN completes
    events = p.to_client()
    partial, final = of(events, MessageReceived)
    assert (partial.msg_seq, partial.more, partial.end_stream) == (2, True, False)
    assert (final.msg_seq, final.more, final.end_stream) == (3, False, True)
    assert final.ext == {"telemetry": {"tokens": 3}}
    assert partial.size == HEADER_SIZE + len(cbor2.dumps("part"))
    assert p.client.stream_state(sid) is StreamState.CLOSED
    assert p.client.open_streams == 0 and p.router.open_streams == 0
    assert (
        p.client.frames_sent[FrameType.DATA] == 1 and p.router.frames_received[FrameType.DATA] == 1
    )


def test_client_fin_half_closes_and_router_fin_completes() -> None:
    """ATP-STREAM-005: client FIN half-closes (router may still send); router FIN ends it;
    DATA after the client's FIN is EPROTO."""
    p, sid = opened_pair()
    p.client.send_message(sid, cbor2.dumps("last input"), end_stream=True)
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(StreamClosedError):
        p.client.send_message(sid, b"more")
    msg = one(p.to_router(), MessageReceived)
    assert msg.end_stream
    assert p.router.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    p.router.send_message(sid, cbor2.dumps("still answering"), more=True)
    assert one(p.to_client(), MessageReceived).more
    # a misbehaving client sends DATA after its FIN
    late = encode_frame(Frame.data(sid, 3, "late"))
    reset = one(p.router.receive_message(late, 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and "FIN" in reset.message
    assert p.router.stream_state(sid) is StreamState.CLOSED


def test_router_fin_then_client_is_done() -> None:
    p, sid = opened_pair()
    p.router.send_message(sid, b"", end_stream=True)
    one(p.to_client(), MessageReceived)
    assert p.client.stream_state(sid) is StreamState.CLOSED
    with pytest.raises(StreamClosedError, match="closed"):
        p.client.send_message(sid, b"x")
    with pytest.raises(StreamClosedError):
        p.router.send_message(sid, b"x")
    # frames that cross the close are discarded without error (ATP-FLAG-004)
    late = encode_frames([Frame.data(sid, 2, "x"), Frame.window_update(sid, credit=10)])
    assert p.router.receive_message(late, 0.0) == []
    assert not p.router.has_data_to_send()


def test_syn_with_fin_opens_a_half_closed_stream() -> None:
    p = ConnectionPair()
    sid = p.open(end_stream=True)
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    opened = one(p.to_router(), StreamOpened)
    assert opened.end_stream and p.router.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE


def test_stream_ids_must_increase() -> None:
    """ATP-STREAM-002: a SYN on an id not above every id used is EPROTO."""
    p = ConnectionPair()
    p.client.open_stream(b"", stream_id=5, now=None)
    p.to_router()
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(3, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert reset.stream_id == 3 and reset.code == ErrorCode.EPROTO and "increase" in reset.message
    with pytest.raises(LocalProtocolError, match="must exceed"):
        p.client.open_stream(b"", stream_id=5, now=None)
    with pytest.raises(LocalProtocolError):
        p.client.open_stream(b"", stream_id=0x8000_0000, now=None)
    assert p.client.stream_state(3) is StreamState.CLOSED  # below the highest id
    assert p.client.stream_state(6) is StreamState.IDLE


def test_data_on_a_stream_never_opened() -> None:
    """ATP-STREAM-003, ATP-FRAME-012: non-SYN DATA / WINDOW_UPDATE on a new id is EPROTO."""
    p = ConnectionPair()
    for frame in (Frame.data(9, 1, "x"), Frame.window_update(9, credit=5)):
        reset = one(p.router.receive_message(encode_frame(frame), 0.0), StreamReset)
        assert (
            reset.stream_id == 9
            and reset.code == ErrorCode.EPROTO
            and "never opened" in reset.message
        )
    assert not p.router.closed


def test_syn_on_an_open_stream() -> None:
    """ATP-STREAM-004: a second SYN on an open stream is EPROTO on it."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid, 2, flags=Flags.SYN)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and "already open" in reset.message


def test_router_never_opens_streams() -> None:
    """ATP-STREAM-006: a SYN from a router is EPROTO at the client."""
    p = ConnectionPair()
    with pytest.raises(LocalProtocolError, match="only clients"):
        p.router.open_stream(b"", now=None)
    reset = one(
        p.client.receive_message(encode_frame(Frame.data(2, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 2


def test_rst_ends_the_stream_both_ways() -> None:
    """ATP-FLAG-003: RST ends the stream whatever its sequence; queued frames are dropped."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000)  # more than the client's window: queued
    assert p.router.outbound_buffered(sid) > 0
    p.client.reset_stream(sid)
    assert p.client.stream_state(sid) is StreamState.CLOSED
    (rst,) = wire(p.client)
    assert rst.flags == Flags.RST and rst.stream_id == sid and rst.msg_seq == 2
    reset = one(p.router.receive_message(encode_frame(rst), 0.0), StreamReset)
    assert reset.code == "RST" and reset.by_peer
    assert p.router.outbound_buffered(sid) == 0 and p.router.open_streams == 0
    p.client.reset_stream(sid)  # already closed: no-op
    assert not p.client.has_data_to_send()


def test_rst_on_a_closed_stream_still_flushing_drops_its_outbox() -> None:
    """ATP-FLAG-003, ATP-STREAM-007: a closed stream holding output is dropped by RST."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000, end_stream=True)
    assert p.router.stream_state(sid) is StreamState.CLOSED and p.router.open_streams == 1
    assert (
        p.router.receive_message(
            encode_frame(Frame(flags=Flags.RST, stream_id=sid, msg_seq=9)), 0.0
        )
        == []
    )
    assert p.router.open_streams == 0 and p.router.outbound_buffered(sid) == 0


def test_error_on_a_closed_stream_still_flushing_drops_its_outbox() -> None:
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000, end_stream=True)
    assert p.router.receive_message(encode_frame(Frame.error(sid, "EPREEMPT", "gone")), 0.0) == []
    assert p.router.open_streams == 0


def test_peer_error_on_a_stream_resets_it() -> None:
    """ATP-ERR-003: an ERROR (even with an unknown code) ends the stream; code surfaced."""
    p, sid = opened_pair()
    p.router.send_error(sid, "EVENDOR_X", "custom", retry_after_ms=7)
    assert p.router.stream_state(sid) is StreamState.CLOSED
    p.router.send_error(sid, "EAGAIN", "twice")  # closed: no-op
    reset = one(p.to_client(), StreamReset)
    assert (reset.code, reset.message, reset.retry_after_ms, reset.by_peer) == (
        "EVENDOR_X",
        "custom",
        7,
        True,
    )
    # an ERROR for a stream we do not know is ignored
    assert p.client.receive_message(encode_frame(Frame.error(77, "EPROTO", "?")), 0.0) == []


@pytest.mark.parametrize(
    "ext",
    [{}, {"error": "EPROTO"}, {"error": {"code": 5}}, {"error": {"message": "m"}}],
)
def test_error_frame_without_a_code(ext: dict[str, object]) -> None:
    """ATP-FRAME-015: an ERROR without error.code is EPROTO of the same scope."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.ERROR, Flags.RST, sid, ext=ext)), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == sid
    closed = one(
        p.router.receive_message(encode_frame(Frame(FrameType.ERROR, 0, 0, ext=ext)), 0.0),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO


def test_error_retry_is_optional_but_message_is_not() -> None:
    """[ATP-FRAME-015] retry_after_ms that is not a uint is absent; a missing or non-text
    message makes the ERROR malformed: EPROTO of the same scope (issue 9 item 12)."""
    p, sid = opened_pair()
    frame = Frame(
        FrameType.ERROR,
        Flags.RST,
        sid,
        ext={"error": {"code": "EX", "message": "gone", "retry_after_ms": True}},
    )
    reset = one(p.client.receive_message(encode_frame(frame), 0.0), StreamReset)
    assert reset.by_peer and reset.message == "gone" and reset.retry_after_ms is None
    for error in ({"code": "EX"}, {"code": "EX", "message": 3}):
        p, sid = opened_pair()
        frame = Frame(FrameType.ERROR, Flags.RST, sid, ext={"error": error})
        reset = one(p.client.receive_message(encode_frame(frame), 0.0), StreamReset)
        assert not reset.by_peer and reset.code == ErrorCode.EPROTO
        assert not p.client.closed
        frame = Frame(FrameType.ERROR, 0, 0, ext={"error": error})
        closed = one(p.client.receive_message(encode_frame(frame), 0.0), ConnectionClosed)
        assert not closed.by_peer and closed.code == ErrorCode.EPROTO


def test_rst_for_a_forgotten_stream_is_discarded_and_for_a_never_opened_one_is_eproto() -> None:
    """ATP-FLAG-004: RST for a stream that was opened and is gone is dropped without an
    error; ATP-STREAM-009: RST on an id never opened (no 'idle / recv RST' row) is a stream
    error EPROTO (found by the independent client, tests/indie), and the session lives."""
    p, sid = opened_pair()
    p.router.send_message(sid, b"", end_stream=True)
    p.to_client()
    assert p.router.open_streams == 0
    assert p.router.receive_message(encode_frame(Frame(flags=Flags.RST, stream_id=sid)), 0.0) == []
    assert not p.router.has_data_to_send() and not p.router.closed
    events = p.router.receive_message(encode_frame(Frame(flags=Flags.RST, stream_id=99)), 0.0)
    reset = one(events, StreamReset)
    assert (reset.stream_id, reset.code, reset.by_peer) == (99, "EPROTO", False)
    assert p.router.has_data_to_send() and not p.router.closed


def test_frames_for_a_closed_stream_still_flushing() -> None:
    """ATP-FLAG-004, ATP-STREAM-007: after our FIN, while output waits for credit, the
    peer's DATA is discarded and its credit still releases our output."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"y" * 3000, end_stream=True)
    assert p.router.stream_state(sid) is StreamState.CLOSED and p.router.open_streams == 1
    assert p.router.receive_message(encode_frame(Frame.data(sid, 2, "late")), 0.0) == []
    _, c_events = p.pump()  # the client's credit releases the rest
    assert bytes(one(c_events, MessageReceived).payload) == b"y" * 3000
    assert p.router.open_streams == 0
