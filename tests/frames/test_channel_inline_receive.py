"""The per-channel receive path's inline shortcut (``ReceiveMixin._drain_channel`` takes a
whole in-order message within credit without ``Stream.receive_data``) on the inputs the
random ones of tests/frames/test_channel_fast_path.py rarely reach: a whole-message
frame (frag_seq 0, no CONT) arriving while a fragmented message of the same msg_seq is
being reassembled, which the general path refuses (ESEQ_RETRY, ATP-SEQ), a skipped
msg_seq, the FIN that ends the stream and a frame after it. Fast and general must agree."""

from __future__ import annotations

import pytest

from atp_proto.frames import Flags, Frame, FrameDecoder, encode_frame

from .test_channel_fast_path import _run, _wire


def _next_seq() -> tuple[list[tuple[int, bytes]], int]:
    """The opening wire of stream 1 and the msg_seq of the router's next message on it."""
    wire = _wire([("send", 1, 10, "more", False)])
    dec = FrameDecoder()
    dec.feed(wire[-1][1])
    last = [f for f in iter(dec.next_frame, None) if f.stream_id == 1][-1]
    return wire, last.msg_seq + 1


@pytest.mark.parametrize("case", ["restart_in_reassembly", "fin", "fin_then_more", "wrong_seq"])
def test_inline_shortcut_agrees_with_the_general_path(case: str) -> None:
    wire, seq = _next_seq()
    frames: list[Frame]
    if case == "restart_in_reassembly":
        frames = [
            Frame.data(1, seq, raw=b"a" * 100, flags=Flags.MORE | Flags.CONT, frag_seq=0),
            Frame.data(1, seq, raw=b"b" * 100, flags=Flags.MORE, frag_seq=0),
        ]
    elif case == "fin":
        frames = [
            Frame.data(1, seq, raw=b"d", flags=Flags.MORE),
            Frame.data(1, seq + 1, raw=b"e", flags=Flags.FIN),
        ]
    elif case == "fin_then_more":
        frames = [
            Frame.data(1, seq, raw=b"f", flags=Flags.FIN),
            Frame.data(1, seq + 1, raw=b"g", flags=Flags.MORE),
        ]
    else:
        frames = [Frame.data(1, seq + 1, raw=b"h", flags=Flags.MORE)]
    wire = wire + [(1, encode_frame(f)) for f in frames]
    fast = _run(wire, [], general=False)
    assert fast == _run(wire, [], general=True)
    events = [e[0] for e in fast[0]]
    delivered = events.count("MessageReceived")  # the opening wire brought one
    if case in ("restart_in_reassembly", "wrong_seq"):
        assert delivered == 1 and ("StreamReset" in events or fast[4]), events  # refused
    elif case == "fin":
        assert delivered == 3, events
    else:  # the frame after the FIN is not a message of the stream
        assert delivered == 2, events
