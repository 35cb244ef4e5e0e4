"""One ATP session over one transport connection, on trio.

Tasks, all owned by the session's nursery (nothing is fire-and-forget):

* the reader feeds received messages to the sans-IO :class:`Connection` and dispatches
  its events (a new stream starts a stream task in the same nursery);
* the writer drains everything the connection has queued into as few transport sends as
  possible (one WebSocket message for all ready binary frames);
* the timer fires TTLs, heartbeats and the idle timeout at the connection's deadline;
* one task per stream (:mod:`atp_proto.router.routing`) — cancelled when the peer resets
  the stream, and all of them when the session ends.

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
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from atp_proto.frames import (
    BudgetWindow,
    Connection,
    ConnectionClosed,
    ErrorCode,
    Event,
    GoingAway,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)

from .admission import WEIGHTS
from .auth import Principal

log = logging.getLogger("atp.router")

#: Output waiting in the session beyond this stops stream tasks (bytes).
OUTPUT_HIGH_WATER = 256 * 1024
#: ... and beyond this stops reading from the peer too (replies to its input queue up).
READ_PAUSE_BYTES = 4 * OUTPUT_HIGH_WATER


class Transport(Protocol):
    """What a session needs from a connection: whole messages in and out."""

    async def receive(self) -> bytes | str | Oversized:
        """Next message; raises :class:`TransportClosed` when the peer is gone."""
        ...

    async def send(self, message: bytes | str) -> None:
        """Send one message. Concurrent calls leave in call order; a cancelled call
        leaves the connection usable (what it did not send goes first next time)."""
        ...

    async def flush(self) -> None:
        """Send what a cancelled :meth:`send` left behind, if anything."""
        ...

    def try_send(self, message: bytes | str) -> bool:
        """Send at once if no waiting is needed (what the socket does not take yet goes
        first with the next send or flush); False when nothing was sent."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class TransportClosed(Exception):
    pass


@dataclass(frozen=True)
class Oversized:
    """What :meth:`Transport.receive` returns for a message over the binding's limit: its
    first bytes only (the rest was skipped as it arrived, so memory stays bounded), for
    the connection to answer with ETOOBIG (ATP-WS-012)."""

    prefix: bytes | str
    limit: int


@dataclass
class StreamHandle:
    stream_id: int
    lane: QoS
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    credit: trio.Event = field(default_factory=trio.Event)
    reset: StreamReset | None = None
    #: set by routing: called with every WINDOW_UPDATE's budget window (ATP-BUDGET-005/010)
    on_window: Callable[[BudgetWindow], None] | None = None


StreamRunner = Callable[["Session", StreamOpened, StreamHandle], Awaitable[None]]


