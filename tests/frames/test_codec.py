"""Binary frame layout, frame types, flags, ext rules, limits (spec §3-§5, §12)."""

from __future__ import annotations

import struct
from types import MappingProxyType

import cbor2
import pytest

from atp_proto.frames import (
    HEADER_SIZE,
    MAX_STREAM_ID,
    BudgetWindow,
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    FrameDecodeError,
    FrameDecoder,
    FrameType,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    RemoteProtocolError,
    StreamOpened,
    StreamReset,
    UnknownFrameReceived,
    decode_ext,
    decode_frame,
    decode_frames,
    decode_payload,
    encode_frame,
    encode_frames,
    encoded_length,
)
from atp_proto.frames._codec import encode_ext

from .helpers import ConnectionPair, of, one, wire

#: every test here runs on the C accelerator and on the pure-Python path (issue 10 item 6)
pytestmark = pytest.mark.usefixtures("cbor_path")


def header(
    version: int = 1,
    ftype: int = 0,
    flags: int = 0,
    qos: int = 0,
    sid: int = 1,
    mseq: int = 1,
    fseq: int = 0,
    ttl: int = 0,
    ext_len: int = 0,
    pay_len: int = 0,
) -> bytes:
    """A raw 24-byte header, packed independently of the codec under test."""
    return struct.pack(
        ">BBBBIIHHII", version, ftype, flags, qos, sid, mseq, fseq, ttl, ext_len, pay_len
    )


def raw_frame(ext: bytes = b"", payload: bytes = b"", **fields: int) -> bytes:
    return header(ext_len=len(ext), pay_len=len(payload), **fields) + ext + payload


def held(dec: FrameDecoder) -> int:
    """Bytes the decoder actually holds in memory (``buffered`` minus bytes to skip)."""
    return len(dec._buf) - dec._pos


def decode_one(data: bytes, limits: Limits | None = None) -> Frame:
    dec = FrameDecoder(limits or Limits())
    dec.feed(data)
    frame = dec.next_frame()
    assert frame is not None
    assert dec.buffered == 0
    return frame


# -- header layout (ATP-FRAME-001, ATP-FRAME-002) ---------------------------------------


def test_header_byte_offsets() -> None:
    """ATP-FRAME-001, ATP-FRAME-002: every field at its offset, big-endian, 24 bytes."""
    ext = {"k": 1}
    frame = Frame(
        FrameType.ERROR,
        Flags.SYN | Flags.MORE | Flags.RST | Flags.CONT,
        0x01020304,
        0xA1B2C3D4,
        0x0506,
        QoS.BRONZE,
        0x0708,
        ext,
        b"xyz",
    )
    data = encode_frame(frame)
    ext_bytes = bytes.fromhex("a1616b01")  # {"k": 1}
    assert HEADER_SIZE == 24
    assert len(data) == 24 + 4 + 3 == encoded_length(frame)
    assert data[0] == 1  # version
    assert data[1] == 0x04  # type ERROR
    assert data[2] == 0x55  # SYN|MORE|RST|CONT
    assert data[3] == 3  # qos bronze
    assert data[4:8] == bytes([1, 2, 3, 4])  # stream_id
    assert data[8:12] == bytes([0xA1, 0xB2, 0xC3, 0xD4])  # msg_seq
    assert data[12:14] == bytes([5, 6])  # frag_seq
    assert data[14:16] == bytes([7, 8])  # ttl
    assert data[16:20] == (4).to_bytes(4, "big")  # ext_len
    assert data[20:24] == (3).to_bytes(4, "big")  # payload_len
    assert data[24:28] == ext_bytes
    assert data[28:] == b"xyz"
    assert data == raw_frame(ext_bytes, b"xyz", ftype=4, flags=0x55, qos=3, sid=0x01020304,
                             mseq=0xA1B2C3D4, fseq=0x0506, ttl=0x0708)  # fmt: skip


def test_header_only_and_payload_only_encodings() -> None:
    """ATP-FRAME-001: a frame without ext or payload is exactly the header."""
    assert encode_frame(Frame()) == header(sid=0, mseq=0)
    assert (
        encode_frame(Frame(stream_id=7, payload=b"ab")) == header(sid=7, mseq=0, pay_len=2) + b"ab"
    )
    assert encode_frame(Frame(stream_id=7, ext=MappingProxyType({"a": "b"}))) == raw_frame(
        cbor2.dumps({"a": "b"}), sid=7, mseq=0
    )


