"""One ATP session over one transport connection, on trio — for the router and the client.

Tasks, all owned by the session's nursery (nothing is fire-and-forget):

* the reader feeds received units to the sans-IO :class:`Connection` and dispatches
  its events (a new stream starts a stream task in the same nursery);
* the writer drains everything the connection has queued into as few transport sends as
  possible (one WebSocket message for all ready binary frames);
* the timer fires TTLs, heartbeats and the idle timeout at the connection's deadline —
  on both roles: the client library runs on this driver too, so its TTLs and heartbeats
  fire (they never did when the client drove the core itself);
* one task per stream the peer opens (the router's runner, e.g.
  :mod:`atp_proto.router.routing`, given the stream's :class:`~.output.Output`) — cancelled
  when the stream is reset, and all of them when the session ends.

The role's own logic sees the session through three seams: ``run_stream`` (one call per
SYN the peer sends), ``on_event`` (every event after the session's own handling; the
client routes messages to its streams with it) and ``authenticate`` (below). The session
imports nothing from :mod:`atp_proto.router`: a principal is opaque to it
(:class:`SessionInfo`), and lane capping is the runner's policy (``Output.set_lane``).

Authentication phase: over WebSocket the peer is authenticated at the HTTP upgrade, before
the session exists, and the session starts authenticated (``principal`` given). A
transport that authenticates inside the session (QUIC: ``caps.auth`` of the first
CAPABILITIES on the control stream, ATP-QUIC-008/009) passes ``authenticate``: it is
called with the peer's first :class:`CapabilitiesReceived` and returns the principal, or
raises an :class:`~atp_proto.frames.ATPError` whose code closes the session (ESEC for a bad
credential). Until it has returned, any other frame (a SYN above all) closes the session
with ``preauth_code`` (the router's QUIC sessions: ESEC, ATP-QUIC-008; EPROTO by default)
and no stream task starts; a later CAPABILITIES is not
authenticated again (ATP-QUIC-017).

Per-stream transports (QUIC, :class:`~atp_proto.transports.base.StreamTransport`): input
comes per channel (``ChannelData`` to the core's ``receive_stream_data``, ``ChannelReset``
to ``receive_stream_reset``, a ``TransportFault`` closes the session), output goes as the
core's per-stream view, and what the transport holds unacknowledged counts against the
output watermark below (ATP-QUIC-010). Everything else — dispatch, stream tasks, timers,
backpressure — is this one driver for both bindings.

Backpressure: a stream task sends a message only when its stream has no frames waiting
for credit and the session's output queue is below a watermark; otherwise it waits. Waiters
are woken lane by lane in weighted-fair order (gold 6 : silver 3 : bronze 1), which is the
connection's outbound QoS scheduling. So a client that stops reading stops its stream
tasks, which stop pulling from their adapters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from atp_proto.frames import (
    ATPError,
    CapabilitiesReceived,
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Event,
    FrameType,
    GoingAway,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    SequenceExhausted,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
)
from atp_proto.transports.base import (
    ChannelData,
    ChannelEnd,
    ChannelReset,
    Oversized,
    StreamTransport,
    Transport,
    TransportClosed,
    TransportFault,
)

from .lanes import FairQueue
from .output import Output

#: the CAPABILITIES frame type, the second byte of a frame header (ATP-QUIC-008)
_CAPABILITIES = int(FrameType.CAPABILITIES)
#: idle transport streams waiting for their end at most (beyond it one is left to the
#: session's end, as before; the peer's QUIC stream limit bounds them anyway)
_MAX_IDLE_ENDS = 1024

__all__ = [
    "OUTPUT_HIGH_WATER",
    "READ_PAUSE_BYTES",
    "Session",
    "SessionInfo",
    "StreamRunner",
]

log = logging.getLogger("atp.session")

#: Output waiting in the session beyond this stops stream tasks (bytes).
OUTPUT_HIGH_WATER = 256 * 1024
#: ... and beyond this stops reading from the peer too (replies to its input queue up).
READ_PAUSE_BYTES = 4 * OUTPUT_HIGH_WATER


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a stream's runner may know of its session: its id (for logs and task ids)
    and the authenticated principal, opaque to the session (the router's ``Principal``)."""

    session_id: str
    principal: Any


