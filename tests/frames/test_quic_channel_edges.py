"""Two edges of the per-stream (QUIC) input that the conformance suite's QUIC runs found
(router.quic.vector.frame.reserved-stream-bit, router.quic.seq.message-too-big): neither
may raise out of the core nor misread bytes (ATP-FRAME-004, ATP-QUIC-013)."""

from __future__ import annotations

import cbor2

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    Role,
    StreamOpened,
    encode_frame,
)
from conformance.vectors import load

from .helpers import of, one


def test_a_reserved_bit_stream_id_on_its_own_channel_is_a_connection_error() -> None:
    """ATP-FRAME-004 over QUIC: the transport keys the channel by the header's stream id,
    reserved bit and all; the core answers EPROTO instead of raising."""
    (v,) = [x for x in load("frames")["vectors"] if x["id"] == "frame.reserved-stream-bit"]
    data = bytes.fromhex(v["hex"])
    r = Connection(Role.ROUTER, now=0.0)
    closed = one(
        r.receive_stream_data(int.from_bytes(data[4:8], "big"), data, 0.0), ConnectionClosed
    )
    assert closed.code == ErrorCode.EPROTO and r.closed


def test_a_stream_ended_inside_a_frame_has_the_rest_of_it_discarded() -> None:
    """ATP-QUIC-013: once the router has ended a stream, what still arrives on its QUIC
    stream is read and discarded, even when the stream was forgotten inside a frame (the
    rest of that frame must not be read as a new frame: that was EPROTO)."""
    r = Connection(Role.ROUTER, now=0.0)
    task = cbor2.dumps({"type": "agent.task", "content": {"prompt": "hi"}})
    syn = Frame.data(1, 1, raw=task, flags=Flags.SYN)
    assert one(r.receive_stream_data(1, encode_frame(syn), 0.0), StreamOpened).stream_id == 1
    later = encode_frame(Frame.data(1, 2, raw=b"x" * 1000, flags=Flags.MORE))
    assert r.receive_stream_data(1, later[:500], 0.0) == []
    r.send_error(1, ErrorCode.ETOOBIG, "too big (test)")
    r.stream_data_to_send(0.0)  # flushed: the stream is forgotten
    events = r.receive_stream_data(1, later[500:], 0.0)
    events += r.receive_stream_data(1, later, 0.0)  # and a whole frame after it
    assert not of(events, ConnectionClosed), events
    assert not r.closed
