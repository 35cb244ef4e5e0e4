"""The core's answers to the spec points an independent implementer found unclear
(examples/node-client/README.md, "Where the spec was unclear"), each as the spec now
decides it: one test per point, against the sans-IO core in memory."""

from __future__ import annotations

import json

import pytest

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    LocalProtocolError,
    Role,
    StreamOpened,
    StreamReset,
    encode_frame,
)
from atp_proto.frames._codec import HEADER
from atp_proto.frames._types import MAX_WINDOW
from atp_proto.testing.pair import ConnectionPair

from .helpers import of, opened_pair


def test_credit_outside_its_range_is_eproto_and_a_window_overflow_ewindow() -> None:
    """[ATP-FLOW-004, ATP-FRAME-023] a credit of 2^31 (or more) is a malformed frame,
    EPROTO on the stream, whatever the window holds; a valid credit that would take the
    window past 2^31-1 stays EWINDOW. The session lives on after either."""
    for credit in (MAX_WINDOW + 1, 2**32, 2**63):
        p, sid = opened_pair()
        evs = p.router.receive_message(encode_frame(Frame.window_update(sid, credit=credit)), 0)
        (reset,) = of(evs, StreamReset)
        assert (reset.stream_id, reset.code) == (sid, ErrorCode.EPROTO), credit
        assert not of(evs, ConnectionClosed)
    p, sid = opened_pair()
    evs = p.router.receive_message(encode_frame(Frame.window_update(sid, credit=MAX_WINDOW)), 0)
    (reset,) = of(evs, StreamReset)  # the window already held 256 KiB of credit
    assert (reset.stream_id, reset.code) == (sid, ErrorCode.EWINDOW)
    assert not of(evs, ConnectionClosed)


def test_syn_meta_that_is_not_a_map_is_eproto_in_both_encodings() -> None:
    """[ATP-FRAME-025] a SYN whose meta is a list, a number or text is a stream error
    EPROTO, binary or JSON text, never read as no meta; a map (unknown keys and all) opens
    the stream, and the session lives on after a refusal."""
    for meta in ([1], 7, "qa", None, b"x"):
        p = ConnectionPair()
        p.handshake()
        syn = Frame.data(1, 1, raw=b"\xa0", flags=Flags.SYN, ext={"meta": meta})
        evs = p.router.receive_message(encode_frame(syn), 0)
        (reset,) = of(evs, StreamReset)
        assert (reset.stream_id, reset.code) == (1, ErrorCode.EPROTO), meta
        assert "meta" in reset.message and not of(evs, StreamOpened)
        ok = Frame.data(3, 1, raw=b"\xa0", flags=Flags.SYN, ext={"meta": {"x_hint": 1}})
        (opened,) = of(p.router.receive_message(encode_frame(ok), 0), StreamOpened)
        assert opened.meta == {"x_hint": 1}
    p = ConnectionPair()
    text = json.dumps(
        {"type": 0, "flags": 1, "stream_id": 1, "msg_seq": 1, "meta": [1], "payload": {}}
    )
    (reset,) = of(p.router.receive_text(text, 0), StreamReset)
    assert (reset.stream_id, reset.code) == (1, ErrorCode.EPROTO)


def _refused_syns() -> list[tuple[str, bytes]]:
    """SYNs on stream 5 each refused with a stream error, for every reason a router has
    before the stream exists: a bad ext key, a bad window, a bad meta, an unknown qos, an
    ext that is not CBOR, a frame over max_frame_size."""

    def syn(ext: dict[str, object]) -> bytes:
        return encode_frame(Frame.data(5, 1, raw=b"\xa0", flags=Flags.SYN, ext=ext))

    def raw(qos: int, ext: bytes, payload: bytes) -> bytes:  # header fields as given
        return HEADER.pack(1, 0, 0x01, qos, 5, 1, 0, 0, len(ext), len(payload)) + ext + payload

    return [
        ("window", syn({"window": 5})),
        ("meta", syn({"meta": [1]})),
        ("session_id", syn({"session_id": 7})),
        ("qos", raw(9, b"", b"\xa0")),
        ("ext-not-cbor", raw(1, b"\xff", b"\xa0")),
        ("too-big", raw(1, b"", b"x" * ((1 << 20) + 1))),
    ]


