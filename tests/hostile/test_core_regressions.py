"""Defects the hostile peer (tests/hostile/test_hostile_e2e.py) found in the reference,
pinned at the sans-IO core: one test per fix, citing the requirement it broke."""

from __future__ import annotations

import json

import cbor2
import pytest

from atp_proto.frames import (
    ConnectionClosed,
    Encoding,
    Flags,
    Frame,
    FrameType,
    RemoteProtocolError,
    SequenceExhausted,
    StreamClosedError,
    StreamReset,
    encode_frame,
)
from atp_proto.frames._validate import validate_frame

from ..frames.helpers import ConnectionPair, one

_TASK = cbor2.dumps({"type": "agent.task", "content": {"prompt": "x"}})


def test_a_null_session_id_is_not_text() -> None:
    """[ATP-EXT-010] ``session_id`` null is not text: a stream error EPROTO on a SYN, a
    connection error on stream 0, in the binary encoding as in the JSON mapping (the
    validator let a null through as if the key were absent)."""
    syn = Frame(FrameType.DATA, Flags.SYN, 1, 1, ext={"session_id": None}, payload=_TASK)
    try:
        validate_frame(syn)
    except RemoteProtocolError as e:
        assert (e.code, e.stream_id) == ("EPROTO", 1)
    else:
        raise AssertionError("a null session_id passed the validator")
    p = ConnectionPair()
    p.open()
    p.pump()
    events = p.router.receive_message(encode_frame(syn.replace(stream_id=3)), 1.0)
    reset = one(events, StreamReset)
    assert (reset.code, reset.stream_id) == ("EPROTO", 3) and not p.router.closed
    hb = Frame(FrameType.DATA, Flags.HB, 0, ext={"session_id": None}, payload=b"x")
    closed = one(p.router.receive_message(encode_frame(hb), 1.0), ConnectionClosed)
    assert closed.code == "EPROTO"
    t = ConnectionPair()
    t.open(encoding=Encoding.JSON)
    t.pump()
    text = {"stream_id": "a", "msg_seq": 1, "flags": ["SYN"], "session_id": None, "payload": {}}
    reset = one(t.router.receive_text(json.dumps(text), 1.0), StreamReset)
    assert reset.code == "EPROTO" and not t.router.closed


def test_a_budget_update_for_a_closed_stream_is_discarded() -> None:
    """[ATP-FRAME-023, ATP-FLAG-004, ATP-FRAME-014] A client's BUDGET_UPDATE on a stream
    that completed is discarded like any frame for a closed stream: the router sent an
    ERROR EPROTO after the stream's FINAL (ATP-STREAM-011). On an open stream it is still
    a stream error, and on a stream never opened too."""
    p = ConnectionPair()
    p.open(end_stream=True)
    p.pump()
    p.router.send_message(1, b"done", end_stream=True)
    p.pump()
    assert p.router.stream_state(1).value == "closed"
    bu = Frame(FrameType.BUDGET_UPDATE, 0, 1, ext={"usage": {"tokens": 1}})
    assert p.router.receive_message(encode_frame(bu), 1.0) == []
    assert p.router.data_to_send() == [] and not p.router.closed
    q = ConnectionPair()
    q.open()
    q.pump()
    reset = one(q.router.receive_message(encode_frame(bu), 1.0), StreamReset)
    assert (reset.code, reset.stream_id) == ("EPROTO", 1)
    never = one(q.router.receive_message(encode_frame(bu.replace(stream_id=9)), 1.0), StreamReset)
    assert (never.code, never.stream_id) == ("EPROTO", 9)


def test_no_msg_seq_left_before_the_final_is_a_named_refusal() -> None:
    """[ATP-SEQ-005, ATP-SEQ-003] A SYN with msg_seq 2³²−2 leaves the router one number,
    2³²−1, which only the FIN message may take: a PARTIAL there is refused locally with
    :class:`SequenceExhausted` (EPROTO, a message saying why), which the session turns into
    that ERROR on the stream; the router answered EINTERNAL "internal error:
    LocalProtocolError" before. The FINAL alone still fits."""
    syn = Frame(FrameType.DATA, Flags.SYN, 1, 2**32 - 2, payload=_TASK)
    p = ConnectionPair()
    p.router.receive_message(encode_frame(syn), 1.0)
    with pytest.raises(SequenceExhausted) as info:
        p.router.send_message(1, b"partial", more=True)
    assert info.value.code == "EPROTO" and "ATP-SEQ-005" in info.value.message
    assert not isinstance(info.value, StreamClosedError)
    p.router.send_message(1, b"final", end_stream=True)
    out = p.router.data_to_send()
    assert out and isinstance(out[0], bytes)
    assert int.from_bytes(out[0][8:12], "big") == 2**32 - 1  # the last number, with FIN
