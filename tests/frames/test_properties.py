"""Hypothesis properties of the codecs and the connection (STYLE.md "Tests")."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
from hypothesis import assume, given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from atp_proto.frames import (
    HEADER_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    BudgetWindow,
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
    QoS,
    StreamOpened,
    StreamReset,
    StreamState,
    decode_frames,
    encode_frame,
    encode_frames,
)
from atp_proto.frames._json import HEADER_KEYS

from .helpers import CI, LIGHT, SEED_SYN, ConnectionPair

# -- strategies ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
cbor_values = st.recursive(
    json_scalars | st.binary(max_size=16),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
ext_keys = st.text(min_size=1, max_size=10).filter(
    lambda k: k not in HEADER_KEYS and k not in ("payload", "payload_b64", "session_id")
)


@st.composite
def frames(draw: st.DrawFn, *, json_ext: bool = False) -> Frame:
    """Any valid frame: known and unknown types, every flag bit, any header value."""
    values = json_values if json_ext else cbor_values
    ext = draw(st.dictionaries(ext_keys, values, max_size=4))
    payload = draw(
        st.binary(max_size=64)
        | st.builds(cbor2.dumps, json_values)
        | st.sampled_from([b"", cbor2.dumps(None), cbor2.dumps(b"raw")])
    )
    return Frame(
        draw(st.sampled_from(list(FrameType)) | st.integers(0, 255)),
        draw(st.integers(0, 255)),
        draw(st.integers(0, MAX_STREAM_ID)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**16 - 1)),
        draw(st.integers(0, 3)),
        draw(st.integers(0, 2**16 - 1)),
        ext,
        payload,
    )


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def same_json_value(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


# -- round trips ---------------------------------------------------------------------------


@CI
@given(st.lists(frames(), min_size=1, max_size=5))
def test_binary_model_round_trip(fs: list[Frame]) -> None:
    """ATP-FRAME-001, ATP-FRAME-009, ATP-FRAME-010: encode -> decode is the identity on
    valid frames of known types; one of an unknown type keeps its header and payload, and
    its ext is skipped unread."""
    back = decode_frames(encode_frames(fs))
    assert len(back) == len(fs)
    for a, b in zip(fs, back, strict=True):
        if a.type in FrameType.__members__.values():
            assert b.replace(payload=b"") == a.replace(payload=b"")
            assert encode_frame(b) == encode_frame(a)
        else:
            assert b.replace(payload=b"") == a.replace(payload=b"", ext=None)
        assert bytes(b.payload) == a.payload


@CI
@given(frames(json_ext=True))
def test_model_json_model_round_trip(frame: Frame) -> None:
    """ATP-JSON-004, ATP-JSON-005: frame -> JSON -> frame keeps every header field and ext
    entry; the payload survives as bytes (payload_b64) or as the same CBOR value."""
    assume(frame.type in FrameType.__members__.values())  # unknown types are ignored in JSON
    text = JsonMapping().encode(frame)
    obj = json.loads(text)
    back = JsonMapping().decode(text)
    assert back is not None
    # reserved flag bits have no name in JSON: sent as 0, ignored (ATP-FLAG-001)
    assert back.replace(payload=b"") == frame.replace(payload=b"", flags=frame.flags & 0x7F)
    if "payload_b64" in obj:
        assert back.payload == frame.payload
    elif frame.payload:
        assert same_json_value(cbor2.loads(back.payload), cbor2.loads(frame.payload))
    else:
        assert back.payload == b""
    # and once in JSON form, the mapping is a fixed point
    assert JsonMapping().encode(back) == text or "payload" in obj
    # binary -> model -> JSON gives the same text as model -> JSON
    (from_wire,) = decode_frames(encode_frame(frame))
    assert JsonMapping().encode(from_wire) == text
    assert back.flags == frame.flags & 0x7F


@CI
@given(json_values.filter(lambda v: v is not None))
def test_any_json_payload_round_trips_through_cbor(value: Any) -> None:
    """ATP-JSON-004: a JSON payload becomes its CBOR encoding and comes back equal."""
    text = json.dumps({"stream_id": 1, "payload": value})
    frame = JsonMapping().decode(text)
    assert frame is not None and frame.payload == cbor2.dumps(value)
    obj = json.loads(JsonMapping().encode(frame))
    assert obj["payload"] == value or same_json_value(obj["payload"], value)


# -- the decoder never fails badly ---------------------------------------------------------------


@st.composite
def wire_bytes(draw: st.DrawFn) -> bytes:
    """Mostly frames, some of them damaged; sometimes plain noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(encode_frames(draw(st.lists(frames(), max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()) and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    return bytes(data)


SMALL = Limits(max_frame_size=512, max_ext_size=128, max_depth=4)


@CI
@given(
    wire_bytes(), st.lists(st.integers(0, 10_000), max_size=8), st.sampled_from([Limits(), SMALL])
)
def test_decoder_yields_frames_or_decode_errors_with_bounded_memory(
    data: bytes, cuts: list[int], limits: Limits
) -> None:
    """ATP-LIMIT-001, ATP-FRAME-009: any bytes, any chunking: frames or FrameDecodeError,
    nothing else; after draining, the decoder holds less than one frame."""
    dec = FrameDecoder(limits)
    broken = False
    for chunk in splits(data, cuts):
        if broken:
            break
        dec.feed(chunk)
        while True:
            try:
                frame = dec.next_frame()
            except FrameDecodeError as exc:
                assert exc.code in (ErrorCode.EPROTO, ErrorCode.ETOOBIG)
                if exc.connection_level:
                    broken = True
                    break
                continue
            if frame is None:
                break
            assert isinstance(frame, Frame)
        held = len(dec._buf) - dec._pos  # ``buffered`` also counts bytes still to skip
        assert held <= HEADER_SIZE + limits.max_frame_size
        assert held <= dec.buffered
        if dec._skip:
            assert held == 0
    if broken:
        try:
            dec.next_frame()
        except FrameDecodeError:
            pass
        else:
            raise AssertionError("a broken decoder must stay broken")


@CI
@given(st.lists(frames(), min_size=1, max_size=4))
def test_one_byte_at_a_time_equals_all_at_once(fs: list[Frame]) -> None:
    """ATP-FRAME-009 (h11's rule): byte-by-byte feeding gives the same frames."""
    data = encode_frames(fs)
    whole = FrameDecoder()
    whole.feed(data)
    expected = list(whole)
    dec = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got.extend(dec)
    assert [encode_frame(f) for f in got] == [encode_frame(f) for f in expected]
    assert dec.buffered == 0


def _check_events(events: list[Event]) -> None:
    assert isinstance(events, list)
    assert all(isinstance(e, Event) for e in events)


def _router_with_stream() -> ConnectionPair:
    p = ConnectionPair(router_limits=SMALL)
    p.open()
    p.to_router()
    return p


@CI
@given(wire_bytes(), st.lists(st.integers(0, 10_000), max_size=6))
def test_connection_never_raises_on_binary_input(data: bytes, cuts: list[int]) -> None:
    """Nothing a peer sends raises out of receive_message / receive_data; once closed, all
    input is ignored."""
    p = _router_with_stream()
    _check_events(p.router.receive_message(data, 1.0))
    q = _router_with_stream()
    for chunk in splits(data, cuts):
        was_closed = q.router.closed
        events = q.router.receive_data(chunk, 1.0)
        _check_events(events)
        if was_closed:
            assert events == []
    _check_events(q.router.handle_timer(1e9))
    for out in (p.router.data_to_send(), q.router.data_to_send()):
        for msg in out:
            assert isinstance(msg, bytes)
            decode_frames(msg, Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))


@LIGHT
@given(st.lists(frames(), min_size=1, max_size=4))
def test_connection_byte_by_byte_equals_whole(fs: list[Frame]) -> None:
    """ATP-FRAME-009: a byte stream split into single bytes gives the same events and the
    same output as one read."""
    data = encode_frames([Frame.data(1, 1, "syn", flags=Flags.SYN), *fs])
    a, b = _router_with_stream(), _router_with_stream()
    a.router.data_to_send()
    b.router.data_to_send()
    whole = a.router.receive_data(data, 2.0)
    parts: list[Event] = []
    for i in range(len(data)):
        parts += b.router.receive_data(data[i : i + 1], 2.0)
    assert parts == whole
    assert a.router.data_to_send() == b.router.data_to_send()


json_texts = (
    st.text(max_size=200)
    | st.builds(json.dumps, json_values)
    | st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(
                sorted(
                    HEADER_KEYS
                    | {
                        "payload",
                        "payload_b64",
                        "session_id",
                        "credit",
                        "window",
                        "error",
                        "caps",
                        "x",
                    }
                )
            ),
            json_values
            | st.sampled_from(
                ["st1", "SYN", ["SYN"], ["FIN", "HB"], "gold", "WINDOW_UPDATE", "ERROR", "AA=="]
            ),
            max_size=8,
        ),
    )
)


