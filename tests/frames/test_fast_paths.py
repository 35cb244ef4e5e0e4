"""Differential property tests: each fast path against the general path beside it.

``Stream.receive_data`` and ``Connection.send_message`` take a shortcut for the common
case (a whole, in-order message without ext, within credit). The same input through the
shortcut and through the general path alone (``Stream.receive_general``,
``Connection.send_message_general``) must give the same events, the same errors and the
same bytes on the wire, whatever the input, well formed or not (the gRPC client's h2 fast
path has the same kind of test, tests/adapters/test_grpc_wire.py).
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
    Role,
    encode_frame,
)
from atp_proto.frames._stream import Stream

from .helpers import CI

LIMITS = Limits(max_frame_size=4096, initial_window=16384, max_message_size=32768)


@contextmanager
def general_receive() -> Iterator[None]:
    """Every stream receives through the general path only."""
    fast = Stream.receive_data
    Stream.receive_data = Stream.receive_general  # type: ignore[method-assign]
    try:
        yield
    finally:
        Stream.receive_data = fast  # type: ignore[method-assign]


def _normal(events: list[Event]) -> list[Any]:
    """Events as comparable values (payload views as bytes)."""
    out = []
    for ev in events:
        fields = {k: getattr(ev, k) for k in ev.__dataclass_fields__}  # type: ignore[attr-defined]
        out.append(
            (
                type(ev).__name__,
                {k: bytes(v) if isinstance(v, memoryview) else v for k, v in fields.items()},
            )
        )
    return out


def _router_run(wire: list[bytes], *, general: bool) -> tuple[Any, ...]:
    router = Connection(Role.ROUTER, limits=LIMITS, now=0.0)
    events: list[Event] = []
    states: list[object] = []

    def feed() -> None:
        for data in wire:
            new = router.receive_message(data, 0.0)
            events.extend(new)
            states.append(  # the stream's own state too: a drift shows before it matters
                [
                    (st.stream_id, st.state, st.recv.credit, st.recv_seq, st.reasm.next)
                    for st in router._streams.values()
                ]
            )
            for ev in new:
                size = getattr(ev, "size", 0)
                if size:
                    router.acknowledge(ev.stream_id, size)  # type: ignore[attr-defined]

    if general:
        with general_receive():
            feed()
    else:
        feed()
    return _normal(events), states, router.data_to_send(0.0)


frame_spec = st.tuples(
    # a deviation from the frame the stream expects next: mostly none, so that runs of
    # valid frames (the fast path's case) are common, with the odd wrong msg_seq/frag_seq
    st.sampled_from([(0, 0)] * 8 + [(-1, 0), (1, 0), (0, 1)]),
    st.sampled_from(
        [0, 0, Flags.MORE, Flags.MORE, Flags.FIN, Flags.CONT, Flags.CONT | Flags.MORE, Flags.RST]
    ),
    st.integers(0, 9).map(lambda n: n == 0),  # ext now and then
    st.one_of(st.integers(0, 300), st.integers(0, 6000)),  # may pass frame size or credit
)


@CI
@given(st.lists(frame_spec, min_size=1, max_size=16))
def test_receive_fast_path_matches_the_general_path(
    specs: list[tuple[tuple[int, int], int, bool, int]],
) -> None:
    syn = encode_frame(Frame.data(1, 1, raw=b"syn", flags=Flags.SYN))
    wire = [syn]
    seq, frag = 2, 0
    for (seq_off, frag_off), flags, with_ext, size in specs:
        ext = {"telemetry": {"n": size}} if with_ext else None
        frame = Frame.data(
            1,
            max(seq + seq_off, 0),
            raw=b"x" * size,
            flags=flags,
            frag_seq=frag + frag_off,
            ext=ext,
        )
        wire.append(encode_frame(frame))
        if flags & Flags.CONT:
            frag += 1
        else:
            seq, frag = seq + 1, 0
    assert _router_run(wire, general=False) == _router_run(wire, general=True)


send_spec = st.one_of(
    st.tuples(st.just("msg"), st.integers(0, 9000), st.booleans(), st.booleans(), st.booleans()),
    st.tuples(
        st.just("credit"), st.integers(1, 20000), st.just(False), st.just(False), st.just(False)
    ),
)


def _send_run(ops: list[tuple[str, int, bool, bool, bool]], *, general: bool) -> list[Any]:
    client = Connection(Role.CLIENT, limits=LIMITS, now=0.0)
    router = Connection(Role.ROUTER, limits=LIMITS, now=0.0)
    client.send_capabilities()
    client.open_stream(b"task", now=None)
    for data in client.data_to_send(0.0):
        assert isinstance(data, bytes)
        router.receive_message(data, 0.0)
    router.data_to_send(0.0)
    send = router.send_message_general if general else router.send_message
    log: list[Any] = []
    for op, n, more, end, with_ext in ops:
        if op == "credit":
            events = router.receive_message(encode_frame(Frame.window_update(1, credit=n)), 0.0)
            log.append(_normal(events))
        else:
            try:
                send(
                    1,
                    b"p" * n,
                    more=more,
                    end_stream=end,
                    ext={"telemetry": {"n": n}} if with_ext else None,
                )
                log.append("ok")
            except LocalProtocolError as exc:
                log.append((type(exc).__name__, exc.code, exc.message))
        log.append(router.data_to_send(0.0))
        log.append((router.send_credit(1), router.outbound_buffered(1), router.stream_state(1)))
    return log


@CI
@given(st.lists(send_spec, min_size=1, max_size=12))
def test_send_fast_path_matches_the_general_path(
    ops: list[tuple[str, int, bool, bool, bool]],
) -> None:
    assert _send_run(ops, general=False) == _send_run(ops, general=True)


def test_the_fast_paths_are_taken() -> None:
    """The differential tests compare something: the shortcuts do run on the common case."""
    calls = []
    general = Stream.receive_general

    def spy(self: Stream, *args: Any) -> Any:
        calls.append(args)
        return general(self, *args)

    Stream.receive_general = spy  # type: ignore[method-assign]
    try:
        _router_run(
            [
                encode_frame(Frame.data(1, 1, raw=b"syn", flags=Flags.SYN)),
                encode_frame(Frame.data(1, 2, raw=b"in", flags=Flags.MORE)),
            ],
            general=False,
        )
    finally:
        Stream.receive_general = general  # type: ignore[method-assign]
    assert len(calls) == 1  # the SYN only