def test_encode_frames_back_to_back_and_decode_frames() -> None:
    """ATP-FRAME-009: many whole frames in one buffer."""
    frames = [Frame.data(1, i, {"n": i}, flags=Flags.MORE) for i in range(1, 6)]
    data = encode_frames(frames)
    assert data == b"".join(encode_frame(f) for f in frames)
    back = decode_frames(data)
    assert [(f.msg_seq, f.payload_obj()) for f in back] == [(i, {"n": i}) for i in range(1, 6)]


def test_decode_frame_at_offset() -> None:
    a, b = encode_frame(Frame.data(1, 1, "a")), encode_frame(Frame.data(1, 2, "bb"))
    frame, end = decode_frame(a + b, len(a))
    assert frame.msg_seq == 2 and end == len(a) + len(b)
    frame, end = decode_frame(a + b)
    assert frame.msg_seq == 1 and end == len(a)
    with pytest.raises(FrameDecodeError) as info:
        decode_frame(b[:-1])
    assert info.value.code == ErrorCode.EPROTO and info.value.connection_level


def test_decode_frames_truncated_is_connection_level() -> None:
    """ATP-WS-001: a message that ends inside a frame is a connection error EPROTO."""
    data = encode_frame(Frame.data(3, 1, "x"))
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, len(data) - 1):
        with pytest.raises(FrameDecodeError) as info:
            decode_frames(data + data[:cut])
        assert info.value.code == ErrorCode.EPROTO
        assert info.value.stream_id == 0


# -- frame model -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", 256),
        ("flags", -1),
        ("stream_id", MAX_STREAM_ID + 1),
        ("msg_seq", 1 << 32),
        ("frag_seq", 1 << 16),
        ("qos", 256),
        ("ttl", 1 << 16),
        ("version", 256),
        ("stream_id", True),
        ("msg_seq", 1.0),
    ],
)
def test_frame_rejects_out_of_range_fields(field: str, value: object) -> None:
    """ATP-FRAME-001, ATP-FRAME-004: a frame we build always fits the header."""
    with pytest.raises(LocalProtocolError) as info:
        Frame(**{field: value})  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.EPROTO
    with pytest.raises(LocalProtocolError):
        Frame().replace(**{field: value})


def test_frame_rejects_non_bytes_payload() -> None:
    with pytest.raises(LocalProtocolError, match="payload must be bytes"):
        Frame(payload="text")  # type: ignore[arg-type]


def test_encoder_refuses_a_frame_that_bypassed_validation() -> None:
    """ATP-FRAME-004: even a frame built around the constructor cannot set the R bit."""
    bad = Frame._make((0, 0, 0xFFFF_FFFF + 1, 0, 0, 0, 0, {}, b"", 1))
    with pytest.raises(LocalProtocolError, match="out of range"):
        encode_frame(bad)


def test_ext_that_cbor_cannot_encode_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="ext cannot be encoded"):
        encode_frame(Frame(ext={"x": object()}))
    assert encode_ext({}) == b""


