"""Regression tests from a review of what a hostile peer can do to the core
(ATP-LIMIT-001, ATP-LIMIT-002, ATP-BUDGET-001)."""

from __future__ import annotations

from atp_proto.frames import (
    Connection,
    Flags,
    Frame,
    Role,
    StreamOpened,
    encode_frame,
)

from .helpers import of


def test_unknown_aliases_do_not_grow_the_alias_table() -> None:
    """ATP-LIMIT-002: frames naming never-opened aliases store nothing."""
    r = Connection(Role.ROUTER, now=0.0)
    for i in range(5000):
        r.receive_text(
            f'{{"type": "ERROR", "stream_id": "x{i}", "error": {{"code": "E", "message": ""}}}}', 0
        )
        r.receive_text(f'{{"stream_id": "y{i}", "flags": ["RST"]}}', 0)
        r.data_to_send()
    assert r.json._by_alias == {} and r.json._by_id == {}


def test_fragments_do_not_pin_their_messages() -> None:
    """ATP-LIMIT-001: a one-byte fragment sharing a message with a large ignored frame is
    copied, so the message can be freed (max_message_size bounds what is held)."""
    r = Connection(Role.ROUTER, now=0.0)
    r.receive_message(encode_frame(Frame.data(1, 1, {"p": 1}, flags=Flags.SYN)), 0)
    filler = encode_frame(Frame(0x80, 0, 0, payload=b"z" * 500_000))  # private type: ignored
    for i in range(20):
        frag = encode_frame(Frame.data(1, 2, raw=b"a", frag_seq=i, flags=Flags.CONT))
        r.receive_message(frag + filler, 0)
    parts = r._streams[1].reasm.parts
    assert len(parts) == 20 and all(type(p) is bytes and len(p) == 1 for p in parts)


def test_syn_payload_does_not_pin_a_large_message() -> None:
    r = Connection(Role.ROUTER, now=0.0)
    syn = encode_frame(Frame.data(1, 1, {"p": 1}, flags=Flags.SYN))
    filler = encode_frame(Frame(0x80, 0, 0, payload=b"z" * 100_000))
    (opened,) = of(r.receive_message(syn + filler, 0), StreamOpened)
    assert type(opened.payload) is bytes