def test_a_refused_syn_uses_its_id() -> None:
    """[ATP-STREAM-002] whatever refuses a SYN, before the stream exists or after, its id
    is used: a SYN on the same id or a lower one is then EPROTO, a higher one is served;
    the session lives on."""
    for why, raw in _refused_syns():
        p = ConnectionPair()
        p.handshake()
        (reset,) = of(p.router.receive_message(raw, 0), StreamReset)
        assert reset.stream_id == 5 and not reset.by_peer, why
        for sid in (5, 3):
            again = Frame.data(sid, 1, raw=b"\xa0", flags=Flags.SYN)
            evs = p.router.receive_message(encode_frame(again), 0)
            (reset,) = of(evs, StreamReset)
            assert (reset.stream_id, reset.code) == (sid, ErrorCode.EPROTO), (why, sid)
            assert "increase" in reset.message and not of(evs, StreamOpened)
        ok = Frame.data(7, 1, raw=b"\xa0", flags=Flags.SYN)
        assert of(p.router.receive_message(encode_frame(ok), 0), StreamOpened), why
        assert p.router.stream_state(5) is p.router.stream_state(3)  # both closed


def test_a_refused_text_syn_uses_its_numeric_id() -> None:
    """[ATP-STREAM-002] a JSON SYN on a numeric id refused for a bad field (qos, window)
    uses its id as a binary one does; a frame that is not a SYN uses none."""
    for bad in ({"qos": "platinum"}, {"window": 5}):
        p = ConnectionPair()
        syn = {"type": 0, "flags": ["SYN"], "stream_id": 5, "msg_seq": 1, "payload": {}}
        (reset,) = of(p.router.receive_text(json.dumps(dict(syn, **bad)), 0), StreamReset)
        assert reset.stream_id == 5
        (reset,) = of(p.router.receive_text(json.dumps(syn), 0), StreamReset)
        assert (reset.stream_id, reset.code) == (5, ErrorCode.EPROTO), bad
        assert of(p.router.receive_text(json.dumps(dict(syn, stream_id=7)), 0), StreamOpened)
    p = ConnectionPair()
    wu = {"type": "WINDOW_UPDATE", "stream_id": 9, "credit": 0}
    assert of(p.router.receive_text(json.dumps(wu), 0), StreamReset)
    syn = {"type": 0, "flags": ["SYN"], "stream_id": 3, "msg_seq": 1, "payload": {}}
    assert of(p.router.receive_text(json.dumps(syn), 0), StreamOpened)


def test_a_syn_cut_by_the_message_limit_uses_its_id() -> None:
    """[ATP-STREAM-002, ATP-WS-012] a SYN whose message was over the binding's limit (the
    I/O layer kept its first bytes) is refused ETOOBIG and its id is used."""
    p = ConnectionPair()
    p.handshake()
    big = (1 << 20) + 70_000
    prefix = HEADER.pack(1, 0, 0x01, 1, 5, 1, 0, 0, 0, big)
    (reset,) = of(p.router.receive_oversized(prefix, (1 << 20) + 65_536, 0), StreamReset)
    assert (reset.stream_id, reset.code) == (5, ErrorCode.ETOOBIG)
    again = Frame.data(5, 1, raw=b"\xa0", flags=Flags.SYN)
    (reset,) = of(p.router.receive_message(encode_frame(again), 0), StreamReset)
    assert (reset.stream_id, reset.code) == (5, ErrorCode.EPROTO)


