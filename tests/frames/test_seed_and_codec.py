"""The seed frames, the header layout and the binary codec (ATP-FRAME, ATP-JSON, ATP-EXT).

The three example frames of the seed (shared/seeds/002, section 3; in the repository as
conformance/vectors/seed.json) are normative: they MUST decode, to exactly these fields.
"""

from __future__ import annotations

import json
import struct

import cbor2
import pytest

from atp_proto.frames import (
    DEFAULT_LIMITS,
    HEADER_SIZE,
    BudgetWindow,
    ErrorCode,
    Flags,
    Frame,
    FrameDecodeError,
    FrameDecoder,
    FrameType,
    JsonMapping,
    Limits,
    LocalProtocolError,
    QoS,
    decode_ext,
    decode_frame,
    decode_frames,
    decode_payload,
    encode_frame,
    encode_frames,
    encoded_length,
    frame_from_json,
    frame_to_json,
)
from conformance.vectors import seed_frames

#: every test here runs on the C accelerator and on the pure-Python path (issue 10 item 6)
pytestmark = pytest.mark.usefixtures("cbor_path")

#: the seed's example frames, verbatim, from the one in-repo copy (conformance/vectors/)
SEED_SYN, SEED_PARTIAL, SEED_FINAL = (seed_frames()[n] for n in ("syn", "partial", "final"))


def test_seed_syn_decodes_to_the_model() -> None:
    """ATP-JSON-001, ATP-JSON-002: the seed SYN decodes; string ids become stream 1 of this connection."""
    m = JsonMapping()
    f = m.decode(SEED_SYN)
    assert f is not None
    assert (f.version, f.type, f.flags) == (1, FrameType.DATA, Flags.SYN)
    assert (f.stream_id, f.msg_seq, f.frag_seq, f.qos, f.ttl) == (1, 1, 0, QoS.GOLD, 8)
    assert f.budget_window == BudgetWindow(4, 50000, 1000000)
    assert f.ext["meta"] == {
        "task_type": "qa",
        "tool_permissions": [],
        "data_scope": ["no_secrets"],
    }
    assert f.ext["session_id"] == "s1"
    assert f.payload_obj() == {"type": "agent.result.partial", "content": {"prompt": "hello"}}
    assert m.session_id == "s1"


def test_seed_partial_and_final_decode() -> None:
    """ATP-JSON-001."""
    m = JsonMapping()
    m.decode(SEED_SYN)
    p = m.decode(SEED_PARTIAL)
    fin = m.decode(SEED_FINAL)
    assert p is not None and fin is not None
    assert (p.stream_id, p.msg_seq, p.flags) == (1, 2, Flags.MORE)
    assert p.payload_obj()["confidence"] == 0.62
    assert (fin.stream_id, fin.msg_seq, fin.frag_seq, fin.flags) == (1, 3, 0, Flags.FIN)
    assert fin.ext["telemetry"] == {"tokens": 48210, "usd": 910000, "latency_ms": 1320}


@pytest.mark.parametrize("seed", [SEED_SYN, SEED_PARTIAL, SEED_FINAL])
def test_seed_json_binary_json_round_trip(seed: str) -> None:
    """ATP-JSON-001, ATP-JSON-004, ATP-JSON-007: JSON -> frame -> binary -> frame -> JSON keeps every field."""
    m = JsonMapping()
    f = m.decode(seed)
    assert f is not None
    back = decode_frames(encode_frame(f))[0]
    assert back == f
    again = json.loads(m.encode(back))
    original = json.loads(seed)
    original.setdefault("frag_seq", 0)
    assert again == original  # replies carry the client's alias and session id


def test_header_layout_byte_offsets() -> None:
    """ATP-FRAME-001: big-endian fields at fixed offsets; ext then payload follow."""
    ext = {"credit": 5}
    f = Frame(
        FrameType.WINDOW_UPDATE,
        0x06,
        0x01020304,
        0x0A0B0C0D,
        0x0E0F,
        QoS.BRONZE,
        0x1112,
        ext,
        b"PAY",
    )
    b = encode_frame(f)
    ext_bytes = cbor2.dumps(ext)
    assert len(b) == HEADER_SIZE + len(ext_bytes) + 3 == encoded_length(f)
    assert b[0] == 1  # version
    assert b[1] == 0x01  # type
    assert b[2] == 0x06  # flags
    assert b[3] == 3  # qos bronze
    assert b[4:8] == bytes([1, 2, 3, 4])
    assert b[8:12] == bytes([0x0A, 0x0B, 0x0C, 0x0D])
    assert b[12:14] == bytes([0x0E, 0x0F])
    assert b[14:16] == bytes([0x11, 0x12])
    assert struct.unpack("!I", b[16:20])[0] == len(ext_bytes)
    assert struct.unpack("!I", b[20:24])[0] == 3
    assert b[24 : 24 + len(ext_bytes)] == ext_bytes
    assert b[-3:] == b"PAY"


