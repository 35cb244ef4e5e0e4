"""The client's side of frames for a stream id it never opened (session 7, from a review):
a BUDGET_UPDATE there was dropped without a word, where the router answers the mirror case
(a non-SYN frame on an id never opened, ATP-STREAM-003 / ATP-FLAG-009) and both roles
answer a WINDOW_UPDATE there (ATP-STREAM-013) with a stream error EPROTO. Now the client
does the same (ATP-STREAM-016); on a stream opened and closed it is still discarded
(ATP-FLAG-004), and an ERROR on an id never opened is discarded, never answered
(ATP-ERR-011), in both roles and both encodings."""

from __future__ import annotations

import json

import pytest

from atp_proto.frames import (
    BudgetReported,
    Connection,
    ErrorCode,
    Frame,
    FrameType,
    Limits,
    Role,
    StreamReset,
    StreamState,
    encode_frame,
)
from atp_proto.testing.pair import ConnectionPair

from .helpers import of, one, wire


def _client_with_stream() -> tuple[Connection, int]:
    """A handshaken client with stream 1 open (its SYN sent, nothing answered yet)."""
    p = ConnectionPair()
    p.handshake()
    sid = p.open()
    p.to_router()
    return p.client, sid


def _budget(sid: int) -> bytes:
    return encode_frame(Frame(FrameType.BUDGET_UPDATE, 0, sid, ext={"usage": {"tokens": 1}}))


def test_a_budget_update_on_an_id_never_opened_is_a_stream_error_eproto() -> None:
    """ATP-STREAM-016: the ERROR names the id; the session and the open stream go on."""
    c, sid = _client_with_stream()
    reset = one(c.receive_message(_budget(sid + 8), 0), StreamReset)
    assert reset.stream_id == sid + 8 and reset.code == ErrorCode.EPROTO
    assert not reset.by_peer and "never opened" in reset.message
    (err,) = wire(c)
    assert err.type == FrameType.ERROR and err.stream_id == sid + 8
    assert err.ext["error"]["code"] == "EPROTO"
    assert not c.closed and c.open_streams == 1
    # the open stream still takes its own BUDGET_UPDATE
    assert one(c.receive_message(_budget(sid), 0), BudgetReported).stream_id == sid


def test_a_budget_update_on_a_closed_stream_is_discarded() -> None:
    """ATP-FLAG-004: frames may cross a reset in flight; no ERROR for them."""
    c, sid = _client_with_stream()
    c.reset_stream(sid)
    wire(c)
    assert c.receive_message(_budget(sid), 0) == []
    assert wire(c) == [] and not c.closed


def test_a_budget_update_before_any_stream_is_a_stream_error() -> None:
    """Nothing opened yet: every id is never opened."""
    c = Connection(Role.CLIENT, now=0.0)
    assert one(c.receive_message(_budget(1), 0), StreamReset).code == ErrorCode.EPROTO


def test_a_text_budget_update_on_an_id_never_opened_is_a_stream_error() -> None:
    """The JSON mapping too, numeric id (ATP-STREAM-016)."""
    c = Connection(Role.CLIENT, now=0.0)
    text = json.dumps({"type": "BUDGET_UPDATE", "stream_id": 7, "usage": {"tokens": 1}})
    reset = one(c.receive_text(text, 0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 7
    (out,) = c.data_to_send()
    assert isinstance(out, str) and json.loads(out)["error"]["code"] == "EPROTO"


@pytest.mark.parametrize("role", [Role.CLIENT, Role.ROUTER])
def test_an_error_on_an_id_never_opened_is_discarded_not_answered(role: Role) -> None:
    """ATP-ERR-011: no ERROR answers an ERROR, whichever role, on any id."""
    c = Connection(role, now=0.0)
    err = encode_frame(Frame.error(41, ErrorCode.EINTERNAL, "stray"))
    assert c.receive_message(err, 0) == []
    assert c.data_to_send() == [] and not c.closed
    text = json.dumps(
        {"type": "ERROR", "stream_id": 43, "flags": ["RST"], "error": {"code": "EX", "message": ""}}
    )
    assert c.receive_text(text, 0) == []
    assert c.data_to_send() == [] and not c.closed
    assert of(c.receive_message(err, 0), StreamReset) == []


def test_a_budget_update_on_a_closed_stream_still_flushing_is_discarded() -> None:
    """A client stream closed by the router's FINAL while its own last message still waits
    for credit: a late BUDGET_UPDATE is a frame for a closed stream (ATP-FLAG-004), no
    usage event and no ERROR."""
    p = ConnectionPair(router_limits=Limits(initial_window=4096))
    p.handshake()
    sid = p.open()
    p.to_router()
    p.client.send_message(sid, b"y" * 10_000, end_stream=True)
    p.to_router()
    assert p.client.outbound_buffered(sid) > 0
    p.router.send_message(sid, b"done", end_stream=True)
    p.to_client()
    assert p.client.stream_state(sid) is StreamState.CLOSED and p.client.open_streams == 1
    assert p.client.receive_message(_budget(sid), 0) == []
    assert p.client.open_streams == 1 and not p.client.closed