def test_frame_views_and_constructors() -> None:
    f = Frame.data(5, 2, {"a": 1}, flags=Flags.MORE | 0x80, qos=QoS.GOLD, ttl=3, frag_seq=1)
    assert f.type is FrameType.DATA and f.qos is QoS.GOLD
    assert f.has(Flags.MORE) and not f.has(Flags.FIN)
    assert f.flag_set == Flags.MORE  # the reserved bit is not a flag
    assert f.length == 24 + len(cbor2.dumps({"a": 1}))
    assert f.payload_obj() == {"a": 1}
    assert Frame.data(5, 2).payload == b"" and Frame.data(5, 2).payload_obj() is None
    assert Frame.data(5, 2, raw=b"\x00raw").payload == b"\x00raw"
    r = repr(f.replace(ext={"k": 1}))
    assert "DATA" in r and "stream=5" in r and "MORE" in r and "frag_seq=1" in r
    assert "qos=gold" in r and "ttl=3" in r and "ext={'k': 1}" in r and "payload=" in r
    assert repr(Frame(0x7E, qos=9)).startswith("Frame(0x7e") and "qos=0x09" in repr(
        Frame(0x7E, qos=9)
    )
    assert "flags=0" in repr(Frame())

    err = Frame.error(4, ErrorCode.EPREEMPT, "shed", retry_after_ms=250)
    assert err.type is FrameType.ERROR and err.flags == Flags.RST
    assert err.ext["error"] == {"code": "EPREEMPT", "message": "shed", "retry_after_ms": 250}
    assert err.error_code == "EPREEMPT"
    assert (
        Frame.error(0, "EX", "m").flags == 0
        and "retry_after_ms" not in Frame.error(0, "EX", "m").ext["error"]
    )
    assert Frame().error_code is None
    assert Frame(ext={"error": {"code": 5}}).error_code is None

    wu = Frame.window_update(2, credit=10, window=BudgetWindow(max_tokens=5))
    assert wu.ext == {"credit": 10, "window": {"max_tokens": 5}}
    assert wu.budget_window == BudgetWindow(None, 5, None)
    assert Frame.window_update(2).ext == {}
    assert Frame(ext={"window": 3}).budget_window is None
    assert (
        Frame(ext={"window": {"max_parallel": -1, "max_tokens": True}}).budget_window
        == BudgetWindow()
    )


