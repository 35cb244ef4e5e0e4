"""The stream state table (spec §7.1), exhaustively: every role × state × input."""

from __future__ import annotations

import itertools

import pytest

from atp_proto.frames import (
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    StreamState,
)
from atp_proto.frames._state import TRANSITIONS, StreamInput, next_state, table_markdown
from atp_proto.frames._stream import Stream
from atp_proto.frames._windows import RecvWindow, SendWindow

RECV = {StreamInput.RECV_SYN, StreamInput.RECV_DATA, StreamInput.RECV_FIN, StreamInput.RECV_RST}


@pytest.mark.parametrize(
    ("role", "state", "inp"), list(itertools.product(Role, StreamState, StreamInput))
)
def test_every_role_state_input(role: Role, state: StreamState, inp: StreamInput) -> None:
    """§7.1: a pair in the table moves to its next state; a pair absent from it is EPROTO
    on the stream, remote for received inputs and local for sent ones."""
    if (role, state, inp) in TRANSITIONS:
        assert next_state(role, state, inp, 3) is TRANSITIONS[(role, state, inp)]
        return
    exc_type = RemoteProtocolError if inp in RECV else LocalProtocolError
    with pytest.raises(exc_type) as info:
        next_state(role, state, inp, 3)
    assert info.value.code == "EPROTO" and info.value.stream_id == 3
    assert type(info.value) is exc_type


def test_table_shape() -> None:
    """ATP-STREAM-001, ATP-STREAM-006: only clients send SYN, only routers receive it; RST
    closes every live state; nothing leaves CLOSED."""
    assert {r for (r, _, i) in TRANSITIONS if i is StreamInput.SEND_SYN} == {Role.CLIENT}
    assert {r for (r, _, i) in TRANSITIONS if i is StreamInput.RECV_SYN} == {Role.ROUTER}
    assert not [k for k in TRANSITIONS if k[1] is StreamState.CLOSED]
    for role in Role:
        for state in (
            StreamState.OPEN,
            StreamState.HALF_CLOSED_LOCAL,
            StreamState.HALF_CLOSED_REMOTE,
        ):
            for inp in (StreamInput.SEND_RST, StreamInput.RECV_RST):
                assert TRANSITIONS[(role, state, inp)] is StreamState.CLOSED
    # the router's FIN completes the stream; the client's FIN only half-closes it
    assert TRANSITIONS[(Role.ROUTER, StreamState.OPEN, StreamInput.SEND_FIN)] is StreamState.CLOSED
    assert (
        TRANSITIONS[(Role.CLIENT, StreamState.OPEN, StreamInput.SEND_FIN)]
        is StreamState.HALF_CLOSED_LOCAL
    )


def test_table_markdown_lists_every_transition() -> None:
    md = table_markdown().splitlines()
    assert md[:2] == ["| role | state | input | next state |", "|---|---|---|---|"]
    assert len(md) == 2 + len(TRANSITIONS)
    assert "| client | idle | send SYN | open |" in md


def test_stream_record_caches_what_it_may_do() -> None:
    rec = Stream(1, Role.CLIENT, RecvWindow(1024, 512), SendWindow(1024))
    assert not rec.can_send and not rec.can_receive and not rec.closed
    rec.apply(StreamInput.SEND_SYN)
    assert rec.can_send and rec.can_receive
    rec.apply(StreamInput.SEND_FIN)
    assert not rec.can_send and rec.can_receive
    rec.apply(StreamInput.RECV_FIN)
    assert rec.closed and not rec.can_receive
    with pytest.raises(RemoteProtocolError):
        rec.apply(StreamInput.RECV_DATA)
