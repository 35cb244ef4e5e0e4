"""One HTTP/2 connection of the gRPC client: h2 state, its reader and writer tasks, and
the calls multiplexed on it.

* **One HTTP/2 connection per endpoint**, multiplexing all calls. A new call waits for a
  free slot while the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` streams are open.
* **One reader task and one writer task per connection.** The reader parses every HTTP/2
  frame of each receive buffer (:func:`._h2_fastpath.feed`) and hands gRPC messages to
  per-call inboxes; it never blocks on a consumer. The writer drains h2's output buffer,
  so many small writes (acks, requests of concurrent calls) coalesce into one
  ``send_all``.
* **Flow control both ways.** Request bodies are sent within the server's windows;
  received credit is the call's business (:mod:`._call`).
* **Cancellation**: a call left early sends ``RST_STREAM(CANCEL)``.
* A dropped connection fails its in-flight calls (UNAVAILABLE, so EAGENTDOWN); a GOAWAY
  fails the calls the server never saw as *transparent* (safe to resend).
"""

from __future__ import annotations

import contextlib
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ._call import Call
from ._h2_fastpath import Connection, feed
from .status import GrpcStatus, RpcError, encode_grpc_timeout

__all__ = ["USER_AGENT", "H2Channel"]

log = logging.getLogger("atp.adapter.grpc")

USER_AGENT = b"atp-grpc-trio/1"


def not_http2(data: bytes | bytearray) -> str | None:
    """Why a server's first bytes cannot be HTTP/2, in words, or None when they may be: an
    HTTP/2 server's preface is a SETTINGS frame (RFC 9113 §3.4, type 0x4 at byte 3). An
    HTTP/1.x server (a router's WebSocket or metrics port, a web server) otherwise reads as
    an "overlong frame: length 4740180" (its "HTT"), which tells a person nothing."""
    if data.startswith(b"HTTP/"):
        return "the server answered HTTP/1.x, not HTTP/2: not a gRPC server"
    if len(data) >= 4 and data[3] != 0x04:
        return "the server's first bytes are not an HTTP/2 SETTINGS frame: not a gRPC server"
    return None


class H2Channel:
    """One HTTP/2 connection: h2 state, the reader and writer tasks, and its calls."""

    in_header_block: bool  #: a HEADERS frame awaits its CONTINUATION (read by :func:`feed`)

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
        self.h2 = Connection(config=cfg)  # h2's, counting open streams cheaply
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
        self.calls: dict[int, Call] = {}
        self.slot_lot = trio.lowlevel.ParkingLot()
        self.settings_received = trio.Event()
        self.dead: str | None = None  # why the connection is unusable
        self.going_away = False
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._wake = trio.Event()
        self.in_header_block = False

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
        first = True
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lost(f"connection lost: {exc}")
                return
            if not data:
                self._lost("connection closed by the server")
                return
            if first:
                first = False
                if (why := not_http2(data)) is not None:
                    self._lost(why)
                    return
            if pending:
                data = pending + data
            elif type(data) is not bytes:  # SSLStream gives bytearray
                data = bytes(data)
            try:
                pending = feed(self, data)
            except h2.exceptions.ProtocolError as exc:
                self._lost(f"HTTP/2 protocol error: {exc}")
                return
            self._wake.set()

    def dispatch(self, events: list[h2.events.Event]) -> None:
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

    def starts_now(self, payload_len: int) -> bool:
        """Whether :meth:`start_call` with a request of ``payload_len`` bytes returns
        without waiting: the connection takes calls, a stream slot is free and the
        server's windows (the connection's and a new stream's) hold the whole request.
        A caller that bounds the call's start opens no timer for it then."""
        h2c = self.h2
        size = payload_len + 5  # the gRPC message prefix
        return (
            self.dead is None
            and not self.going_away
            and h2c.open_outbound_streams < h2c.remote_settings.max_concurrent_streams
            and size <= h2c.outbound_flow_control_window
            and size <= h2c.remote_settings.initial_window_size
        )

    async def start_call(self, path: bytes, payload: bytes, timeout: float | None) -> Call:
        """Open a stream (waiting for a slot), send the request, half-close."""
        h2c = self.h2
        while True:
            if self.dead is not None:
                raise RpcError(GrpcStatus.UNAVAILABLE, self.dead)
            if self.going_away:
                raise RpcError(GrpcStatus.UNAVAILABLE, "server is going away")
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
            headers.append((b"grpc-timeout", encode_grpc_timeout(timeout)))
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        if h2c.send_request(sid, headers, data):  # the usual case: two frames, no h2 objects
            call = Call(self, sid)
            self.calls[sid] = call
            self._wake.set()
            return call
        h2c.send_headers(sid, headers)
        call = Call(self, sid)
        self.calls[sid] = call
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
