"""The sans-IO Connection: lifecycle, sequencing, reassembly, credit and budget windows,
timers, drain, errors (ATP-STREAM, ATP-SEQ, ATP-FLOW, ATP-BUDGET, ATP-TIME, ATP-SESS)."""

from __future__ import annotations

import cbor2
import pytest

from atp_proto.frames import (
    BudgetReported,
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
    HeartbeatAcked,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    UnknownFrameReceived,
    WindowUpdated,
    decode_frames,
    encode_frame,
)
from atp_proto.frames._state import TRANSITIONS, StreamInput, table_markdown

from .helpers import ConnectionPair, of


def test_open_partial_final() -> None:
    """ATP-STREAM-001, ATP-SEQ-001, ATP-SEQ-003, ATP-BUDGET-006: SYN opens; router messages follow at SYN.msg_seq + 1; router FIN closes."""
    p = ConnectionPair()
    sid = p.open(qos=QoS.GOLD, ttl=5, window=BudgetWindow(2, 100, 50), meta={"task_type": "qa"})
    (opened,) = of(p.to_router(), StreamOpened)
    assert (opened.stream_id, opened.msg_seq, opened.qos, opened.ttl) == (sid, 1, QoS.GOLD, 5)
    assert opened.window == BudgetWindow(2, 100, 50) and opened.meta == {"task_type": "qa"}
    p.router.send_message(sid, b"\xa0", more=True)
    p.router.send_message(sid, b"\xa0", end_stream=True, ext={"telemetry": {"tokens": 3}})
    msgs = of(p.to_client(), MessageReceived)
    assert [(m.msg_seq, m.more, m.end_stream) for m in msgs] == [(2, True, False), (3, False, True)]
    assert msgs[1].ext == {"telemetry": {"tokens": 3}}
    assert p.client.stream_state(sid) is StreamState.CLOSED
    assert p.router.stream_state(sid) is StreamState.CLOSED
    assert p.client.open_streams == p.router.open_streams == 0


def test_client_fin_half_closes() -> None:
    """ATP-STREAM-005."""
    p = ConnectionPair()
    sid = p.open(end_stream=True)
    (opened,) = of(p.to_router(), StreamOpened)
    assert opened.end_stream
    assert p.router.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(StreamClosedError):
        p.client.send_message(sid, b"more")
    p.router.send_message(sid, b"", end_stream=True)
    assert of(p.to_client(), MessageReceived)[0].end_stream
    assert p.router.stream_state(sid) is StreamState.CLOSED


def test_only_clients_open_and_router_rejects_server_syn() -> None:
    """ATP-STREAM-006."""
    r = Connection(Role.ROUTER, now=0.0)
    with pytest.raises(LocalProtocolError):
        r.open_stream(b"", now=None)
    c = Connection(Role.CLIENT, now=0.0)
    evs = c.receive_message(encode_frame(Frame.data(1, 1, flags=Flags.SYN)), 0)
    (reset,) = of(evs, StreamReset)
    assert reset.code == ErrorCode.EPROTO and not reset.by_peer


def test_stream_ids_must_increase() -> None:
    """ATP-STREAM-002, ATP-STREAM-003, ATP-STREAM-004."""
    p = ConnectionPair()
    p.open()
    p.to_router()
    evs = p.router.receive_message(encode_frame(Frame.data(1, 1, flags=Flags.SYN)), 0)
    assert of(evs, StreamReset)[0].code == ErrorCode.EPROTO  # already open: reset
    assert p.router.stream_state(1) is StreamState.CLOSED
    evs = p.router.receive_message(encode_frame(Frame.data(1, 1, flags=Flags.SYN)), 0)
    assert "increase" in of(evs, StreamReset)[0].message
    evs = p.router.receive_message(encode_frame(Frame.data(7, 1)), 0)
    assert "never opened" in of(evs, StreamReset)[0].message


