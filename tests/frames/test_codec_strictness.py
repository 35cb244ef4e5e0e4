"""Issue 9, items 1, 6, 11, 12, 14 and 15, sans-IO: the codec's strictness, the one
per-frame validator, the text credit cost and the alias's numeric id; and the property
that no exception escapes the core, for binary bytes and JSON text, in both roles.

The same behaviour through a real router process is in
tests/router/test_e2e_codec_strictness.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import (
    HEADER,
    MAX_WINDOW,
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Event,
    Flags,
    Frame,
    FrameDecodeError,
    FrameDecoder,
    FrameType,
    JsonMapping,
    Limits,
    LocalProtocolError,
    MessageReceived,
    RemoteProtocolError,
    Role,
    StreamOpened,
    StreamReset,
    UnknownFrameReceived,
    decode_ext,
    encode_frame,
    validate_frame,
)

from .helpers import CI, ConnectionPair, of, one, text_wire

#: every test here runs on the C accelerator and on the pure-Python path (issue 10 item 6)
pytestmark = pytest.mark.usefixtures("cbor_path")

TASK = {"type": "agent.task", "content": {"prompt": "hi"}}


def _text_syn(alias: str | int, **extra: Any) -> str:
    obj: dict[str, Any] = {"stream_id": alias, "msg_seq": 1, "flags": ["SYN"], "payload": TASK}
    obj.update(extra)
    return json.dumps(obj)  # ensure_ascii: a lone surrogate travels as its escape


def _router_with_text_stream(alias: str = "st1") -> tuple[Connection, int]:
    router = Connection(Role.ROUTER, now=0.0)
    opened = one(router.receive_text(_text_syn(alias), 0.0), StreamOpened)
    router.data_to_send()
    return router, opened.stream_id


def _all_text_is_unicode(conn: Connection) -> list[dict[str, Any]]:
    """What ``conn`` queued: every text message must be sendable as UTF-8."""
    out = []
    for msg in conn.data_to_send():
        if isinstance(msg, str):
            msg.encode("utf-8")  # raises on a lone surrogate
            out.append(json.loads(msg))
    return out


# -- item 1: lone surrogates ----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"payload": {"type": "agent.task", "content": {"prompt": "\ud800"}}},
        {"meta": {"task_type": "\udfff"}},
        {"session_id": "\ud800x"},
        {"x-\ud800": 1},
    ],
    ids=["prompt", "meta", "session_id", "ext-key"],
)
def test_lone_surrogate_is_a_stream_error_and_spares_other_streams(extra: dict[str, Any]) -> None:
    """[ATP-JSON-017, ATP-JSON-006] EPROTO on the stream of the frame; the stream in flight
    is untouched and every reply is Unicode text (before: UnicodeEncodeError escaped)."""
    router, sid = _router_with_text_stream()
    events = router.receive_text(_text_syn("st2", **extra), 1.0)
    reset = one(events, StreamReset)
    assert reset.code == ErrorCode.EPROTO and not reset.by_peer and reset.stream_id != sid
    assert not of(events, ConnectionClosed) and not router.closed
    (err,) = _all_text_is_unicode(router)
    assert err["stream_id"] == "st2" and err["error"]["code"] == "EPROTO"
    router.send_message(sid, cbor2.dumps({"ok": 1}), end_stream=True)
    (fin,) = _all_text_is_unicode(router)
    assert fin["stream_id"] == "st1" and fin["flags"] == ["FIN"]


def test_lone_surrogate_in_an_alias_is_a_connection_error() -> None:
    """[ATP-JSON-017] No reply could name such an alias: a connection error, with ERROR."""
    router, _ = _router_with_text_stream()
    closed = one(router.receive_text(_text_syn("st\ud800"), 1.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO
    (err,) = _all_text_is_unicode(router)
    assert err["stream_id"] == 0 and err["error"]["code"] == "EPROTO"


def test_a_surrogate_pair_is_fine() -> None:
    """A pair (an astral character escaped as JSON.stringify does) is Unicode text."""
    router = Connection(Role.ROUTER, now=0.0)
    text = _text_syn("st1", payload={"content": {"prompt": "\U0001f600"}})
    assert "\\ud83d\\ude00" in text
    opened = one(router.receive_text(text, 0.0), StreamOpened)
    assert cbor2.loads(opened.payload) == {"content": {"prompt": "\U0001f600"}}


# -- item 6: unknown frame types ------------------------------------------------------------


@pytest.mark.parametrize("sid", [0, 1, 9])
def test_unknown_type_is_skipped_unread_on_any_stream(sid: int) -> None:
    """[ATP-FRAME-010, ATP-FRAME-005] Type 0x42 with an ext that is not CBOR, a qos of 9
    and every flag, on stream 0, on an open stream or on one never opened: ignored."""
    p = ConnectionPair()
    p.open()
    p.pump()
    junk = HEADER.pack(1, 0x42, 0xFF, 9, sid, 5, 5, 5, 3, 2) + b"\xff\x00\xfe" + b"ok"
    events = p.router.receive_message(junk + junk, 1.0)
    assert [type(e) for e in events] == [UnknownFrameReceived, UnknownFrameReceived]
    assert bytes(events[0].frame.payload) == b"ok" and not events[0].frame.ext  # type: ignore[attr-defined]
    assert not p.router.closed and not p.router.has_data_to_send()
    assert p.router.stream_state(1).value == "open"
    dec = FrameDecoder()
    dec.feed(junk)
    frame = dec.next_frame()
    assert frame is not None and frame.type == 0x42 and frame.qos == 9


def test_unknown_json_type_is_ignored_before_any_field_is_read() -> None:
    """[ATP-JSON-005, ATP-JSON-009] By name or number, whatever the other fields hold."""
    router, _ = _router_with_text_stream()
    for text in (
        '{"type": "PUSH_PROMISE", "stream_id": -5, "payload": "\\ud800"}',
        '{"type": 66, "stream_id": [], "flags": 3}',
    ):
        assert router.receive_text(text, 1.0) == []
    assert not router.closed and not router.has_data_to_send()


# -- item 11: ext keys that would shadow the JSON header ----------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "v",
        "type",
        "stream_id",
        "msg_seq",
        "frag_seq",
        "flags",
        "qos",
        "ttl",
        "payload",
        "payload_b64",
    ],
)
def test_reserved_ext_keys_are_refused_everywhere(key: str) -> None:
    """[ATP-JSON-015] Not sent (binary or text), not accepted (stream or connection error)."""
    ext = {key: "x", "meta": {}}
    frame = Frame(FrameType.DATA, 0, 1, ext=ext)
    with pytest.raises(LocalProtocolError):
        encode_frame(frame)
    with pytest.raises(LocalProtocolError):
        JsonMapping().to_obj(frame)
    body = cbor2.dumps(ext)
    with pytest.raises(FrameDecodeError) as info:
        decode_ext(body, 3)
    assert info.value.code == ErrorCode.EPROTO and info.value.stream_id == 3
    for sid in (1, 0):
        dec = FrameDecoder()
        dec.feed(HEADER.pack(1, 4, 0, 0, sid, 0, 0, 0, len(body), 0) + body)
        with pytest.raises(FrameDecodeError) as info:
            dec.next_frame()
        assert info.value.stream_id == sid


def test_issue_example_cannot_shadow_the_header() -> None:
    """The issue's frame: ext {"type":"x","payload":1,"v":9} is refused on its stream."""
    body = cbor2.dumps({"type": "x", "payload": 1, "v": 9})
    p = ConnectionPair()
    p.open()
    p.pump()
    msg = HEADER.pack(1, 0, 0, 0, 1, 2, 0, 0, len(body), 0) + body
    reset = one(p.router.receive_message(msg, 1.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and "reserved" in reset.message


# -- item 12: one validator -----------------------------------------------------------------

_OPEN = 1  # the stream the cases below use, opened first

VALIDATOR_CASES: list[tuple[str, Frame, str, int]] = [
    (
        "error-without-message",
        Frame(FrameType.ERROR, Flags.RST, _OPEN, ext={"error": {"code": "EX"}}),
        "EPROTO",
        _OPEN,
    ),
    (
        "error-message-not-text",
        Frame(FrameType.ERROR, 0, 0, ext={"error": {"code": "EX", "message": 1}}),
        "EPROTO",
        0,
    ),
    (
        "caps-without-versions",
        Frame(FrameType.CAPABILITIES, ext={"caps": {"initial_window": 9}}),
        "EPROTO",
        0,
    ),
    (
        "caps-empty-versions",
        Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": []}}),
        "EPROTO",
        0,
    ),
    (
        "caps-bool-version",
        Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": [True]}}),
        "EPROTO",
        0,
    ),
    (
        "caps-on-a-stream",
        Frame(FrameType.CAPABILITIES, 0, _OPEN, ext={"caps": {"versions": [1]}}),
        "EPROTO",
        _OPEN,
    ),
    ("data-stream-0-without-hb", Frame(FrameType.DATA, 0, 0), "EPROTO", 0),
    ("heartbeat-65-bytes", Frame(FrameType.DATA, Flags.HB, 0, payload=b"x" * 65), "ETOOBIG", 0),
    ("window-update-stream-0", Frame.window_update(0, credit=5), "EPROTO", 0),
    (
        "budget-update-stream-0",
        Frame(FrameType.BUDGET_UPDATE, 0, 0, ext={"usage": {}}),
        "EPROTO",
        0,
    ),
    ("credit-0", Frame.window_update(_OPEN, credit=0), "EPROTO", _OPEN),
    ("credit-text", Frame(FrameType.WINDOW_UPDATE, 0, _OPEN, ext={"credit": "5"}), "EPROTO", _OPEN),
    ("credit-over-2^31-1", Frame.window_update(_OPEN, credit=MAX_WINDOW + 1), "EPROTO", _OPEN),
    (
        "window-update-empty",
        Frame(FrameType.WINDOW_UPDATE, 0, _OPEN, ext={"x": 1}),
        "EPROTO",
        _OPEN,
    ),
    (
        "window-not-uint",
        Frame(FrameType.WINDOW_UPDATE, 0, _OPEN, ext={"window": {"max_tokens": -1}}),
        "EPROTO",
        _OPEN,
    ),
    (
        "session-id-not-text",
        Frame(FrameType.DATA, 0, _OPEN, 2, ext={"session_id": 7}),
        "EPROTO",
        _OPEN,
    ),
    (
        "session-id-129",
        Frame(FrameType.DATA, 0, _OPEN, 2, ext={"session_id": "s" * 129}),
        "EPROTO",
        _OPEN,
    ),
    (
        "session-id-on-stream-0",
        Frame(FrameType.DATA, Flags.HB, 0, ext={"session_id": ["s"]}),
        "EPROTO",
        0,
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "sid"), [c[1:] for c in VALIDATOR_CASES], ids=[c[0] for c in VALIDATOR_CASES]
)
def test_validate_frame_and_connection_agree(frame: Frame, code: str, sid: int) -> None:
    """[ATP-FRAME-023, ATP-FRAME-011, ATP-FRAME-012, ATP-FRAME-013, ATP-FRAME-015,
    ATP-FLOW-004, ATP-FRAME-019, ATP-FRAME-020, ATP-SESS-017, ATP-EXT-010] One validator:
    what ``validate_frame`` refuses, a Connection refuses with the same code and scope, in
    both roles and both encodings (``atp frames decode`` calls the same function)."""
    with pytest.raises(RemoteProtocolError) as info:
        validate_frame(frame)
    assert (info.value.code, info.value.stream_id) == (code, sid)
    for role_of_receiver, text in (("router", False), ("client", False), ("router", True)):
        if frame.type == FrameType.BUDGET_UPDATE and role_of_receiver == "router" and sid:
            continue
        p = ConnectionPair()
        p.open(encoding=Encoding.JSON if text else Encoding.BINARY)
        p.pump()
        receiver = p.router if role_of_receiver == "router" else p.client
        if text:
            events = receiver.receive_text(JsonMapping().encode(frame), 1.0)
        else:
            events = receiver.receive_message(encode_frame(frame), 1.0)
        if sid:
            reset = one(events, StreamReset)
            assert (reset.code, reset.stream_id, reset.by_peer) == (code, sid, False)
            assert not receiver.closed
        else:
            closed = one(events, ConnectionClosed)
            assert (closed.code, closed.by_peer) == (code, False)


def test_malformed_control_frame_for_a_closed_stream_is_discarded() -> None:
    """[ATP-FLAG-004] A stream error found on a stream now closed is not answered."""
    p = ConnectionPair()
    p.open(end_stream=True)
    p.pump()
    p.router.send_message(1, b"done", end_stream=True)
    p.pump()
    assert p.router.stream_state(1).value == "closed"
    for frame in (
        Frame.window_update(1, credit=0),
        Frame(FrameType.ERROR, Flags.RST, 1, ext={"error": {"code": "EX"}}),
    ):
        assert p.router.receive_message(encode_frame(frame), 2.0) == []
    assert not p.router.has_data_to_send()


def test_nan_and_infinity_in_binary_ext_are_refused() -> None:
    """[ATP-FRAME-006] JSON has no NaN or infinities; ext holds JSON-model values only."""
    for value in (math.nan, math.inf, -math.inf, [1.0, {"a": math.nan}]):
        with pytest.raises(FrameDecodeError) as info:
            decode_ext(cbor2.dumps({"x": value}), 5)
        assert info.value.stream_id == 5
    assert decode_ext(cbor2.dumps({"x": 1.5e308})) == {"x": 1.5e308}


# -- item 14: text credit = UTF-8 length -------------------------------------------------------


def test_text_data_costs_its_utf8_length_on_receipt() -> None:
    """[ATP-FLOW-008] The MessageReceived size (what the application acknowledges) is the
    UTF-8 length of the text message, whitespace and escapes included; 1.0 vs 1 and big
    integers do not matter."""
    router, _ = _router_with_text_stream()
    for text in (
        '{"stream_id": "st1", "msg_seq": 2, "payload": {"a": 1.0, "b": 9007199254740993}}',
        '{ "stream_id" : "st1" , "msg_seq" : 3 , "payload" : "h\u00e9llo \\u00e9 \U0001f600" }',
    ):
        (msg,) = of(router.receive_text(text, 1.0), MessageReceived)
        assert msg.size == len(text.encode("utf-8"))


def test_text_sender_and_receiver_count_the_same_credit() -> None:
    """[ATP-FLOW-008, ATP-FLOW-001] The router's send credit falls by exactly the UTF-8
    length of each text message it sends; frames whose JSON outgrows their CBOR (escapes,
    base64 fragments) are cut so that each fits the client's window, and the message
    arrives whole once the client returns credit (no deadlock)."""
    window = 1024
    p = ConnectionPair(client_limits=Limits(initial_window=window))
    p.client.send_capabilities(encoding=Encoding.JSON)
    p.pump()
    sid = p.open(encoding=Encoding.JSON)
    p.pump()
    body = cbor2.dumps({"content": "\x01\u2028é" * 1500})  # JSON text ~ 4x its CBOR
    start = p.router.send_credit(sid)
    p.router.send_message(sid, body, end_stream=True)
    got: list[MessageReceived] = []
    for _ in range(1000):
        sent = p.router.data_to_send()
        if not sent:
            break
        assert all(isinstance(m, str) for m in sent)
        sizes = [len(m.encode("utf-8")) for m in sent]
        assert max(sizes) <= window
        assert (
            start - p.router.send_credit(sid) == sum(sizes)
            or p.router.stream_state(sid).value == "closed"
        )
        start = p.router.send_credit(sid)
        events: list[Event] = []
        for m in sent:
            events += p.client.receive_text(m, 1.0)
        got += of(events, MessageReceived)
        for e in of(events, MessageReceived):
            p.client.acknowledge(sid, e.size)
        p.to_router()
        start = p.router.send_credit(sid)
    (msg,) = got
    assert bytes(msg.payload) == body and msg.end_stream


# -- item 15: the numeric id of an alias -------------------------------------------------------


def test_first_frame_under_an_alias_names_its_numeric_id_once() -> None:
    """[ATP-JSON-016] On the first DATA frame only, and on ERROR frames (a refused SYN's
    included); the credit a frame costs is the length of the text actually sent."""
    router = Connection(Role.ROUTER, now=0.0)
    router.receive_message(encode_frame(Frame.data(4, 1, TASK, flags=Flags.SYN)), 0.0)
    router.data_to_send()
    opened = one(router.receive_text(_text_syn("a"), 0.0), StreamOpened)
    assert opened.stream_id == 5
    router.send_message(5, cbor2.dumps(1), more=True)
    router.send_message(5, cbor2.dumps(2), end_stream=True)
    first, second = (json.loads(t) for t in text_wire(router))
    assert first["stream_id"] == "a" and first["stream_num"] == 5
    assert "stream_num" not in second
    reset = one(router.receive_text(_text_syn("b", ttl=-1), 0.0), StreamReset)
    (err,) = (json.loads(t) for t in text_wire(router))
    assert err["stream_id"] == "b" and err["stream_num"] == reset.stream_id == 6
    # a numeric SYN above the announced ids is legal
    one(
        router.receive_message(encode_frame(Frame.data(7, 1, TASK, flags=Flags.SYN)), 0.0),
        StreamOpened,
    )


# -- nothing escapes the core: both encodings, both roles ---------------------------------------

#: any character, lone surrogates often (they are what a browser's JSON.stringify lets by)
_any_char = st.characters(categories=["Cs"]) | st.characters(exclude_categories=())
_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(_any_char, max_size=8)
)
_json_value = st.recursive(
    _json_scalar,
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.text(_any_char, max_size=6), kids, max_size=3)
    ),
    max_leaves=10,
)
_header_value = st.one_of(
    _json_value,
    st.sampled_from(["st1", "st2", "DATA", "ERROR", "WINDOW_UPDATE", "CAPABILITIES", "gold"]),
    st.lists(
        st.sampled_from(["SYN", "FIN", "MORE", "RST", "HB", "ACK", "CONT", "\ud800"]), max_size=3
    ),
    st.integers(0, 5),
)
_KEYS = [
    "v",
    "type",
    "stream_id",
    "msg_seq",
    "frag_seq",
    "flags",
    "qos",
    "ttl",
    "payload",
    "payload_b64",
    "session_id",
    "window",
    "meta",
    "credit",
    "error",
    "caps",
    "x",
]
_BASES: list[dict[str, Any]] = [
    {
        "stream_id": "st1",
        "msg_seq": 1,
        "flags": ["SYN"],
        "session_id": "s",
        "meta": {"a": 1},
        "payload": TASK,
    },
    {"stream_id": 1, "msg_seq": 2, "payload": "more"},
    {"stream_id": "st1", "msg_seq": 2, "flags": ["FIN"], "payload": {"k": "v"}},
    {"type": "WINDOW_UPDATE", "stream_id": 1, "credit": 100},
    {"type": "CAPABILITIES", "caps": {"versions": [1]}},
    {"type": "ERROR", "stream_id": "st1", "error": {"code": "EX", "message": "m"}},
    {"stream_id": 0, "flags": ["HB"], "payload_b64": "aGk="},
]


