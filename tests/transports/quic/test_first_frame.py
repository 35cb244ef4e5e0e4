"""The wait for a new QUIC stream's whole first frame (ATP-QUIC-021), piece by piece:
the header may come split, the frame is handed on only once whole (or at once when it
announces more than FIRST_FRAME_LIMIT), and the pieces are joined once, not at each
piece (a SYN sent in many small pieces must not cost a copy per piece)."""

from __future__ import annotations

import struct

from atp_proto.testing.frames import syn_frame
from atp_proto.transports._quic_frames import FIRST_FRAME_LIMIT, FirstFrame


def test_a_syn_in_small_pieces_is_whole_once_and_joined_once() -> None:
    syn = syn_frame(5, "p" * 50_000)
    head = FirstFrame()
    pieces = [syn[i : i + 7] for i in range(0, len(syn), 7)]
    for n, piece in enumerate(pieces, 1):
        assert not head.complete()
        head.add(piece)
        assert head.size == min(7 * n, len(syn))
        if head.size >= 24:
            assert head.need == len(syn)  # known from the header, split over 4 pieces
    assert head.complete()
    # kept as pieces (the header's four joined), not re-joined at every piece
    assert len(head.parts) == len(pieces) - 3
    assert head.take() == syn


def test_a_first_frame_over_the_limit_is_handed_on_at_once() -> None:
    """Its header announces more than FIRST_FRAME_LIMIT: not waited for (the core
    refuses it, ETOOBIG), so nothing of it piles up here."""
    header = struct.pack("!BBBBIIHHII", 1, 1, 1, 0, 5, 0, 0, 0, 0, FIRST_FRAME_LIMIT + 1)
    head = FirstFrame()
    head.add(header[:10])
    assert not head.complete()
    head.add(header[10:])
    assert head.complete() and head.take() == header