def test_sequence_errors_reset_stream_only() -> None:
    """ATP-SEQ-004, ATP-ERR-001: a wrong msg_seq or frag_seq is ESEQ_RETRY; other streams go on."""
    p = ConnectionPair()
    a = p.open()
    b = p.open()
    p.to_router()
    evs = p.router.receive_message(encode_frame(Frame.data(a, 5, raw=b"x")), 0)
    (reset,) = of(evs, StreamReset)
    assert (reset.stream_id, reset.code) == (a, ErrorCode.ESEQ_RETRY)
    evs = p.router.receive_message(encode_frame(Frame.data(b, 2, raw=b"x", frag_seq=3)), 0)
    assert of(evs, StreamReset)[0].code == ErrorCode.ESEQ_RETRY
    err = decode_frames(b"".join(x for x in p.router.data_to_send() if isinstance(x, bytes)))
    assert [f.error_code for f in err] == ["ESEQ_RETRY", "ESEQ_RETRY"]
    assert not p.router.closed
    c = p.open()
    assert of(p.to_router(), StreamOpened)[0].stream_id == c


def test_fragmentation_larger_than_the_window() -> None:
    """ATP-SEQ-008, ATP-SEQ-009: a 3 MiB message crosses a 256 KiB window in fragments."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    body = bytes(range(256)) * (3 * 4096)
    p.router.send_message(sid, body, end_stream=True)
    received = b""
    for _ in range(200):
        for e in p.to_client():
            if isinstance(e, MessageReceived):
                received = bytes(e.payload)
                p.client.acknowledge(sid, e.size)
        p.to_router()
        if received:
            break
    assert received == body
    assert p.router.outbound_buffered(sid) == 0


def test_fragment_rules() -> None:
    """ATP-SEQ-006."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    r = p.router
    first = Frame.data(sid, 2, raw=b"a", flags=Flags.CONT)
    bad_ext = Frame.data(sid, 2, raw=b"b", frag_seq=1, ext={"x": 1})
    r.receive_message(encode_frame(first), 0)
    (reset,) = of(r.receive_message(encode_frame(bad_ext), 0), StreamReset)
    assert "first fragment" in reset.message
    sid2 = p.open()
    p.to_router()
    evs = r.receive_message(encode_frame(Frame.data(sid2, 2, flags=Flags.CONT | Flags.FIN)), 0)
    assert "last fragment" in of(evs, StreamReset)[0].message


def test_message_size_limit() -> None:
    """ATP-SEQ-007."""
    p = ConnectionPair(router_limits=Limits(max_message_size=1000))
    sid = p.open()
    p.to_router()
    evs = p.router.receive_message(
        encode_frame(Frame.data(sid, 2, raw=b"x" * 600, flags=Flags.CONT))
        + encode_frame(Frame.data(sid, 2, raw=b"x" * 600, frag_seq=1)),
        0,
    )
    assert of(evs, StreamReset)[0].code == ErrorCode.ETOOBIG


def test_credit_is_never_exceeded_and_updates_release() -> None:
    """ATP-FLOW-001, ATP-FLOW-003, ATP-FLOW-005: the sender queues what the peer's credit does not cover."""
    p = ConnectionPair(client_limits=Limits(initial_window=4096))
    p.client.send_capabilities()
    p.to_router()
    p.to_client()
    sid = p.open()
    p.to_router()
    for _ in range(100):
        p.router.send_message(sid, b"y" * 200, more=True)
    assert p.router.send_credit(sid) < 224
    assert p.router.outbound_buffered(sid) > 0
    got = of(p.to_client(), MessageReceived)
    assert sum(m.size for m in got) <= 4096
    for m in got:
        p.client.acknowledge(sid, m.size)
    (upd,) = of(p.to_router(), WindowUpdated)
    assert upd.credit > 0
    assert len(of(p.to_client(), MessageReceived)) > 0


def test_receiver_rejects_over_credit_and_bad_updates() -> None:
    """ATP-FLOW-002, ATP-FLOW-004, ATP-FRAME-012."""
    p = ConnectionPair(router_limits=Limits(initial_window=1000))
    sid = p.open()
    p.to_router()
    big = encode_frame(Frame.data(sid, 2, raw=b"x" * 2000))
    (reset,) = of(p.router.receive_message(big, 0), StreamReset)
    assert reset.code == ErrorCode.EWINDOW
    sid = p.open()
    p.to_router()
    zero = encode_frame(Frame.window_update(sid, credit=0))
    assert of(p.router.receive_message(zero, 0), StreamReset)[0].code == ErrorCode.EPROTO
    sid = p.open()
    p.to_router()
    over = encode_frame(Frame.window_update(sid, credit=2**31 - 1))
    assert of(p.router.receive_message(over, 0), StreamReset)[0].code == ErrorCode.EWINDOW
    evs = p.router.receive_message(encode_frame(Frame.window_update(0, credit=5)), 0)
    assert of(evs, ConnectionClosed)[0].code == ErrorCode.EPROTO


