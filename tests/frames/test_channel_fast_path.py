"""Differential property tests of the per-stream (QUIC) receive path's shortcuts.

``ReceiveMixin._drain_channel`` hands a channel's plain DATA frames straight to their
stream, and ``Stream.receive_data`` builds their event with ``message_received``; the
general path beside them is ``_drain_decoder`` -> ``_handle_frame`` -> ``_handle_data``
and the dataclass's own constructor. The same bytes through both must give the same
events, the same errors, the same stream state and the same output, whatever they are:
a router's real output cut at any point, with hostile frames mixed in (a frame for
another stream on a channel, ATP-QUIC-005; RST, ext, a SYN, stale sequence numbers,
unknown types, WINDOW_UPDATE).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import (
    Connection,
    Event,
    Flags,
    Frame,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    encode_frame,
)
from atp_proto.frames._events import message_received
from atp_proto.frames._receiving import ReceiveMixin

from .helpers import CI
from .test_fast_paths import _normal

LIMITS = Limits(max_frame_size=4096, initial_window=16384, max_message_size=32768)


@contextmanager
def general_channels() -> Iterator[None]:
    """Every channel drains through the general path only."""
    fast = ReceiveMixin._drain_channel

    def general(self: Any, now: float, events: list[Event], dec: Any, channel: int) -> None:
        self._drain_decoder(now, events, dec, channel)

    ReceiveMixin._drain_channel = general  # type: ignore[method-assign]
    try:
        yield
    finally:
        ReceiveMixin._drain_channel = fast  # type: ignore[method-assign]


def _client() -> tuple[Connection, list[tuple[int, bytes, bool]]]:
    """A client with two open streams (1 and 3) and what it sent to open them."""
    client = Connection(Role.CLIENT, limits=LIMITS, now=0.0)
    client.send_capabilities()
    client.open_stream(b"task one", now=None)
    client.open_stream(b"task two", now=None)
    return client, client.stream_data_to_send(0.0)


#: a router's action: send a message on stream 1 or 3 (size, MORE, FIN, ext), or inject
#: a raw frame of its own on a channel
op_spec = st.one_of(
    st.tuples(
        st.just("send"),
        st.sampled_from([1, 3]),
        st.one_of(st.integers(0, 300), st.integers(0, 9000)),
        st.sampled_from(["more"] * 6 + ["fin", "plain"]),
        st.integers(0, 7).map(lambda n: n == 0),
    ),
    st.tuples(
        st.just("inject"),
        st.sampled_from([0, 1, 3]),  # the channel it arrives on
        st.sampled_from([1, 3, 5, 0]),  # the stream id in its header
        st.sampled_from(["data", "rst", "syn", "ext", "window", "unknown", "stale", "huge"]),
        st.just(False),
    ),
)


def _wire(ops: list[tuple[str, int, int, str, bool]]) -> list[tuple[int, bytes]]:
    """The router's real output for ``ops`` (per channel, in order), hostile frames
    spliced in where the ops say (a huge one is skipped by the decoder, ATP-LIMIT-001)."""
    _, opening = _client()
    router = Connection(Role.ROUTER, limits=LIMITS, now=0.0)
    for sid, data, _end in opening:
        router.receive_stream_data(sid, data, 0.0)
    wire: list[tuple[int, bytes]] = [(sid, data) for sid, data, _ in router.stream_data_to_send()]
    seq = {1: 5, 3: 5}
    for kind, a, b, c, d in ops:
        if kind == "send":
            try:
                more = c == "more"
                router.send_message(
                    a,
                    b"p" * b,
                    more=more,
                    end_stream=c == "fin",
                    ext={"telemetry": {"n": b}} if d else None,
                )
            except LocalProtocolError:  # a closed stream: the router's own refusal
                pass
            wire += [(sid, data) for sid, data, _ in router.stream_data_to_send()]
            continue
        channel, sid, what = a, b, c
        flags = {"rst": Flags.RST, "syn": Flags.SYN}.get(what, Flags.MORE)
        if what == "window":
            frame = Frame.window_update(sid, credit=1000)
        elif what == "unknown":
            frame = Frame(0x3E, 0, sid)
        else:
            frame = Frame.data(
                sid,
                1 if what == "stale" else seq.get(sid, 1),
                raw=b"h" * (5000 if what == "huge" else 40),  # huge: > max_frame_size
                flags=flags,
                ext={"x": 1} if what == "ext" else None,
            )
        wire.append((channel, encode_frame(frame)))
    return wire


def _run(wire: list[tuple[int, bytes]], cuts: list[int], *, general: bool) -> tuple[Any, ...]:
    client, _ = _client()
    events: list[Event] = []
    states: list[object] = []

    def feed() -> None:
        for i, (channel, data) in enumerate(wire):
            cut = cuts[i % len(cuts)] % (len(data) + 1) if cuts else len(data)
            for piece in (data[:cut], data[cut:]):
                if not piece:
                    continue
                new = client.receive_stream_data(channel, piece, 0.0)
                events.extend(new)
                for ev in new:
                    if isinstance(ev, MessageReceived) and ev.size:
                        client.acknowledge(ev.stream_id, ev.size)
                states.append(
                    [
                        (s.stream_id, s.state, s.recv.credit, s.recv_seq, s.reasm.next)
                        for s in client._streams.values()
                    ]
                )

    if general:
        with general_channels():
            feed()
    else:
        feed()
    return (
        _normal(events),
        states,
        dict(client.frames_received),
        client.stream_data_to_send(0.0),
        client.closed,
    )


@CI
@given(st.lists(op_spec, min_size=1, max_size=24), st.lists(st.integers(0, 10_000), max_size=5))
def test_channel_fast_path_matches_the_general_path(
    ops: list[tuple[str, int, int, str, bool]], cuts: list[int]
) -> None:
    wire = _wire(ops)
    assert _run(wire, cuts, general=False) == _run(wire, cuts, general=True)


def test_the_channel_fast_path_is_taken() -> None:
    """The comparison above compares something: a plain PARTIAL skips _handle_frame."""
    wire = _wire([("send", 1, 100, "more", False), ("send", 1, 100, "more", False)])
    calls: list[Any] = []
    handle = ReceiveMixin._handle_frame

    def spy(self: Any, frame: Frame, *args: Any) -> None:
        calls.append(frame)
        handle(self, frame, *args)

    ReceiveMixin._handle_frame = spy  # type: ignore[method-assign]
    try:
        events, *_ = _run(wire, [], general=False)
    finally:
        ReceiveMixin._handle_frame = handle  # type: ignore[method-assign]
    partials = [e for e in events if e[0] == "MessageReceived"]
    assert len(partials) == 2
    assert not [f for f in calls if f.stream_id == 1 and not f.flags & Flags.SYN]


@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_message_received_is_the_dataclass(
    sid: int, seq: int, payload: bytes, ext: dict[str, int], more: bool, end: bool, size: int
) -> None:
    fast = message_received(sid, seq, payload, ext, more, end, size)
    slow = MessageReceived(sid, seq, payload, ext, more=more, end_stream=end, size=size)
    assert fast == slow and type(fast) is MessageReceived and hash(fast.stream_id) == hash(sid)
    assert repr(fast) == repr(slow)