class Session:
    """Drives one :class:`Connection` over one :class:`Transport`."""

    def __init__(
        self,
        transport: Transport,
        *,
        principal: Principal,
        limits: Limits,
        run_stream: StreamRunner,
        session_id: str,
        metrics: Any = None,
        on_frame: Callable[[str, int], None] | None = None,
        text: bool = False,
    ) -> None:
        self.transport = transport
        self.principal = principal
        self.session_id = session_id
        self.conn = Connection(Role.ROUTER, limits=limits, now=trio.current_time(), text=text)
        self.run_stream = run_stream
        self.metrics = metrics
        self.streams: dict[int, StreamHandle] = {}
        self._wake_writer = trio.Event()
        self._writer_busy = False  # the writer, or a stream task in flush_now, is sending
        #: messages flush_now took from the connection but could not hand to the
        #: transport (its task was cancelled): the writer sends them before anything newer
        self._carry: deque[bytes | str] = deque()
        self._wake_timer = trio.Event()
        self._writable = {lane: deque[trio.Event]() for lane in (QoS.GOLD, QoS.SILVER, QoS.BRONZE)}
        self._vfinish = dict.fromkeys(self._writable, 0.0)
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
            if self._closing is not None and not self._closing.by_peer:
                from atp_proto.frames import ws_close_code

                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.transport.close(
                        ws_close_code(self._closing.code), self._closing.message[:120]
                    )

    async def _reader(self) -> None:
        conn = self.conn
        while self._closing is None:
            # Replies we generate ourselves (heartbeat acks, ERRORs, credit) also queue:
            # stop reading while the peer is not taking them (ATP-LIMIT-002).
            while conn.queued_bytes > READ_PAUSE_BYTES and self._closing is None:
                self._wake_writer.set()
                self._drained = trio.Event()
                await self._drained.wait()
            try:
                message = await self.transport.receive()
            except TransportClosed:
                return
            now = trio.current_time()
            if isinstance(message, str):
                events = conn.receive_text(message, now)
            elif isinstance(message, Oversized):
                events = conn.receive_oversized(message.prefix, message.limit, now)
            else:
                events = conn.receive_message(message, now)
            self._dispatch(events)
            self._kick()

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, StreamOpened):
                self._start_stream(ev)
            elif isinstance(ev, MessageReceived):
                # v1 routing uses only the SYN's input; later client messages on a stream
                # (e.g. a FIN half-close) are consumed so that their credit flows back.
                self.conn.acknowledge(ev.stream_id, ev.size)
            elif isinstance(ev, WindowUpdated):
                handle = self.streams.get(ev.stream_id)
                if handle is not None:
                    handle.credit.set()
                    if ev.window is not None and handle.on_window is not None:
                        handle.on_window(ev.window)
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
            elif isinstance(ev, GoingAway):  # a client draining: nothing to do
                pass

    def _start_stream(self, ev: StreamOpened) -> None:
        lane = self.principal.cap_qos(ev.qos)
        handle = StreamHandle(ev.stream_id, lane)
        self.streams[ev.stream_id] = handle
        assert self._nursery is not None
        self._nursery.start_soon(self._stream_task, ev, handle)

    async def _stream_task(self, ev: StreamOpened, handle: StreamHandle) -> None:
        try:
            with handle.scope:
                await self.run_stream(self, ev, handle)
        except Exception as exc:  # a bug in routing must not kill the session
            leaves = _leaves(exc)
            if all(isinstance(e, StreamClosedError) for e in leaves):
                # The stream was reset (by the peer, a TTL or a limit) between two of the
                # task's checkpoints: nothing left to do.
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
            self._kick()

    # ------------------------------------------------------------------ output

    def _kick(self) -> None:
        """Something may have been queued: wake the writer, and the timer when the
        connection's next deadline may have moved earlier."""
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
                if self._writer_busy:
                    continue  # flush_now is sending; it wakes us when done
                self._writer_busy = True
                try:
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
                if self._closing is not None:
                    return
        except TransportClosed:
            return
        finally:
            self._writer_done.set()

    def flush_now(self) -> None:
        """Send what is queued from the calling stream task when that needs no waiting
        (the writer idle, the transport's slot free, room in the socket), instead of
        waking the writer task: one trip through trio's run queue less (under load, a
        wait for a whole batch of other tasks). Used for a stream's first PARTIAL, where
        latency is what the client feels; later output is left to the writer, which
        coalesces many streams' frames into one message. Never blocks: whatever cannot
        go at once is left to the writer, in order.
        """
        if self._writer_busy or self._carry or self._closing is not None:
            return  # the writer is sending, or will: send() already woke it
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

    def _release_writable(self) -> None:
        """Wake stream tasks waiting to write, in weighted-fair lane order."""
        while True:
            best: QoS | None = None
            for lane, q in self._writable.items():
                if q and (best is None or self._vfinish[lane] < self._vfinish[best]):
                    best = lane
            if best is None:
                return
            self._vfinish[best] += 1.0 / WEIGHTS[best]
            self._writable[best].popleft().set()

    def can_write(self, handle: StreamHandle) -> bool:
        """True when the stream may queue a message now (no waiting needed)."""
        return (
            not self.conn.outbound_buffered(handle.stream_id)
            and self.conn.queued_bytes <= OUTPUT_HIGH_WATER
        )

    async def writable(self, handle: StreamHandle) -> None:
        """Wait until the stream may queue another message (credit + session room)."""
        conn = self.conn
        while True:
            if conn.outbound_buffered(handle.stream_id):
                handle.credit = trio.Event()
                await handle.credit.wait()
                continue
            if self._pending_output() > OUTPUT_HIGH_WATER:
                ev = trio.Event()
                self._writable[handle.lane].append(ev)
                try:
                    await ev.wait()
                except BaseException:
                    if ev in self._writable[handle.lane]:
                        self._writable[handle.lane].remove(ev)
                    raise
                continue
            return

    def _pending_output(self) -> int:
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
            if isinstance(exc, StreamClosedError) or exc.code != ErrorCode.ETOOBIG:
                raise
            # ATP-FLOW-014: the client's window is too small for this message's ext (the
            # FINAL's telemetry): say so rather than fail with EINTERNAL.
            self.send_error(stream_id, ErrorCode.ETOOBIG, exc.message)
            return
        # Hot path: only the writer needs waking (sending moves no timer deadline earlier).
        self._wake_writer.set()

    def send_error(
        self, stream_id: int, code: ErrorCode | str, message: str, retry_after_ms: int | None = None
    ) -> None:
        if self.metrics is not None and not self.conn.closed:
            self.metrics.errors.inc(str(code))
        self.conn.send_error(stream_id, code, message, retry_after_ms)
        self._kick()

    def start_drain(self) -> None:
        self.conn.start_drain()
        self._kick()

    def close(self, code: ErrorCode | str, message: str) -> None:
        self.conn.close(code, message)
        self._closing = ConnectionClosed(str(code), message, by_peer=False)
        self._kick()
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
            self._kick()
            if self._closing is not None:
                # idle timeout: run() flushes the ERROR frame and closes the transport
                self._reader_scope.cancel()
                return


def _leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (trio nurseries wrap errors in groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
