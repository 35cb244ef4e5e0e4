"""The JSON text mapping (spec §13.3-§13.4): the seed frames, aliases, payloads."""

from __future__ import annotations

import base64
import json

import cbor2
import pytest

from atp_proto.frames import (
    BudgetWindow,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    FrameDecodeError,
    FrameType,
    JsonMapping,
    Limits,
    MessageReceived,
    QoS,
    StreamOpened,
    StreamReset,
    encode_frame,
    frame_from_json,
    frame_to_json,
)
from atp_proto.frames._json import _RETIRED_ALIASES

from .helpers import SEED_FINAL, SEED_PARTIAL, SEED_SYN, ConnectionPair, of, one, text_wire

SYN_PAYLOAD = {"type": "agent.result.partial", "content": {"prompt": "hello"}}
PARTIAL_PAYLOAD = {
    "type": "agent.result.partial",
    "content": {"chunk": 0, "adapter": "persona_adapter"},
    "confidence": 0.62,
}
FINAL_PAYLOAD = {"type": "agent.result.final", "content": {"ok": True, "answer": "..."}}


# -- the seed frames (ATP-JSON-001) -------------------------------------------------------


def test_seed_syn_decodes_to_the_frame_it_describes() -> None:
    """ATP-JSON-001: the SYN of §13.4, field by field, and its 204-byte binary form."""
    jm = JsonMapping()
    f = jm.decode(SEED_SYN)
    assert f is not None
    assert f.version == 1
    assert f.type is FrameType.DATA
    assert f.flags == Flags.SYN
    assert f.stream_id == 1
    assert f.msg_seq == 1 and f.frag_seq == 0
    assert f.qos is QoS.GOLD
    assert f.ttl == 8
    assert dict(f.ext) == {
        "session_id": "s1",
        "window": {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000},
        "meta": {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]},
    }
    assert f.budget_window == BudgetWindow(4, 50000, 1000000)
    assert f.payload == cbor2.dumps(SYN_PAYLOAD)
    assert f.payload_obj() == SYN_PAYLOAD
    assert jm.session_id == "s1"
    assert len(f.payload) == 49 and len(encode_frame(f)) == 204  # 24 + 131 + 49


def test_seed_partial_and_final_decode() -> None:
    """ATP-JSON-001: PARTIAL (MORE, confidence 0.62) and FINAL (FIN, telemetry)."""
    jm = JsonMapping()
    jm.decode(SEED_SYN)
    partial = jm.decode(SEED_PARTIAL)
    assert partial is not None
    assert (partial.type, partial.flags, partial.stream_id) == (FrameType.DATA, Flags.MORE, 1)
    assert (partial.msg_seq, partial.frag_seq, partial.qos, partial.ttl) == (
        2,
        0,
        QoS.UNSPECIFIED,
        0,
    )
    assert dict(partial.ext) == {"session_id": "s1"}
    assert partial.payload_obj() == PARTIAL_PAYLOAD
    final = jm.decode(SEED_FINAL)
    assert final is not None
    assert (final.type, final.flags, final.stream_id) == (FrameType.DATA, Flags.FIN, 1)
    assert (final.msg_seq, final.frag_seq) == (3, 0)  # frag_seq defaults to 0
    assert dict(final.ext) == {
        "session_id": "s1",
        "telemetry": {"tokens": 48210, "usd": 910000, "latency_ms": 1320},
    }
    assert final.payload_obj() == FINAL_PAYLOAD


@pytest.mark.parametrize(
    "seed", [SEED_SYN, SEED_PARTIAL, SEED_FINAL], ids=["syn", "partial", "final"]
)
def test_seed_frames_re_encode_with_the_same_keys_and_values(seed: str) -> None:
    """ATP-JSON-001, ATP-JSON-002: re-encoding gives back every key and value (alias
    included); the only key added is a default (frag_seq 0)."""
    jm = JsonMapping()
    if seed is not SEED_SYN:
        jm.decode(SEED_SYN)  # the alias "st1" is known
    frame = jm.decode(seed)
    assert frame is not None
    original = json.loads(seed)
    again = json.loads(jm.encode(frame))
    for key, value in original.items():
        assert again[key] == value, key
    assert set(again) - set(original) <= {"frag_seq"}
    assert again.get("frag_seq", 0) == 0
    # and the binary form decodes back to the same frame
    from atp_proto.frames import decode_frames

    (back,) = decode_frames(encode_frame(frame))
    assert back.replace(payload=b"") == frame.replace(payload=b"")
    assert bytes(back.payload) == frame.payload


