"""One ATP stream, as a connection tracks it: the object of h2's ``H2Stream`` kind.

A :class:`Stream` owns its lifecycle state (``_state``), its sequencing (the next msg_seq
to send and to expect), its two credit windows (``_windows``), the reassembly of the
message being received (``_fragments``), and its qos, deadline and :class:`Encoding`.
:meth:`Stream.receive_data` takes one DATA frame already routed to it (the connection
handled SYN, RST and frames for unknown or finished streams) and returns the event it
completes, if any. The fast path (a whole, in-order message without ext, within credit:
every PARTIAL at a client, every input at a router) sits *beside* the general path and
builds its event through the same :meth:`Stream._deliver`, so the two cannot drift; a
differential property test (tests/frames/test_fast_paths.py) holds them to the same
events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._errors import RemoteProtocolError
from ._events import MessageReceived, StreamOpened, message_received
from ._fragments import Reassembler, unpinned
from ._frame import Frame
from ._state import TRANSITIONS, Role, StreamInput, StreamState, next_state
from ._types import (
    CONT_BIT,
    FIN_BIT,
    MORE_BIT,
    SLOW_BITS,
    SYN_BIT,
    BudgetWindow,
    Encoding,
    ErrorCode,
    Payload,
    QoS,
)
from ._windows import RecvWindow, SendWindow

__all__ = ["Stream"]

_NO_EXT: Final[Mapping[str, Any]] = {}
_SEND_DATA: Final = StreamInput.SEND_DATA
_RECV_DATA: Final = StreamInput.RECV_DATA


@dataclass(slots=True, eq=False)
class Stream:
    """Everything a connection tracks for one stream. Internal to the core."""

    stream_id: int
    role: Role
    recv: RecvWindow
    send: SendWindow
    encoding: Encoding = Encoding.BINARY
    state: StreamState = StreamState.IDLE
    qos: QoS = QoS.UNSPECIFIED
    deadline: float | None = None
    send_seq: int = 1
    recv_seq: int = 0  #: next msg_seq expected (set when the stream opens)
    reasm: Reassembler = field(default_factory=Reassembler)
    #: the budget window as the wire set it (SYN, WINDOW_UPDATE); the router's caps and
    #: usage are its ledger's (router/budget.py)
    window: BudgetWindow = field(default_factory=BudgetWindow)
    #: cached ``(role, state, SEND_DATA) in TRANSITIONS``, kept current by :meth:`apply`
    #: (the send fast path checks it once per message)
    sendable: bool = False
    receivable: bool = False  #: likewise for RECV_DATA (the receive fast path)

    # -- state --------------------------------------------------------------------

    def apply(self, inp: StreamInput) -> None:
        self.state = state = next_state(self.role, self.state, inp, self.stream_id)
        self.sendable = (self.role, state, _SEND_DATA) in TRANSITIONS
        self.receivable = (self.role, state, _RECV_DATA) in TRANSITIONS

    @property
    def closed(self) -> bool:
        return self.state is StreamState.CLOSED

    @property
    def can_receive(self) -> bool:
        return self.receivable

    @property
    def can_send(self) -> bool:
        return self.sendable

    # -- receiving ------------------------------------------------------------------

    def receive_data(
        self, frame: Frame, cost: int, max_message_size: int
    ) -> tuple[StreamOpened | MessageReceived | None, int]:
        """One DATA frame for this stream, which can receive: the event it completes (or
        None: a fragment), and the credit the core consumed itself and must return now
        (a fragment's, taken by the reassembly buffer, or the SYN's, taken by opening).

        The caller applies RECV_FIN when the event ends the stream.

        Raises:
            RemoteProtocolError: EWINDOW, ESEQ_RETRY, EPROTO or ETOOBIG, stream level.
        """
        flags = frame.flags
        recv = self.recv
        if (
            not flags & SLOW_BITS
            and self.reasm.next == 0
            and frame.msg_seq == self.recv_seq
            and frame.frag_seq == 0
            and not frame.ext
            and cost <= recv.credit
            and cost <= max_message_size  # the payload is within it (ATP-SEQ-007)
        ):
            recv.credit -= cost
            msg_seq = frame.msg_seq
            self.recv_seq = msg_seq + 1  # never wraps (ATP-SEQ-005)
            # _deliver()'s MessageReceived (no SYN here: SLOW_BITS), built without its
            # keyword __init__: once per frame on a client
            return message_received(
                self.stream_id,
                msg_seq,
                frame.payload,
                _NO_EXT,
                bool(flags & MORE_BIT),
                bool(flags & FIN_BIT),
                cost,
            ), 0
        return self.receive_general(frame, cost, max_message_size)

    def receive_general(
        self, frame: Frame, cost: int, max_message_size: int
    ) -> tuple[StreamOpened | MessageReceived | None, int]:
        """:meth:`receive_data` without its fast path (every rule, every frame)."""
        # credit (ATP-FLOW): the frame costs its whole encoded length
        self.recv.consume(cost, self.stream_id)
        # sequencing (ATP-SEQ); recv_seq is set when the stream opens, on both sides
        reasm = self.reasm
        flags = frame.flags
        if (frame.frag_seq and (flags & SYN_BIT or frame.ext)) or (
            flags & CONT_BIT and flags & FIN_BIT
        ):
            # ATP-SEQ-006 before ATP-SEQ-004: SYN and ext belong to a message's first
            # fragment, FIN to its last; a frame breaking that is malformed (EPROTO) even
            # when its numbers are also not the ones expected (a new stream has no message
            # to retry, and a retry would repeat the malformed frame)
            raise RemoteProtocolError(
                ErrorCode.EPROTO, _seq006_violation(frame), stream_id=self.stream_id
            )
        if frame.msg_seq != self.recv_seq or frame.frag_seq != reasm.next:
            raise RemoteProtocolError(
                ErrorCode.ESEQ_RETRY,
                f"expected msg_seq {self.recv_seq} frag_seq {reasm.next}, got "
                f"msg_seq {frame.msg_seq} frag_seq {frame.frag_seq}",
                stream_id=self.stream_id,
                retry_after_ms=0,
            )
        message = reasm.push(frame, cost, max_message_size)
        if message is None:
            # The reassembly buffer (bounded by max_message_size) consumes fragments, so
            # their credit goes back at once; otherwise a message larger than the window
            # could never complete.
            return None, cost
        msg_seq = self.recv_seq
        self.recv_seq = msg_seq + 1
        event = self._deliver(
            msg_seq, message.payload, message.ext, message.flags, message.cost, frame.ttl
        )
        # The SYN's credit is consumed by opening; return it at once.
        return event, message.cost if message.flags & SYN_BIT else 0

    def _deliver(
        self,
        msg_seq: int,
        payload: Payload,
        ext: Mapping[str, Any],
        flags: int,
        cost: int,
        ttl: int,
    ) -> StreamOpened | MessageReceived:
        """The event of one whole message: the fast and the general path both end here."""
        fin = bool(flags & FIN_BIT)
        if flags & SYN_BIT:
            meta = ext.get("meta")
            return StreamOpened(
                self.stream_id,
                msg_seq,
                unpinned(payload),  # held for the stream's life: do not pin the message
                self.qos,
                ttl,
                self.window,
                meta if isinstance(meta, Mapping) else {},
                ext,
                end_stream=fin,
                encoding=self.encoding,
            )
        return MessageReceived(
            self.stream_id,
            msg_seq,
            payload,
            ext,
            more=bool(flags & MORE_BIT),
            end_stream=fin,
            size=cost,
        )


def _seq006_violation(frame: Frame) -> str:
    """What an ATP-SEQ-006 violation is, for its ERROR message."""
    if frame.flags & CONT_BIT and frame.flags & FIN_BIT:
        return "FIN is allowed on the last fragment only (CONT is set)"
    what = "SYN" if frame.flags & SYN_BIT else "ext"
    return (
        f"{what} is allowed on the first fragment only: a frame with it on frag_seq "
        f"{frame.frag_seq}"
    )
