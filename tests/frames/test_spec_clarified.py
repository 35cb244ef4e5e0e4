"""The core's answers to the spec points an independent implementer found unclear
(examples/node-client/README.md, "Where the spec was unclear"), each as the spec now
decides it: one test per point, against the sans-IO core in memory."""

from __future__ import annotations

import json

from atp_proto.frames import (
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    StreamOpened,
    StreamReset,
    encode_frame,
)
from atp_proto.frames._types import MAX_WINDOW
from atp_proto.testing.pair import ConnectionPair

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


def test_syn_meta_that_is_not_a_map_is_eproto_in_both_encodings() -> None:
    """[ATP-FRAME-025] a SYN whose meta is a list, a number or text is a stream error
    EPROTO, binary or JSON text, never read as no meta; a map (unknown keys and all) opens
    the stream, and the session lives on after a refusal."""
    for meta in ([1], 7, "qa", None, b"x"):
        p = ConnectionPair()
        p.handshake()
        syn = Frame.data(1, 1, raw=b"\xa0", flags=Flags.SYN, ext={"meta": meta})
        evs = p.router.receive_message(encode_frame(syn), 0)
        (reset,) = of(evs, StreamReset)
        assert (reset.stream_id, reset.code) == (1, ErrorCode.EPROTO), meta
        assert "meta" in reset.message and not of(evs, StreamOpened)
        ok = Frame.data(3, 1, raw=b"\xa0", flags=Flags.SYN, ext={"meta": {"x_hint": 1}})
        (opened,) = of(p.router.receive_message(encode_frame(ok), 0), StreamOpened)
        assert opened.meta == {"x_hint": 1}
    p = ConnectionPair()
    text = json.dumps(
        {"type": 0, "flags": 1, "stream_id": 1, "msg_seq": 1, "meta": [1], "payload": {}}
    )
    (reset,) = of(p.router.receive_text(text, 0), StreamReset)
    assert (reset.stream_id, reset.code) == (1, ErrorCode.EPROTO)
