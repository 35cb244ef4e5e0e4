"""A temporary :class:`StreamOutput` over today's ``router/session.py`` (deleted at merge,
when the session package's ``session/output.py`` replaces it).

It owns what used to leak into routing: the first-PARTIAL flush (``Session.flush_now``,
time to first output) and the replay of a budget window that arrived before routing set
``on_window`` (the runner task starts after the SYN's dispatch; a WINDOW_UPDATE read in
between is in the core's record only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from atp_proto.frames import BudgetWindow, ErrorCode, QoS, StreamReset
from atp_proto.router.session import OUTPUT_HIGH_WATER

if TYPE_CHECKING:
    from atp_proto.router.session import Session, StreamHandle

__all__ = ["LegacyOutput"]


class LegacyOutput:
    """One stream's output over a :class:`Session` and its :class:`StreamHandle`."""

    __slots__ = ("_conn", "_first", "_handle", "_send", "_session", "_syn_window", "stream_id")

    def __init__(self, session: Session, handle: StreamHandle, syn_window: BudgetWindow) -> None:
        self.stream_id = handle.stream_id
        self._session = session
        self._handle = handle
        self._send = session.send
        self._first = True
        self._syn_window = syn_window
        self._conn = session.conn

    @property
    def lane(self) -> QoS:
        return self._handle.lane

    @lane.setter
    def lane(self, lane: QoS) -> None:
        self._handle.lane = lane

    def set_lane(self, lane: QoS) -> None:
        self._handle.lane = lane

    @property
    def reset(self) -> StreamReset | None:
        return self._handle.reset

    @reset.setter
    def reset(self, reset: StreamReset | None) -> None:
        self._handle.reset = reset

    @property
    def on_window(self) -> Callable[[BudgetWindow], None] | None:
        return self._handle.on_window

    @on_window.setter
    def on_window(self, callback: Callable[[BudgetWindow], None] | None) -> None:
        self._handle.on_window = callback
        if callback is not None:
            # a WINDOW_UPDATE read before the runner started reached only the core
            current = self._session.conn.budget_window(self.stream_id)
            if current != self._syn_window:
                callback(current)

    def can_write(self) -> bool:
        # Session.can_write, inlined (per-chunk path: one call frame, not two)
        conn = self._conn
        return not conn.outbound_buffered(self.stream_id) and conn.queued_bytes <= OUTPUT_HIGH_WATER

    async def writable(self) -> None:
        await self._session.writable(self._handle)

    def send_partial(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self._send(self.stream_id, body, more=True, ext=ext)  # type: ignore[arg-type]
        if self._first:  # time to first output: skip the writer hop
            self._first = False
            self._session.flush_now()

    def send_final(self, body: bytes, *, ext: Mapping[str, Any] | None = None) -> None:
        self._send(self.stream_id, body, end_stream=True, ext=ext)  # type: ignore[arg-type]

    def send_error(
        self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        self._session.send_error(self.stream_id, code, message, retry_after_ms)
