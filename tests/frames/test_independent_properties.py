"""Hypothesis properties of the codec and the state machines.

- binary <-> model <-> JSON round-trips for arbitrary valid frames;
- any bytes, in any chunking, give frames or FrameDecodeError, never another exception,
  with buffering bounded by one frame;
- feeding one byte at a time equals feeding everything at once;
- any input to a Connection yields events and never raises;
- a rule-based machine drives a client/router pair and checks invariants.
"""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from atp_proto.frames import (
    HEADER_SIZE,
    MAX_STREAM_ID,
    BudgetWindow,
    Connection,
    ErrorCode,
    Flags,
    Frame,
    FrameDecodeError,
    FrameDecoder,
    FrameType,
    JsonMapping,
    Limits,
    MessageReceived,
    QoS,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    decode_frames,
    encode_frame,
    encode_frames,
)

from .helpers import ConnectionPair

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ext_maps = st.dictionaries(
    st.sampled_from(["window", "meta", "telemetry", "error", "usage", "x-vendor", "note"]),
    json_values,
    max_size=4,
)

frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    flags=st.integers(0, 0x7F),
    stream_id=st.integers(0, MAX_STREAM_ID),
    msg_seq=st.integers(0, 2**32 - 1),
    frag_seq=st.integers(0, 2**16 - 1),
    qos=st.sampled_from(list(QoS)),
    ttl=st.integers(0, 2**16 - 1),
    ext=ext_maps,
    payload=st.binary(max_size=300) | json_values.map(cbor2.dumps),
    version=st.just(1),
)


@given(frames)
def test_binary_round_trip(frame: Frame) -> None:
    (back,) = decode_frames(encode_frame(frame))
    assert back == frame


@given(frames)
def test_json_round_trip(frame: Frame) -> None:
    """Model -> JSON text -> model (numeric ids; payload as JSON or base64)."""
    m = JsonMapping()
    text = m.encode(frame)
    json.loads(text)
    back = JsonMapping().decode(text)
    assert back is not None
    assert back._replace(payload=b"") == frame._replace(payload=b"")
    if back.payload != frame.payload:  # JSON-carried payloads are re-encoded canonically
        assert cbor2.loads(bytes(back.payload)) == cbor2.loads(bytes(frame.payload))


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_any_chunking_gives_the_same_frames(fs: list[Frame], data: st.DataObject) -> None:
    blob = encode_frames(fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    dec = FrameDecoder()
    got: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(blob)]:
        dec.feed(blob[prev:cut])
        got.extend(dec)
        prev = cut
    assert got == fs
    assert dec.buffered == 0


small = Limits(max_frame_size=2048, max_ext_size=512)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=12))
def test_garbage_never_escapes(chunks: list[bytes]) -> None:
    """Any bytes: frames or FrameDecodeError, nothing else; buffering stays bounded."""
    dec = FrameDecoder(small)
    for chunk in chunks:
        try:
            dec.feed(chunk)
            while True:
                try:
                    if dec.next_frame() is None:
                        break
                except FrameDecodeError as exc:
                    if exc.connection_level:
                        raise
        except FrameDecodeError:
            return
        held = len(dec._buf) - dec._pos  # bytes in memory (``buffered`` also counts skips)
        assert held <= HEADER_SIZE + small.max_frame_size + max(map(len, chunks))


header_prefix = st.builds(
    lambda t, fl, q, sid, el, pl: (
        bytes([1, t, fl, q])
        + sid.to_bytes(4, "big")
        + b"\x00\x00\x00\x01\x00\x00\x00\x00"
        + el.to_bytes(4, "big")
        + pl.to_bytes(4, "big")
    ),
    st.integers(0, 6),
    st.integers(0, 255),
    st.integers(0, 4),
    st.integers(0, 5),
    st.integers(0, 40),
    st.integers(0, 40),
)


@settings(max_examples=300)
@given(
    st.lists(
        header_prefix.flatmap(lambda h: st.binary(max_size=80).map(lambda b: h + b)), max_size=6
    )
)
def test_connection_survives_plausible_garbage(messages: list[bytes]) -> None:
    """Frames with valid-looking headers and random bodies never raise out of a
    Connection, on either side, whole-message or stream mode."""
    for role in Role:
        conn = Connection(role, limits=small, now=0.0)
        stream_conn = Connection(role, limits=small, now=0.0)
        for i, msg in enumerate(messages):
            assert isinstance(conn.receive_message(msg, float(i)), list)
            assert isinstance(stream_conn.receive_data(msg, float(i)), list)
            conn.data_to_send()
            conn.handle_timer(float(i))


@settings(max_examples=200)
@given(st.lists(st.text(max_size=60) | json_values.map(json.dumps), max_size=6))
def test_connection_survives_any_text(texts: list[str]) -> None:
    conn = Connection(Role.ROUTER, now=0.0)
    for t in texts:
        assert isinstance(conn.receive_text(t, 0.0), list)
        conn.data_to_send()


@given(st.lists(frames, min_size=1, max_size=4))
def test_one_byte_at_a_time(fs: list[Frame]) -> None:
    blob = encode_frames(fs)
    dec = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(blob)):
        dec.feed(blob[i : i + 1])
        got.extend(dec)
    assert got == fs


