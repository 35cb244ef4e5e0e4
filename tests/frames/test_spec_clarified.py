"""The core's answers to the spec points an independent implementer found unclear
(examples/node-client/README.md, "Where the spec was unclear"), each as the spec now
decides it: one test per point, against the sans-IO core in memory."""

from __future__ import annotations

from atp_proto.frames import (
    ConnectionClosed,
    ErrorCode,
    Frame,
    StreamReset,
    encode_frame,
)
from atp_proto.frames._types import MAX_WINDOW

from .helpers import of, opened_pair


def test_credit_outside_its_range_is_eproto_and_a_window_overflow_ewindow() -> None:
    """[ATP-FLOW-004, ATP-FRAME-023] a credit of 2^31 (or more) is a malformed frame,
    EPROTO on the stream, whatever the window holds; a valid credit that would take the
    window past 2^31-1 stays EWINDOW. The session lives on after either."""
    for credit in (MAX_WINDOW + 1, 2**32, 2**63):
        p, sid = opened_pair()
        evs = p.router.receive_message(encode_frame(Frame.window_update(sid, credit=credit)), 0)
        (reset,) = of(evs, StreamReset)
        assert (reset.stream_id, reset.code) == (sid, ErrorCode.EPROTO), credit
        assert not of(evs, ConnectionClosed)
    p, sid = opened_pair()
    evs = p.router.receive_message(encode_frame(Frame.window_update(sid, credit=MAX_WINDOW)), 0)
    (reset,) = of(evs, StreamReset)  # the window already held 256 KiB of credit
    assert (reset.stream_id, reset.code) == (sid, ErrorCode.EWINDOW)
    assert not of(evs, ConnectionClosed)