@st.composite
def _frame_obj(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed frame of each kind, with a few fields replaced by anything (lone
    surrogates, huge integers, wrong types) at the top level or deep inside."""
    obj = json.loads(json.dumps(draw(st.sampled_from(_BASES))))
    if draw(st.booleans()):  # a lone surrogate where a browser's user text would go
        bad = "x" + draw(st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2))
        where = draw(st.sampled_from(["payload", "meta", "session_id", "x", "stream_id", "key"]))
        if where == "payload":
            obj["payload"] = {"type": "agent.task", "content": {"prompt": bad}}
        elif where == "meta":
            obj["meta"] = {"task_type": bad}
        elif where == "key":
            obj[bad] = 1
        else:
            obj[where] = bad
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(_KEYS))
        value = draw(_header_value)
        inner = obj.get(key)
        if isinstance(inner, dict) and draw(st.booleans()):
            inner[draw(st.text(_any_char, max_size=4))] = value
        else:
            obj[key] = value
    return obj


def _json_text(obj: Any, data: st.DataObject) -> str:
    text = json.dumps(obj, ensure_ascii=data.draw(st.booleans()))
    edit = data.draw(st.sampled_from(["none", "dup", "nan", "cut", "pair"]))
    if edit == "dup" and text.startswith("{") and len(text) > 2:
        text = '{"stream_id": "st1", ' + text[1:]
    elif edit == "nan":
        text = text.replace("0", "NaN", 1)
    elif edit == "cut":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif edit == "pair":
        text = text.replace('"', '"\\ud83d\\ude00', 1)
    return text


def _check(events: list[Event], conn: Connection) -> None:
    assert isinstance(events, list) and all(isinstance(e, Event) for e in events)
    # a stream opened and then reset (or the connection closed) by the same input: the
    # application sees both events at once, and a reply to the SYN is then refused as
    # h2 refuses a send on a closed stream (LocalProtocolError), the one exception allowed
    # (a reset before the SYN does not count: an error on an id never opened uses no id,
    # ATP-STREAM-002, so a SYN after it opens the stream)
    opened_at = {e.stream_id: i for i, e in enumerate(events) if isinstance(e, StreamOpened)}
    gone = {
        e.stream_id
        for i, e in enumerate(events)
        if isinstance(e, StreamReset) and i > opened_at.get(e.stream_id, len(events))
    }
    closed = any(isinstance(e, ConnectionClosed) for e in events)
    for e in events:
        if isinstance(e, ConnectionClosed | StreamReset):
            # a failure of ours (EINTERNAL) is never the answer to input
            assert e.code != ErrorCode.EINTERNAL, e
        if isinstance(e, StreamOpened | MessageReceived):
            cbor2.dumps(dict(e.ext))  # what the application gets can be sent on as CBOR
            if isinstance(e, StreamOpened) and conn.role is Role.ROUTER:
                if closed or e.stream_id in gone:
                    with pytest.raises(LocalProtocolError):
                        conn.send_message(e.stream_id, cbor2.dumps("reply"), more=True)
                else:
                    conn.send_message(e.stream_id, cbor2.dumps("reply"), more=True)
    for msg in conn.data_to_send():
        if isinstance(msg, str):
            msg.encode("utf-8")  # every reply is sendable Unicode text
            json.loads(msg)
        else:
            dec = FrameDecoder(Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))
            dec.feed(msg)
            list(dec)
            assert dec.buffered == 0


def _pair_with_streams(text: bool) -> ConnectionPair:
    p = ConnectionPair()
    if text:
        p.client.send_capabilities(encoding=Encoding.JSON)
        p.pump()
    p.client.open_stream(
        cbor2.dumps(TASK), encoding=Encoding.JSON if text else Encoding.BINARY, now=None
    )
    p.pump()
    return p


@CI
@given(st.lists(_frame_obj() | _json_value, min_size=1, max_size=4), st.data())
def test_no_exception_escapes_from_any_json_text(objs: list[Any], data: st.DataObject) -> None:
    """[ATP-JSON-006, ATP-JSON-017, ATP-ERR-005] Arbitrary JSON text, frame-shaped or not,
    with lone surrogates, duplicates, NaN, cuts: events or an ERROR, never an exception
    or an EINTERNAL, in both roles, and every reply is Unicode (issue 9 item 1)."""
    p = _pair_with_streams(text=True)
    for obj in objs:
        text = _json_text(obj, data)
        for conn in (p.router, p.client):
            _check(conn.receive_text(text, 1.0), conn)
            _check(conn.receive_text(text.encode("utf-8", "surrogatepass"), 1.0), conn)


@st.composite
def _frame_bytes(draw: st.DrawFn) -> bytes:
    ftype = draw(st.integers(0, 5) | st.integers(0, 255))
    ext_obj = draw(st.dictionaries(st.text(max_size=6), _json_value, max_size=3))
    try:
        ext = cbor2.dumps(ext_obj) if ext_obj else b""
    except (UnicodeEncodeError, ValueError):
        ext = draw(st.binary(max_size=12))
    if draw(st.booleans()):
        ext = draw(st.binary(max_size=12))
    payload = draw(st.binary(max_size=70))
    header = HEADER.pack(
        draw(st.sampled_from([1, 1, 1, 2])),
        ftype,
        draw(st.integers(0, 255)),
        draw(st.integers(0, 5)),
        draw(st.integers(0, 3)),
        draw(st.integers(0, 4)),
        draw(st.integers(0, 2)),
        draw(st.integers(0, 3)),
        len(ext),
        len(payload),
    )
    return header + ext + payload


@CI
@given(st.lists(_frame_bytes(), min_size=1, max_size=5), st.booleans(), st.data())
def test_no_exception_escapes_from_any_binary_bytes(
    frames: list[bytes], stream: bool, data: st.DataObject
) -> None:
    """[ATP-FRAME-009, ATP-ERR-005] Frames of any type and content (CBOR with lone-surrogate
    keys made bytes, NaN, tags, junk), whole or cut, in one message or a byte stream:
    events or an ERROR, never an exception or an EINTERNAL, in both roles."""
    p = _pair_with_streams(text=False)
    blob = b"".join(frames)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    for conn in (p.router, p.client):
        if stream:
            for i in range(0, len(blob), 7):
                _check(conn.receive_data(blob[i : i + 7], 1.0), conn)
        else:
            _check(conn.receive_message(blob, 1.0), conn)