class PairMachine(RuleBasedStateMachine):
    """A client and a router exchanging messages, updates, FINs, resets and time."""

    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.pair = ConnectionPair(
            client_limits=Limits(initial_window=2048),
            router_limits=Limits(initial_window=2048, max_streams=4, max_frame_size=4096),
        )
        self.pair.client.send_capabilities()
        self.pair.to_router()
        self.pair.to_client()
        self.seen_seq: dict[int, int] = {}
        self.opened: set[int] = set()

    def _deliver(self) -> None:
        for _ in range(4):
            for e in self.pair.to_router():
                if isinstance(e, StreamOpened):
                    self.opened.add(e.stream_id)
            for e in self.pair.to_client():
                if isinstance(e, MessageReceived):
                    last = self.seen_seq.get(e.stream_id)
                    assert last is None or e.msg_seq == last + 1
                    self.seen_seq[e.stream_id] = e.msg_seq
                    self.pair.client.acknowledge(e.stream_id, e.size)
                elif isinstance(e, StreamReset):
                    self.seen_seq.pop(e.stream_id, None)

    @rule(target=streams, ttl=st.integers(0, 3), tokens=st.none() | st.integers(0, 100))
    def open(self, ttl: int, tokens: int | None) -> int:
        try:
            sid = self.pair.open(ttl=ttl, window=BudgetWindow(max_tokens=tokens), now=self.pair.now)
        except Exception:  # peer's max_streams reached or connection closed
            return 0
        self._deliver()
        return sid

    @rule(sid=streams, size=st.integers(0, 3000), more=st.booleans(), fin=st.booleans())
    def router_sends(self, sid: int, size: int, more: bool, fin: bool) -> None:
        try:
            self.pair.router.send_message(sid, b"m" * size, more=more, end_stream=fin)
        except StreamClosedError:
            return
        self._deliver()

    @rule(sid=consumes(streams))
    def client_resets(self, sid: int) -> None:
        self.pair.client.reset_stream(sid)
        self._deliver()

    @rule(sid=streams, tokens=st.integers(0, 80))
    def budget_stop(self, sid: int, tokens: int) -> None:
        """What the router's ledger does past the window (tests/router/test_budget.py):
        an EBUDGET ERROR on the stream, whatever its state."""
        limit = self.pair.router.budget_window(sid).max_tokens
        if limit is not None and tokens > limit:
            self.pair.router.send_error(sid, ErrorCode.EBUDGET, f"{tokens} tokens used")
        self._deliver()

    @rule(sid=streams, tokens=st.integers(0, 200))
    def client_updates_window(self, sid: int, tokens: int) -> None:
        try:
            self.pair.client.update_window(sid, BudgetWindow(max_tokens=tokens))
        except StreamClosedError:
            return
        self._deliver()

    @precondition(lambda self: self.pair.now < 10)
    @rule(dt=st.floats(0.1, 2.0))
    def time_passes(self, dt: float) -> None:
        self.pair.now += dt
        self.pair.router.handle_timer(self.pair.now)
        self.pair.client.handle_timer(self.pair.now)
        self._deliver()

    @invariant()
    def bounded_and_consistent(self) -> None:
        r, c = self.pair.router, self.pair.client
        assert r.open_streams <= 4
        for conn in (r, c):
            for rec in conn._streams.values():
                assert rec.send.credit >= 0
                assert rec.recv.credit >= 0
                assert rec.send.outbox_bytes == sum(cost for _, cost in rec.send.outbox)
                assert rec.send.outbox_bytes <= 4 * 3000 + 1024
        assert not r.closed and not c.closed


PairMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
test_pair_machine = PairMachine.TestCase

_ = Flags  # re-exported names used in strategies above


@pytest.mark.parametrize("piece", [1, 7, 1000, 4096])
def test_a_big_frame_fed_in_small_pieces_is_collected_then_decoded(piece: int) -> None:
    """A frame arriving in many pieces (QUIC stream data) is collected, not re-copied per
    piece; ``buffered`` counts the pieces; frames after it in the last piece come out too."""
    big = Frame.data(3, 0, raw=bytes(range(256)) * 64, ext={"meta": {"k": "v"}})  # 16 KiB
    after = [Frame.data(5, 0, {"n": 1}), Frame.data(3, 1, raw=b"x")]
    blob = encode_frames([big, *after])
    dec = FrameDecoder()
    got: list[Frame] = []
    fed = consumed = 0
    for i in range(0, len(blob), piece):
        dec.feed(blob[i : i + piece])
        fed += len(blob[i : i + piece])
        for f in dec:
            got.append(f)
            consumed += len(encode_frames([f]))
        assert dec.buffered == fed - consumed
    assert got == [big, *after]
    assert dec.buffered == 0


def test_pieces_fed_without_pulling_frames_keep_every_frame() -> None:
    fs = [Frame.data(1, i, raw=bytes([i]) * 3000) for i in range(4)]
    blob = encode_frames(fs)
    dec = FrameDecoder()
    for i in range(0, len(blob), 1000):
        dec.feed(blob[i : i + 1000])
    assert list(dec) == fs
    assert dec.buffered == 0
