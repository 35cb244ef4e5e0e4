"""Edge paths of the core: every peer mistake gets its error, every local misuse is
refused, helpers behave (ATP-ERR, ATP-EXT, ATP-SESS, ATP-WS close codes)."""

from __future__ import annotations

import json

import pytest

from atp_proto.frames import (
    BudgetReported,
    BudgetWindow,
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
    encode_frame,
)
from atp_proto.frames._state import Role as SRole
from atp_proto.frames._state import StreamInput, next_state

from .helpers import ConnectionPair, of


def _open_router(sid: int = 1) -> Connection:
    r = Connection(Role.ROUTER, now=0.0)
    evs = r.receive_message(encode_frame(Frame.data(sid, 1, {"p": 1}, flags=Flags.SYN)), 0)
    assert of(evs, StreamOpened)
    return r


def test_budget_window_helpers() -> None:
    a = BudgetWindow(4, None, 100)
    b = BudgetWindow(None, 50, 10)
    assert a.clamp(b) == BudgetWindow(4, 50, 10)
    assert a.merged(b) == BudgetWindow(4, 50, 10)
    assert BudgetWindow().to_dict() == {}


def test_frame_helpers() -> None:
    f = Frame.data(3, 7, {"a": 1}, flags=Flags.MORE, ext={"window": {"max_tokens": 5}})
    assert f.budget_window == BudgetWindow(max_tokens=5)
    assert Frame.data(1, 1).budget_window is None
    assert f.error_code is None
    assert Frame.error(1, "ECUSTOM", "x").error_code == "ECUSTOM"
    assert f.replace(msg_seq=8).msg_seq == 8
    with pytest.raises(LocalProtocolError):
        f.replace(msg_seq=-1)
    text = repr(Frame(0x55, 0x80 | Flags.FIN, 2, 3, 4, 9, 5, {"k": 1}, b"ab"))
    assert "0x55" in text and "FIN" in text and "frag_seq=4" in text and "ttl=5" in text
    assert f.flag_set == Flags.MORE and f.length == 24 + len(f.payload)


