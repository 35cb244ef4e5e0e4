"""What a stream's routing code may do with its stream (INTERFACES §1).

A copy of the session's ``StreamOutput`` protocol (``atp_proto/session/output.py``) so that
routing types against it before the session package lands; the lead deduplicates at merge.
Routing never touches the session, its watermarks or the sans-IO ``Connection``: it writes
messages, waits for room, and is told about budget windows and resets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from atp_proto.frames import BudgetWindow, ErrorCode, QoS, StreamReset

__all__ = ["SessionInfo", "StreamOutput"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The session a stream belongs to, as routing sees it (the principal is opaque to
    the session: it must not import ``router/auth.py``)."""

    session_id: str
    principal: Any


class StreamOutput(Protocol):
    """One stream's output, as routing sees it. Never blocks except :meth:`writable`."""

    stream_id: int
    #: the lane the session schedules this stream's output in
    lane: QoS
    #: set by routing; the session calls it with ``WindowUpdated.window`` whenever a
    #: WINDOW_UPDATE on this stream carried a budget window (ATP-BUDGET-005/010)
    on_window: Callable[[BudgetWindow], None] | None
    #: set by the session when the peer or the core reset the stream
    reset: StreamReset | None

    def set_lane(self, lane: QoS) -> None:
        """Routing's policy may cap the lane (before any output)."""
        ...

    def can_write(self) -> bool:
        """Whether a message may be queued now without waiting."""
        ...

    async def writable(self) -> None:
        """Wait for credit and session room (no timeout)."""
        ...

    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        """One message with MORE; the session decides the first-output flush policy."""
        ...

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        """One message with FIN (an ext too big for the window is ETOOBIG, ATP-FLOW-014,
        handled by the session)."""
        ...

    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        """End the stream with an ERROR."""
        ...
