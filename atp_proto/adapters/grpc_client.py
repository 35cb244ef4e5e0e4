"""gRPC client for ``atp.adapter.v1`` on trio: HTTP/2 (h2) over trio TCP / TLS streams.

grpclib is asyncio-only and trio-asyncio costs 15-40% (DESIGN.md, "gRPC from trio"), so
this module speaks gRPC directly:

* **One HTTP/2 connection per endpoint**, multiplexing all calls. A new call waits for a
  free slot while the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` streams are open.
* **One reader task and one writer task per connection.** The reader parses every HTTP/2
  frame of each receive buffer and hands gRPC messages to per-call inboxes; it never
  blocks on a consumer. The writer drains h2's output buffer, so many small writes (acks,
  requests of concurrent calls) coalesce into one ``send_all``.
* **Flow control both ways.** Received DATA is acknowledged (WINDOW_UPDATE) only when the
  caller consumes the message it carried, so a slow consumer stops the server at one
  stream window (64 KiB by default) per call: memory stays bounded. Request bodies are
  sent within the server's windows.
* **gRPC framing**: 5-byte length prefix, ``grpc-timeout`` from the request's
  ``deadline_ms`` (or the adapter's default timeout), ``grpc-status`` / ``grpc-message``
  (percent-decoded) from trailers or trailers-only responses, HTTP status fallback.
* **Cancellation**: leaving a call early (the caller's cancel scope, ``break`` out of the
  stream, a deadline) sends ``RST_STREAM(CANCEL)``.
* **Errors** are :class:`AdapterError` with ATP codes (:data:`GRPC_TO_ATP`); ``streamed``
  tells whether this call already yielded a chunk.
* **Reconnect**: a dropped connection fails its in-flight calls (EAGENTDOWN); the next
  call reconnects at once. A failed connect starts exponential backoff with jitter;
  during the backoff calls fail fast with EAGENTDOWN and ``retry_after_ms``.
* **TLS**: ``grpcs://HOST:PORT`` (trio.SSLStream, ALPN ``h2``, system trust store, or
  ``?ca=FILE``; ``?insecure=1`` skips verification for tests only).

Task ownership (no task outlives its owner):

* ``async with GrpcAdapter(...) as a:`` — connection tasks run in a nursery owned by the
  ``async with`` block; leaving it closes the connection.
* ``await nursery.start(adapter.run)`` — the same, in a nursery the caller owns (e.g. the
  router's); cancelling that nursery closes the adapter.
* Neither (the router's ``connect(name, url)`` path): the connection's tasks are started
  lazily, on the first call, as trio *system tasks* of the running ``trio.run``. They are
  stopped by ``await adapter.aclose()`` (the router calls it at shutdown) and, at the
  latest, when ``trio.run`` returns. They never raise (errors are turned into call
  failures), so they cannot crash the run.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import trio

from atp_proto.frames import ErrorCode

from ._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .proto import codec

__all__ = ["GRPC_TO_ATP", "GrpcAdapter", "GrpcStatus", "grpc_error"]

log = logging.getLogger("atp.adapter.grpc")

SERVICE = "/atp.adapter.v1.AdapterService"
USER_AGENT = b"atp-grpc-trio/1"

_ACK_BATCH = 8192  # bytes of consumed DATA given back to the server at once
_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_FAST_STATES = frozenset((h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL))


class GrpcStatus:
    """gRPC status codes (the numbers are fixed by the gRPC spec)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: gRPC status -> ATP error code; anything else is EAGENTDOWN.
GRPC_TO_ATP: dict[int, ErrorCode] = {
    GrpcStatus.UNAVAILABLE: ErrorCode.EAGENTDOWN,
    GrpcStatus.DEADLINE_EXCEEDED: ErrorCode.ETIMEOUT,
    GrpcStatus.RESOURCE_EXHAUSTED: ErrorCode.EWINDOW_AGENT,
    GrpcStatus.INVALID_ARGUMENT: ErrorCode.EPROTO,
    GrpcStatus.UNAUTHENTICATED: ErrorCode.ESEC,
    GrpcStatus.PERMISSION_DENIED: ErrorCode.ESEC,
}