@CI
@given(st.lists(json_texts | st.binary(max_size=50), min_size=1, max_size=5))
def test_connection_never_raises_on_text_input(texts: list[str | bytes]) -> None:
    """ATP-JSON-006: any text (or bytes in a text message) yields events, never raises."""
    for role_pair in (ConnectionPair(), ConnectionPair()):
        role_pair.router.receive_text(SEED_SYN, 0.0)
        for t in texts:
            _check_events(role_pair.router.receive_text(t, 1.0))
            _check_events(role_pair.client.receive_text(t, 1.0))
        role_pair.router.data_to_send()
        role_pair.client.data_to_send()


# -- a client/router pair driven through random steps ---------------------------------------------

MAX_STREAMS = 4
EXPECTED_LOCAL_RESETS = {ErrorCode.ETIMEOUT, ErrorCode.EBUDGET}


class PairMachine(RuleBasedStateMachine):
    """Open / send / FIN / reset / window update / charge / timer steps on a client and a
    router that follow the rules; neither may ever see a protocol violation."""

    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.max_streams = MAX_STREAMS
        self.p: ConnectionPair

    @initialize(window=st.sampled_from([600, 2048, 65536]), caps=st.booleans())
    def setup(self, window: int, caps: bool) -> None:
        # Without CAPABILITIES each side assumes the defaults of §12 for the other
        # (ATP-SESS-001), so non-default limits are only used after the exchange.
        if caps:
            limits = Limits(
                initial_window=window, max_streams=MAX_STREAMS, max_message_size=1 << 20
            )
        else:
            limits = Limits()
        self.max_streams = limits.max_streams
        self.p = ConnectionPair(limits, limits, client_heartbeat=7.0)
        self.caps = caps
        if caps:
            self.p.handshake()
        self.sent: dict[tuple[str, int], list[bytes]] = {}
        self.received: dict[tuple[str, int], list[bytes]] = {}
        self.last_seq: dict[tuple[str, int], int] = {}
        self.unacked: list[tuple[str, int, int]] = []

    # -- delivery and event bookkeeping --

    def _absorb(self, side: str, events: list[Event]) -> None:
        conn = self.p.router if side == "router" else self.p.client
        for e in events:
            if isinstance(e, ConnectionClosed):
                assert e.by_peer or e.code == ErrorCode.ETIMEOUT, e
            if isinstance(e, StreamReset) and not e.by_peer:
                assert e.code in EXPECTED_LOCAL_RESETS, e
            if isinstance(e, StreamReset) and e.by_peer:
                assert e.code in {
                    "RST",
                    ErrorCode.EBUDGET,
                    ErrorCode.ETIMEOUT,
                    ErrorCode.EAGENTDOWN,
                }, e
            if isinstance(e, (StreamOpened, MessageReceived)):
                key = (side, e.stream_id)
                prev = self.last_seq.get(key)
                if prev is not None:  # ATP-SEQ-001 as seen by the peer
                    assert e.msg_seq == (prev + 1) & 0xFFFF_FFFF, (prev, e)
                self.last_seq[key] = e.msg_seq
                self.received.setdefault(key, []).append(bytes(e.payload))
            if isinstance(e, MessageReceived):
                self.unacked.append((side, e.stream_id, e.size))
        del conn

    def _to_router(self) -> None:
        for msg in self.p.client.data_to_send(self.now):
            if isinstance(msg, str):
                self._absorb("router", self.p.router.receive_text(msg, self.now))
            else:
                self._absorb("router", self.p.router.receive_message(msg, self.now))

    def _to_client(self, cuts: list[int]) -> None:
        for msg in self.p.router.data_to_send(self.now):
            if isinstance(msg, str):
                self._absorb("client", self.p.client.receive_text(msg, self.now))
            else:
                for chunk in splits(msg, cuts):  # a byte stream, any chunking
                    self._absorb("client", self.p.client.receive_data(chunk, self.now))

    @rule()
    def deliver_to_router(self) -> None:
        self._to_router()

    @rule(cuts=st.lists(st.integers(0, 5000), max_size=3))
    def deliver_to_client(self, cuts: list[int]) -> None:
        self._to_client(cuts)

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        if not self.unacked:
            return
        side, sid, size = self.unacked.pop(data.draw(st.integers(0, len(self.unacked) - 1)))
        (self.p.router if side == "router" else self.p.client).acknowledge(sid, size)

    # -- client steps --

    @precondition(lambda self: not self.p.client.closed)
    @rule(
        target=streams,
        size=st.integers(0, 3000),
        window=st.none()
        | st.builds(BudgetWindow, st.none() | st.integers(1, 3), st.none() | st.integers(0, 500)),
        ttl=st.sampled_from([0, 0, 5, 30]),
        fin=st.booleans(),
        text=st.booleans(),
    )
    def open(self, size: int, window: BudgetWindow | None, ttl: int, fin: bool, text: bool) -> Any:
        payload = cbor2.dumps("s" * size) if text else b"\x00" * size
        try:
            sid = self.p.client.open_stream(
                payload,
                window=window,
                ttl=ttl,
                end_stream=fin,
                encoding=Encoding.JSON if text else Encoding.BINARY,
                now=self.now,
                qos=QoS.GOLD,
            )
        except LocalProtocolError as exc:
            assert exc.code in (ErrorCode.EWINDOW, ErrorCode.EDRAINING), exc
            return multiple()
        self.sent.setdefault(("router", sid), []).append(payload)
        return sid

    @rule(sid=streams, size=st.integers(0, 5000), fin=st.booleans())
    def client_send(self, sid: int, size: int, fin: bool) -> None:
        if self.p.client.stream_state(sid) is not StreamState.OPEN or self.p.client.closed:
            return
        payload = (
            cbor2.dumps("c" * size)
            if self.p.client.stream_encoding(sid) is Encoding.JSON
            else bytes([sid % 256]) * size
        )
        self.p.client.send_message(sid, payload, end_stream=fin)
        self.sent[("router", sid)].append(payload)

    @rule(sid=consumes(streams))
    def client_reset(self, sid: int) -> None:
        self.p.client.reset_stream(sid)
        assert self.p.client.stream_state(sid) in (StreamState.CLOSED, StreamState.IDLE)

    @rule(
        sid=streams, tokens=st.none() | st.integers(0, 600), parallel=st.none() | st.integers(1, 3)
    )
    def client_update_window(self, sid: int, tokens: int | None, parallel: int | None) -> None:
        if (
            self.p.client.stream_state(sid) in (StreamState.CLOSED, StreamState.IDLE)
            or self.p.client.closed
        ):
            return
        self.p.client.update_window(sid, BudgetWindow(parallel, tokens, None))

    # -- router steps --

    def _router_can_send(self, sid: int) -> bool:
        return not self.p.router.closed and self.p.router.stream_state(sid) in (
            StreamState.OPEN,
            StreamState.HALF_CLOSED_REMOTE,
        )

    @rule(sid=streams, size=st.integers(0, 5000), more=st.booleans(), fin=st.booleans())
    def router_send(self, sid: int, size: int, more: bool, fin: bool) -> None:
        if not self._router_can_send(sid):
            return
        payload = (
            cbor2.dumps("r" * size)
            if self.p.router.stream_encoding(sid) is Encoding.JSON
            else bytes([255 - sid % 256]) * size
        )
        self.p.router.send_message(sid, payload, more=more, end_stream=fin)
        self.sent.setdefault(("client", sid), []).append(payload)

    @rule(sid=streams)
    def router_error(self, sid: int) -> None:
        self.p.router.send_error(sid, ErrorCode.EAGENTDOWN, "no adapter", retry_after_ms=10)

    @rule(sid=streams, tokens=st.integers(0, 300))
    def router_budget_stop(self, sid: int, tokens: int) -> None:
        """The router's ledger (router/budget.py, property-tested in
        tests/router/test_budget.py) stops a stream over its window with EBUDGET: the
        core only carries the ERROR, on whatever state the stream is in."""
        limit = self.p.router.budget_window(sid).max_tokens
        if limit is not None and tokens > limit:
            self.p.router.send_error(sid, ErrorCode.EBUDGET, f"{tokens} tokens used")

    # -- time --

    @rule(dt=st.sampled_from([0.5, 3.0, 8.0, 31.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        for side, conn in (("client", self.p.client), ("router", self.p.router)):
            deadline = conn.next_deadline()
            events = conn.handle_timer(self.now)
            if deadline is None or deadline > self.now:
                assert not [e for e in events if isinstance(e, (StreamReset, ConnectionClosed))]
            self._absorb(side, events)

    # -- invariants --

    @invariant()
    def credit_and_buffers(self) -> None:
        if not hasattr(self, "p"):
            return
        for conn in (self.p.client, self.p.router):
            assert conn.open_streams <= self.max_streams  # ATP-STREAM-008, ATP-SESS-007
            for sid, rec in conn._streams.items():
                assert rec.stream_id == sid
                assert 0 <= rec.send.credit <= MAX_WINDOW  # ATP-FLOW-001
                assert rec.recv.credit >= 0
                assert rec.send.outbox_bytes == sum(cost for _, cost in rec.send.outbox) >= 0
                assert conn.outbound_buffered(sid) == rec.send.outbox_bytes
                assert rec.state is not StreamState.IDLE
                if rec.send.outbox:  # only a blocked head keeps frames queued
                    assert rec.send.outbox[0][1] > rec.send.credit
                if rec.state is StreamState.CLOSED:
                    assert rec.send.outbox  # closed streams are kept only to flush output
                assert rec.sendable == (
                    rec.state
                    in (
                        StreamState.OPEN,
                        StreamState.HALF_CLOSED_REMOTE
                        if conn is self.p.router
                        else StreamState.OPEN,
                    )
                )

    def teardown(self) -> None:
        if not hasattr(self, "p"):
            return
        # grant everything and deliver everything: every message sent on a stream that
        # was not reset arrives whole and in order (ATP-SEQ-009, ATP-FLOW-005)
        for _ in range(200):
            while self.unacked:
                side, sid, size = self.unacked.pop()
                (self.p.router if side == "router" else self.p.client).acknowledge(sid, size)
            if not (
                self.p.client.has_data_to_send() or self.p.router.has_data_to_send() or self.unacked
            ):
                break
            self._to_router()
            self._to_client([])
        for key, got in self.received.items():
            sent = self.sent.get(key, [])
            note(f"{key}: sent {len(sent)} got {len(got)}")
            assert got == sent[: len(got)], key


TestPair = PairMachine.TestCase
TestPair.settings = LIGHT
