"""Credit windows of one stream, one object per direction (ATP-FLOW), after h2's
``windows.py``.

A DATA frame costs its whole encoded length (a text frame: the UTF-8 length of its JSON,
ATP-FLOW-008). :class:`RecvWindow` is what the peer may still send us: a frame over it is
EWINDOW, and credit goes back only for bytes the application has *consumed* (not merely
received), once half the window is consumed (ATP-FLOW-012, h2's hysteresis: fewer
WINDOW_UPDATEs, never a deadlock). :class:`SendWindow` is what we may still send, with the
outbox of frames waiting for credit: :meth:`SendWindow.grant` adds the peer's credit
(refusing to pass 2^31-1), :meth:`SendWindow.sendable` takes out what now fits, cutting the
head frame when it must (ATP-FLOW-013/014). Both return values (an increment, frames)
instead of calling back into the connection, so the module depends only on the frame model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from ._codec import HEADER_SIZE
from ._errors import RemoteProtocolError
from ._frame import Frame
from ._types import CONT_BIT, FIN_BIT, MAX_WINDOW, SYN_BIT, ErrorCode, FrameType

__all__ = ["RecvWindow", "SendWindow", "frag_size"]

#: Frames of one message never pass this frag_seq (ATP-SEQ-013: 65,536 fragments).
_MAX_FRAG_SEQ: Final = 0xFFFF


class RecvWindow:
    """Credit we granted the peer on one stream, and consumed bytes not yet returned."""

    __slots__ = ("credit", "threshold", "unacked")

    def __init__(self, credit: int, threshold: int) -> None:
        self.credit = credit
        self.unacked = 0
        #: return credit once this many consumed bytes are owed (half the window)
        self.threshold = threshold

    def consume(self, cost: int, stream_id: int) -> None:
        """The peer sent a frame of ``cost`` bytes.

        Raises:
            RemoteProtocolError: EWINDOW, the frame exceeds the credit left (ATP-FLOW-001).
        """
        if cost > self.credit:
            raise RemoteProtocolError(
                ErrorCode.EWINDOW,
                f"DATA frame of {cost} bytes exceeds the credit window ({self.credit} left)",
                stream_id=stream_id,
            )
        self.credit -= cost

    def acknowledge(self, size: int, *, may_grant: bool = True) -> int | None:
        """The application consumed ``size`` bytes: the credit to return now, or None
        while less than half the window is owed (or ``may_grant`` is False: the peer can
        send nothing more, ATP-FLOW-012)."""
        self.unacked += size
        if self.unacked >= self.threshold and may_grant:
            credit = self.unacked
            self.unacked = 0
            self.credit += credit
            return credit
        return None


class SendWindow:
    """Credit the peer granted us on one stream, and the frames waiting for more.

    ``window`` is the peer's initial_window when the stream opened: the cut rule and the
    ext bound measure against half of it (ATP-FLOW-013/014).
    """

    __slots__ = ("credit", "outbox", "outbox_bytes", "window")

    def __init__(self, credit: int) -> None:
        self.credit = credit
        self.window = credit
        self.outbox: deque[tuple[Frame, int]] = deque()
        self.outbox_bytes = 0

    def grant(self, credit: int, stream_id: int) -> None:
        """Add the peer's WINDOW_UPDATE credit.

        Raises:
            RemoteProtocolError: EWINDOW, the window would pass 2^31-1 (ATP-FLOW-004).
        """
        if self.credit + credit > MAX_WINDOW:
            raise RemoteProtocolError(
                ErrorCode.EWINDOW,
                f"credit window would exceed 2^31-1 ({self.credit} + {credit})",
                stream_id=stream_id,
            )
        self.credit += credit

    def push(self, frame: Frame, cost: int) -> None:
        self.outbox.append((frame, cost))
        self.outbox_bytes += cost

    def clear(self) -> None:
        """Drop everything queued (the stream was reset)."""
        self.outbox.clear()
        self.outbox_bytes = 0

    def sendable(self, text_cost: Callable[[Frame], int] | None = None) -> list[Frame]:
        """Take out the queued frames the credit now covers, in order, and charge them.

        ``text_cost`` prices a frame on a text stream (None: binary, a frame costs its
        encoded length).
        """
        out: list[Frame] = []
        box = self.outbox
        while box:
            cost = box[0][1]
            if cost > self.credit:
                # ATP-FLOW-013: credit above half the peer's window may never grow (the
                # peer returns credit only once half its window is consumed, ATP-FLOW-012),
                # so a frame that does not fit is cut to what does; at or below half,
                # waiting is safe and avoids tiny fragments.
                if self.credit <= self.window // 2 or not self._cut_head(text_cost):
                    break
                cost = box[0][1]
            frame, cost = box.popleft()
            self.credit -= cost
            self.outbox_bytes -= cost
            out.append(frame)
        return out

    def _cut_head(self, text_cost: Callable[[Frame], int] | None) -> bool:
        """Split the first queued frame so that its first part costs what fits the
        credit left (ATP-FLOW-013); the message's later fragments move up one frag_seq.
        False when no cut is possible (no payload byte would fit, or the message would
        pass 65,536 fragments, ATP-SEQ-013).

        A binary frame costs its encoded length, so the first part takes exactly the
        credit. A text frame costs the UTF-8 length of its JSON (ATP-FLOW-008), which is
        not linear in the payload (base64) and changes with ``frag_seq``: each new or
        renumbered piece is costed by encoding it, and the first part is the longest
        whose cost fits (its cost grows with its length, so a bisection finds it)."""
        box = self.outbox
        frame, cost = box[0]
        payload = frame.payload
        same = 1  # the message's fragments are contiguous in the outbox (ATP-SEQ-011)
        while same < len(box) and box[same][0].msg_seq == frame.msg_seq:
            same += 1
        if box[same - 1][0].frag_seq >= _MAX_FRAG_SEQ:
            return False
        sid, seq, flags = frame.stream_id, frame.msg_seq, frame.flags
        view = memoryview(payload)

        def head(room: int) -> Frame:
            return Frame(
                FrameType.DATA,
                (flags | CONT_BIT) & ~FIN_BIT,
                sid,
                seq,
                frame.frag_seq,
                frame.qos,
                frame.ttl,
                frame.ext or None,
                view[:room],
            )

        def tail(room: int) -> Frame:
            return Frame(
                FrameType.DATA,
                flags & ~SYN_BIT,
                sid,
                seq,
                frame.frag_seq + 1,
                0,
                0,
                None,
                view[room:],
            )

        credit = self.credit
        later = [f._replace(frag_seq=f.frag_seq + 1) for f, _ in list(box)[1:same]]
        if text_cost is not None:
            if len(payload) < 2 or text_cost(head(1)) > credit:
                return False
            lo, hi = 1, len(payload) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if text_cost(head(mid)) <= credit:
                    lo = mid
                else:
                    hi = mid - 1
            pieces = [(f, text_cost(f)) for f in (head(lo), tail(lo), *later)]
        else:
            overhead = cost - len(payload)
            room = credit - overhead
            if room < 1 or room >= len(payload):
                return False
            pieces = [
                (head(room), overhead + room),
                (tail(room), HEADER_SIZE + len(payload) - room),
            ]
            pieces.extend((f, c) for f, (_, c) in zip(later, list(box)[1:same], strict=True))
        removed = [box.popleft() for _ in range(same)]
        box.extendleft(reversed(pieces))
        self.outbox_bytes += sum(c for _, c in pieces) - sum(c for _, c in removed)
        return True


def frag_size(peer_frame_size: int, peer_initial_window: int) -> int:
    """Fragments fit the peer's max_frame_size and a quarter of its window, so a message
    larger than the window still flows as credit comes back. A whole frame (header
    included) must fit the window, or a small window would never grant enough credit."""
    return min(
        peer_frame_size,
        max(peer_initial_window // 4, 1024),
        max(peer_initial_window - HEADER_SIZE, 1),
    )