def test_seed_exchange_between_a_browser_and_a_router() -> None:
    """ATP-JSON-001, ATP-WS-004, ATP-JSON-007, ATP-SEQ-003, ATP-FLOW-007: a text SYN gets
    text replies with the alias and session_id, msg_seq 2 and 3."""
    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert opened.encoding is Encoding.JSON and opened.qos is QoS.GOLD and opened.ttl == 8
    assert opened.window == BudgetWindow(4, 50000, 1000000)
    assert opened.meta == {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]}
    assert cbor2.loads(opened.payload) == SYN_PAYLOAD
    assert p.router.stream_encoding(opened.stream_id) is Encoding.JSON
    p.router.send_message(opened.stream_id, cbor2.dumps(PARTIAL_PAYLOAD), more=True)
    p.router.send_message(
        opened.stream_id,
        cbor2.dumps(FINAL_PAYLOAD),
        end_stream=True,
        ext={"telemetry": {"tokens": 48210, "usd": 910000, "latency_ms": 1320}},
    )
    partial, final = (json.loads(t) for t in text_wire(p.router))
    assert partial.pop("stream_num") == opened.stream_id  # ATP-JSON-016: the first reply
    assert partial == json.loads(SEED_PARTIAL)
    assert {k: v for k, v in final.items() if k != "frag_seq"} == json.loads(SEED_FINAL)


# -- aliases (ATP-JSON-002, ATP-JSON-003) ----------------------------------------------------


def test_alias_reuse_after_close_opens_a_new_stream() -> None:
    """ATP-JSON-003: a browser reusing "st1" for each task gets a new stream each time."""
    p = ConnectionPair()
    ids = []
    for round_ in range(3):
        opened = one(p.router.receive_text(SEED_SYN, float(round_)), StreamOpened)
        ids.append(opened.stream_id)
        p.router.send_message(opened.stream_id, cbor2.dumps(FINAL_PAYLOAD), end_stream=True)
        (final,) = (json.loads(t) for t in text_wire(p.router))
        assert final["stream_id"] == "st1" and final["msg_seq"] == 2
        assert p.router.open_streams == 0
    assert ids == [1, 2, 3]