#: HTTP status of a non-gRPC response -> gRPC status (gRPC "HTTP to gRPC status mapping").
_HTTP_TO_GRPC = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}


#: resends of a call the server refused unprocessed (REFUSED_STREAM, GOAWAY)
_TRANSPARENT_RETRIES = 3


class _RpcError(Exception):
    """A call ended with a non-OK status (internal; converted by :func:`grpc_error`)."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after_ms: int | None = None,
        *,
        transparent: bool = False,
    ) -> None:
        super().__init__(f"grpc status {status}: {message}")
        self.transparent = transparent  #: the server did not process the call
        self.status = status
        self.message = message
        self.retry_after_ms = retry_after_ms


def grpc_error(
    status: int, message: str, *, adapter: str, streamed: bool, retry_after_ms: int | None = None
) -> AdapterError:
    """The :class:`AdapterError` for a gRPC status (see :data:`GRPC_TO_ATP`)."""
    code = GRPC_TO_ATP.get(status, ErrorCode.EAGENTDOWN)
    return AdapterError(
        code,
        f"{message} (grpc status {status})" if message else f"grpc status {status}",
        adapter=adapter,
        streamed=streamed,
        retry_after_ms=retry_after_ms,
    )


def _retry_info(value: bytes) -> int | None:
    """The retry delay (ms) of a ``grpc-status-details-bin`` trailer, if it holds a
    ``google.rpc.RetryInfo``; None when it does not or is malformed."""
    try:
        raw = base64.b64decode(value + b"=" * (-len(value) % 4), validate=False)
        return codec.decode_retry_info(raw)
    except (ValueError, codec.DecodeError):
        return None


def _grpc_timeout(seconds: float) -> bytes:
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100_000_000:
        return b"%dm" % ms
    return b"%dS" % min(99_999_999, math.ceil(seconds))


# ------------------------------------------------------------------------------ a call


class _Call:
    """One HTTP/2 stream. Messages wait in ``inbox`` with the flow-control credit they
    return when consumed."""

    __slots__ = (
        "acked_on_close",
        "buf",
        "conn",
        "consumed",
        "ended",
        "headers_ok",
        "http_status",
        "inbox",
        "lot",
        "outcome",
        "pending_ack",
        "stream_id",
        "unacked",
        "window_lot",
    )

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.inbox: deque[tuple[bytes, int]] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.window_lot = trio.lowlevel.ParkingLot()
        self.buf = bytearray()
        self.pending_ack = 0  # credit of a message still incomplete
        self.unacked = 0  # credit of consumed messages not yet given back
        self.outcome: _RpcError | None = None  # set when the call ended (status OK too)
        self.ended = False  # the server finished the stream (or it was reset / lost)
        self.headers_ok = False
        self.http_status = 0
        self.consumed = 0
        self.acked_on_close = False

    # called by the reader -----------------------------------------------------------

    def on_data(self, data: bytes, flow_len: int) -> None:
        if not self.headers_ok:  # not a gRPC response (HTTP error): drop the body
            if flow_len:
                self.conn.ack(self.stream_id, flow_len)
            return
        buf = self.buf
        if not buf and len(data) > 5 and not data[0]:
            n = int.from_bytes(data[1:5], "big")
            if n == len(data) - 5 and n <= self.conn.max_message_size:  # the usual case
                self.inbox.append((data[5:], flow_len + self.pending_ack))
                self.pending_ack = 0
                if self.lot:
                    self.lot.unpark_all()
                return
        buf += data
        self.pending_ack += flow_len
        got = 0
        while len(buf) >= 5:
            n = int.from_bytes(buf[1:5], "big")
            if n > self.conn.max_message_size:  # whole or not: refused on its prefix
                self.fail(GrpcStatus.RESOURCE_EXHAUSTED, f"message of {n} bytes is too large")
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
                return
            if len(buf) < 5 + n:
                break
            if buf[0]:
                self.fail(
                    GrpcStatus.INTERNAL, "compressed message but no compression was negotiated"
                )
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
                return
            msg = bytes(buf[5 : 5 + n])
            del buf[: 5 + n]
            self.inbox.append((msg, 0))
            got += 1
        if got:
            # the credit of this DATA (and of earlier partial ones) returns when the
            # last message it completed is consumed
            msg, _ = self.inbox[-1]
            self.inbox[-1] = (msg, self.pending_ack)
            self.pending_ack = 0
            self.lot.unpark_all()
        elif self.pending_ack:
            # bytes of a message still incomplete: acknowledge now, or a message larger
            # than the window would deadlock (bounded by max_message_size)
            self.conn.ack(self.stream_id, self.pending_ack)
            self.pending_ack = 0

    def on_headers(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        status = grpc_status = None
        message = ""
        retry: int | None = None
        for k, v in headers:
            if k == b":status":
                status = int(v)
            elif k == b"grpc-status":
                grpc_status = int(v)
            elif k == b"grpc-message":
                message = unquote(v.decode("utf-8", "replace"))
            elif k == b"grpc-retry-pushback-ms":  # gRPC A6 server pushback
                try:
                    retry = int(v)
                except ValueError:
                    retry = None
                if retry is not None and retry < 0:  # negative: "do not retry"
                    retry = None
            elif k == b"grpc-status-details-bin" and retry is None:
                retry = _retry_info(v)  # google.rpc.RetryInfo (richer error model)
        if status is not None:
            self.http_status = status
            if status != 200:
                code = _HTTP_TO_GRPC.get(status, GrpcStatus.UNKNOWN)
                self.outcome = _RpcError(code, f"HTTP status {status}")
                return
            self.headers_ok = True
        if grpc_status is not None and self.outcome is None:
            self.outcome = _RpcError(grpc_status, message, retry)

    def on_end(self) -> None:
        self.ended = True
        if self.outcome is None:
            if self.buf:
                self.outcome = _RpcError(GrpcStatus.INTERNAL, "stream ended inside a message")
            else:
                self.outcome = _RpcError(GrpcStatus.UNKNOWN, "server sent no grpc-status")
        self.lot.unpark_all()
        self.window_lot.unpark_all()

    def fail(self, status: int, message: str, *, transparent: bool = False) -> None:
        if not self.ended:
            self.ended = True
            if self.outcome is None or self.outcome.status == GrpcStatus.OK:
                self.outcome = _RpcError(status, message, transparent=transparent)
            self.lot.unpark_all()
            self.window_lot.unpark_all()

    # called by the caller -----------------------------------------------------------

    async def recv(self) -> bytes | None:
        """The next message, or None at the end of an OK call.

        Raises:
            _RpcError: the call failed.
        """
        while True:
            if self.inbox:
                msg, ack = self.inbox.popleft()
                if ack or self.unacked:
                    # credit goes back in batches (h2 sends WINDOW_UPDATE only once
                    # half a window is consumed anyway), and always before we wait
                    ack += self.unacked
                    if ack >= _ACK_BATCH or not self.inbox:
                        self.unacked = 0
                        self.conn.ack(self.stream_id, ack)
                    else:
                        self.unacked = ack
                self.consumed += 1
                if self.consumed & 15 == 0:
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.checkpoint_if_cancelled()
                return msg
            if self.ended:
                assert self.outcome is not None
                await trio.lowlevel.checkpoint()
                if self.outcome.status == GrpcStatus.OK:
                    return None
                raise self.outcome
            await self.lot.park()

    def close(self) -> None:
        """Forget the call: reset it if the server has not finished it; give back the
        flow-control credit of messages never consumed."""
        conn = self.conn
        if not self.ended:
            self.ended = True
            if self.outcome is None:
                self.outcome = _RpcError(GrpcStatus.CANCELLED, "cancelled")
            conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
        if not self.acked_on_close:
            self.acked_on_close = True
            unacked = sum(a for _, a in self.inbox) + self.pending_ack + self.unacked
            self.unacked = 0
            self.inbox.clear()
            if unacked:
                conn.ack(self.stream_id, unacked)
        conn.calls.pop(self.stream_id, None)
        conn.slot_lot.unpark_all()


# ------------------------------------------------------------------------ a connection


class _Connection:
    """One HTTP/2 connection: h2 state, the reader and writer tasks, and its calls."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        authority: bytes,
        scheme: bytes,
        window: int,
        connection_window: int,
        max_message_size: int,
        label: str,
    ) -> None:
        self.stream = stream
        self.authority = authority
        self.scheme = scheme
        self.label = label
        self.max_message_size = max_message_size
        cfg = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.h2.initiate_connection()
        extra = connection_window - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        self.calls: dict[int, _Call] = {}
        self.slot_lot = trio.lowlevel.ParkingLot()
        self.settings_received = trio.Event()
        self.dead: str | None = None  # why the connection is unusable
        self.going_away = False
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._wake = trio.Event()
        self._in_header_block = False  # a HEADERS frame awaits its CONTINUATION

    @property
    def usable(self) -> bool:
        return self.dead is None and not self.going_away

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        """Reader + writer; returns when the connection is closed (never raises)."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # connection errors: turned into call failures
            self._lost(f"connection error: {exc.__class__.__name__}: {exc}")
        except BaseException:  # Cancelled (aclose / owner cancelled) / KeyboardInterrupt
            self._lost("connection closed")
            raise
        finally:
            self._lost("connection closed")
            with trio.CancelScope(shield=True) as cs:
                cs.deadline = trio.current_time() + 1.0
                try:
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.h2.close_connection()
                    data = self.h2.data_to_send()  # an error GOAWAY queued earlier first
                    if data:
                        await self.stream.send_all(data)
                except Exception:  # best effort GOAWAY
                    pass
                with contextlib.suppress(Exception):
                    await self.stream.aclose()
            self.done.set()

    def _lost(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            log.debug("%s: %s", self.label, why)
        for call in list(self.calls.values()):
            call.fail(GrpcStatus.UNAVAILABLE, why)
        self.settings_received.set()
        self.slot_lot.unpark_all()

    def kick(self) -> None:
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Cancelled (the connection is closing)? Then leave h2's bytes where they are:
            # run() sends them, the error GOAWAY included, before closing.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def _reader(self) -> None:
        pending = b""  # an incomplete frame carried over to the next read
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lost(f"connection lost: {exc}")
                return
            if not data:
                self._lost("connection closed by the server")
                return
            if pending:
                data = pending + data
            elif type(data) is not bytes:  # SSLStream gives bytearray
                data = bytes(data)
            try:
                pending = self._feed(data)
            except h2.exceptions.ProtocolError as exc:
                self._lost(f"HTTP/2 protocol error: {exc}")
                return
            self._wake.set()

    def _feed(self, data: bytes) -> bytes:
        """Process the complete frames in ``data``; return the incomplete tail.

        DATA frames of open calls (no padding, no END_STREAM) take a fast path: the
        frame header is parsed here and h2's flow-control and stream state are updated
        exactly as ``H2Connection.receive_data`` would, without building h2's frame and
        event objects (about half the client's cost per streamed message). Every other
        frame, and any DATA frame the fast path is not certain about, goes to h2 in
        order, so h2 still validates everything it sees.
        """
        h2c = self.h2
        calls = self.calls
        end = len(data)
        pos = 0
        h2_from = 0  # start of the run of frames not yet handed to h2
        max_frame = h2c.max_inbound_frame_size
        while end - pos >= 9:
            length = int.from_bytes(data[pos : pos + 3], "big")
            if length > max_frame:
                # Fail on the header: h2 would first buffer the whole announced frame
                # (a server announcing 16 MiB and stalling would hang the call).
                if h2_from < pos:
                    self._dispatch(h2c.receive_data(data[h2_from:pos]))
                h2c.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                raise h2.exceptions.FrameTooLargeError(
                    f"Received overlong frame: length {length}, max {max_frame}"
                )
            stop = pos + 9 + length
            if stop > end:
                break
            ftype = data[pos + 3]
            flags = data[pos + 4]
            if ftype == 0 and not flags & 0x09 and not self._in_header_block:
                if h2_from < pos:
                    self._dispatch(h2c.receive_data(data[h2_from:pos]))
                h2_from = pos
                sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                call = calls.get(sid)
                if call is not None and not call.ended and self._fast_window(sid, length):
                    call.on_data(data[pos + 9 : stop], length)
                    h2_from = stop
            elif ftype in {1, 5, 9}:  # HEADERS, PUSH_PROMISE, CONTINUATION
                self._in_header_block = not flags & 0x04
            pos = stop
        if h2_from < pos:
            self._dispatch(h2c.receive_data(data[h2_from:pos]))
        return data[pos:] if pos < end else b""

    def _fast_window(self, sid: int, length: int) -> bool:
        """Account for an unpadded DATA frame of ``length`` bytes on ``sid`` as h2 would
        (connection state, stream state, both inbound windows); False (nothing changed)
        when h2 must see the frame itself."""
        h2c = self.h2
        if h2c.state_machine.state is not _CLIENT_OPEN:
            return False
        st = h2c.streams.get(sid)
        if st is None:
            return False
        sm = st.state_machine
        if sm.state not in _FAST_STATES or not sm.headers_received:
            return False
        if st._expected_content_length is not None:
            return False
        cw = h2c._inbound_flow_control_window_manager
        sw = st._inbound_window_manager
        if cw.current_window_size < length or sw.current_window_size < length:
            return False  # h2 raises the FLOW_CONTROL_ERROR
        cw.current_window_size -= length
        sw.current_window_size -= length
        st._actual_content_length += length
        return True

    def _dispatch(self, events: list[h2.events.Event]) -> None:
        h2c = self.h2
        calls = self.calls
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                call = calls.get(ev.stream_id)
                if call is not None and not call.ended:
                    call.on_data(ev.data, ev.flow_controlled_length)
                elif ev.flow_controlled_length:
                    h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
                call = calls.get(ev.stream_id)
                if call is not None:
                    call.on_headers(ev.headers, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.StreamEnded):
                call = calls.get(ev.stream_id)
                if call is not None:
                    call.on_end()
                self.slot_lot.unpark_all()
            elif isinstance(ev, h2.events.StreamReset):
                call = calls.get(ev.stream_id)
                if call is not None:
                    code = ev.error_code
                    if code == h2.errors.ErrorCodes.REFUSED_STREAM:
                        call.fail(
                            GrpcStatus.UNAVAILABLE,
                            "stream refused by the server",
                            transparent=not call.headers_ok,
                        )
                    elif code == h2.errors.ErrorCodes.CANCEL:
                        call.fail(GrpcStatus.CANCELLED, "stream cancelled by the server")
                    else:
                        call.fail(GrpcStatus.UNAVAILABLE, f"stream reset by the server ({code!s})")
                self.slot_lot.unpark_all()
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id:
                    call = calls.get(ev.stream_id)
                    if call is not None:
                        call.window_lot.unpark_all()
                else:
                    for call in calls.values():
                        call.window_lot.unpark_all()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings_received.set()
                self.slot_lot.unpark_all()
                for call in calls.values():
                    call.window_lot.unpark_all()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                # GOAWAY: no new calls here; calls the server never saw fail now
                # (safe to retry), the others may still finish.
                self.going_away = True
                last = ev.last_stream_id if ev.last_stream_id is not None else 0
                for sid, call in list(calls.items()):
                    if sid > last:
                        call.fail(GrpcStatus.UNAVAILABLE, "server is going away", transparent=True)
                self.slot_lot.unpark_all()

    # ------------------------------------------------------------------ used by calls

    def ack(self, stream_id: int, n: int) -> None:
        if self.dead is None:
            self.h2.acknowledge_received_data(n, stream_id)
            self._wake.set()

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        if self.dead is None:
            try:
                self.h2.reset_stream(stream_id, code)
            except h2.exceptions.StreamClosedError:
                return
            self._wake.set()

    async def start_call(self, path: bytes, payload: bytes, timeout: float | None) -> _Call:
        """Open a stream (waiting for a slot), send the request, half-close."""
        h2c = self.h2
        while True:
            if self.dead is not None:
                raise _RpcError(GrpcStatus.UNAVAILABLE, self.dead)
            if self.going_away:
                raise _RpcError(GrpcStatus.UNAVAILABLE, "server is going away")
            if h2c.open_outbound_streams < h2c.remote_settings.max_concurrent_streams:
                break
            await self.slot_lot.park()
        sid = h2c.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", self.scheme),
            (b":path", path),
            (b":authority", self.authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", USER_AGENT),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", _grpc_timeout(timeout)))
        h2c.send_headers(sid, headers)
        call = _Call(self, sid)
        self.calls[sid] = call
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        try:
            while data:
                if call.ended:
                    break  # the server answered (or failed) before reading it all
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    self._wake.set()
                    await call.window_lot.park()
                    continue
                part, data = data[:window], data[window:]
                h2c.send_data(sid, part, end_stream=not data)
        except BaseException:
            call.close()
            raise
        self._wake.set()
        return call


# ---------------------------------------------------------------------------- adapter


class GrpcAdapter:
    """An :class:`~atp_proto.adapters.Adapter` backed by a remote ``atp.adapter.v1``
    service. See the module docstring for task ownership."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 5.0,
        estimate_timeout: float | None = 10.0,
        health_timeout: float | None = 5.0,
        stream_timeout: float | None = None,
        window: int = 65535,
        connection_window: int = 1 << 24,
        max_message_size: int = 4 << 20,
        backoff_initial: float = 0.1,
        backoff_multiplier: float = 1.6,
        backoff_max: float = 10.0,
        backoff_jitter: float = 0.2,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.connect_timeout = connect_timeout
        self.estimate_timeout = estimate_timeout
        self.health_timeout = health_timeout
        self.stream_timeout = stream_timeout
        self.window = window
        self.connection_window = connection_window
        self.max_message_size = max_message_size
        self.backoff_initial = backoff_initial
        self.backoff_multiplier = backoff_multiplier
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        authority = host if ":" not in host else f"[{host}]"
        self._authority = f"{authority}:{port}".encode()
        self._conn: _Connection | None = None
        self._conns: set[_Connection] = set()
        self._connect_lock = trio.Lock()
        self._failed_attempts = 0
        self._retry_at = -math.inf
        self._last_connect_error = ""
        self._nursery: trio.Nursery | None = None
        self._owner_cm: Any = None
        self._closed = False
        self.connects = 0  #: successful connections made (for metrics and tests)

    @classmethod
    def from_url(cls, name: str, url: str, **kwargs: Any) -> GrpcAdapter:
        """``grpc://HOST:PORT`` or ``grpcs://HOST:PORT[?ca=FILE&insecure=1&timeout_s=N]``.

        Raises:
            ValueError: malformed URL (the message says why).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("grpc", "grpcs"):
            raise ValueError(f"not a gRPC adapter URL: {url!r} (grpc://HOST:PORT)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        if not parts.hostname or port is None:
            raise ValueError(f"gRPC adapter URL needs HOST:PORT: {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"gRPC adapter URL takes no path: {url!r}")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"ca", "insecure", "timeout_s", "server_hostname"}
        if unknown:
            raise ValueError(f"unknown option(s) in {url!r}: {', '.join(sorted(unknown))}")
        if parts.scheme == "grpcs":
            ctx = ssl.create_default_context(cafile=query.get("ca"))
            if query.get("insecure") in ("1", "true", "yes"):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            kwargs.setdefault("ssl_context", ctx)
        elif "ca" in query or "insecure" in query:
            raise ValueError("ca= and insecure= need grpcs://")
        if "timeout_s" in query:
            try:
                kwargs.setdefault("estimate_timeout", float(query["timeout_s"]))
            except ValueError:
                raise ValueError(f"bad timeout_s in {url!r}") from None
        if "server_hostname" in query:
            kwargs.setdefault("server_hostname", query["server_hostname"])
        return cls(name, parts.hostname, port, **kwargs)

    def __repr__(self) -> str:
        scheme = "grpcs" if self.ssl_context else "grpc"
        return f"GrpcAdapter({self.name!r}, '{scheme}://{self.host}:{self.port}')"

    # ------------------------------------------------------------------ ownership

    async def __aenter__(self) -> GrpcAdapter:
        self._owner_cm = trio.open_nursery()
        self._nursery = await self._owner_cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.aclose()
        finally:
            self._nursery = None
            await self._owner_cm.__aexit__(*exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection tasks in the caller's nursery: ``await nursery.start(a.run)``.
        Runs until cancelled; then closes the adapter."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.aclose()

    def _spawn(self, fn: Callable[[], Awaitable[None]], label: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, name=label)
        else:
            trio.lowlevel.spawn_system_task(fn, name=label)

    async def aclose(self) -> None:
        """Close all connections (in-flight calls fail with EAGENTDOWN). Idempotent."""
        self._closed = True
        conns = list(self._conns)
        for conn in conns:
            conn.scope.cancel()
        for conn in conns:
            await conn.done.wait()
        self._conns.clear()
        self._conn = None

    # ------------------------------------------------------------------ connecting

    def _down(
        self, message: str, streamed: bool = False, retry_after_ms: int | None = None
    ) -> AdapterError:
        return AdapterError(
            ErrorCode.EAGENTDOWN,
            message,
            adapter=self.name,
            streamed=streamed,
            retry_after_ms=retry_after_ms,
        )

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
            raise self._down("adapter client is closed")
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise self._down("adapter client is closed")
            wait = self._retry_at - trio.current_time()
            if wait > 0:
                raise self._down(
                    f"cannot connect to {self.host}:{self.port} ({self._last_connect_error}); "
                    f"next attempt in {wait:.2f}s",
                    retry_after_ms=math.ceil(wait * 1000),
                )
            try:
                conn = await self._connect()
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, _HandshakeError) as exc:
                self._failed_attempts += 1
                delay = min(
                    self.backoff_max,
                    self.backoff_initial * self.backoff_multiplier ** (self._failed_attempts - 1),
                )
                delay *= random.uniform(1 - self.backoff_jitter, 1 + self.backoff_jitter)
                self._retry_at = trio.current_time() + delay
                why = (
                    "timed out"
                    if isinstance(exc, trio.TooSlowError)
                    else str(exc) or type(exc).__name__
                )
                self._last_connect_error = why
                raise self._down(
                    f"cannot connect to {self.host}:{self.port}: {why}",
                    retry_after_ms=math.ceil(delay * 1000),
                ) from None
            self._failed_attempts = 0
            self._retry_at = -math.inf
            self._conn = conn
            self.connects += 1
            return conn

    async def _connect(self) -> _Connection:
        label = f"grpc {self.name} {self.host}:{self.port}"
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            stream: trio.abc.Stream = tcp
            try:
                if self.ssl_context is not None:
                    tls = trio.SSLStream(
                        tcp, self.ssl_context, server_hostname=self.server_hostname
                    )
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        raise _HandshakeError(
                            f"TLS handshake failed: {exc.__cause__ or exc}"
                        ) from None
                    if tls.selected_alpn_protocol() != "h2":
                        raise _HandshakeError("server did not agree to HTTP/2 (ALPN h2)")
                    stream = tls
                conn = _Connection(
                    stream,
                    authority=self._authority,
                    scheme=b"https" if self.ssl_context else b"http",
                    window=self.window,
                    connection_window=self.connection_window,
                    max_message_size=self.max_message_size,
                    label=label,
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._conns.add(conn)

            async def run() -> None:
                try:
                    await conn.run()
                finally:
                    self._conns.discard(conn)

            self._spawn(run, label)
            conn.kick()
            # the server's SETTINGS (its MAX_CONCURRENT_STREAMS) before the first call
            try:
                await conn.settings_received.wait()
            except BaseException:
                conn.scope.cancel()
                raise
        if conn.dead is not None:
            raise _HandshakeError(conn.dead)
        return conn

    # ------------------------------------------------------------------ calls

    async def _open(self, method: bytes, payload: bytes, timeout: float | None) -> _Call:
        conn = await self._connection()
        return await conn.start_call(method, payload, timeout)

    async def _unary(self, method: bytes, payload: bytes, timeout: float | None) -> bytes:
        call: _Call | None = None
        attempts = 0
        try:
            with trio.move_on_after(timeout if timeout is not None else math.inf) as cs:
                while True:
                    call = await self._open(method, payload, timeout)
                    try:
                        reply = await call.recv()
                        if reply is None:
                            raise _RpcError(GrpcStatus.INTERNAL, "no reply message")
                        end = await call.recv()
                    except _RpcError as exc:
                        if exc.transparent and attempts < _TRANSPARENT_RETRIES:
                            attempts += 1  # the server never saw it: safe to resend
                            call.close()
                            continue
                        raise
                    if end is not None:
                        raise _RpcError(GrpcStatus.INTERNAL, "more than one reply message")
                    return reply
        except _RpcError as exc:
            raise grpc_error(
                exc.status,
                exc.message,
                adapter=self.name,
                streamed=False,
                retry_after_ms=exc.retry_after_ms,
            ) from None
        finally:
            if call is not None:
                call.close()
        assert cs.cancelled_caught
        raise AdapterError(ErrorCode.ETIMEOUT, f"no reply within {timeout:.3f}s", adapter=self.name)

    @staticmethod
    def _timeout(request: TaskRequest, default: float | None) -> float | None:
        if request.deadline_ms is not None:
            return max(0.001, request.deadline_ms / 1000)
        return default

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        payload = codec.encode_task_request(request)
        reply = await self._unary(
            SERVICE.encode() + b"/Estimate", payload, self._timeout(request, self.estimate_timeout)
        )
        try:
            return codec.decode_estimate(reply)
        except codec.DecodeError as exc:
            raise AdapterError(
                ErrorCode.EAGENTDOWN, f"bad Estimate reply: {exc}", adapter=self.name
            ) from None

    async def health(self) -> Health:
        reply = await self._unary(SERVICE.encode() + b"/Health", b"", self.health_timeout)
        try:
            return codec.decode_health(reply)
        except codec.DecodeError as exc:
            raise AdapterError(
                ErrorCode.EAGENTDOWN, f"bad Health reply: {exc}", adapter=self.name
            ) from None

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        """Chunks as the server sends them; leaving early cancels the call."""
        payload = codec.encode_task_request(request)
        timeout = self._timeout(request, self.stream_timeout)
        n = 0
        call: _Call | None = None
        attempts = 0
        # The deadline applies to each wait, never across a ``yield``: a cancel scope
        # must not stay open while the consumer's code runs.
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        method = SERVICE.encode() + b"/Stream"
        decode = codec.decode_chunk
        try:
            while True:
                with trio.move_on_at(deadline):
                    call = await self._open(method, payload, timeout)
                if call is None:
                    raise self._stream_timeout(timeout, n)
                try:
                    while True:
                        if deadline == math.inf:
                            msg = await call.recv()
                        else:
                            msg = b""
                            with trio.move_on_at(deadline) as cs:
                                msg = await call.recv()
                            if cs.cancelled_caught:
                                raise self._stream_timeout(timeout, n)
                        if msg is None:
                            return
                        try:
                            chunk = decode(msg)
                        except codec.DecodeError as exc:
                            raise _RpcError(
                                GrpcStatus.INTERNAL, f"bad StreamChunk: {exc}"
                            ) from None
                        n += 1
                        yield chunk
                except _RpcError as exc:
                    if exc.transparent and n == 0 and attempts < _TRANSPARENT_RETRIES:
                        attempts += 1  # the server never saw it: safe to resend
                        call.close()
                        call = None
                        continue
                    raise
        except _RpcError as exc:
            raise grpc_error(
                exc.status,
                exc.message,
                adapter=self.name,
                streamed=n > 0,
                retry_after_ms=exc.retry_after_ms,
            ) from None
        finally:
            if call is not None:
                call.close()

    def _stream_timeout(self, timeout: float | None, n: int) -> AdapterError:
        return AdapterError(
            ErrorCode.ETIMEOUT,
            f"stream not finished within {timeout}s",
            adapter=self.name,
            streamed=n > 0,
        )


class _HandshakeError(Exception):
    """TLS / ALPN / HTTP/2 preface failure while connecting."""
