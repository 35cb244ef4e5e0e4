"""``EncodedExt``: an ext map encoded once (the router's FINAL telemetry, whose size it
measures before sending). The sending path and the frame encoder must take its bytes and
put on the wire exactly what the same map as a plain dict gives, binary and text, and it
must refuse to change after it was encoded."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import LocalProtocolError, StreamOpened, encode_frame
from atp_proto.frames._cbor import EncodedExt, encode_ext
from atp_proto.testing.pair import ConnectionPair

from .helpers import CI, SEED_SYN, one, opened_pair, text_wire, wire

TELEMETRY = {
    "telemetry": {
        "tokens": 120,
        "usd_micros": 240,
        "latency_ms": 3.25,
        "adapters": ["p1"],
        "tried": [{"adapter": "p1", "ok": True, "confidence": 0.62}],
        "why": "the only adapter that fits the budget",
    }
}

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
exts = st.dictionaries(st.sampled_from(["telemetry", "usage", "x-a", "meta"]), values, max_size=3)


@CI
@given(exts)
def test_same_bytes_as_the_plain_map(ext: dict[str, Any]) -> None:
    if not ext:
        return
    enc = EncodedExt(ext)
    assert enc == ext and enc.cbor == encode_ext(ext) == encode_ext(enc)
    assert cbor2.loads(enc.cbor) == ext


def _final_on_the_wire(ext: Any, text: bool) -> list[Any]:
    if text:  # a stream opened by a text SYN is answered in text (the JSON mapping)
        p = ConnectionPair()
        opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
        p.router.send_message(opened.stream_id, b"\xa1\x61a\x01", end_stream=True, ext=ext)
        return text_wire(p.router)
    p, sid = opened_pair()
    p.router.send_message(sid, b"\xa1\x61a\x01", end_stream=True, ext=ext)
    return [encode_frame(f) for f in wire(p.router)]


@pytest.mark.parametrize("text", [False, True])
def test_a_final_with_it_is_the_final_with_the_dict(text: bool) -> None:
    got = _final_on_the_wire(EncodedExt(TELEMETRY), text)
    assert got == _final_on_the_wire(dict(TELEMETRY), text)
    assert len(got) == 1 and ("adapters" if text else b"adapters") in got[0]


def test_its_bytes_are_used_not_recomputed() -> None:
    """The wire carries the bytes encoded at construction: they are what is sent."""
    enc = EncodedExt(TELEMETRY)
    marker = cbor2.dumps({"telemetry": {"marker": 1}})
    object.__setattr__(enc, "cbor", marker)  # what the frames layer would take
    (frame,) = _final_on_the_wire(enc, text=False)
    assert marker in frame and b"adapters" not in frame


def test_read_only() -> None:
    enc = EncodedExt(TELEMETRY)
    for change in (
        lambda: enc.__setitem__("x", 1),
        lambda: enc.__delitem__("telemetry"),
        lambda: enc.update(x=1),
        lambda: enc.pop("telemetry"),
        enc.popitem,
        lambda: enc.setdefault("x", 1),
        enc.clear,
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert enc == TELEMETRY


def test_refuses_what_encode_ext_refuses() -> None:
    with pytest.raises(LocalProtocolError, match="reserved"):
        EncodedExt({"stream_id": 1})
    with pytest.raises(LocalProtocolError):
        EncodedExt({"x": object()})
