"""Differential property test of the WebSocket view's fast path (``Output.coalesced``):
one join when everything queued is binary and fits one message, the general path
(``Output.coalesced_general``) otherwise. Both must give the same messages and leave the
queue the same, whatever mix of binary and text frames and whatever cap (ATP-WS-011).
The QUIC view (``Output.per_stream``, one pass) is held to the plain algorithm the same
way (ATP-QUIC-003/005/006)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import LocalProtocolError
from atp_proto.frames._output import Output

from .helpers import CI

_items = st.lists(
    st.one_of(st.binary(min_size=1, max_size=64), st.text(min_size=1, max_size=16)),
    max_size=30,
)


def _queue(items: list[bytes | str]) -> Output:
    out = Output()
    for i, item in enumerate(items):
        out.push(i % 3, item, False)
    return out


@CI
@given(items=_items, cap=st.integers(min_value=1, max_value=2048))
def test_coalesced_fast_path_equals_general_path(items: list[bytes | str], cap: int) -> None:
    fast, general = _queue(items), _queue(items)
    assert fast.coalesced(cap) == general.coalesced_general(cap)
    assert (fast.items, fast.size) == (general.items, general.size) == ([], 0)


def test_fast_path_cases() -> None:
    """The three cases by name: all binary within the cap (one message), over the cap
    (split, each message within it unless one frame alone is larger), a text frame."""
    frames: list[bytes | str] = [b"a" * 10, b"b" * 10, b"c" * 10]
    assert _queue(frames).coalesced(30) == [b"a" * 10 + b"b" * 10 + b"c" * 10]
    assert _queue(frames).coalesced(25) == [b"a" * 10 + b"b" * 10, b"c" * 10]
    assert _queue([b"a", "t", b"b"]).coalesced(100) == [b"a", "t", b"b"]
    assert _queue([]).coalesced(100) == []


def _per_stream_reference(items: list[tuple[int, bytes | str, bool]]) -> list[tuple[Any, ...]]:
    """The QUIC view spelled plainly: consecutive items of one stream joined, the run's
    end flag that of its last item; a text frame anywhere refuses the whole queue."""
    if any(isinstance(data, str) for _, data, _ in items):
        return ["refused"]
    out: list[tuple[Any, ...]] = []
    for sid, data, end in items:
        if out and out[-1][0] == sid:
            out[-1] = (sid, out[-1][1] + data, end)
        else:
            out.append((sid, data, end))
    return out


_stream_items = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 3, 5]),
        st.one_of(st.binary(min_size=1, max_size=40), st.text(min_size=1, max_size=8)),
        st.booleans(),
    ),
    max_size=40,
)


@CI
@given(_stream_items, st.integers(0, 9).map(lambda n: n == 0))
def test_per_stream_equals_the_plain_algorithm(
    items: list[tuple[int, bytes | str, bool]], allow_text: bool
) -> None:
    if not allow_text:  # text frames are rare in a real queue: most runs are all binary
        items = [(s, d if isinstance(d, bytes) else d.encode(), e) for s, d, e in items]
    out = Output()
    for sid, data, end in items:
        out.push(sid, data, end)
    want = _per_stream_reference(items)
    try:
        got: list[Any] = list(out.per_stream())
    except LocalProtocolError:
        got = ["refused"]
        assert len(out.items) == len(items)  # nothing taken: nothing queued is lost
    else:
        assert (out.items, out.size) == ([], 0)
    assert got == want