def test_budget_windows() -> None:
    """ATP-BUDGET-005, ATP-BUDGET-007: WINDOW_UPDATE moves the window mid-flight and reaches
    the router as an event (its ledger charges and limits: tests/router/test_budget.py);
    BUDGET_UPDATE carries usage to the client."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=1, max_tokens=100, max_usd_micros=10))
    p.to_router()
    r = p.router
    sid2 = p.open(window=BudgetWindow(max_tokens=1000))
    p.to_router()
    p.client.update_window(sid2, BudgetWindow(max_tokens=2000))
    (upd,) = of(p.to_router(), WindowUpdated)
    assert upd.window == BudgetWindow(max_tokens=2000)
    assert r.budget_window(sid2).max_tokens == 2000
    p.client.update_window(sid2, BudgetWindow(max_tokens=100))
    (upd,) = of(p.to_router(), WindowUpdated)
    assert upd.window == BudgetWindow(max_tokens=100) and r.budget_window(sid2).max_tokens == 100
    r.send_budget_update(sid, {"tokens": 110})
    assert of(p.to_client(), BudgetReported)[0].usage == {"tokens": 110}


def test_ttl_heartbeat_and_idle_are_driven_by_now() -> None:
    """ATP-TIME-001, ATP-TIME-002, ATP-TIME-004: no clock inside; the caller passes time and fires timers."""
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=10_000))
    sid = p.open(ttl=2)
    p.to_router()
    assert p.router.next_deadline() == 2.0
    assert p.router.handle_timer(1.9) == []
    (reset,) = p.router.handle_timer(2.0)
    assert (reset.stream_id, reset.code) == (sid, ErrorCode.ETIMEOUT)
    assert of(p.to_client(), StreamReset)[0].code == ErrorCode.ETIMEOUT
    # heartbeat: HB -> HB|ACK, rtt measured in the caller's time units
    p.now = 3.0
    p.client.send_heartbeat(3.0, b"ping")
    p.to_router()
    p.now = 3.25
    (ack,) = of(p.to_client(), HeartbeatAcked)
    assert ack.rtt == 0.25
    # idle: nothing received for 10 s with no open stream closes the connection
    assert p.router.next_deadline() == pytest.approx(13.0)
    (closed,) = of(p.router.handle_timer(13.0), ConnectionClosed)
    assert closed.code == ErrorCode.ETIMEOUT and not closed.by_peer


def test_timer_stale_is_set_whenever_the_next_deadline_can_move_earlier() -> None:
    """The I/O layer wakes its timer only on timer_stale: every way the next deadline
    can move earlier must set it; plain traffic (which only postpones) must not."""
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=10_000))
    r = p.router
    assert r.timer_stale  # a new connection: the timer has not looked yet
    r.timer_stale = False
    sid = p.open()  # no TTL: no earlier deadline
    p.to_router()
    assert not r.timer_stale and r.next_deadline() is None  # a stream open: no idle
    sid2 = p.open(ttl=4)
    p.to_router()
    assert r.timer_stale and r.next_deadline() == 4.0
    r.timer_stale = False
    p.client.send_message(sid, b"more", more=True)
    p.to_router()
    assert not r.timer_stale  # traffic alone never moves a deadline earlier
    for s in (sid, sid2):
        r.send_message(s, b"done", end_stream=True)
        p.client.send_message(s, b"bye", end_stream=True)
    p.to_client()
    p.to_router()
    assert r.timer_stale  # the last stream went: the idle timeout applies again
    assert r.next_deadline() == pytest.approx(10.0)


def test_client_heartbeat_schedule() -> None:
    """ATP-TIME-005."""
    c = Connection(Role.CLIENT, heartbeat=5.0, limits=Limits(idle_timeout_ms=0), now=0.0)
    assert c.next_deadline() == 5.0
    c.handle_timer(5.0)
    (msg,) = c.data_to_send(5.0)
    assert isinstance(msg, bytes)
    (hb,) = decode_frames(msg)
    assert hb.has(Flags.HB) and hb.stream_id == 0
    assert c.next_deadline() == 10.0


def test_drain_refuses_new_streams_only() -> None:
    """ATP-SESS-005, ATP-SESS-006: EDRAINING on stream 0 is going-away: open streams continue."""
    p = ConnectionPair()
    a = p.open()
    p.to_router()
    p.router.start_drain()
    assert of(p.to_client(), GoingAway)
    with pytest.raises(LocalProtocolError):
        p.client.open_stream(b"", now=None)
    evs = p.router.receive_message(encode_frame(Frame.data(a + 2, 1, flags=Flags.SYN)), 0)
    assert of(evs, StreamReset)[0].code == ErrorCode.EDRAINING
    p.router.send_message(a, b"", end_stream=True)
    assert of(p.to_client(), MessageReceived)[0].end_stream


def test_max_streams() -> None:
    """ATP-STREAM-008."""
    p = ConnectionPair(router_limits=Limits(max_streams=2))
    for _ in range(3):
        p.open()
    resets = of(p.to_router(), StreamReset)
    assert [(r.stream_id, r.code) for r in resets] == [(3, ErrorCode.EWINDOW)]
    assert resets[0].retry_after_ms is not None


def test_capabilities_exchange_and_version_mismatch() -> None:
    """ATP-SESS-001, ATP-SESS-002, ATP-SESS-003."""
    p = ConnectionPair(router_limits=Limits(max_streams=7))
    p.client.send_capabilities()
    (caps,) = of(p.to_router(), CapabilitiesReceived)
    assert caps.caps["versions"] == [1]
    (back,) = of(p.to_client(), CapabilitiesReceived)
    assert back.caps["max_streams"] == 7
    bad = Frame(FrameType.CAPABILITIES, 0, 0, ext={"caps": {"versions": [9]}})
    r = Connection(Role.ROUTER, now=0.0)
    (closed,) = of(r.receive_message(encode_frame(bad), 0), ConnectionClosed)
    assert "no common version" in closed.message


def test_errors_from_the_peer() -> None:
    """ATP-ERR-002, ATP-SESS-004."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    p.router.send_error(sid, ErrorCode.EAGENTDOWN, "adapter died", 500)
    (reset,) = of(p.to_client(), StreamReset)
    assert (reset.code, reset.retry_after_ms, reset.by_peer) == ("EAGENTDOWN", 500, True)
    p.router.close(ErrorCode.EINTERNAL, "bye")
    (closed,) = of(p.to_client(), ConnectionClosed)
    assert closed.code == "EINTERNAL" and closed.by_peer
    assert p.client.receive_message(b"anything", 1.0) == []


