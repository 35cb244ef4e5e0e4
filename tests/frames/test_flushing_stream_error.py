"""A stream error on a stream still flushing its FINAL (closed by our FIN, which waits for
credit): the ERROR ends it and its queued frames go, so a stream ends once (ATP-STREAM-011;
found in a second reading of the core, session 6)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    Frame,
    FrameType,
    Limits,
    StreamReset,
    encode_frame,
)
from atp_proto.frames._types import CONT_BIT, FIN_BIT, RST_BIT

from .helpers import ConnectionPair, one, opened_pair, wire


def _flushing_router() -> tuple[ConnectionPair, int]:
    """A router whose FINAL waits in the stream's outbox for credit (state closed)."""
    p, sid = opened_pair(client_limits=Limits(initial_window=4096))
    p.router.send_message(sid, b"y" * 10_000, end_stream=True)
    sent = [f for f in wire(p.router) if f.stream_id == sid]
    assert sent and all(f.flags & CONT_BIT for f in sent)  # the FIN has not left
    assert p.router.outbound_buffered(sid) > 0
    return p, sid


@pytest.mark.parametrize(
    "update",
    [
        {"credit": 2**31 - 1},  # a valid increment past 2^31-1: EWINDOW (ATP-FLOW-004)
        {"credit": 0},  # a malformed one: EPROTO (stateless, ATP-FRAME-023)
        {"credit": 10, "session_id": None},  # EPROTO (ATP-EXT-010)
    ],
)
def test_a_stream_error_while_flushing_the_final_ends_the_stream_once(
    update: dict[str, object],
) -> None:
    """ATP-STREAM-011: a stream ends with exactly one of FIN, ERROR, RST. A WINDOW_UPDATE
    the stream refuses while its FINAL waits for credit queued an ERROR and kept the FINAL
    queued: the next valid credit sent the FINAL after the ERROR (two endings)."""
    p, sid = _flushing_router()
    r = p.router
    raw = encode_frame(Frame._make((FrameType.WINDOW_UPDATE, 0, sid, 0, 0, 0, 0, update, b"", 1)))
    evs = r.receive_data(raw, 0)
    assert one(evs, StreamReset).stream_id == sid
    r.receive_data(encode_frame(Frame.window_update(sid, credit=100_000)), 0)  # discarded
    after = [f for f in wire(r) if f.stream_id == sid]
    endings = [f for f in after if f.type == FrameType.ERROR or f.flags & (FIN_BIT | RST_BIT)]
    assert [f.type for f in endings] == [FrameType.ERROR], after
    assert after[-1].type == FrameType.ERROR  # nothing of the stream after its ERROR
    assert r.outbound_buffered(sid) == 0
    assert r.open_streams == 0


def test_the_peers_transport_end_while_flushing_the_final_ends_the_stream_once() -> None:
    """ATP-QUIC-024: the client's QUIC FIN while the router's FINAL waits for credit. No
    WINDOW_UPDATE can follow it, so the FINAL would wait for ever (it did: the stream,
    closed, was taken as ended): the ERROR ends it and the queued frames go."""
    p, sid = _flushing_router()
    r = p.router
    evs = r.receive_stream_end(sid, 0)
    assert one(evs, StreamReset).stream_id == sid
    after = [f for f in wire(r) if f.stream_id == sid]
    assert [f.type for f in after] == [FrameType.ERROR], after
    assert r.outbound_buffered(sid) == 0
    assert r.open_streams == 0
    assert r.receive_stream_end(sid, 0) == []  # once


def test_the_peers_transport_end_after_the_final_left_is_nothing() -> None:
    """A stream whose FINAL has left whole: the client's QUIC FIN ends nothing more."""
    p, sid = opened_pair()
    p.router.send_message(sid, b"done", end_stream=True)
    assert any(f.flags & FIN_BIT for f in wire(p.router) if f.stream_id == sid)
    assert p.router.receive_stream_end(sid, 0) == []
    assert wire(p.router) == []