def test_payload_is_not_copied() -> None:
    """ATP-FRAME-008: Decoding hands out a view into the fed bytes: no copy of a 64 KiB payload."""
    data = encode_frame(Frame.data(1, 1, raw=b"z" * 65536))
    f = decode_frames(data)[0]
    assert isinstance(f.payload, memoryview)
    assert f.payload.obj is data
    assert f.payload.readonly
    assert len(f.payload) == 65536


def test_many_frames_per_buffer_and_split_frames() -> None:
    """ATP-FRAME-009."""
    frames = [Frame.data(1, i, {"n": i}, flags=Flags.MORE) for i in range(1, 50)]
    data = encode_frames(frames)
    assert decode_frames(data) == frames
    # one byte at a time
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got.extend(dec)
    assert got == frames
    assert dec.buffered == 0


def test_truncated_message_is_connection_error() -> None:
    """ATP-WS-001."""
    data = encode_frame(Frame.data(1, 1, {"x": 1}))
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(data[:-1])
    assert err.value.connection_level and err.value.code == ErrorCode.EPROTO
    with pytest.raises(FrameDecodeError):
        decode_frame(data[:10])


def test_bad_version_breaks_the_decoder() -> None:
    """ATP-FRAME-002, ATP-FRAME-003."""
    data = bytearray(encode_frame(Frame.data(1, 1)))
    data[0] = 2
    dec = FrameDecoder()
    dec.feed(bytes(data))
    with pytest.raises(FrameDecodeError) as err:
        dec.next_frame()
    assert err.value.connection_level and "version 2" in err.value.message
    with pytest.raises(FrameDecodeError):
        dec.feed(b"more")  # stays broken


def test_reserved_stream_id_bit_is_connection_error() -> None:
    """ATP-FRAME-004."""
    data = bytearray(encode_frame(Frame.data(1, 1)))
    data[4] |= 0x80
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(bytes(data))
    assert err.value.connection_level


def test_oversized_frame_is_skipped_stream_level() -> None:
    """ATP-LIMIT-001: an oversized body resets its stream; the body is skipped unbuffered."""
    limits = Limits(max_frame_size=1024)
    big = encode_frame(Frame.data(5, 1, raw=b"a" * 5000))
    after = Frame.data(7, 1, {"ok": True})
    data = big + encode_frame(after)
    dec = FrameDecoder(limits)
    got: list[Frame] = []
    errors: list[FrameDecodeError] = []
    for i in range(0, len(data), 100):
        dec.feed(data[i : i + 100])
        while True:
            try:
                f = dec.next_frame()
            except FrameDecodeError as e:
                errors.append(e)
                continue
            if f is None:
                break
            got.append(f)
        assert dec.buffered <= HEADER_SIZE + 5000
    assert [(e.stream_id, e.code) for e in errors] == [(5, ErrorCode.ETOOBIG)]
    assert got == [after]


def test_oversized_frame_on_stream_zero_is_connection_error() -> None:
    """ATP-LIMIT-001."""
    data = encode_frame(Frame(FrameType.DATA, Flags.HB, 0, payload=b"a" * 2000))
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(data, Limits(max_frame_size=1024))
    assert err.value.connection_level and err.value.code == ErrorCode.ETOOBIG


def test_oversized_ext() -> None:
    """ATP-LIMIT-001."""
    f = Frame.data(3, 1, ext={"meta": {"x": "y" * 200}})
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(encode_frame(f), Limits(max_ext_size=100))
    assert (err.value.stream_id, err.value.code) == (3, ErrorCode.ETOOBIG)


def _raw(ext: bytes, sid: int = 1) -> bytes:
    return struct.pack("!BBBBIIHHII", 1, 0, 0, 0, sid, 1, 0, 0, len(ext), 0) + ext


@pytest.mark.parametrize(
    ("ext", "why"),
    [
        (cbor2.dumps([1, 2]), "must be a CBOR map"),
        (cbor2.dumps({1: 2}), "not a text string"),
        (cbor2.dumps({"a": 1}) + b"\x00", "trailing"),
        (b"\xa2\x61a\x01\x61a\x02", "Duplicate"),
        (cbor2.dumps({"t": cbor2.CBORTag(1, 0)}), "tags are not allowed"),
        (b"\xbf\x61a\x01\xff", "indefinite"),
        (b"\xa1\x61a" + b"\x81" * 40 + b"\x00", "depth"),
        (b"\xff\xff", "bad ext"),
    ],
)
def test_ext_must_be_a_plain_map(ext: bytes, why: str) -> None:
    """ATP-FRAME-005, ATP-FRAME-006: ext is a definite-length CBOR map with text keys, JSON-model values, no
    tags, nothing after it, nested at most max_depth; a bad one resets its stream."""
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(_raw(ext))
    assert err.value.stream_id == 1 and err.value.code == ErrorCode.EPROTO
    assert why.lower() in err.value.message.lower()


def test_bad_ext_on_stream_zero_is_connection_level() -> None:
    """ATP-FRAME-006."""
    with pytest.raises(FrameDecodeError) as err:
        decode_ext(b"\x01", 0)
    assert err.value.connection_level


