"""Session control (spec §6, §12): drain, max_streams, capabilities, close, output coalescing.

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    BudgetWindow,
    CapabilitiesReceived,
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    GoingAway,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    encode_frame,
)

from .helpers import ConnectionPair, of, one, opened_pair


def test_drain_refuses_new_syns_and_lets_open_streams_finish() -> None:
    """ATP-SESS-005, ATP-SESS-006, ATP-ERR-004: EDRAINING on stream 0, then on each SYN
    with retry_after_ms; open streams go on."""
    p, sid = opened_pair()
    p.router.start_drain("bye", retry_after_ms=2500)
    p.router.start_drain()  # twice: one announcement
    assert p.router.draining
    away = one(p.to_client(), GoingAway)
    assert away == GoingAway("bye", 2500)
    with pytest.raises(LocalProtocolError) as info:
        p.open()
    assert info.value.code == ErrorCode.EDRAINING
    # a client that ignores it
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid + 1, 1, flags=Flags.SYN)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EDRAINING and reset.retry_after_ms == 2500
    # the open stream continues both ways
    p.client.send_message(sid, b"in")
    assert one(p.to_router(), MessageReceived)
    p.router.send_message(sid, b"out", end_stream=True)
    assert one(p.to_client(), MessageReceived).end_stream
    assert not p.client.closed and not p.router.closed


def test_max_streams_refusal() -> None:
    """ATP-STREAM-008, ATP-STREAM-007, ATP-SESS-007: a SYN over max_streams is EWINDOW with
    retry_after_ms; once a stream closes its slot is free."""
    p = ConnectionPair(router_limits=Limits(max_streams=2))
    a, b = p.open(), p.open()
    p.to_router()
    c = 3
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(c, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert (
        reset.code == ErrorCode.EWINDOW
        and reset.retry_after_ms is not None
        and reset.stream_id == c
    )
    p.router.send_message(a, b"", end_stream=True)
    p.to_client()
    assert p.router.open_streams == 1
    p.client._highest_id = c  # the client saw its SYN refused
    d = p.open()
    assert one(p.to_router(), StreamOpened).stream_id == d
    assert b in p.router._streams


def test_client_respects_the_peers_max_streams() -> None:
    """ATP-SESS-007: after CAPABILITIES, a client opens no more than max_streams."""
    p = ConnectionPair(router_limits=Limits(max_streams=1))
    p.handshake()
    p.open()
    with pytest.raises(LocalProtocolError) as info:
        p.open()
    assert info.value.code == ErrorCode.EWINDOW


def test_capabilities_exchange() -> None:
    """ATP-SESS-001, ATP-SESS-002, ATP-SESS-007: the router answers the first CAPABILITIES
    only; the limits shape fragmentation and credit."""
    p = ConnectionPair(
        client_limits=Limits(initial_window=8192, max_frame_size=4096),
        router_limits=Limits(initial_window=16384, max_frame_size=2048, max_streams=7),
    )
    p.client.send_capabilities()
    r_events = p.to_router()
    caps = one(r_events, CapabilitiesReceived).caps
    assert (
        caps["versions"] == [1]
        and caps["initial_window"] == 8192
        and caps["max_frame_size"] == 4096
    )
    assert set(caps) >= {
        "max_message_size",
        "max_streams",
        "heartbeat_ms",
        "idle_timeout_ms",
        "features",
    }
    c_events = p.to_client()
    rcaps = one(c_events, CapabilitiesReceived).caps
    assert rcaps["initial_window"] == 16384 and rcaps["max_streams"] == 7
    assert p.client.peer_caps == rcaps and p.router.peer_caps == caps
    p.client.send_capabilities()
    p.to_router()
    assert not p.router.has_data_to_send()  # only the first is answered
    sid = p.open()
    p.to_router()
    assert p.client.send_credit(sid) == 16384 - len(encode_frame(p.router_saw[-1]))
    assert p.router.send_credit(sid) == 8192
    p.client.send_message(sid, b"q" * 10_000)
    p.pump()
    assert max(len(encode_frame(f)) for f in p.router_saw if f.stream_id == sid) <= 24 + 2048


def test_capabilities_edge_cases() -> None:
    """ATP-SESS-003, ATP-FRAME-013: no common version / no caps map: connection EPROTO;
    CAPABILITIES on a stream: stream EPROTO; silly limits are ignored."""
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": [2]}})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO and "version" in closed.message
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": [1]})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": 1}})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, 0, sid, ext={"caps": {}})), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO
    p = ConnectionPair()
    silly = {
        "max_frame_size": 10,
        "initial_window": 0,
        "max_streams": -1,
        "versions": [1],
    }
    one(
        p.client.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": silly})), 0.0
        ),
        CapabilitiesReceived,
    )
    assert p.client._peer_frame_size == Limits().max_frame_size
    assert p.client._peer_initial_window == Limits().initial_window
    assert p.client._peer_max_streams == Limits().max_streams
    assert not p.client.has_data_to_send()  # clients do not answer


def test_error_on_stream_zero_closes_the_connection() -> None:
    """ATP-SESS-004, ATP-ERR-002: ERROR on stream 0 (not EDRAINING) ends the session."""
    p, sid = opened_pair()
    p.client.close(ErrorCode.EINTERNAL, "client gives up")
    assert p.client.closed
    p.client.close()  # twice: no-op
    closed = one(p.to_router(), ConnectionClosed)
    assert closed == ConnectionClosed("EINTERNAL", "client gives up", by_peer=True)
    assert p.router.closed and p.router.open_streams == 0
    assert p.router.receive_message(encode_frame(Frame.data(sid, 2, "x")), 1.0) == []
    with pytest.raises(LocalProtocolError, match="connection is closed"):
        p.router.send_message(sid, b"x")
    with pytest.raises(LocalProtocolError, match="closed"):
        p.client.open_stream(b"", now=None)
    p.client.send_heartbeat(1.0)
    p.router.start_drain()
    assert not p.client.has_data_to_send() and not p.router.has_data_to_send()


def test_sending_on_a_closed_connection() -> None:
    p, sid = opened_pair()
    p.router.close()
    with pytest.raises(LocalProtocolError, match="connection is closed"):
        p.router.send_message(sid, b"x", end_stream=True)
    p.router.send_error(sid, "EX", "m")  # no-op
    p.router.reset_stream(sid)  # no-op
    with pytest.raises(StreamClosedError):
        p.router.update_window(sid, BudgetWindow())


def test_error_isolation_between_streams() -> None:
    """ATP-ERR-005: an error on one stream does not end another."""
    p = ConnectionPair()
    a, b = p.open(), p.open()
    p.to_router()
    reset = one(p.router.receive_message(encode_frame(Frame.data(a, 9, "x")), 0.0), StreamReset)
    assert reset.stream_id == a
    p.client.send_message(b, b"fine")
    assert one(p.to_router(), MessageReceived).stream_id == b


def test_data_to_send_coalesces_binary_and_keeps_text_apart() -> None:
    """ATP-WS-005: consecutive binary frames are one message; text frames one each."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    a, b = p.open(), p.open()
    out = p.client.data_to_send()
    assert len(out) == 1 and isinstance(out[0], bytes)
    assert p.client.queued_bytes == 0
    assert len(of(p.router.receive_message(out[0], 0.0), StreamOpened)) == 2
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    p.router.send_message(a, b"1")
    p.router.send_message(opened.stream_id, b"\x01")
    p.router.send_message(b, b"2")
    p.router.send_message(a, b"3")
    n = p.router.queued_bytes
    out = p.router.data_to_send()
    assert [type(m) for m in out] == [bytes, str, bytes]
    assert sum(len(m) for m in out) == n
    assert p.router.data_to_send() == []


def test_stream_state_helpers() -> None:
    c = Connection(Role.CLIENT, now=0.0)
    assert c.stream_state(1) is StreamState.IDLE and c.stream_encoding(1) is Encoding.BINARY
    assert not c.draining and c.budget_window(1) == BudgetWindow()