def test_budget_window_and_limits_values() -> None:
    w = BudgetWindow(4, 100, None)
    assert w.merged(BudgetWindow(max_tokens=50)) == BudgetWindow(4, 50, None)
    assert w.merged(BudgetWindow()) == w
    assert w.clamp(BudgetWindow(2, None, 7)) == BudgetWindow(2, 100, 7)
    assert BudgetWindow().clamp(w) == w
    assert w.to_dict() == {"max_parallel": 4, "max_tokens": 100}
    assert BudgetWindow(None, None, 9).to_dict() == {"max_usd_micros": 9}
    with pytest.raises(ValueError, match="non-negative"):
        Limits(max_streams=-1)
    with pytest.raises(ValueError, match="non-negative"):
        Limits(max_depth=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_window"):
        Limits(initial_window=0)


def test_qos_labels() -> None:
    assert QoS.SILVER.label == "silver"


# -- types and flags (ATP-FRAME-010, ATP-FLAG-001) ----------------------------------------


@pytest.mark.parametrize("ftype", list(FrameType))
def test_every_frame_type_round_trips(ftype: FrameType) -> None:
    f = Frame(ftype, 0, 9, 1, ext={"x": [1, "two", None, True, 1.5, b"\x00"]}, payload=b"p")
    back = decode_one(encode_frame(f))
    assert back.type is ftype
    assert back == f.replace(payload=back.payload) and bytes(back.payload) == b"p"


@pytest.mark.parametrize("flag", [*list(Flags), 0x80])
def test_every_flag_bit_round_trips(flag: int) -> None:
    """ATP-FLAG-001: each bit lands in byte 2; a reserved bit is carried, not a flag."""
    data = encode_frame(Frame(flags=flag, stream_id=1))
    assert data[2] == int(flag)
    back = decode_one(data)
    assert back.flags == int(flag)
    assert back.flag_set == (Flags(flag) if flag != 0x80 else Flags(0))


@pytest.mark.parametrize("qos", list(QoS))
def test_qos_values(qos: QoS) -> None:
    assert decode_one(encode_frame(Frame(qos=qos, stream_id=1))).qos is qos


def test_unknown_qos_is_a_stream_error() -> None:
    """ATP-FRAME-007: qos above 3 is a stream error EPROTO; the decoder goes on."""
    dec = FrameDecoder()
    dec.feed(raw_frame(qos=4, sid=6) + raw_frame(sid=7, payload=b"ok"))
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.EPROTO and info.value.stream_id == 6
    assert bytes(dec.next_frame().payload) == b"ok"  # type: ignore[union-attr]


def test_unknown_frame_type_is_kept_as_int_and_ignored_by_a_connection() -> None:
    """ATP-FRAME-010: an unknown type is skipped (its body too); the session goes on."""
    unknown = raw_frame(cbor2.dumps({"x": 1}), b"body", ftype=0x7F, sid=0)
    frame = decode_one(unknown)
    assert frame.type == 0x7F and not isinstance(frame.type, FrameType)
    p = ConnectionPair()
    events = p.router.receive_message(unknown + unknown, 0.0)
    assert len(of(events, UnknownFrameReceived)) == 2
    assert of(events, UnknownFrameReceived)[0].frame.type == 0x7F
    assert not p.router.closed and not p.router.has_data_to_send()
    p.open()
    assert of(p.to_router(), StreamOpened)


def test_reserved_flag_bit_is_ignored_by_a_connection() -> None:
    """ATP-FLAG-001, ATP-FLAG-002: reserved 0x80 and ACK on a non-heartbeat are ignored."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    data = encode_frame(Frame.data(sid, 2, "x", flags=0x80 | Flags.ACK))
    events = p.router.receive_message(data, 0.0)
    msg = one(events, MessageReceived)
    assert msg.msg_seq == 2 and cbor2.loads(msg.payload) == "x"


# -- ext rules (ATP-FRAME-005, ATP-FRAME-006, ATP-EXT-001) --------------------------------


def nested(depth: int) -> object:
    """A value that puts its innermost element at ``depth`` when held at depth 2 of ext."""
    value: object = 0
    for _ in range(depth - 2):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("ext", "reason"),
    [
        (cbor2.dumps([1, 2]), "non-map"),
        (cbor2.dumps("text"), "non-map"),
        (cbor2.dumps({1: 2}), "non-text key"),
        (cbor2.dumps({"k": 1}) + b"\x00", "trailing"),
        (bytes.fromhex("a2616b01616b02"), "duplicate"),
        (bytes.fromhex("bf616b01ff"), "indefinite map"),
        (bytes.fromhex("a1616b9f01ff"), "indefinite array"),
        (bytes.fromhex("a1616b7f6161ff"), "indefinite text"),
        (bytes.fromhex("a1616bc074323031332d30332d32315432303a30343a30305a"), "tag 0"),
        (bytes.fromhex("a1616bc249010000000000000000"), "tag 2 bignum"),
        (bytes.fromhex("a1616bd9d9f701"), "tag 55799"),
        (bytes.fromhex("a1616bd81c01"), "tag 28"),
        (bytes.fromhex("a1616bd9010001"), "tag 256"),
        (bytes.fromhex("a1616bd8ff01"), "unknown tag"),
        (bytes.fromhex("a1616bf7"), "undefined"),
        (bytes.fromhex("a1616be0"), "simple value"),
        (bytes.fromhex("a1616b"), "truncated"),
        (bytes.fromhex("ff"), "break"),
        (cbor2.dumps({"k": nested(17)}), "too deep"),
    ],
)
def test_bad_ext_is_a_stream_error(ext: bytes, reason: str) -> None:
    """ATP-FRAME-005, ATP-FRAME-006: non-map, tags, indefinite lengths, duplicate keys,
    trailing bytes and deep nesting are EPROTO on the frame's stream; on stream 0 the
    connection fails."""
    with pytest.raises(FrameDecodeError) as info:
        decode_ext(ext, 5)
    assert info.value.code == ErrorCode.EPROTO and info.value.stream_id == 5, reason

    dec = FrameDecoder()
    dec.feed(raw_frame(ext, sid=5) + raw_frame(sid=5, payload=b"next"))
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.stream_id == 5
    nxt = dec.next_frame()  # stream-level: the bad frame was consumed, framing kept
    assert nxt is not None and bytes(nxt.payload) == b"next"

    p = ConnectionPair()
    events = p.router.receive_message(
        raw_frame(ext, sid=0, mseq=0, ftype=FrameType.CAPABILITIES), 0.0
    )
    closed = one(events, ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and not closed.by_peer and p.router.closed


def test_ext_depth_limit_boundary() -> None:
    """Nesting depth 16 is accepted, 17 refused (limits table: nesting depth of ext)."""
    assert decode_ext(cbor2.dumps({"k": nested(16)}))["k"] == nested(16)
    with pytest.raises(FrameDecodeError, match=r"deeper|depth"):
        decode_ext(cbor2.dumps({"k": nested(17)}))
    deep_map: object = 0
    for _ in range(15):
        deep_map = {"a": deep_map}
    assert decode_ext(cbor2.dumps(deep_map)) == deep_map
    with pytest.raises(FrameDecodeError):
        decode_ext(cbor2.dumps({"a": deep_map}))
    assert decode_ext(cbor2.dumps({"k": nested(5)}), limits=Limits(max_depth=5))
    with pytest.raises(FrameDecodeError):
        decode_ext(cbor2.dumps({"k": nested(6)}), limits=Limits(max_depth=5))


def test_ext_accepts_the_json_model_and_byte_strings() -> None:
    """ATP-FRAME-006, ATP-EXT-001: JSON values and bytes are fine; unknown keys are kept."""
    ext = {"x-vendor-a": {"l": [1, -2, 1.5, "s", None, False]}, "b": b"\x00\xff", "meta": {}}
    assert decode_ext(cbor2.dumps(ext)) == ext


def test_decode_payload() -> None:
    assert decode_payload(b"") is None
    assert decode_payload(memoryview(cbor2.dumps({"a": [1]}))) == {"a": [1]}
    with pytest.raises(FrameDecodeError) as info:
        decode_payload(b"\xff\xff", stream_id=3)
    assert info.value.stream_id == 3 and info.value.code == ErrorCode.EPROTO
    with pytest.raises(FrameDecodeError):
        Frame.data(3, 1, raw=cbor2.dumps(1) + b"x").payload_obj()


# -- payload without copy (ATP-FRAME-008) ------------------------------------------------


def test_payload_is_a_memoryview_of_the_fed_bytes() -> None:
    """ATP-FRAME-008: a 64 KiB payload is handed out as a read-only view, not a copy."""
    body = bytes(range(256)) * 256  # 64 KiB
    data = encode_frame(Frame.data(1, 1, raw=body, ext={"k": 1}))
    dec = FrameDecoder()
    dec.feed(data)
    frame = dec.next_frame()
    assert frame is not None
    assert isinstance(frame.payload, memoryview)
    assert frame.payload.obj is data  # a view into the bytes we fed
    assert frame.payload.readonly and frame.payload.nbytes == len(body)
    assert frame.payload == body


def test_payload_view_survives_through_the_connection() -> None:
    """ATP-FRAME-008: the router's MessageReceived payload is a view of the message."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    body = b"\xab" * (64 << 10)
    data = encode_frame(Frame.data(sid, 2, raw=body))
    msg = one(p.router.receive_message(data, 0.0), MessageReceived)
    assert isinstance(msg.payload, memoryview) and msg.payload.obj is data
    assert msg.payload == body


def test_bytearray_and_memoryview_input_is_accepted() -> None:
    data = encode_frame(Frame.data(1, 1, "x"))
    for chunk in (bytearray(data), memoryview(data)):
        dec = FrameDecoder()
        dec.feed(chunk)
        assert dec.next_frame() is not None


# -- incremental decoding (ATP-FRAME-009) ---------------------------------------------------


def test_split_frames_across_feeds() -> None:
    """ATP-FRAME-009: any split of back-to-back frames decodes the same frames."""
    frames = [Frame.data(1, i, "x" * i, ext={"i": i} if i % 2 else None) for i in range(1, 8)]
    data = encode_frames(frames)
    for step in (1, 2, 7, 23, 24, 25, 100):
        dec = FrameDecoder()
        got: list[Frame] = []
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            got.extend(dec)
        assert [(f.msg_seq, dict(f.ext), f.payload_obj()) for f in got] == [
            (f.msg_seq, dict(f.ext), f.payload_obj()) for f in frames
        ]
        assert dec.buffered == 0


def test_next_frame_waits_for_a_whole_header_and_body() -> None:
    data = encode_frame(Frame.data(1, 1, "abc"))
    dec = FrameDecoder()
    dec.feed(data[:10])
    assert dec.next_frame() is None and dec.buffered == 10
    dec.feed(data[10:25])
    assert dec.next_frame() is None and dec.buffered == 25
    dec.feed(data[25:])
    assert dec.next_frame() is not None and dec.buffered == 0
    assert dec.next_frame() is None


# -- bad version, reserved bit (ATP-FRAME-003, ATP-FRAME-004) ------------------------------


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (raw_frame(version=2), "version"),
        (raw_frame(version=0), "version"),
        (raw_frame(sid=0x8000_0001), "reserved"),
    ],
)
def test_bad_version_or_reserved_bit_breaks_the_decoder(data: bytes, what: str) -> None:
    """ATP-FRAME-003, ATP-FRAME-004: a connection error EPROTO; framing is lost."""
    dec = FrameDecoder()
    dec.feed(data)
    with pytest.raises(FrameDecodeError, match=what) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.EPROTO and info.value.connection_level
    with pytest.raises(FrameDecodeError):
        dec.next_frame()
    with pytest.raises(FrameDecodeError):
        dec.feed(raw_frame())
    assert dec.buffered == 0


