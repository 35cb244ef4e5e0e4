"""Differential property test: ``FrameDecoder.next_frame``'s shortcut against the general path.

``next_frame`` decodes a whole version-1 frame of a known type without ext, with a known
qos and within the limits, in one step; everything else goes through
``next_frame_general``. Fed the same bytes in the same chunks, a decoder with the shortcut
and one that only takes the general path must give the same frames, the same errors and
hold the same bytes, whatever the input: well-formed frames, frames with ext, unknown
types, bad versions, reserved stream-id bits, oversized bodies, bad qos, truncations and
random bytes.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import FrameDecodeError, FrameDecoder, Limits, encode_frame
from atp_proto.frames._codec import HEADER

from .helpers import CI

#: every test here runs on the C accelerator and on the pure-Python path (issue 10 item 6)
pytestmark = pytest.mark.usefixtures("cbor_path")


class _GeneralDecoder(FrameDecoder):
    __slots__ = ()
    next_frame = FrameDecoder.next_frame_general  # type: ignore[assignment]


def _run(chunks: list[bytes], limits: Limits, *, general: bool) -> list[Any]:
    dec = (_GeneralDecoder if general else FrameDecoder)(limits)
    out: list[Any] = []
    for chunk in chunks:
        try:
            dec.feed(chunk)
        except FrameDecodeError as exc:
            out.append(("feed error", exc.code, str(exc), exc.stream_id))
            continue
        for _ in range(64):
            try:
                frame = dec.next_frame()
            except FrameDecodeError as exc:
                out.append(("error", exc.code, str(exc), exc.stream_id))
                continue
            if frame is None:
                break
            assert type(frame.payload) is memoryview
            out.append(
                (
                    "frame",
                    [type(v) for v in frame],
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in frame),
                )
            )
        out.append(("held", dec.buffered, len(dec._buf) - dec._pos, dec._skip))
    return out


#: mostly well-formed values (the shortcut's case), then each way of being wrong
_ext = st.sampled_from(
    [b""] * 6 + [b"\xa0", b"\xa1\x61a\x01", b"\xa1\x61a\xf9\x7e\x00", b"\xff", b"\x01"]
)


@st.composite
def _frame_bytes(draw: st.DrawFn) -> bytes:
    ext = draw(_ext)
    payload = draw(st.binary(max_size=40))
    header = HEADER.pack(
        draw(st.sampled_from([1] * 8 + [0, 2])),  # version
        draw(st.sampled_from([0, 1, 2, 3, 4] * 3 + [0x10, 0xFF])),  # type: known and not
        draw(st.integers(0, 0xFF)),  # flags
        draw(st.sampled_from([0, 1, 2, 3] * 4 + [4, 0xFF])),  # qos: known and not
        draw(st.sampled_from([0, 1, 7, 0x7FFF_FFFF] * 3 + [0x8000_0000, 0xFFFF_FFFF])),
        draw(st.integers(0, 0xFFFF_FFFF)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.sampled_from([len(ext)] * 8 + [0, 1 << 20, 0xFFFF_FFFF])),
        draw(st.sampled_from([len(payload)] * 8 + [len(payload) + 3, 1 << 31])),
    )
    return header + ext + payload


@st.composite
def _stream(draw: st.DrawFn) -> tuple[list[bytes], Limits]:
    parts = draw(
        st.lists(st.one_of(_frame_bytes(), _frame_bytes(), st.binary(max_size=30)), max_size=8)
    )
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    limits = Limits(
        max_frame_size=draw(st.sampled_from([1 << 20] * 4 + [0, 8, 32, 1 << 40])),
        max_ext_size=draw(st.sampled_from([64 << 10] * 3 + [0, 2])),
    )
    return chunks, limits


@CI
@given(_stream())
def test_shortcut_decodes_as_the_general_path(case: tuple[list[bytes], Limits]) -> None:
    chunks, limits = case
    assert _run(chunks, limits, general=False) == _run(chunks, limits, general=True)


def test_shortcut_is_taken_for_a_plain_data_frame() -> None:
    from atp_proto.frames import Frame

    wire = encode_frame(Frame.data(1, 2, raw=b"x" * 200))
    dec = _GeneralDecoder()
    dec.feed(wire)
    general = dec.next_frame()
    fast = FrameDecoder()
    fast.feed(wire)
    assert fast.next_frame() == general and general is not None
    assert struct.unpack_from("!I", wire, 20) == (200,)
