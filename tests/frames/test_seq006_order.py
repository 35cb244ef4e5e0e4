"""ATP-SEQ-006 before ATP-SEQ-004 for every rule of SEQ-006, not only the SYN one: FIN on a
CONT fragment and ext on a later fragment are EPROTO even when their numbers are also
wrong (found in a second reading of the core, session 6)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    ErrorCode,
    StreamReset,
)
from atp_proto.frames._types import CONT_BIT, FIN_BIT

from .helpers import frag, one, opened_pair


@pytest.mark.parametrize(
    ("what", "seq", "fseq", "flags", "ext"),
    [
        ("FIN on a CONT fragment, frag_seq also wrong", 2, 3, CONT_BIT | FIN_BIT, None),
        ("FIN on a CONT fragment, msg_seq also wrong", 9, 0, CONT_BIT | FIN_BIT, None),
        ("ext on a later fragment, frag_seq also wrong", 2, 3, 0, {"x": 1}),
        ("ext on a later fragment, msg_seq also wrong", 7, 1, CONT_BIT, {"x": 1}),
    ],
)
def test_seq006_violations_are_eproto_even_out_of_sequence(
    what: str, seq: int, fseq: int, flags: int, ext: dict[str, object] | None
) -> None:
    """ATP-SEQ-006: 'a receiver MUST treat a violation as a stream error EPROTO, even where
    the frame's frag_seq is also not the one expected'. The SYN case was moved before the
    sequence check last session; FIN on a CONT fragment and ext on a later fragment were
    still answered ESEQ_RETRY when their numbers were also wrong."""
    for channel in (False, True):
        p, sid = opened_pair()
        raw = frag(sid, seq, fseq, flags, ext=ext)
        evs = (
            p.router.receive_stream_data(sid, raw, 0) if channel else p.router.receive_data(raw, 0)
        )
        reset = one(evs, StreamReset)
        assert reset.code == ErrorCode.EPROTO, (what, channel, reset)


def test_seq006_violation_in_sequence_is_still_eproto() -> None:
    p, sid = opened_pair()
    evs = p.router.receive_data(frag(sid, 2, 0, CONT_BIT) + frag(sid, 2, 1, 0, ext={"x": 1}), 0)
    assert one(evs, StreamReset).code == ErrorCode.EPROTO
    p, sid = opened_pair()
    evs = p.router.receive_data(frag(sid, 2, 0, CONT_BIT | FIN_BIT), 0)
    assert one(evs, StreamReset).code == ErrorCode.EPROTO
