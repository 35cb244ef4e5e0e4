"""The sans-IO ATP connection: bytes and time in, events and bytes out.

Theory of operation
-------------------
A :class:`Connection` is one side (client or router) of one ATP session. The I/O layer
feeds what it receives (:meth:`receive_data` for byte streams, :meth:`receive_message`
for a WebSocket binary message, :meth:`receive_text` for a WebSocket text message), each
with the current time, and gets back a list of :mod:`events <atp_proto.frames._events>`.
The application acts through methods (:meth:`open_stream`, :meth:`send_message`,
:meth:`send_error`, ...), which queue frames; the I/O layer drains them with
:meth:`data_to_send`, which coalesces consecutive binary frames into one buffer. Timers
(TTL, heartbeat, idle) work the same way: :meth:`next_deadline` says when to call
:meth:`handle_timer`. Nothing here reads a clock, sleeps, or does I/O.

Every protocol rule lives here once. A peer's stream-level violation queues an ERROR
frame for that stream and returns :class:`StreamReset` (``by_peer=False``); the session
goes on. A connection-level violation queues an ERROR on stream 0 and returns
:class:`ConnectionClosed`; afterwards all input is ignored. Nothing a peer sends raises
out of the ``receive_*`` methods, and every buffer is bounded by :class:`Limits`.

Flow control (ATP-FLOW): each stream has a credit window per direction, in bytes, where a
DATA frame costs its whole encoded length. Outbound DATA frames wait in the stream's
outbox until the peer's credit covers them (with more than half the peer's window left,
a frame that does not fit is cut to what does, ATP-FLOW-013, so that a peer returning
credit at half its window never deadlocks us); :meth:`outbound_buffered` lets the
application stop producing while a stream is blocked (this is what makes backpressure
reach the adapters). Inbound, credit is returned only for bytes the application has
consumed (:meth:`acknowledge`), once half the window is consumed (h2's hysteresis).
"""

from __future__ import annotations

from typing import Any

from ._errors import BudgetExceeded, RemoteProtocolError
from ._events import Event, StreamReset
from ._output import WS_MESSAGE_SLACK
from ._receiving import ReceiveMixin
from ._sending import SendMixin
from ._state import Role
from ._timers import due, expired, next_deadline
from ._types import ErrorCode

__all__ = ["BudgetExceeded", "Connection", "Role"]


class Connection(ReceiveMixin, SendMixin):
    """One side of an ATP session, with no I/O (see the module docstring).

    Args:
        role: ``Role.CLIENT`` opens streams; ``Role.ROUTER`` accepts them.
        limits: what we accept from the peer, advertised in CAPABILITIES.
        now: the current time in seconds (any monotonic origin).
        heartbeat: send HB after this many seconds without sending (None: never).
        encoding: of session-level frames until the peer speaks (ATP-WS-010).
    """

    # ------------------------------------------------------------------ time

    def _timer_args(self) -> dict[str, Any]:
        return {
            "open_streams": len(self._streams),
            "last_recv": self._last_recv,
            "last_send": self._last_send,
            "heartbeat": self._heartbeat,
            "idle_timeout_ms": self.limits.idle_timeout_ms,
        }

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: nothing pending)."""
        if self._closed is not None:
            return None
        return next_deadline(self._streams.values(), **self._timer_args())

    def handle_timer(self, now: float) -> list[Event]:
        """Fire what is due at ``now``: stream TTLs, heartbeats, the idle timeout."""
        events: list[Event] = []
        if self._closed is not None:
            return events
        for sid in expired(self._streams.values(), now):
            msg = "the stream's ttl passed"
            self.send_error(sid, ErrorCode.ETIMEOUT, msg)
            events.append(StreamReset(sid, ErrorCode.ETIMEOUT, msg, by_peer=False))
        what = due(now, **self._timer_args())
        if what.idle:
            self._connection_error(
                RemoteProtocolError(
                    ErrorCode.ETIMEOUT,
                    f"idle for {self.limits.idle_timeout_ms} ms with no open stream",
                ),
                events,
            )
            return events
        if what.heartbeat:
            self.send_heartbeat(now)
        return events

    def has_data_to_send(self) -> bool:
        return bool(self._output.items)

    @property
    def queued_bytes(self) -> int:
        """Size of what :meth:`data_to_send` would return now (text counted in chars)."""
        return self._output.size

    @property
    def peer_message_limit(self) -> int:
        """The largest binary WebSocket message the peer must accept: its max_frame_size
        plus 65,536 (ATP-WS-011), which one whole frame always fits."""
        return self._peer.frame_size + WS_MESSAGE_SLACK

    def data_to_send(
        self, now: float | None = None, *, max_message: int | None = None
    ) -> list[bytes | str]:
        """Everything queued: consecutive binary frames coalesced into as few ``bytes`` as
        fit ``max_message`` (default :attr:`peer_message_limit`; one WebSocket message /
        one write each), each text frame one ``str``. A frame larger than the cap goes
        alone (it still fits the peer's max_frame_size); a frame is never split.

        Pass ``now`` so that the heartbeat timer knows when we last sent.
        """
        if not self._output.items:
            return []
        if now is not None:
            self._last_send = now
        cap = self.peer_message_limit if max_message is None else max_message
        return self._output.coalesced(cap)

    def stream_data_to_send(self, now: float | None = None) -> list[tuple[int, bytes, bool]]:
        """Everything queued, per ATP stream (the view a QUIC binding writes, ATP-QUIC-005/
        006): ``(stream_id, bytes, end_stream)`` items in queue order, consecutive frames
        of one stream joined; ``end_stream`` is True after the stream's last frame (our
        FIN, or an RST/ERROR ending it). Stream 0 is the control stream. Binary only: a
        JSON frame cannot be carried this way (ATP-QUIC-003).

        Raises:
            LocalProtocolError: a JSON frame is queued.
        """
        if not self._output.items:
            return []
        if now is not None:
            self._last_send = now
        return self._output.per_stream()