def test_client_rst_cancels() -> None:
    """ATP-FLAG-003, ATP-FLAG-004."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    p.client.reset_stream(sid)
    (reset,) = of(p.to_router(), StreamReset)
    assert reset.by_peer and reset.stream_id == sid
    # late frames for the closed stream are discarded, not errors
    assert p.router.receive_message(encode_frame(Frame.data(sid, 9)), 0) == []


def test_unknown_frame_type_is_ignored() -> None:
    """ATP-FRAME-010."""
    r = Connection(Role.ROUTER, now=0.0)
    evs = r.receive_message(encode_frame(Frame(0x33, 0, 0, payload=b"future")), 0)
    assert len(evs) == 1 and isinstance(evs[0], UnknownFrameReceived)
    assert not r.closed


def test_text_streams_reply_in_text() -> None:
    """ATP-WS-004."""
    r = Connection(Role.ROUTER, now=0.0)
    (opened,) = r.receive_text(
        '{"stream_id":"st1","msg_seq":1,"flags":["SYN"],"payload":{"content":{"prompt":"x"}}}', 0
    )
    assert isinstance(opened, StreamOpened) and opened.encoding is Encoding.JSON
    r.send_message(opened.stream_id, cbor2.dumps({"ok": 1}), end_stream=True)
    (out,) = r.data_to_send()
    assert isinstance(out, str) and '"stream_id":"st1"' in out and '"FIN"' in out


def test_state_table_is_complete_and_renders() -> None:
    """Every (role, live state) handles RST both ways; the table renders for the spec."""
    for role in Role:
        for state in (StreamState.OPEN,):
            assert (role, state, StreamInput.SEND_RST) in TRANSITIONS
            assert (role, state, StreamInput.RECV_RST) in TRANSITIONS
    md = table_markdown()
    assert md.count("\n") == len(TRANSITIONS) + 1