def test_bad_version_closes_the_connection() -> None:
    """ATP-FRAME-003, ATP-SESS-004, ATP-ERR-002: ERROR on stream 0, then nothing more."""
    p = ConnectionPair()
    events = p.router.receive_message(raw_frame(version=9), 0.0)
    closed = one(events, ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and not closed.by_peer and "version" in closed.message
    (err,) = wire(p.router)
    assert err.type is FrameType.ERROR and err.stream_id == 0 and err.error_code == "EPROTO"
    assert p.router.receive_message(raw_frame(), 1.0) == []
    assert p.router.receive_data(raw_frame(), 1.0) == []
    assert p.router.receive_text("{}", 1.0) == []
    assert p.router.next_deadline() is None and p.router.handle_timer(1e9) == []


def test_reserved_bit_over_a_byte_stream_closes_the_connection() -> None:
    p = ConnectionPair()
    events = p.router.receive_data(raw_frame(sid=0xFFFF_FFFF), 0.0)
    assert one(events, ConnectionClosed).code == ErrorCode.EPROTO


# -- oversized frames (ATP-LIMIT-001) ----------------------------------------------------------

SMALL = Limits(max_frame_size=1024, max_ext_size=256)


def test_oversized_frame_body_is_skipped_across_feeds() -> None:
    """ATP-LIMIT-001: ETOOBIG on the stream; the body is skipped as it arrives, never
    buffered; the frame after it decodes."""
    big = raw_frame(payload=b"\x00" * 5000, sid=5)
    after = raw_frame(payload=b"after", sid=7)
    dec = FrameDecoder(SMALL)
    dec.feed(big[:100])
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.ETOOBIG and info.value.stream_id == 5
    assert "max_frame_size" in info.value.message
    assert dec.buffered == 5000 - 76  # bytes still to skip, nothing held
    assert dec.next_frame() is None  # still skipping
    for i in range(100, len(big), 999):
        dec.feed(big[i : i + 999])
        assert dec.next_frame() is None
        assert held(dec) == 0  # ``buffered`` counts the bytes still to skip; none is held
        assert dec.buffered == max(0, len(big) - i - 999)
    assert dec.buffered == 0
    dec.feed(after)
    frame = dec.next_frame()
    assert frame is not None and bytes(frame.payload) == b"after"


def test_oversized_frame_skip_ends_inside_a_feed() -> None:
    big = raw_frame(payload=b"\x00" * 3000, sid=5)
    after = raw_frame(payload=b"after", sid=7)
    dec = FrameDecoder(SMALL)
    dec.feed(big[:50])
    with pytest.raises(FrameDecodeError):
        dec.next_frame()
    dec.feed(big[50:] + after)  # the skip ends in the middle of this feed
    frame = dec.next_frame()
    assert frame is not None and bytes(frame.payload) == b"after" and dec.buffered == 0


def test_oversized_frame_already_whole_in_the_buffer() -> None:
    dec = FrameDecoder(SMALL)
    dec.feed(raw_frame(payload=b"\x00" * 2000, sid=5) + raw_frame(payload=b"z", sid=5, mseq=2))
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.stream_id == 5
    frame = dec.next_frame()
    assert frame is not None and frame.msg_seq == 2


def test_oversized_ext_is_too_big() -> None:
    """ATP-LIMIT-001: max_ext_size is enforced like max_frame_size."""
    ext = cbor2.dumps({"k": "x" * 300})
    dec = FrameDecoder(SMALL)
    dec.feed(raw_frame(ext, sid=3))
    with pytest.raises(FrameDecodeError, match="max_ext_size") as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.ETOOBIG and info.value.stream_id == 3


def test_oversized_frame_on_stream_zero_is_connection_level() -> None:
    """ATP-LIMIT-001: on stream 0 ETOOBIG is a connection error (framing is lost)."""
    dec = FrameDecoder(SMALL)
    dec.feed(raw_frame(payload=b"\x00" * 2000, sid=0))
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.ETOOBIG and info.value.connection_level
    with pytest.raises(FrameDecodeError):
        dec.next_frame()

    p = ConnectionPair(router_limits=SMALL)
    events = p.router.receive_data(header(sid=0, ftype=0, flags=Flags.HB, pay_len=4000), 0.0)
    assert one(events, ConnectionClosed).code == ErrorCode.ETOOBIG
    (err,) = wire(p.router)
    assert err.stream_id == 0 and err.error_code == "ETOOBIG"


def test_oversized_frame_resets_only_its_stream_at_the_router() -> None:
    """ATP-LIMIT-001, ATP-ERR-001: ETOOBIG on the stream, body skipped across receive_data
    calls, the session and the next stream work."""
    p = ConnectionPair(router_limits=SMALL)
    sid = p.open()
    p.to_router()
    big = raw_frame(payload=b"\x01" * 4000, sid=sid, mseq=2)
    events = p.router.receive_data(big[:30], 0.0)
    reset = one(events, StreamReset)
    assert reset.stream_id == sid and reset.code == ErrorCode.ETOOBIG and not reset.by_peer
    for i in range(30, len(big), 500):
        assert p.router.receive_data(big[i : i + 500], 0.0) == []
    (err,) = wire(p.router)
    assert err.stream_id == sid and err.error_code == "ETOOBIG" and err.has(Flags.RST)
    sid2 = p.open()
    assert one(p.to_router(), StreamOpened).stream_id == sid2 > sid


# -- truncated binary message (ATP-WS-001) -------------------------------------------------------


def test_truncated_binary_message_is_a_connection_error() -> None:
    """ATP-WS-001: a WebSocket message ending inside a frame closes the connection."""
    p = ConnectionPair()
    sid = p.open()
    p.to_router()
    data = encode_frame(Frame.data(sid, 2, "hello"))
    events = p.router.receive_message(data + data[:-1], 0.0)
    assert one(events, MessageReceived).msg_seq == 2  # the whole frame before it counts
    closed = one(events, ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and "inside a frame" in closed.message
    (err,) = wire(p.router)
    assert err.stream_id == 0 and err.error_code == "EPROTO"
    assert p.router.closed and p.router.open_streams == 0


def test_split_frame_is_fine_over_a_byte_stream() -> None:
    """ATP-FRAME-009: receive_data accepts a frame split across reads."""
    p = ConnectionPair()
    data = encode_frame(Frame.data(1, 1, "x", flags=Flags.SYN))
    assert p.router.receive_data(data[:5], 0.0) == []
    assert one(p.router.receive_data(data[5:], 0.0), StreamOpened).stream_id == 1


def test_remote_error_hierarchy() -> None:
    assert issubclass(FrameDecodeError, RemoteProtocolError)
    err = FrameDecodeError(ErrorCode.EPROTO, "m", stream_id=3, retry_after_ms=5)
    assert str(err) == "EPROTO: m" and not err.connection_level and err.retry_after_ms == 5


@pytest.mark.parametrize(
    "data",
    [raw_frame(b"\x00a0\xf6", sid=0, mseq=0), raw_frame(qos=9, sid=0, mseq=0)],
    ids=["bad-ext", "bad-qos"],
)
def test_connection_level_body_errors_break_the_decoder(data: bytes) -> None:
    """ATP-FRAME-006, ATP-FRAME-007, ATP-SESS-004: on stream 0 a bad ext or qos is a
    connection error, and the decoder processes nothing after it."""
    dec = FrameDecoder()
    dec.feed(data + raw_frame(sid=1, payload=b"after"))
    with pytest.raises(FrameDecodeError) as info:
        dec.next_frame()
    assert info.value.code == ErrorCode.EPROTO and info.value.connection_level
    with pytest.raises(FrameDecodeError):
        dec.next_frame()
