"""The receive fast paths hold max_message_size as the general path does (ATP-SEQ-007):
a one-frame message over it is ETOOBIG on every path (found in a second reading of the
core, session 6)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    ErrorCode,
    Limits,
    MessageReceived,
    StreamReset,
)
from atp_proto.frames._types import MORE_BIT

from .helpers import frag, of, one, opened_pair


@pytest.mark.parametrize("path", ["bytes", "channel", "message"])
def test_a_one_frame_message_over_max_message_size_is_etoobig_on_every_path(path: str) -> None:
    """ATP-SEQ-007 / ATP-LIMIT-001 with a max_message_size below max_frame_size (0 is
    allowed, ATP-LIMIT-006): the general path refused a one-frame message over it, the
    receive fast paths (Stream.receive_data, ReceiveMixin._drain_channel) delivered it."""
    for side in ("client", "router"):
        limits = Limits(max_message_size=100)
        p, sid = opened_pair(**{f"{side}_limits": limits})
        conn = p.client if side == "client" else p.router
        raw = frag(sid, 2, 0, MORE_BIT if side == "client" else 0, body=b"z" * 500)
        if path == "bytes":
            evs = conn.receive_data(raw, 0)
        elif path == "channel":
            evs = conn.receive_stream_data(sid, raw, 0)
        else:
            evs = conn.receive_message(raw, 0)
        assert not of(evs, MessageReceived), (side, evs)
        assert one(evs, StreamReset).code == ErrorCode.ETOOBIG
        # at the limit it is delivered
        p, sid = opened_pair(**{f"{side}_limits": limits})
        conn = p.client if side == "client" else p.router
        raw = frag(sid, 2, 0, MORE_BIT if side == "client" else 0, body=b"z" * 100)
        assert len(one(conn.receive_data(raw, 0), MessageReceived).payload) == 100
