"""Stream lifecycle: one table of legal transitions, per role (spec §"Stream lifecycle").

A (role, state, input) missing from :data:`TRANSITIONS` is a protocol error by
construction: a receive input raises :class:`RemoteProtocolError` (EPROTO, stream
level), a send input :class:`LocalProtocolError`. RST and ERROR end a stream from any
state but CLOSED. ``python -m atp_proto.frames._stream`` prints the table as Markdown for
the spec, so the two cannot drift.

The client opens streams. The client's FIN half-closes (no more input); the router's FIN
completes the stream in both directions (the client need not answer with FIN).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frame import Frame
from ._types import BudgetWindow, ErrorCode, QoS


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


@dataclass(slots=True)
class Usage:
    tokens: int = 0
    usd_micros: int = 0
    parallel: int = 0


@dataclass(slots=True)
class StreamRecord:
    """Everything a connection tracks for one stream. Internal to the core."""

    stream_id: int
    role: Role
    state: StreamState = StreamState.IDLE
    text: bool = False
    qos: QoS = QoS.UNSPECIFIED
    deadline: float | None = None
    # sequencing
    send_seq: int = 1
    recv_seq: int = 0  # next msg_seq expected (set when the stream opens)
    # reassembly of the message being received
    frag_next: int = 0
    frag_parts: list[bytes | memoryview] = field(default_factory=list)
    frag_bytes: int = 0
    frag_cost: int = 0
    frag_flags: int = 0
    frag_ext: dict[str, object] | None = None
    # credit: what we may still send, what the peer may still send us
    send_credit: int = 0
    send_window: int = 0  #: the peer's initial_window when the stream opened (ATP-FLOW-013)
    recv_credit: int = 0
    recv_unacked: int = 0  # consumed bytes not yet returned as credit
    outbox: deque[tuple[Frame, int]] = field(default_factory=deque)
    outbox_bytes: int = 0
    # budget window
    window: BudgetWindow = field(default_factory=BudgetWindow)
    cap: BudgetWindow = field(default_factory=BudgetWindow)  #: tenant/adapter limits (router)
    usage: Usage = field(default_factory=Usage)

    #: cached ``(role, state, SEND_DATA) in TRANSITIONS``, kept current by :meth:`apply`
    #: (the send fast path checks it once per message)
    sendable: bool = False
    receivable: bool = False  #: likewise for RECV_DATA (the receive fast path)

    def apply(self, inp: StreamInput) -> None:
        self.state = state = next_state(self.role, self.state, inp, self.stream_id)
        self.sendable = (self.role, state, StreamInput.SEND_DATA) in TRANSITIONS
        self.receivable = (self.role, state, StreamInput.RECV_DATA) in TRANSITIONS

    @property
    def closed(self) -> bool:
        return self.state is StreamState.CLOSED

    @property
    def can_receive(self) -> bool:
        return self.receivable

    @property
    def can_send(self) -> bool:
        return self.sendable


def table_markdown() -> str:
    """The transition table as Markdown (for spec/atp-v1.md)."""
    rows = ["| role | state | input | next state |", "|---|---|---|---|"]
    for (role, state, inp), nxt in TRANSITIONS.items():
        rows.append(f"| {role.value} | {state.value} | {inp.value} | {nxt.value} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(table_markdown())