def test_local_misuse_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        next_state(SRole.CLIENT, StreamState.IDLE, StreamInput.SEND_DATA, 1)
    c = Connection(Role.CLIENT, now=0.0)
    with pytest.raises(LocalProtocolError):
        c.open_stream(stream_id=0, now=None)
    sid = c.open_stream(encoding=Encoding.JSON, now=None)
    assert c.stream_encoding(sid) is Encoding.JSON
    c.close()
    for call in (
        lambda: c.open_stream(now=0.0),
        lambda: c.send_message(sid, b"x"),
        lambda: c.update_window(sid, BudgetWindow()),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    c.send_error(sid, "EX", "no-op when closed")
    c.reset_stream(sid)
    assert c.handle_timer(100.0) == [] and c.next_deadline() is None
    assert c.receive_text("{}", 0) == [] and c.receive_data(b"x", 0) == []
    r = Connection(Role.ROUTER, now=0.0)
    with pytest.raises(StreamClosedError):
        r.send_budget_update(9, {})
    assert r.budget_window(9) == BudgetWindow()  # unknown stream: no window
    r.acknowledge(9, 100)
    assert r.send_credit(9) == 0 and r.outbound_buffered(9) == 0
    assert r.budget_window(9) == BudgetWindow()
    assert r.stream_state(9) is StreamState.IDLE


def test_peer_mistakes_on_control_frames() -> None:
    """ATP-FRAME-012, ATP-FRAME-013, ATP-FRAME-014, ATP-FRAME-015."""
    r = _open_router()
    cases = [
        (Frame(FrameType.ERROR, 0, 1, ext={"error": "nope"}), "error"),
        (Frame(FrameType.WINDOW_UPDATE, 0, 1, ext={}), "neither"),
        (Frame(FrameType.WINDOW_UPDATE, 0, 1, ext={"credit": "a"}), "positive"),
    ]
    for frame, why in cases:
        r = _open_router()
        (reset,) = of(r.receive_message(encode_frame(frame), 0), StreamReset)
        assert why in reset.message
    r = _open_router()
    bad_window = Frame(FrameType.WINDOW_UPDATE, 0, 1, ext={"window": {"max_tokens": -1}})
    assert "window" in of(r.receive_message(encode_frame(bad_window), 0), StreamReset)[0].message
    r = _open_router()
    cap_on_stream = Frame(FrameType.CAPABILITIES, 0, 1, ext={"caps": {}})
    assert of(r.receive_message(encode_frame(cap_on_stream), 0), StreamReset)
    r = _open_router()
    no_caps = Frame(FrameType.CAPABILITIES, 0, 0, ext={})
    assert of(r.receive_message(encode_frame(no_caps), 0), ConnectionClosed)
    r = _open_router()
    bu = Frame(FrameType.BUDGET_UPDATE, 0, 1, ext={"usage": {}})
    assert "router only" in of(r.receive_message(encode_frame(bu), 0), StreamReset)[0].message
    c = Connection(Role.CLIENT, now=0.0)
    bu0 = Frame(FrameType.BUDGET_UPDATE, 0, 0, ext={"usage": {}})
    assert of(c.receive_message(encode_frame(bu0), 0), ConnectionClosed)
    r = _open_router()
    wu = Frame(FrameType.WINDOW_UPDATE, 0, 5, ext={"credit": 5})
    assert "never opened" in of(r.receive_message(encode_frame(wu), 0), StreamReset)[0].message


def test_heartbeat_mistakes() -> None:
    """ATP-FRAME-011, ATP-TIME-003."""
    r = Connection(Role.ROUTER, now=0.0)
    evs = r.receive_message(encode_frame(Frame(FrameType.DATA, 0, 0, payload=b"x")), 0)
    assert "without HB" in of(evs, ConnectionClosed)[0].message
    r = Connection(Role.ROUTER, limits=Limits(max_hb_payload=4), now=0.0)
    evs = r.receive_message(encode_frame(Frame(FrameType.DATA, Flags.HB, 0, payload=b"x" * 5)), 0)
    assert of(evs, ConnectionClosed)[0].code == ErrorCode.ETOOBIG
    # an unsolicited HB|ACK is ignored
    r = Connection(Role.ROUTER, now=0.0)
    assert r.receive_message(encode_frame(Frame(0, Flags.HB | Flags.ACK, 0)), 0) == []


def test_data_after_peer_fin_and_closed_flushing_streams() -> None:
    """ATP-STREAM-005, ATP-STREAM-007, ATP-FLAG-004."""
    p = ConnectionPair(client_limits=Limits(initial_window=1024))
    p.client.send_capabilities()
    p.to_router()
    p.to_client()
    sid = p.open(end_stream=True)
    p.to_router()
    evs = p.router.receive_message(encode_frame(Frame.data(sid, 2, raw=b"late")), 0)
    assert "after the peer's FIN" in of(evs, StreamReset)[0].message
    # a router stream closed by FIN but still flushing its outbox
    sid = p.open()
    p.to_router()
    p.router.send_message(sid, b"z" * 3000, end_stream=True)
    assert p.router.stream_state(sid) is StreamState.CLOSED
    assert p.router.outbound_buffered(sid) > 0
    assert p.router.open_streams == 1  # still counted while it flushes
    # client frames for it are discarded; its credit updates still flush it
    assert p.router.receive_message(encode_frame(Frame.data(sid, 2, raw=b"x")), 0) == []
    p.router.receive_message(encode_frame(Frame.window_update(sid, credit=8000)), 0)
    assert p.router.outbound_buffered(sid) == 0 and p.router.open_streams == 0
    # an ERROR for a flushing stream drops what is left
    sid = p.open()
    p.to_router()
    p.router.send_message(sid, b"z" * 3000, end_stream=True)
    p.router.receive_message(encode_frame(Frame.error(sid, "EX", "stop")), 0)
    assert p.router.open_streams == 0


def test_peer_rst_on_flushing_stream_and_unknown() -> None:
    p = ConnectionPair(client_limits=Limits(initial_window=1024))
    p.client.send_capabilities()
    p.to_router()
    p.to_client()
    sid = p.open()
    p.to_router()
    p.router.send_message(sid, b"z" * 3000, end_stream=True)
    p.router.receive_message(encode_frame(Frame(0, Flags.RST, sid, 9)), 0)
    assert p.router.open_streams == 0
    # ATP-STREAM-009: an RST on an id never opened is a stream error, not discarded
    (reset,) = of(
        p.router.receive_message(encode_frame(Frame(0, Flags.RST, 77, 1)), 0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO and not p.router.closed


def test_text_stream_level_and_connection_level_errors() -> None:
    """ATP-JSON-006."""
    r = Connection(Role.ROUTER, now=0.0)
    r.receive_text('{"stream_id":"a","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    evs = r.receive_text('{"stream_id":"a","msg_seq":2,"qos":"tin"}', 0)
    assert of(evs, StreamReset)[0].code == ErrorCode.EPROTO
    evs = r.receive_text('{"stream_id":"b","msg_seq":1}', 0)  # never opened
    assert of(evs, StreamReset)
    out = r.data_to_send()
    assert all(isinstance(m, str) for m in out)
    assert [json.loads(m)["stream_id"] for m in out] == ["a", "b"]
    evs = r.receive_text('{"v": 3}', 0)
    assert of(evs, ConnectionClosed)


def test_refused_text_syn_frees_its_alias() -> None:
    """ATP-JSON-003, ATP-STREAM-008."""
    r = Connection(Role.ROUTER, limits=Limits(max_streams=1), now=0.0)
    r.receive_text('{"stream_id":"a","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    evs = r.receive_text('{"stream_id":"b","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    assert of(evs, StreamReset)[0].code == ErrorCode.EWINDOW
    (err,) = [json.loads(m) for m in r.data_to_send()]
    assert err["stream_id"] == "b"
    r.send_message(1, b"", end_stream=True)
    evs = r.receive_text('{"stream_id":"b","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    assert of(evs, StreamOpened)


def test_mixed_text_and_binary_output_keeps_order() -> None:
    r = Connection(Role.ROUTER, now=0.0)
    r.receive_text('{"stream_id":"t","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    r.receive_message(encode_frame(Frame.data(5, 1, {"p": 1}, flags=Flags.SYN)), 0)
    r.send_message(5, b"\xa0", more=True)
    r.send_message(1, b"\xa0", more=True)
    r.send_message(5, b"\xa0", more=True)
    assert r.queued_bytes > 0 and r.has_data_to_send()
    out = r.data_to_send()
    assert [type(m) for m in out] == [bytes, str, bytes]
    assert not r.has_data_to_send()


def test_budget_update_reaches_client_and_unknown_stream_is_refused() -> None:
    """ATP-STREAM-016 (session 7: the client dropped it silently)."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    p.router.send_budget_update(sid, {"tokens": 1})
    assert of(p.to_client(), BudgetReported)
    bu = Frame(FrameType.BUDGET_UPDATE, 0, 99, ext={"usage": {}})
    (reset,) = of(p.client.receive_message(encode_frame(bu), 0), StreamReset)
    assert reset.stream_id == 99 and reset.code == ErrorCode.EPROTO


def test_window_update_on_closed_stream_is_ignored() -> None:
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    p.router.send_message(sid, b"", end_stream=True)
    assert p.router.receive_message(encode_frame(Frame.window_update(sid, credit=10)), 0) == []
    p.to_client()
    upd = p.client.receive_message(encode_frame(Frame.window_update(sid, credit=10)), 0)
    assert not of(upd, WindowUpdated)


def test_message_received_payload_join() -> None:
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    p.router.send_message(sid, b"", more=True)
    (m,) = of(p.to_client(), MessageReceived)
    assert m.payload == b"" and m.more


def test_invalid_syn_window_is_eproto() -> None:
    """ATP-BUDGET-008: an invalid window field is an error, never read as unlimited."""
    r = Connection(Role.ROUTER, now=0.0)
    bad = Frame.data(1, 1, {"p": 1}, flags=Flags.SYN, ext={"window": {"max_tokens": -1}})
    (reset,) = of(r.receive_message(encode_frame(bad), 0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and "window" in reset.message


def test_session_frames_before_any_message_follow_the_text_default() -> None:
    """ATP-WS-010: before the client says anything, session-level frames use the
    encoding chosen at the handshake."""
    r = Connection(Role.ROUTER, encoding=Encoding.JSON, now=0.0)
    r.start_drain()
    (msg,) = r.data_to_send()
    assert isinstance(msg, str) and json.loads(msg)["error"]["code"] == "EDRAINING"
    b = Connection(Role.ROUTER, now=0.0)
    b.start_drain()
    assert isinstance(b.data_to_send()[0], bytes)


def test_msg_seq_never_wraps() -> None:
    """ATP-SEQ-005: a SYN at 2^32-1 leaves the router no reply number; a peer that
    wraps gets ESEQ_RETRY; a sender must FIN rather than wrap."""
    r = Connection(Role.ROUTER, now=0.0)
    syn = encode_frame(Frame.data(1, 2**32 - 1, {"p": 1}, flags=Flags.SYN))
    (reset,) = of(r.receive_message(syn, 0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and "no room" in reset.message
    r2 = Connection(Role.ROUTER, now=0.0)
    r2.receive_message(encode_frame(Frame.data(1, 2**32 - 2, {"p": 1}, flags=Flags.SYN)), 0)
    with pytest.raises(LocalProtocolError):
        r2.send_message(1, b"x", more=True)  # 2^32-1 without FIN: refused
    r2.send_message(1, b"x", end_stream=True)  # the last number, with FIN: allowed
    # a peer that wraps to 0 after 2^32-1 is out of sequence
    r3 = Connection(Role.ROUTER, now=0.0)
    r3.receive_message(encode_frame(Frame.data(1, 2**32 - 2, {"p": 1}, flags=Flags.SYN)), 0)
    r3.receive_message(encode_frame(Frame.data(1, 2**32 - 1, raw=b"a")), 0)
    (reset,) = of(r3.receive_message(encode_frame(Frame.data(1, 0, raw=b"b")), 0), StreamReset)
    assert reset.code == ErrorCode.ESEQ_RETRY


def test_text_client_credit_without_capabilities_is_harmless() -> None:
    """ATP-FLOW-007: a browser's credit is unlimited; a WINDOW_UPDATE from it is a no-op,
    not an overflow."""
    r = Connection(Role.ROUTER, now=0.0)
    r.receive_text('{"stream_id":"a","msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    evs = r.receive_text('{"type":"WINDOW_UPDATE","stream_id":"a","credit":65536}', 0)
    assert not of(evs, StreamReset) and r.stream_state(1) is StreamState.OPEN