def test_unknown_type_and_flags_are_kept_not_rejected() -> None:
    """ATP-FRAME-010, ATP-FLAG-001: unknown frame types and flag bits decode (the connection ignores them)."""
    raw = struct.pack("!BBBBIIHHII", 1, 0x7E, 0x80 | 0x04, 0, 1, 1, 0, 0, 0, 0)
    f = decode_frames(raw)[0]
    assert f.type == 0x7E and f.flags & 0x80
    assert f.has(Flags.MORE)


def test_unknown_qos_is_stream_error() -> None:
    """ATP-FRAME-007."""
    raw = struct.pack("!BBBBIIHHII", 1, 0, 0, 9, 1, 1, 0, 0, 0, 0)
    with pytest.raises(FrameDecodeError) as err:
        decode_frames(raw)
    assert err.value.stream_id == 1 and "qos" in err.value.message


def test_frame_constructor_validates_ranges() -> None:
    for kwargs in ({"stream_id": 2**31}, {"msg_seq": -1}, {"frag_seq": 70000}, {"ttl": 2**16}):
        with pytest.raises(LocalProtocolError):
            Frame(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Frame(payload="text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_frame(Frame(ext={"x": object()}))


def test_payload_decoding() -> None:
    assert decode_payload(b"") is None
    assert Frame.data(1, 1, {"a": [1, 2]}).payload_obj() == {"a": [1, 2]}
    with pytest.raises(FrameDecodeError):
        decode_payload(b"\xff", 3)
    with pytest.raises(FrameDecodeError):
        decode_payload(cbor2.dumps(1) + b"\x01", 3)


def test_json_mapping_details() -> None:
    """ATP-JSON-004, ATP-JSON-005."""
    m = JsonMapping()
    f = m.decode(
        '{"stream_id": 9, "msg_seq": 1, "flags": ["SYN", "NEWFLAG"], "payload_b64": "AAEC"}'
    )
    assert f is not None and f.stream_id == 9 and f.flags == Flags.SYN
    assert bytes(f.payload) == b"\x00\x01\x02"
    assert json.loads(m.encode(f))["payload_b64"] == "AAEC"  # not CBOR: stays base64
    assert m.decode('{"type": "SOME_FUTURE_CONTROL"}') is None  # ignored
    w = m.decode('{"type": "WINDOW_UPDATE", "stream_id": 9, "credit": 100}')
    assert w is not None and w.type == FrameType.WINDOW_UPDATE and w.ext["credit"] == 100
    e = json.loads(frame_to_json(Frame.error(9, ErrorCode.EBUDGET, "over", 250)))
    assert e["type"] == "ERROR" and e["flags"] == ["RST"]
    assert e["error"] == {"code": "EBUDGET", "message": "over", "retry_after_ms": 250}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[1]", "object"),
        ("{bad", "JSON"),
        ('{"v": 2}', "version"),
        ('{"stream_id": true}', "stream_id"),
        ('{"stream_id": ""}', "stream_id"),
        ('{"stream_id": 1, "flags": "SYN"}', "flags"),
        ('{"stream_id": 1, "qos": "platinum"}', "qos"),
        ('{"stream_id": 1, "msg_seq": -1}', "msg_seq"),
        ('{"stream_id": 1, "payload": 1, "payload_b64": "AA=="}', "not both"),
        ('{"stream_id": 1, "payload_b64": "!!"}', "base64"),
        ("[" * 100000 + "]" * 100000, "deep"),
    ],
)
def test_json_mapping_rejects(text: str, where: str) -> None:
    """ATP-JSON-006."""
    with pytest.raises(FrameDecodeError) as err:
        JsonMapping().decode(text)
    assert where.lower() in err.value.message.lower()


def test_json_text_size_limit() -> None:
    """ATP-LIMIT-001."""
    with pytest.raises(FrameDecodeError) as err:
        JsonMapping(Limits(max_text_size=10)).decode('{"stream_id": 1, "payload": "xxxxxxxx"}')
    assert err.value.code == ErrorCode.ETOOBIG


def test_alias_reuse_and_retirement() -> None:
    """ATP-JSON-002, ATP-JSON-003."""
    m = JsonMapping()
    a = m.decode('{"stream_id": "st1", "msg_seq": 1, "flags": ["SYN"]}')
    assert a is not None and a.stream_id == 1
    m.forget(1)
    late = m.decode('{"stream_id": "st1", "msg_seq": 2}')
    assert late is not None and late.stream_id == 1  # the closed stream: discarded upstream
    b = m.decode('{"stream_id": "st1", "msg_seq": 1, "flags": ["SYN"]}')
    assert b is not None and b.stream_id == 2  # a new stream under the same alias
    assert m.alias_of(2) == "st1"


def test_default_limits_are_the_spec_defaults() -> None:
    assert DEFAULT_LIMITS.max_frame_size == 1 << 20
    assert DEFAULT_LIMITS.initial_window == 256 << 10
    assert DEFAULT_LIMITS.max_streams == 100
    with pytest.raises(ValueError):
        Limits(initial_window=0)
    with pytest.raises(ValueError):
        Limits(max_streams=-1)


def test_frame_from_json_helper() -> None:
    f = frame_from_json(SEED_PARTIAL)
    assert f is not None and f.msg_seq == 2
