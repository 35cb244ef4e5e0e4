"""Time (spec §10): TTL, heartbeat, idle, all driven by the caller's ``now``.

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    HeartbeatAcked,
    Limits,
    StreamReset,
    StreamState,
    encode_frame,
)

from .helpers import ConnectionPair, of, one, wire


def test_ttl_ends_the_stream_with_etimeout() -> None:
    """ATP-TIME-001: the ttl runs from the router's receipt of the SYN."""
    p = ConnectionPair(now=100.0)
    sid = p.open(ttl=8)
    p.to_router()
    assert p.router.next_deadline() == 108.0
    assert p.router.handle_timer(107.9) == []
    events = p.router.handle_timer(108.0)
    reset = one(events, StreamReset)
    assert reset.code == ErrorCode.ETIMEOUT and reset.stream_id == sid and not reset.by_peer
    assert one(p.to_client(), StreamReset).code == ErrorCode.ETIMEOUT
    assert p.router.handle_timer(200.0)[:1] != [reset]


def test_client_side_ttl_needs_now() -> None:
    p = ConnectionPair()
    sid = p.open(ttl=5, now=10.0)
    p2 = p.client.open_stream(b"", ttl=5, now=None)  # without now: no local deadline
    assert p.client.next_deadline() == 15.0
    assert [e.stream_id for e in of(p.client.handle_timer(15.0), StreamReset)] == [sid]
    assert p.client.stream_state(p2) is StreamState.OPEN


def test_heartbeat_is_answered_and_acked() -> None:
    """ATP-TIME-002: HB is answered with HB|ACK and the same payload; RTT reported."""
    p = ConnectionPair(client_heartbeat=15.0)
    assert p.client.next_deadline() == 15.0
    assert p.client.handle_timer(14.0) == []
    p.now = 15.0
    assert p.client.handle_timer(15.0) == []
    r_events = p.to_router()
    assert r_events == []
    hb = p.router_saw[-1]
    assert hb.type is FrameType.DATA and hb.stream_id == 0 and hb.flags == Flags.HB
    p.now = 15.25
    ack = one(p.to_client(), HeartbeatAcked)
    assert ack.rtt == pytest.approx(0.25)
    assert p.client_saw[-1].flags == Flags.HB | Flags.ACK
    assert p.client.next_deadline() == 30.0  # last send at 15.0
    p.client.send_heartbeat(40.0, b"ping-payload")
    p.now = 40.0
    p.to_router()
    assert bytes(p.client_saw[-1].payload) == b"" and p.router.has_data_to_send()
    p.to_client()
    assert bytes(p.client_saw[-1].payload) == b"ping-payload"
    # an unsolicited ACK is ignored
    assert p.client.receive_message(encode_frame(Frame(flags=Flags.HB | Flags.ACK)), 41.0) == []


def test_heartbeat_payload_limit_and_hb_flag() -> None:
    """ATP-TIME-003, ATP-FRAME-011: HB payload over 64 bytes is ETOOBIG; DATA on stream 0
    without HB is EPROTO; both connection-level."""
    p = ConnectionPair()
    assert (
        p.router.receive_message(encode_frame(Frame(flags=Flags.HB, payload=b"x" * 64)), 0.0) == []
    )
    assert not p.router.closed and wire(p.router)[0].flags == Flags.HB | Flags.ACK
    closed = one(
        p.router.receive_message(encode_frame(Frame(flags=Flags.HB, payload=b"x" * 65)), 0.0),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.ETOOBIG
    p = ConnectionPair()
    closed = one(p.router.receive_message(encode_frame(Frame(payload=b"x")), 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and "HB" in closed.message


def test_idle_timeout_closes_an_idle_session() -> None:
    """ATP-TIME-004: no open stream and nothing received for idle_timeout_ms."""
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=60_000))
    assert p.router.next_deadline() == 60.0
    p.router.receive_message(encode_frame(Frame(flags=Flags.HB)), 30.0)  # traffic resets it
    assert p.router.next_deadline() == 90.0
    assert p.router.handle_timer(89.0) == []
    events = p.router.handle_timer(90.0)
    closed = one(events, ConnectionClosed)
    assert closed.code == ErrorCode.ETIMEOUT and not closed.by_peer
    frames = wire(p.router)
    assert frames[-1].stream_id == 0 and frames[-1].error_code == "ETIMEOUT"
    assert p.router.next_deadline() is None


def test_idle_timeout_waits_while_a_stream_is_open() -> None:
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=1000))
    sid = p.open()
    p.to_router()
    assert p.router.next_deadline() is None
    assert p.router.handle_timer(1e6) == []
    p.router.send_error(sid, ErrorCode.EINTERNAL, "x")
    assert p.router.next_deadline() == 1.0
    assert one(p.router.handle_timer(1e6), ConnectionClosed).code == ErrorCode.ETIMEOUT


def test_no_idle_timeout_when_disabled() -> None:
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=0))
    assert p.router.next_deadline() is None and p.router.handle_timer(1e9) == []
