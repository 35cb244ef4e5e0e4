"""One stream's output, as the routing code sees it (``StreamOutput``: the seam
between the session and the router's routing stages).

The session owns the transport, the connection's output queue and the writer; a stream's
routing code gets only this façade: send a PARTIAL, a FINAL or an ERROR on *its* stream,
ask whether it may write now or wait until it may (credit + session room, weighted-fair
across lanes), and learn of budget windows the peer sends (``on_window``) and of a reset
(``reset``). Nothing here blocks except :meth:`Output.writable`.

The first-output latency policy lives here, not in routing: a stream's first PARTIAL is
handed to the transport from the calling task when that needs no waiting
(:meth:`Session.flush_now <atp_proto.session.session.Session.flush_now>`), because the
time to the first PARTIAL is what a client feels; later output is left to the session's
writer, which coalesces many streams' frames into one transport send.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio

from atp_proto.frames import BudgetWindow, ErrorCode, QoS, StreamReset

__all__ = ["Output", "StreamOutput"]


class StreamOutput(Protocol):
    """One stream's output, as routing sees it. Never blocks except writable()."""

    stream_id: int
    lane: QoS  #: the lane the session schedules this stream's output in
    on_window: Callable[[BudgetWindow], None] | None
    reset: StreamReset | None

    def set_lane(self, lane: QoS) -> None: ...
    def can_write(self) -> bool: ...
    async def writable(self) -> None: ...
    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None: ...
    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None: ...
    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None: ...


class _Sink(Protocol):
    """What an :class:`Output` needs of its session (the session implements it)."""

    def send(
        self,
        stream_id: int,
        payload: bytes,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: dict[str, Any] | None = None,
    ) -> None: ...
    def send_error(
        self, stream_id: int, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None: ...
    def send_more(self, stream_id: int, payload: bytes) -> None: ...
    def flush_now(self) -> None: ...
    def max_ext_len(self, stream_id: int) -> int: ...
    def can_write(self, handle: Output) -> bool: ...
    async def writable(self, handle: Output) -> None: ...


class Output:
    """The session's implementation of :class:`StreamOutput` for one stream; also the
    session's handle of the stream's task (``scope``, cancelled on reset) and its credit
    waiter (``credit``, set on WINDOW_UPDATE)."""

    __slots__ = (
        "_check",
        "_on_window",
        "_pending_window",
        "_session",
        "_started",
        "credit",
        "lane",
        "reset",
        "scope",
        "stream_id",
    )

    def __init__(
        self,
        session: _Sink,
        stream_id: int,
        lane: QoS,
        *,
        check: Callable[[], bool] | None = None,
    ) -> None:
        """``check``: the session's :meth:`can_write` for this stream as one call (the
        relay asks once per chunk); None: ask the session each time."""
        self._session = session
        self._check = check
        self.stream_id = stream_id
        self.lane = lane
        self.scope = trio.CancelScope()
        self.credit = trio.Event()
        self.reset: StreamReset | None = None
        self._on_window: Callable[[BudgetWindow], None] | None = None
        #: the last budget window a WINDOW_UPDATE brought before routing set on_window
        #: (the stream's task starts after the SYN's batch of events is dispatched)
        self._pending_window: BudgetWindow | None = None
        self._started = False

    @property
    def on_window(self) -> Callable[[BudgetWindow], None] | None:
        return self._on_window

    @on_window.setter
    def on_window(self, callback: Callable[[BudgetWindow], None] | None) -> None:
        """Routing's ledger; a window that arrived before it was set is delivered now, so
        a WINDOW_UPDATE right behind the SYN is never lost (ATP-BUDGET-005/010)."""
        self._on_window = callback
        pending, self._pending_window = self._pending_window, None
        if callback is not None and pending is not None:
            callback(pending)

    def window_updated(self, window: BudgetWindow) -> None:
        """The session's call for a WINDOW_UPDATE on this stream that carried a window."""
        if self._on_window is not None:
            self._on_window(window)
        else:  # each WINDOW_UPDATE names only some fields: keep them all, latest last
            pending = self._pending_window
            self._pending_window = window if pending is None else pending.merged(window)

    def set_lane(self, lane: QoS) -> None:
        """Routing's policy may cap the lane (before the stream's first output)."""
        self.lane = lane

    def can_write(self) -> bool:
        check = self._check
        return check() if check is not None else self._session.can_write(self)

    async def writable(self) -> None:
        await self._session.writable(self)

    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        """One message with MORE; the stream's first one goes out from this task when
        the transport can take it at once."""
        if ext is None and self._started:  # the relay's per-chunk path: fewest calls
            self._session.send_more(self.stream_id, body)
            return
        self._session.send(self.stream_id, body, more=True, ext=_dict(ext))
        if not self._started:
            self._started = True
            self._session.flush_now()

    def max_ext_len(self) -> int:
        """The largest ext the stream's messages may carry (ATP-FLOW-014): routing drops
        optional telemetry rather than have the FINAL refused with ETOOBIG."""
        return self._session.max_ext_len(self.stream_id)

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        """One message with FIN (an ext too big for the peer's window is ETOOBIG,
        ATP-FLOW-014, handled by the session)."""
        self._started = True
        self._session.send(self.stream_id, body, end_stream=True, ext=_dict(ext))

    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        self._session.send_error(self.stream_id, code, message, retry_after_ms)


def _dict(ext: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return ext if ext is None or isinstance(ext, dict) else dict(ext)
