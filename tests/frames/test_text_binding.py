"""The WebSocket text binding on a Connection: text/JSON frames, heartbeats, window updates, buffers.

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

from atp_proto.frames import (
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    MessageReceived,
    StreamOpened,
    WindowUpdated,
    encode_frame,
)

from .helpers import ConnectionPair, one


def test_connection_errors_in_text_frames() -> None:
    """ATP-FRAME-011, ATP-JSON-006: a text frame breaking a session rule closes it."""
    p = ConnectionPair()
    closed = one(p.router.receive_text('{"type": "CAPABILITIES"}', 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO
    (err,) = p.router.data_to_send()
    assert isinstance(err, str) and '"stream_id":0' in err


def test_text_heartbeat_and_window_update() -> None:
    """ATP-TIME-002, ATP-FLOW-008: stream-0 text frames need no stream_id; control frames
    cost no credit."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    assert p.router.receive_text('{"flags": ["HB"], "payload_b64": "AQI="}', 0.0) == []
    (ack,) = p.router.data_to_send()
    assert isinstance(ack, str) and '"flags":["ACK","HB"]' in ack and '"payload_b64":"AQI="' in ack
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    before = p.router._streams[opened.stream_id].recv.credit
    text = '{"type": "WINDOW_UPDATE", "stream_id": "st1", "window": {"max_tokens": 5}}'
    upd = one(p.router.receive_text(text, 0.0), WindowUpdated)
    assert (
        upd.stream_id == opened.stream_id
        and p.router._streams[opened.stream_id].recv.credit == before
    )


def test_syn_payload_does_not_pin_a_large_receive_buffer() -> None:
    """ATP-LIMIT-002: a small SYN payload that arrived with a large message is copied, so
    the stream does not keep the whole message alive; a later message is still a view."""
    p = ConnectionPair()
    syn = encode_frame(Frame.data(1, 1, raw=b"tiny", flags=Flags.SYN))
    big = encode_frame(Frame.data(1, 2, raw=b"B" * 100_000))
    events = p.router.receive_message(syn + big, 0.0)
    opened, msg = one(events, StreamOpened), one(events, MessageReceived)
    assert bytes(opened.payload) == b"tiny" and not isinstance(opened.payload, memoryview)
    assert isinstance(msg.payload, memoryview) and msg.payload == b"B" * 100_000
