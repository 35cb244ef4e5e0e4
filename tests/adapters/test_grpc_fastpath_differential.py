"""Differential property test of the DATA fast path (``adapters/grpc/_h2_fastpath.py``):
the same server bytes fed to two clients, one with the fast path and one where every frame
goes through h2 (``fast_window`` refusing), give the same messages, the same credit and the
same bytes back to the server. No sockets: :func:`feed` is pure over an ``H2Channel``."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import pytest
from hypothesis import given, settings
from hypothesis import strategies as strat

from atp_proto.adapters.grpc import _h2_fastpath
from atp_proto.adapters.grpc._call import Call
from atp_proto.adapters.grpc._h2 import H2Channel
from atp_proto.adapters.grpc._h2_fastpath import feed
from atp_proto.testing.h2_channel import detached_channel


def _channel() -> tuple[H2Channel, h2.connection.H2Connection, int]:
    ch = detached_channel("diff")
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.receive_data(ch.h2.data_to_send())
    sid = ch.h2.get_next_available_stream_id()
    ch.h2.send_headers(
        sid,
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")],
        end_stream=True,
    )
    ch.calls[sid] = Call(ch, sid)
    server.receive_data(ch.h2.data_to_send())
    assert feed(ch, server.data_to_send()) == b""  # SETTINGS, SETTINGS ACK
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    return ch, server, sid


def _feed_in_pieces(ch: H2Channel, data: bytes, cuts: list[int]) -> None:
    pending = b""
    pos = 0
    for n in [*cuts, len(data)]:
        piece, pos = data[pos : pos + n], pos + n
        if piece:
            pending = feed(ch, pending + piece)
    assert pending == b""


def _outcome(ch: H2Channel, sid: int) -> tuple[Any, ...]:
    call = ch.calls[sid]
    messages = [m for m, _ in call.inbox]
    credit = sum(a for _, a in call.inbox)
    for _, a in call.inbox:  # the consumer takes every message: its credit goes back
        if a:
            ch.ack(sid, a)
    return (
        messages,
        credit,
        call.pending_ack,
        ch.h2.inbound_flow_control_window,
        ch.h2.data_to_send(),
    )


messages = strat.lists(strat.binary(max_size=1500), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    msgs=messages,
    frame=strat.integers(1, 4000),
    pads=strat.lists(strat.one_of(strat.none(), strat.integers(0, 255)), min_size=1, max_size=5),
    cuts=strat.lists(strat.integers(1, 5000), max_size=8),
)
def test_fast_path_equals_h2_path(
    msgs: list[bytes], frame: int, pads: list[int | None], cuts: list[int]
) -> None:
    body = b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in msgs)
    results = []
    fast_hits: list[bool] = []
    original = _h2_fastpath.fast_window

    def counting(*args: Any) -> bool:
        took = original(*args)
        fast_hits.append(took)
        return took

    unpadded = False
    for fast in (True, False):
        ch, server, sid = _channel()
        for i, pos in enumerate(range(0, len(body), frame)):
            pad = pads[i % len(pads)]
            unpadded |= pad is None
            server.send_data(sid, body[pos : pos + frame], pad_length=pad)
        data = server.data_to_send()
        if fast:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_h2_fastpath, "fast_window", counting)
                _feed_in_pieces(ch, data, cuts)
        else:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_h2_fastpath, "fast_window", lambda *a: False)
                _feed_in_pieces(ch, data, cuts)
        results.append(_outcome(ch, sid))
    assert results[0] == results[1]
    assert results[0][0] == msgs
    assert any(fast_hits) == unpadded  # the fast path really ran where it could