def test_a_message_ending_inside_an_oversized_frame_is_only_eproto() -> None:
    """[ATP-WS-001, ATP-LIMIT-001] a message within the limit that ends inside a frame
    whose header announces a body over max_frame_size is a connection error EPROTO, with
    no ETOOBIG on the stream first; the same frame whole in its message is a stream
    error ETOOBIG and the session goes on; over a byte stream (QUIC) the body is skipped
    as it arrives."""
    big = (1 << 20) + 1
    head = HEADER.pack(1, 0, 0x01, 1, 1, 1, 0, 0, 0, big)
    p = ConnectionPair()
    p.handshake()
    evs = p.router.receive_message(head + b"x" * 100, 0)
    assert not of(evs, StreamReset), evs
    (closed,) = of(evs, ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and "inside a frame" in closed.message
    p = ConnectionPair()
    p.handshake()
    evs = p.router.receive_message(head + b"x" * big, 0)
    (reset,) = of(evs, StreamReset)
    assert (reset.stream_id, reset.code) == (1, ErrorCode.ETOOBIG) and not of(evs, ConnectionClosed)
    p = ConnectionPair()
    p.handshake()
    evs = p.router.receive_data(head + b"x" * 100, 0)  # a byte stream: the rest may follow
    (reset,) = of(evs, StreamReset)
    assert reset.code == ErrorCode.ETOOBIG
    assert not of(p.router.receive_data(b"x" * (big - 100), 0), ConnectionClosed)


def test_a_frame_on_an_alias_naming_no_stream_allocates_no_id() -> None:
    """[ATP-JSON-013, ATP-JSON-016] DATA, WINDOW_UPDATE or RST on an alias that names no
    stream: EPROTO on that alias, with no stream_num and a message naming the alias, not
    a number; the next alias SYN gets id 1, as if the frame had not come."""
    frames = (
        {"stream_id": "ghost", "msg_seq": 2, "payload": 1},
        {"type": "WINDOW_UPDATE", "stream_id": "ghost", "credit": 5},
        {"stream_id": "ghost", "flags": ["RST"]},
    )
    for frame in frames:
        p = ConnectionPair()
        (reset,) = of(p.router.receive_text(json.dumps(frame), 0), StreamReset)
        assert reset.code == ErrorCode.EPROTO and '"ghost"' in reset.message, frame
        assert not any(ch.isdigit() for ch in reset.message), reset.message
        (err,) = [json.loads(m) for m in p.router.data_to_send() if isinstance(m, str)]
        assert err["stream_id"] == "ghost" and "stream_num" not in err, err
        syn = {"stream_id": "a1", "flags": ["SYN"], "msg_seq": 1, "payload": {}}
        (opened,) = of(p.router.receive_text(json.dumps(syn), 0), StreamOpened)
        assert opened.stream_id == 1, frame


def _caps(caps: dict[str, object]) -> bytes:
    return encode_frame(
        Frame(FrameType.CAPABILITIES, 0, 0, ext={"caps": {"versions": [1], **caps}})
    )


def test_every_uint_is_in_range_for_the_message_and_stream_limits() -> None:
    """[ATP-SESS-008, ATP-LIMIT-004, ATP-LIMIT-006] max_message_size 0 and max_streams 0
    are taken, not ignored: the router then refuses locally (ETOOBIG) every message with
    a payload on the stream, and sends nothing of it; the client opens no stream
    (EWINDOW); text or a negative number is still ignored."""
    router = Connection(Role.ROUTER, now=0.0)
    syn = encode_frame(Frame.data(1, 1, raw=b"\xa0", flags=Flags.SYN))
    router.receive_message(_caps({"max_message_size": 0, "heartbeat_ms": 0}) + syn, 0.0)
    router.data_to_send()
    with pytest.raises(LocalProtocolError) as info:
        router.send_message(1, b"x", end_stream=True)
    assert info.value.code == ErrorCode.ETOOBIG and info.value.stream_id == 1
    assert not router.data_to_send()
    client = Connection(Role.CLIENT, now=0.0)
    client.receive_message(_caps({"max_streams": 0, "idle_timeout_ms": 0}), 0.0)
    with pytest.raises(LocalProtocolError) as info:
        client.open_stream(b"\xa0", now=None)
    assert info.value.code == ErrorCode.EWINDOW and client.open_streams == 0
    client = Connection(Role.CLIENT, now=0.0)
    client.receive_message(_caps({"max_streams": "many", "max_message_size": -1}), 0.0)
    assert client.open_stream(b"t" * 5000, now=None) == 1  # the defaults kept


def test_syn_on_a_later_fragment_of_a_new_stream_is_eproto_not_eseq_retry() -> None:
    """[ATP-SEQ-006] a SYN on frag_seq 3 of a stream never opened: the frag_seq is also not
    the one expected (ATP-SEQ-004's ESEQ_RETRY), but a SYN is a message's first fragment by
    definition, so the stream error is EPROTO; the session lives on (stream 3 opens)."""
    for frag in (1, 3, 0xFFFF):
        p = ConnectionPair()
        p.handshake()
        syn = Frame(FrameType.DATA, Flags.SYN, 1, 1, frag_seq=frag, payload=b"\xa0")
        evs = p.router.receive_message(encode_frame(syn), 0)
        (reset,) = of(evs, StreamReset)
        assert (reset.stream_id, reset.code) == (1, ErrorCode.EPROTO), frag
        assert "first fragment" in reset.message and not of(evs, ConnectionClosed)
        ok = Frame.data(3, 1, raw=b"\xa0", flags=Flags.SYN)
        assert of(p.router.receive_message(encode_frame(ok), 0), StreamOpened)
