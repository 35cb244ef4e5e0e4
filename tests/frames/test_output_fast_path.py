"""Differential property test of the WebSocket view's fast path (``Output.coalesced``):
one join when everything queued is binary and fits one message, the general path
(``Output.coalesced_general``) otherwise. Both must give the same messages and leave the
queue the same, whatever mix of binary and text frames and whatever cap (ATP-WS-011)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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