def test_alias_of_an_open_stream_refuses_a_second_syn() -> None:
    """ATP-STREAM-004: a SYN on the alias of an open stream is EPROTO on that stream."""
    p = ConnectionPair()
    one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    reset = one(p.router.receive_text(SEED_SYN, 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 1
    (err,) = (json.loads(t) for t in text_wire(p.router))
    assert err["stream_id"] == "st1" and err["type"] == "ERROR" and err["flags"] == ["RST"]
    assert err["error"]["code"] == "EPROTO"


def test_late_frames_on_a_retired_alias_are_discarded() -> None:
    """ATP-FLAG-004: a frame for an alias whose stream closed is dropped silently."""
    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    p.router.send_error(opened.stream_id, ErrorCode.EAGENTDOWN, "no adapter", 500)
    text_wire(p.router)
    assert p.router.receive_text(SEED_PARTIAL, 0.0) == []
    assert not p.router.has_data_to_send()


def test_aliases_do_not_collide_with_numeric_ids() -> None:
    jm = JsonMapping()
    assert jm.decode('{"stream_id": 5, "flags": ["SYN"]}').stream_id == 5  # type: ignore[union-attr]
    assert jm.decode('{"stream_id": "a", "flags": ["SYN"]}').stream_id == 6  # type: ignore[union-attr]
    assert jm.decode('{"stream_id": "b", "flags": ["SYN"]}').stream_id == 7  # type: ignore[union-attr]
    assert jm.decode('{"stream_id": "a"}').stream_id == 6  # type: ignore[union-attr]
    assert jm.alias_of(6) == "a" and jm.alias_of(99) == 99
    jm.note_stream_id(3)  # lower: no effect
    assert jm.decode('{"stream_id": "c", "flags": ["SYN"]}').stream_id == 8  # type: ignore[union-attr]
    jm.forget(6)
    jm.forget(6)  # twice: harmless
    jm.forget(12345)  # unknown: harmless
    assert jm.decode('{"stream_id": "a"}').stream_id == 6  # type: ignore[union-attr]  # retired, not SYN
    assert jm.decode('{"stream_id": "a", "flags": ["SYN"]}').stream_id == 9  # type: ignore[union-attr]
    assert jm.alias_of(9) == "a" and jm.alias_of(6) == 6
    assert jm.decode('{"stream_id": "zz"}').stream_id == 10  # type: ignore[union-attr]  # unknown: new id


def test_retired_aliases_are_bounded() -> None:
    """ATP-LIMIT-002: the retired-alias table is an LRU, not a leak."""
    jm = JsonMapping()
    for i in range(_RETIRED_ALIASES + 10):
        sid = jm.decode(json.dumps({"stream_id": f"a{i}", "flags": ["SYN"]}))
        assert sid is not None
        jm.forget(sid.stream_id)
    assert len(jm._retired) == _RETIRED_ALIASES
    assert "a0" not in jm._retired and f"a{_RETIRED_ALIASES + 9}" in jm._retired


def test_alias_ids_exhausted() -> None:
    jm = JsonMapping()
    jm.note_stream_id(0x7FFF_FFFF)
    with pytest.raises(FrameDecodeError, match="exhausted") as info:
        jm.decode('{"stream_id": "x", "flags": ["SYN"]}')
    assert info.value.connection_level


# -- payloads (ATP-JSON-004) ----------------------------------------------------------------


def test_payload_b64_carries_bytes_that_are_not_json() -> None:
    """ATP-JSON-004: non-CBOR payloads, byte strings and CBOR null travel as payload_b64."""
    for raw in (
        b"\xff\x00not cbor",
        cbor2.dumps(b"bytes"),
        cbor2.dumps(None),
        cbor2.dumps({"b": b"x"}),
    ):
        obj = json.loads(frame_to_json(Frame.data(1, 1, raw=raw)))
        assert "payload" not in obj
        assert base64.b64decode(obj["payload_b64"]) == raw
        back = frame_from_json(json.dumps(obj))
        assert back is not None and back.payload == raw


def test_payload_json_becomes_cbor() -> None:
    f = frame_from_json('{"stream_id": 1, "payload": [1, "a", {"b": null}]}')
    assert f is not None and cbor2.loads(f.payload) == [1, "a", {"b": None}]
    assert frame_from_json('{"stream_id": 1, "payload": null}').payload == b""  # type: ignore[union-attr]
    assert frame_from_json('{"stream_id": 1}').payload == b""  # type: ignore[union-attr]
    assert "payload" not in json.loads(frame_to_json(Frame.data(1, 1)))


def test_payload_and_payload_b64_together_is_refused() -> None:
    """ATP-JSON-004: a frame MUST NOT have both."""
    with pytest.raises(FrameDecodeError, match="not both") as info:
        frame_from_json('{"stream_id": 4, "payload": 1, "payload_b64": "AA=="}')
    assert info.value.stream_id == 4


@pytest.mark.parametrize("b64", ['"*notbase64*"', "12", '"AAA"'])
def test_bad_payload_b64(b64: str) -> None:
    with pytest.raises(FrameDecodeError, match="payload_b64") as info:
        frame_from_json('{"stream_id": 4, "payload_b64": ' + b64 + "}")
    assert info.value.stream_id == 4 and info.value.code == ErrorCode.EPROTO


# -- ignoring unknowns (ATP-JSON-005, ATP-EXT-001) -----------------------------------------------


def test_unknown_type_name_is_ignored() -> None:
    """ATP-JSON-005: an unknown type name decodes to None; a connection ignores it."""
    assert frame_from_json('{"type": "ROUTE_UPDATE", "stream_id": 1}') is None
    p = ConnectionPair()
    assert p.router.receive_text('{"type": "ROUTE_UPDATE", "stream_id": 1}', 0.0) == []
    assert not p.router.closed and not p.router.has_data_to_send()


def test_unknown_flag_names_and_ext_keys_are_ignored_or_kept() -> None:
    """ATP-JSON-005, ATP-EXT-001: unknown flag names are dropped, unknown keys kept as ext."""
    f = frame_from_json(
        '{"stream_id": 2, "flags": ["SYN", "PRIORITY", "FIN"], "x-acme": {"a": [1]}}'
    )
    assert f is not None and f.flags == Flags.SYN | Flags.FIN
    assert f.ext == {"x-acme": {"a": [1]}}
    obj = json.loads(frame_to_json(f))
    assert obj["x-acme"] == {"a": [1]} and obj["flags"] == ["SYN", "FIN"]


def test_numeric_type_and_all_type_names() -> None:
    for t in FrameType:
        f = frame_from_json(json.dumps({"type": t.name, "stream_id": 0}))
        assert f is not None and f.type is t
    # ATP-JSON-009: an unknown number is ignored like an unknown name, even with bad fields
    assert frame_from_json('{"type": 127, "stream_id": 1}') is None
    assert frame_from_json('{"type": 127, "stream_id": -1, "payload": "\\ud800"}') is None
    assert json.loads(frame_to_json(Frame(127, stream_id=1)))["type"] == 127
    assert json.loads(frame_to_json(Frame(FrameType.CAPABILITIES)))["type"] == "CAPABILITIES"
    assert "type" not in json.loads(frame_to_json(Frame.data(1, 1)))


def test_encode_unknown_qos_and_bytes_in_ext() -> None:
    f = Frame(stream_id=1, qos=7, ext={"blob": b"\x00\x01", "l": [b"\x02"], "m": {"b": b"\x03"}})
    obj = json.loads(frame_to_json(f, indent=1))
    assert obj["qos"] == 7
    assert obj["blob"] == "AAE=" and obj["l"] == ["Ag=="] and obj["m"] == {"b": "Aw=="}


def test_leading_ext_keys_come_before_payload() -> None:
    """The seed's key order: window and meta before payload, telemetry after."""
    f = Frame.data(1, 1, {"a": 1}, ext={"telemetry": {}, "meta": {}, "window": {}})
    keys = list(json.loads(frame_to_json(f)))
    assert (
        keys.index("window") < keys.index("meta") < keys.index("payload") < keys.index("telemetry")
    )


# -- malformed text (ATP-JSON-006) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stream_id"),
    [
        ("not json", 0),
        ("[1, 2]", 0),
        ('"s"', 0),
        ('{"v": 2}', 0),
        ('{"v": "1"}', 0),
        ('{"stream_id": -1}', 0),
        ('{"stream_id": 2147483648}', 0),
        ('{"stream_id": ""}', 0),
        ('{"stream_id": 1.5}', 0),
        ('{"stream_id": true}', 0),
        ('{"stream_id": "%s"}' % ("x" * 129), 0),
        ('{"type": -1}', 0),
        ('{"type": [1]}', 0),
        ('{"flags": "SYN"}', 0),
        ('{"flags": [1]}', 0),
        # issue 9 item 12: bad flags / type on an identified stream are stream errors
        ('{"stream_id": 3, "flags": "SYN"}', 3),
        ('{"stream_id": 3, "flags": [1]}', 3),
        ('{"stream_id": 3, "type": 1.5}', 3),
        ('{"stream_id": 3, "type": true}', 3),
        ('{"stream_id": 3, "type": [1]}', 3),
        # duplicate keys (last would win): on the stream, unless they hide which stream
        ('{"stream_id": 3, "msg_seq": 1, "msg_seq": 2}', 3),
        ('{"stream_id": 3, "meta": {"a": 1, "a": 2}}', 3),
        ('{"stream_id": 3, "stream_id": 4}', 0),
        ('{"stream_id": 3, "flags": [], "flags": ["SYN"]}', 0),
        # issue 9 item 1: lone surrogates are no Unicode text, anywhere
        ('{"stream_id": 3, "payload": {"prompt": "\\ud800"}}', 3),
        ('{"stream_id": 3, "meta": {"task_type": "\\udfff"}}', 3),
        ('{"stream_id": 3, "session_id": "\\ud800"}', 3),
        ('{"stream_id": 3, "x-\\ud800": 1}', 3),
        ('{"stream_id": 3, "flags": ["\\ud800"]}', 3),
        ('{"stream_id": "st\\ud800", "flags": ["SYN"]}', 0),
        # issue 9 item 12: NaN / infinities are not JSON numbers, nor CBOR-64 bignums
        ('{"stream_id": 3, "payload": NaN}', 0),
        ('{"stream_id": 3, "x": -Infinity}', 0),
        ('{"stream_id": 3, "x": 1e999}', 3),
        ('{"stream_id": 3, "payload": 18446744073709551616}', 3),
        ('{"stream_id": 3, "qos": "platinum"}', 3),
        ('{"stream_id": 3, "qos": 1}', 3),
        ('{"stream_id": 3, "msg_seq": 4294967296}', 3),
        ('{"stream_id": 3, "msg_seq": true}', 3),
        ('{"stream_id": 3, "frag_seq": 65536}', 3),
        ('{"stream_id": 3, "ttl": -1}', 3),
        ('{"stream_id": 3, "x": %s}' % ("[" * 20 + "]" * 20), 3),
        ("[" * 100_000 + "]" * 100_000, 0),
        (b"\xff\xfe", 0),
    ],
)
def test_malformed_text_frames(text: str | bytes, stream_id: int) -> None:
    """ATP-JSON-006: EPROTO, on the stream when it can be identified, else connection."""
    with pytest.raises(FrameDecodeError) as info:
        JsonMapping().decode(text)
    assert info.value.code == ErrorCode.EPROTO
    assert info.value.stream_id == stream_id


def test_text_over_the_size_limit_is_too_big() -> None:
    """Limits: a text message over max_text_size is ETOOBIG, connection-level."""
    limits = Limits(max_text_size=100)
    with pytest.raises(FrameDecodeError) as info:
        JsonMapping(limits).decode(json.dumps({"payload": "x" * 200}))
    assert info.value.code == ErrorCode.ETOOBIG and info.value.connection_level
    p = ConnectionPair(router_limits=limits)
    closed = one(p.router.receive_text(json.dumps({"payload": "x" * 200}), 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.ETOOBIG
    (err,) = (json.loads(t) for t in text_wire(p.router))
    assert err["stream_id"] == 0 and err["error"]["code"] == "ETOOBIG"


def test_malformed_text_at_a_connection() -> None:
    """ATP-JSON-006: a stream-level text error resets the stream (session survives); an
    unidentifiable one closes the connection."""
    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    bad = '{"stream_id": "st1", "msg_seq": 2, "qos": "platinum"}'
    reset = one(p.router.receive_text(bad, 0.0), StreamReset)
    assert reset.stream_id == opened.stream_id and reset.code == ErrorCode.EPROTO
    (err,) = (json.loads(t) for t in text_wire(p.router))
    assert err["stream_id"] == "st1"
    assert not p.router.closed
    closed = one(p.router.receive_text("[]", 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO


def test_bad_text_syn_frees_its_alias() -> None:
    """ATP-JSON-003: a refused SYN (bad field) does not burn the alias for later."""
    p = ConnectionPair()
    bad = json.loads(SEED_SYN)
    bad["qos"] = "platinum"
    reset = one(p.router.receive_text(json.dumps(bad), 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO
    (err,) = (json.loads(t) for t in text_wire(p.router))
    assert err["stream_id"] == "st1"
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert opened.stream_id > reset.stream_id


def test_text_data_on_an_unknown_alias() -> None:
    """ATP-STREAM-003: DATA naming an alias never opened is EPROTO on that stream."""
    p = ConnectionPair()
    reset = one(p.router.receive_text('{"stream_id": "ghost", "msg_seq": 1}', 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO
    (err,) = (json.loads(t) for t in text_wire(p.router))
    assert err["error"]["code"] == "EPROTO" and err["flags"] == ["RST"]
    assert err["stream_id"] not in (0, None)  # a stream error, not a connection error
    assert not p.router.closed and p.router.open_streams == 0


def test_text_client_side_receives_text_replies() -> None:
    """A text client: open_stream(encoding=JSON), replies decoded as messages."""
    p = ConnectionPair()
    sid = p.client.open_stream(cbor2.dumps("q"), encoding=Encoding.JSON, qos=QoS.BRONZE, now=None)
    (syn,) = p.client.data_to_send()
    assert isinstance(syn, str) and json.loads(syn)["qos"] == "bronze"
    opened = one(p.router.receive_text(syn, 0.0), StreamOpened)
    p.router.send_message(opened.stream_id, cbor2.dumps("a"), end_stream=True)
    events = p.to_client()
    msg = one(events, MessageReceived)
    assert msg.stream_id == sid and msg.end_stream and cbor2.loads(msg.payload) == "a"
    assert of(events, StreamReset) == []


def test_text_alias_after_a_binary_stream_does_not_hijack_it() -> None:
    """ATP-JSON-002, ATP-ERR-005: an alias gets the next *unused* id; a text SYN after a
    binary one opens a new stream and leaves the binary stream alone."""
    p = ConnectionPair()
    sid = p.open()
    one(p.to_router(), StreamOpened)
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert opened.stream_id > sid
    assert p.router.stream_state(sid).value == "open"
    assert not p.router.has_data_to_send()  # no ERROR for anyone
    p.client.send_message(sid, b"still fine")
    assert one(p.to_router(), MessageReceived).stream_id == sid


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_payload_that_json_cannot_carry_goes_as_b64(value: object) -> None:
    """ATP-JSON-004: NaN and infinities are not JSON (RFC 8259): payload_b64 carries them,
    so the text stays parseable by JSON.parse."""
    raw = cbor2.dumps(value)
    text = frame_to_json(Frame.data(1, 1, raw=raw))
    obj = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert base64.b64decode(obj["payload_b64"]) == raw
