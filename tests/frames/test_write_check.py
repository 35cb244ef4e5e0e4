"""``Connection.write_check``: a stream's "may queue now" test as one closure, held to the
answer of the calls it replaces (``outbound_buffered`` + ``queued_bytes`` + the
transport's ``pending_bytes`` against the high water), whatever happens to the stream —
messages within and beyond credit, credit granted, output taken, the stream ended, reset,
forgotten, another stream's output — for both kinds of transport (none: WebSocket; one
with ``pending_bytes``: QUIC, ATP-QUIC-010)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import strategies as st

from atp_proto.frames import Connection, Frame, Limits, LocalProtocolError, Role, encode_frame

from .helpers import CI

LIMITS = Limits(max_frame_size=4096, initial_window=16384, max_message_size=32768)
HIGH_WATER = 6000


@dataclass
class FakeIO:
    """The one attribute write_check reads of a per-stream transport."""

    pending_bytes: int = 0


def _reference(conn: Connection, sid: int, io: FakeIO | None) -> bool:
    """The session's can_write, spelled with the public calls (session.py's logic)."""
    if conn.outbound_buffered(sid):
        return False
    pending = conn.queued_bytes + (io.pending_bytes if io is not None else 0)
    return pending <= HIGH_WATER


op = st.one_of(
    st.tuples(
        st.just("send"),
        st.sampled_from([1, 3]),
        st.one_of(st.sampled_from([0, 200, 4000, 8000]), st.integers(0, 9000)),
        st.integers(0, 7).map(lambda n: n == 0),  # now and then the stream's last message
    ),
    st.tuples(st.just("credit"), st.sampled_from([1, 3]), st.integers(1, 20000), st.just(False)),
    st.tuples(st.just("take"), st.just(0), st.just(0), st.just(False)),
    st.tuples(st.just("take"), st.just(0), st.just(0), st.just(False)),
    st.tuples(st.just("pending"), st.just(0), st.integers(0, 8000), st.just(False)),
    st.tuples(st.just("reset"), st.sampled_from([1, 3]), st.just(0), st.just(False)),
)


@CI
@given(st.lists(op, min_size=3, max_size=24), st.booleans())
# DATA waiting for credit after the output was taken: the case a closure that forgot the
# outbox would get wrong (hypothesis finds it only now and then on its own)
@example([("send", 1, 8000, False)] * 3 + [("take", 0, 0, False)], True)
@example([("send", 1, 8000, False)] * 3 + [("take", 0, 0, False)], False)
def test_write_check_answers_as_the_calls_it_replaces(
    ops: list[tuple[str, int, int, bool]], per_stream: bool
) -> None:
    client = Connection(Role.CLIENT, limits=LIMITS, now=0.0)
    router = Connection(Role.ROUTER, limits=LIMITS, now=0.0)
    client.send_capabilities()
    client.open_stream(b"one", now=None)
    client.open_stream(b"two", now=None)
    for data in client.data_to_send(0.0):
        assert isinstance(data, bytes)
        router.receive_message(data, 0.0)
    router.data_to_send(0.0)
    io = FakeIO() if per_stream else None
    checks = {sid: router.write_check(sid, HIGH_WATER, io) for sid in (1, 3)}
    for kind, sid, n, end in ops:
        if kind == "send":
            # a stream that has ended refuses: the check must still answer as before
            with contextlib.suppress(LocalProtocolError):
                router.send_message(sid, b"p" * n, more=not end, end_stream=end)
        elif kind == "credit":
            router.receive_message(encode_frame(Frame.window_update(sid, credit=n)), 0.0)
        elif kind == "take":
            if per_stream:
                router.stream_data_to_send(0.0)
            else:
                router.data_to_send(0.0)
        elif kind == "pending" and io is not None:
            io.pending_bytes = n
        elif kind == "reset":
            router.send_error(sid, "ECANCELLED", "reset by the test")
        for s, check in checks.items():
            got, want = check(), _reference(router, s, io)
            assert got is want, (kind, s, got, want)


def test_write_check_says_no_for_each_reason() -> None:
    """Each condition turns the answer on its own (the property test could pass with a
    closure that always said yes if its runs never met one)."""
    client = Connection(Role.CLIENT, limits=LIMITS, now=0.0)
    router = Connection(Role.ROUTER, limits=LIMITS, now=0.0)
    client.send_capabilities()
    client.open_stream(b"one", now=None)
    for data in client.data_to_send(0.0):
        assert isinstance(data, bytes)
        router.receive_message(data, 0.0)
    router.data_to_send(0.0)
    io = FakeIO()
    check = router.write_check(1, HIGH_WATER, io)
    plain = router.write_check(1, HIGH_WATER)
    assert check() and plain()
    io.pending_bytes = HIGH_WATER + 1  # the transport holds too much unacknowledged
    assert not check() and plain()
    io.pending_bytes = HIGH_WATER  # at the high water, not over it: may write
    assert check() and plain()
    io.pending_bytes = 0
    router.send_message(1, b"p" * 2976, more=True)
    router.send_message(1, b"p" * 2976, more=True)  # 2 x (24 + 2976): at the high water
    assert router.queued_bytes == HIGH_WATER
    assert check() and plain()
    router.stream_data_to_send(0.0)
    router.send_message(1, b"p" * 4000, more=True)  # queued: within the high water
    assert check() and plain()
    router.send_message(1, b"p" * 4000, more=True)  # queued: over it
    assert not check() and not plain()
    router.stream_data_to_send(0.0)
    assert check()
    router.send_message(1, b"p" * 4000, more=True)
    router.send_message(1, b"p" * 4000, more=True)
    router.send_message(1, b"p" * 4000, more=True)  # past the 16 KiB credit: waits
    router.stream_data_to_send(0.0)
    assert router.outbound_buffered(1)
    assert not check() and not plain()
    router.receive_message(encode_frame(Frame.window_update(1, credit=16384)), 0.0)
    router.stream_data_to_send(0.0)
    assert check() and plain()