#: called once per SYN the peer sends; runs in the session's nursery, cancelled on reset
StreamRunner = Callable[[SessionInfo, StreamOpened, Output], Awaitable[None]]


class Session:
    """Drives one :class:`Connection` over one :class:`Transport`."""

    def __init__(
        self,
        transport: Transport,
        *,
        limits: Limits,
        session_id: str,
        role: Role = Role.ROUTER,
        principal: Any = None,
        run_stream: StreamRunner | None = None,
        on_event: Callable[[Event], None] | None = None,
        authenticate: Callable[[CapabilitiesReceived], Any] | None = None,
        preauth_code: ErrorCode = ErrorCode.EPROTO,
        metrics: Any = None,
        encoding: Encoding = Encoding.BINARY,
        heartbeat: float | None = None,
    ) -> None:
        """``run_stream``: called per SYN of the peer (none: a SYN is refused with
        EPROTO, the client's case). ``on_event``: sees every event after the session
        handled it; when set, received messages are left to it to acknowledge
        (``conn.acknowledge``), else the session acknowledges them at once (the router
        uses only a stream's SYN). ``authenticate``: see the module docstring.
        ``encoding``: of session-level frames until the peer speaks (ATP-WS-010: JSON
        for a browser that offered no ``atp.v1``). ``heartbeat``:
        send a heartbeat after this many seconds without sending (None: never)."""
        self.transport = transport
        #: a per-stream transport (QUIC): input per channel, output per ATP stream
        self._streams_io: StreamTransport | None = None
        if getattr(transport, "per_stream", False):
            streams_io: StreamTransport = transport  # type: ignore[assignment]
            streams_io.on_writable = self._transport_room
            self._streams_io = streams_io
        self.principal = principal
        self.session_id = session_id
        self.conn = Connection(
            role, limits=limits, now=trio.current_time(), encoding=encoding, heartbeat=heartbeat
        )
        self.run_stream = run_stream
        self.on_event = on_event
        self._authenticate = authenticate
        self._preauth_code = preauth_code
        self._control_seen = False  #: bytes of the control stream arrived (per-stream)
        self.metrics = metrics
        self.streams: dict[int, Output] = {}
        self._wake_writer = trio.Event()
        #: _wake_writer is set (send_more's shortcut; other callers just set it again)
        self._writer_woken = False
        self._writer_busy = False  # the writer, or a stream task in flush_now, is sending
        #: messages flush_now took from the connection but could not hand to the
        #: transport (its task was cancelled): the writer sends them before anything newer
        self._carry: deque[bytes | str] = deque()
        #: the same for a per-stream transport: item lists try_send_streams refused
        self._stream_carry: list[list[tuple[int, bytes, bool]]] = []
        #: a router's channels whose peer ended a transport stream that opened no ATP
        #: stream (its first frame was of an unknown type): our side is ended (an empty
        #: FIN) after the core's output of the same pass, so the transport stream is done
        #: both ways and forgotten, not held until the session ends
        self._idle_ends: list[int] = []
        self._role = role
        self._wake_timer = trio.Event()
        self._writable: FairQueue[trio.Event] = FairQueue()
        #: tasks in flush() waiting for the writer to finish a pass
        self._flush_waiters: list[trio.Event] = []
        self._writer_done = trio.Event()
        self._drained = trio.Event()
        self._closing: ConnectionClosed | None = None
        self._nursery: trio.Nursery | None = None
        #: cancelled to stop reading when we close: run() then flushes the ERROR frame
        self._reader_scope = trio.CancelScope()
        self.done = trio.Event()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Serve the session until the peer leaves or the connection closes."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._timer)
                try:
                    with self._reader_scope:
                        await self._reader()
                    if self._closing is not None:
                        # We are closing: let the writer send the ERROR frame first.
                        self._wake_writer.set()
                        with trio.move_on_after(2):
                            await self._writer_done.wait()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.done.set()
            for waiter in self._flush_waiters:
                waiter.set()
            if self._closing is not None and not self._closing.by_peer:
                # the transport maps the code to its binding's close code
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.transport.close_with_error(
                        self._closing.code, self._closing.message[:120]
                    )

    @property
    def info(self) -> SessionInfo:
        return SessionInfo(self.session_id, self.principal)

    @property
    def authenticated(self) -> bool:
        return self._authenticate is None

    async def _reader(self) -> None:
        conn = self.conn
        while self._closing is None:
            # Replies we generate ourselves (heartbeat acks, ERRORs, credit) also queue:
            # stop reading while the peer is not taking them (ATP-LIMIT-002).
            while self._pending_output() > READ_PAUSE_BYTES and self._closing is None:
                self._wake_writer.set()
                self._drained = trio.Event()
                await self._drained.wait()
            try:
                message = await self.transport.receive()
            except TransportClosed:
                return
            now = trio.current_time()
            if isinstance(message, ChannelData):
                if self._authenticate is not None and message.channel == 0:
                    first = not self._control_seen
                    self._control_seen = True
                    if first and len(message.data) > 1 and message.data[1] != _CAPABILITIES:
                        # ATP-QUIC-008: any other first frame of the control stream (a
                        # heartbeat too, which the core would answer without an event)
                        self.close(self._preauth_code, "the first frame must be CAPABILITIES")
                        return
                events = conn.receive_stream_data(message.channel, message.data, now)
            elif isinstance(message, str):
                events = conn.receive_text(message, now)
            elif isinstance(message, Oversized):
                events = conn.receive_oversized(message.prefix, message.limit, now)
            elif isinstance(message, ChannelReset):
                events = conn.receive_stream_reset(message.channel, now)
            elif isinstance(message, ChannelEnd):
                events = conn.receive_stream_end(message.channel, now)
                if (
                    not events
                    and self._role is Role.ROUTER
                    and conn.stream_state(message.channel) is StreamState.IDLE
                    and len(self._idle_ends) < _MAX_IDLE_ENDS
                ):
                    self._idle_ends.append(message.channel)
                    self._wake_writer.set()
            elif isinstance(message, TransportFault):
                self.close(message.code, message.message)
                return
            else:
                events = conn.receive_message(message, now)
            self._dispatch(events)
            self.kick()

    def _dispatch(self, events: list[Event]) -> None:
        on_event = self.on_event
        for ev in events:
            if self._authenticate is not None and not isinstance(
                ev, (CapabilitiesReceived, ConnectionClosed)
            ):
                # ATP-QUIC-008/009: nothing before the authenticating CAPABILITIES
                self.close(self._preauth_code, "the first frame must be CAPABILITIES")
                return
            if isinstance(ev, StreamOpened):
                self._start_stream(ev)
            elif isinstance(ev, MessageReceived):
                if on_event is None:
                    # v1 routing uses only the SYN's input; later client messages on a
                    # stream (e.g. a FIN half-close) are consumed so their credit flows back.
                    self.conn.acknowledge(ev.stream_id, ev.size)
            elif isinstance(ev, WindowUpdated):
                handle = self.streams.get(ev.stream_id)
                if handle is not None:
                    handle.credit.set()
                    if ev.window is not None:
                        handle.window_updated(ev.window)
            elif isinstance(ev, CapabilitiesReceived) and self._authenticate is not None:
                try:
                    self.principal = self._authenticate(ev)
                except ATPError as exc:
                    self.close(exc.code, exc.message)
                    return
                self._authenticate = None
            elif isinstance(ev, StreamReset):
                handle = self.streams.get(ev.stream_id)
                if handle is not None:
                    handle.reset = ev
                    handle.scope.cancel()
                if not ev.by_peer and self.metrics is not None:
                    self.metrics.errors.inc(ev.code)
                log.info(
                    "stream reset",
                    extra={
                        "session": self.session_id,
                        "stream": ev.stream_id,
                        "code": ev.code,
                        "by_peer": ev.by_peer,
                    },
                )
            elif isinstance(ev, ConnectionClosed):
                self._closing = ev
                if not ev.by_peer and self.metrics is not None:
                    self.metrics.errors.inc(ev.code)
                log.info(
                    "session closing",
                    extra={"session": self.session_id, "code": ev.code, "by_peer": ev.by_peer},
                )
            elif isinstance(ev, GoingAway):  # the peer draining: the role's business
                pass
            if on_event is not None:
                on_event(ev)

    def _start_stream(self, ev: StreamOpened) -> None:
        if self.run_stream is None:  # a role that serves no streams (the client)
            self.conn.send_error(ev.stream_id, ErrorCode.EPROTO, "this peer opens no streams")
            return
        # the runner may cap the lane (Output.set_lane) before its first output
        sid = ev.stream_id
        check = self.conn.write_check(sid, OUTPUT_HIGH_WATER, self._streams_io)
        handle = Output(self, sid, ev.qos, check=check)
        self.streams[ev.stream_id] = handle
        assert self._nursery is not None
        self._nursery.start_soon(self._stream_task, ev, handle)

    async def _stream_task(self, ev: StreamOpened, handle: Output) -> None:
        assert self.run_stream is not None
        try:
            with handle.scope:
                await self.run_stream(self.info, ev, handle)
        except Exception as exc:  # a bug in routing must not kill the session
            leaves = _leaves(exc)
            if all(isinstance(e, StreamClosedError) for e in leaves):
                # The stream was reset (by the peer, a TTL or a limit) between two of the
                # task's checkpoints: nothing left to do.
                return
            if all(isinstance(e, _SESSION_GONE) for e in leaves) or (
                self.conn.closed and all(isinstance(e, LocalProtocolError) for e in leaves)
            ):
                # The session ended under the stream (the peer left, or a connection
                # error closed the core while the stream was sending): a normal end.
                log.debug(
                    "stream ended with its session",
                    extra={
                        "session": self.session_id,
                        "stream": ev.stream_id,
                        "error": type(leaves[0]).__name__,
                    },
                )
                return
            log.exception(
                "stream task failed",
                exc_info=exc,
                extra={"session": self.session_id, "stream": ev.stream_id},
            )
            self.send_error(
                ev.stream_id, ErrorCode.EINTERNAL, f"internal error: {type(leaves[0]).__name__}"
            )
        finally:
            self.streams.pop(ev.stream_id, None)
            self.kick()

    # ------------------------------------------------------------------ output

    def kick(self) -> None:
        """Something may have been queued on :attr:`conn` (by the role's own calls, e.g.
        the client's ``open_stream`` or ``acknowledge``): wake the writer, and the timer
        when the connection's next deadline may have moved earlier."""
        conn = self.conn
        if conn.has_data_to_send():
            self._wake_writer.set()
        if conn.timer_stale:
            self._wake_timer.set()

    async def _writer(self) -> None:
        conn = self.conn
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                self._writer_woken = False
                if self._writer_busy:
                    continue  # flush_now is sending; it wakes us when done
                self._writer_busy = True
                try:
                    if self._streams_io is not None:
                        await self._write_streams(self._streams_io)
                    carry = self._carry
                    while carry:
                        await self.transport.send(carry.popleft())  # cancelled: kept
                    while True:
                        out = conn.data_to_send(trio.current_time())
                        if not out:
                            break
                        for message in out:
                            await self.transport.send(message)
                    await self.transport.flush()
                finally:
                    self._writer_busy = False
                self._release_writable()
                self._drained.set()
                if self._flush_waiters:
                    waiters, self._flush_waiters = self._flush_waiters, []
                    for waiter in waiters:
                        waiter.set()
                if self._closing is not None:
                    return
        except TransportClosed:
            return
        finally:
            self._writer_done.set()

    async def _write_streams(self, transport: StreamTransport) -> None:
        """The per-stream writer pass: each ATP stream's frames to its transport stream."""
        conn = self.conn
        while self._stream_carry:
            await transport.send_streams(self._stream_carry[0])
            self._stream_carry.pop(0)
        while True:
            items = conn.stream_data_to_send(trio.current_time())
            if not items:
                break
            await transport.send_streams(items)
        if self._idle_ends:
            ends, self._idle_ends = self._idle_ends, []
            await transport.send_streams([(channel, b"", True) for channel in ends])

    def _transport_room(self) -> None:
        """The per-stream transport's buffers fell: let waiting stream tasks run."""
        self._wake_writer.set()

    def flush_now(self) -> None:
        """Send what is queued from the calling stream task when that needs no waiting
        (the writer idle, the transport's slot free, room in the socket), instead of
        waking the writer task: one trip through trio's run queue less (under load, a
        wait for a whole batch of other tasks). Used for a stream's first PARTIAL, where
        latency is what the client feels; later output is left to the writer, which
        coalesces many streams' frames into one message. Never blocks: whatever cannot
        go at once is left to the writer, in order.
        """
        if self._writer_busy or self._carry or self._stream_carry or self._closing is not None:
            return  # the writer is sending, or will: send() already woke it
        if self._streams_io is not None:
            items = self.conn.stream_data_to_send(trio.current_time())
            try:
                if items and not self._streams_io.try_send_streams(items):
                    self._stream_carry.append(items)  # the writer sends it first
            except TransportClosed:
                pass  # the peer is gone (the reader ends the session), as for WebSocket
            self._wake_writer.set()
            return
        out = self.conn.data_to_send(trio.current_time())
        if not out:
            return
        transport = self.transport
        try:
            for i, message in enumerate(out):
                if not transport.try_send(message):
                    self._carry.extend(out[i:])
                    break
        except TransportClosed:
            pass
        self._wake_writer.set()  # room waiters, drained, leftovers

    async def flush(self) -> None:
        """Wait until what is queued now has been handed to the transport (or the
        session ended): for a role that must know its frame left, e.g. the client's RST
        before it closes."""
        while not self.done.is_set():
            self.flush_now()
            if not (
                self.conn.has_data_to_send()
                or self._writer_busy
                or self._carry
                or self._stream_carry
            ):
                return
            waiter = trio.Event()
            self._flush_waiters.append(waiter)
            self._wake_writer.set()
            await waiter.wait()

    def _release_writable(self) -> None:
        """Wake stream tasks waiting to write, in weighted-fair lane order."""
        writable = self._writable
        while (ev := writable.pop()) is not None:
            ev.set()

    def can_write(self, handle: Output) -> bool:
        """True when the stream may queue a message now (no waiting needed)."""
        conn = self.conn
        if conn.outbound_buffered(handle.stream_id):
            return False
        if self._streams_io is None:  # _pending_output(), inlined: once per relayed chunk
            return conn.queued_bytes <= OUTPUT_HIGH_WATER
        return self._pending_output() <= OUTPUT_HIGH_WATER

    async def writable(self, handle: Output) -> None:
        """Wait until the stream may queue another message (credit + session room)."""
        conn = self.conn
        while True:
            if conn.outbound_buffered(handle.stream_id):
                handle.credit = trio.Event()
                await handle.credit.wait()
                continue
            if self._pending_output() > OUTPUT_HIGH_WATER:
                ev = trio.Event()
                self._writable.push(handle.lane, ev)
                try:
                    await ev.wait()
                except BaseException:
                    self._writable.remove(handle.lane, ev)
                    raise
                continue
            return

    def _pending_output(self) -> int:
        """Output not yet taken by the peer: queued in the connection, and for a
        per-stream transport also what sits unacknowledged in its stream buffers (QUIC
        buffers without limit, so this is the session's bound on it: ATP-QUIC-010)."""
        if self._streams_io is not None:
            return self.conn.queued_bytes + self._streams_io.pending_bytes
        return self.conn.queued_bytes

    @property
    def idle(self) -> bool:
        """No stream task running and nothing of a stream left to send (a FINAL waiting
        for credit keeps the session busy)."""
        return not self.streams and not self.conn.open_streams

    @property
    def closing(self) -> bool:
        return self._closing is not None

    # API used by stream tasks ------------------------------------------------------

    def send(
        self,
        stream_id: int,
        payload: bytes,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.conn.send_message(stream_id, payload, more=more, end_stream=end_stream, ext=ext)
        except LocalProtocolError as exc:
            if isinstance(exc, StreamClosedError) or not (
                exc.code == ErrorCode.ETOOBIG or isinstance(exc, SequenceExhausted)
            ):
                raise
            # ATP-FLOW-014: the client's window is too small for this message's ext (the
            # FINAL's telemetry); ATP-SEQ-005: the SYN's msg_seq left no number for this
            # message before the FINAL. Say so rather than fail with EINTERNAL.
            self.send_error(stream_id, exc.code, exc.message)
            return
        # Hot path: only the writer needs waking (sending moves no timer deadline earlier).
        self._wake_writer.set()

    def send_more(self, stream_id: int, payload: bytes) -> None:
        """:meth:`send` of one message with MORE and no ext: a relayed chunk after the
        stream's first (:meth:`Output.send_partial`), the same checks with fewer calls."""
        try:
            self.conn.send_message(stream_id, payload, more=True)
        except LocalProtocolError as exc:
            if isinstance(exc, StreamClosedError) or not (
                exc.code == ErrorCode.ETOOBIG or isinstance(exc, SequenceExhausted)
            ):
                raise
            self.send_error(stream_id, exc.code, exc.message)  # as in send()
            return
        if not self._writer_woken:  # one Event.set per writer pass, not one per chunk
            self._writer_woken = True
            self._wake_writer.set()

    def max_ext_len(self, stream_id: int) -> int:
        """The largest ext a message on the stream may carry (ATP-FLOW-014)."""
        return self.conn.max_ext_len(stream_id)

    def send_error(
        self, stream_id: int, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        if self.metrics is not None and not self.conn.closed:
            self.metrics.errors.inc(str(code))
        self.conn.send_error(stream_id, code, message, retry_after_ms)
        self.kick()

    def start_drain(self) -> None:
        self.conn.start_drain()
        self.kick()

    def close(self, code: ErrorCode | str, message: str) -> None:
        self.conn.close(code, message)
        self._closing = ConnectionClosed(str(code), message, by_peer=False)
        self.kick()
        # Stop the streams and the reader, not the writer: run() sends the ERROR frame.
        for handle in self.streams.values():
            handle.scope.cancel()
        self._reader_scope.cancel()

    # ------------------------------------------------------------------ time

    async def _timer(self) -> None:
        conn = self.conn
        while True:
            conn.timer_stale = False
            deadline = conn.next_deadline()
            self._wake_timer = trio.Event()
            if deadline is None:
                await self._wake_timer.wait()
                continue
            with trio.move_on_at(deadline):
                await self._wake_timer.wait()
                continue
            events = conn.handle_timer(trio.current_time())
            self._dispatch(events)
            self.kick()
            if self._closing is not None:
                # idle timeout: run() flushes the ERROR frame and closes the transport
                self._reader_scope.cancel()
                return


#: what a stream task may meet when the session's transport is gone under it
_SESSION_GONE = (TransportClosed, trio.ClosedResourceError, trio.BrokenResourceError)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (trio nurseries wrap errors in groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
