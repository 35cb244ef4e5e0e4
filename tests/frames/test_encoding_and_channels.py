"""A stream's Encoding, ``now`` required, and the two views of the core's one output queue:
the coalesced WebSocket view and the per-stream view with channel-keyed input that a QUIC
binding uses (ATP-WS-011, ATP-QUIC-003/005/006)."""

from __future__ import annotations

import cbor2
import pytest

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    LocalProtocolError,
    MessageReceived,
    Role,
    StreamOpened,
    encode_frame,
)

from .helpers import SEED_SYN, ConnectionPair, of, one


def test_now_is_required_where_time_matters() -> None:
    with pytest.raises(TypeError):
        Connection(Role.CLIENT)  # type: ignore[call-arg]
    c = Connection(Role.CLIENT, now=0.0)
    with pytest.raises(TypeError):
        c.open_stream(b"x", ttl=5)  # type: ignore[call-arg]


def test_encoding_per_stream_with_the_compat_aliases() -> None:
    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert opened.encoding is Encoding.JSON
    assert p.router.stream_encoding(opened.stream_id) is Encoding.JSON
    assert p.router.stream_encoding(opened.stream_id) is Encoding.JSON
    p = ConnectionPair()
    sid = p.open()
    binary = one(p.to_router(), StreamOpened)
    assert binary.stream_id == sid and binary.encoding is Encoding.BINARY
    assert p.router.stream_encoding(sid) is Encoding.BINARY
    # the event's two spellings stay consistent whichever is given


def test_open_stream_encoding_and_text_are_the_same_bytes() -> None:
    a = Connection(Role.CLIENT, now=0.0)
    b = Connection(Role.CLIENT, now=0.0)
    a.open_stream(b"\xa0", encoding=Encoding.JSON, now=None)
    b.open_stream(b"\xa0", encoding=Encoding.JSON, now=None)
    assert a.data_to_send() == b.data_to_send()
    assert a.stream_encoding(1) is Encoding.JSON
    c = Connection(Role.ROUTER, now=0.0, encoding=Encoding.JSON)
    assert c.stream_encoding(0) is Encoding.JSON
    assert (
        Connection(Role.ROUTER, now=0.0, encoding=Encoding.JSON).stream_encoding(0) is Encoding.JSON
    )


def _client_traffic(conn: Connection) -> None:
    conn.send_capabilities()
    s1 = conn.open_stream(cbor2.dumps({"content": "one"}), now=0.0)
    s2 = conn.open_stream(cbor2.dumps({"content": "two"}), now=0.0)
    conn.send_message(s1, b"a" * 10, more=True)
    conn.send_message(s2, b"b" * 10, more=True)
    conn.send_message(s1, b"c" * 10, end_stream=True)
    conn.reset_stream(s2)


def test_the_two_views_carry_the_same_bytes_in_the_same_order() -> None:
    ws, quic = Connection(Role.CLIENT, now=0.0), Connection(Role.CLIENT, now=0.0)
    _client_traffic(ws)
    _client_traffic(quic)
    coalesced = ws.data_to_send(0.0)
    per_stream = quic.stream_data_to_send(0.0)
    assert b"".join(m for m in coalesced if isinstance(m, bytes)) == b"".join(
        data for _, data, _ in per_stream
    )
    assert [sid for sid, _, _ in per_stream] == [0, 1, 2, 1, 2, 1, 2]
    # ATP-QUIC-006: end_stream after the stream's last frame (FIN on 1, RST on 2), never on 0
    assert [end for _, _, end in per_stream] == [False] * 5 + [True, True]
    assert not quic.has_data_to_send() and quic.queued_bytes == 0


def test_channel_keyed_input_gives_the_events_of_the_byte_stream() -> None:
    sender = Connection(Role.CLIENT, now=0.0)
    _client_traffic(sender)
    items = sender.stream_data_to_send(0.0)
    by_channel = Connection(Role.ROUTER, now=0.0)
    one_stream = Connection(Role.ROUTER, now=0.0)
    got: list[object] = []
    for sid, data, _ in items:
        half = len(data) // 2  # any chunking per channel
        got += by_channel.receive_stream_data(sid, data[:half], 0.0)
        got += by_channel.receive_stream_data(sid, data[half:], 0.0)
    want = one_stream.receive_data(b"".join(d for _, d, _ in items), 0.0)
    assert got == want
    assert [e.stream_id for e in of(got, MessageReceived)] == [1, 2, 1]  # type: ignore[arg-type]
    assert by_channel.data_to_send(0.0) == one_stream.data_to_send(0.0)


def test_a_frame_on_another_streams_channel_is_eproto() -> None:
    """ATP-QUIC-005: a frame for ATP stream N on another stream's QUIC stream, or a stream-0
    frame off the control stream, closes the connection with EPROTO."""
    for channel, frame in (
        (2, Frame.data(1, 1, raw=b"x", flags=Flags.SYN)),
        (1, Frame(2, 0, 0, ext={"caps": {"versions": [1]}})),
        (0, Frame.data(1, 1, raw=b"x", flags=Flags.SYN)),
    ):
        r = Connection(Role.ROUTER, now=0.0)
        closed = one(r.receive_stream_data(channel, encode_frame(frame), 0.0), ConnectionClosed)
        assert closed.code == ErrorCode.EPROTO and r.closed
        (out,) = r.stream_data_to_send(0.0)
        assert out[0] == 0  # the ERROR goes on the control stream


def test_the_per_stream_view_refuses_json() -> None:
    """ATP-QUIC-003: the JSON mapping never goes on a per-stream transport."""
    c = Connection(Role.CLIENT, now=0.0)
    c.send_capabilities(encoding=Encoding.JSON)
    with pytest.raises(LocalProtocolError):
        c.stream_data_to_send()


def test_per_stream_view_refusing_json_loses_nothing() -> None:
    """ATP-QUIC-003: asking the per-stream view of a queue holding a JSON frame is an error,
    and the queue is left as it was (the WebSocket view still gets every frame)."""
    import pytest

    from atp_proto.frames import LocalProtocolError

    c = Connection(Role.CLIENT, now=0.0, encoding=Encoding.JSON)
    c.send_capabilities(encoding=Encoding.JSON)
    with pytest.raises(LocalProtocolError):
        c.stream_data_to_send(0.0)
    assert len(c.data_to_send(0.0)) == 1
