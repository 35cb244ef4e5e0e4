"""Stream lifecycle: everything that affects the state machine lives here (h11's rule):
one table of legal transitions, per role (spec §"Stream lifecycle").

A (role, state, input) missing from :data:`TRANSITIONS` is a protocol error by
construction: a receive input raises :class:`RemoteProtocolError` (EPROTO, stream
level), a send input :class:`LocalProtocolError`. RST and ERROR end a stream from any
state but CLOSED. ``python -m atp_proto.frames._state`` prints the table as Markdown for
the spec, so the two cannot drift.

The client opens streams. The client's FIN half-closes (no more input); the router's FIN
completes the stream in both directions (the client need not answer with FIN).
"""

from __future__ import annotations

import enum
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._types import ErrorCode

__all__ = ["TRANSITIONS", "Role", "StreamInput", "StreamState", "next_state", "table_markdown"]


class _FastHash(enum.Enum):
    """Members hash by identity (they compare by identity): Enum.__hash__ hashes the
    name in Python code, and the state table is looked up several times per stream."""

    __hash__ = object.__hash__


class Role(_FastHash):
    CLIENT = "client"
    ROUTER = "router"


class StreamState(_FastHash):
    IDLE = "idle"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"


class StreamInput(_FastHash):
    SEND_SYN = "send SYN"
    RECV_SYN = "recv SYN"
    SEND_DATA = "send data"
    RECV_DATA = "recv data"
    SEND_FIN = "send FIN"
    RECV_FIN = "recv FIN"
    SEND_RST = "send RST/ERROR"
    RECV_RST = "recv RST/ERROR"


C, R = Role.CLIENT, Role.ROUTER
S = StreamState
I = StreamInput  # noqa: E741 - short alias keeps the table readable

#: (role, state, input) -> next state. ATP-STREAM state table.
TRANSITIONS: Final[dict[tuple[Role, StreamState, StreamInput], StreamState]] = {
    # client
    (C, S.IDLE, I.SEND_SYN): S.OPEN,
    (C, S.OPEN, I.SEND_DATA): S.OPEN,
    (C, S.OPEN, I.RECV_DATA): S.OPEN,
    (C, S.OPEN, I.SEND_FIN): S.HALF_CLOSED_LOCAL,
    (C, S.OPEN, I.RECV_FIN): S.CLOSED,
    (C, S.HALF_CLOSED_LOCAL, I.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (C, S.HALF_CLOSED_LOCAL, I.RECV_FIN): S.CLOSED,
    # router
    (R, S.IDLE, I.RECV_SYN): S.OPEN,
    (R, S.OPEN, I.RECV_DATA): S.OPEN,
    (R, S.OPEN, I.SEND_DATA): S.OPEN,
    (R, S.OPEN, I.RECV_FIN): S.HALF_CLOSED_REMOTE,
    (R, S.OPEN, I.SEND_FIN): S.CLOSED,
    (R, S.HALF_CLOSED_REMOTE, I.SEND_DATA): S.HALF_CLOSED_REMOTE,
    (R, S.HALF_CLOSED_REMOTE, I.SEND_FIN): S.CLOSED,
}
for _role in Role:
    for _state in (S.OPEN, S.HALF_CLOSED_LOCAL, S.HALF_CLOSED_REMOTE):
        TRANSITIONS[(_role, _state, I.SEND_RST)] = S.CLOSED
        TRANSITIONS[(_role, _state, I.RECV_RST)] = S.CLOSED

_RECV_INPUTS: Final = frozenset({I.RECV_SYN, I.RECV_DATA, I.RECV_FIN, I.RECV_RST})


def next_state(role: Role, state: StreamState, inp: StreamInput, stream_id: int) -> StreamState:
    """Apply one input; raise the right error when the table has no entry."""
    try:
        return TRANSITIONS[(role, state, inp)]
    except KeyError:
        msg = f"{inp.value} is not allowed on a stream that is {state.value}"
        if inp in _RECV_INPUTS:
            raise RemoteProtocolError(ErrorCode.EPROTO, msg, stream_id=stream_id) from None
        raise LocalProtocolError(ErrorCode.EPROTO, msg, stream_id=stream_id) from None


def table_markdown() -> str:
    """The transition table as Markdown (for spec/atp-v1.md)."""
    rows = ["| role | state | input | next state |", "|---|---|---|---|"]
    for (role, state, inp), nxt in TRANSITIONS.items():
        rows.append(f"| {role.value} | {state.value} | {inp.value} | {nxt.value} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(table_markdown())
