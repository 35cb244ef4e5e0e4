"""A recording gRPC client for the adapter role: HTTP/2 (h2) over trio, one connection per
case, every event kept for the report.

Why not the router's client (:class:`atp_proto.adapters.grpc.GrpcAdapter`): it exists to
hide the wire (transparent retries, ATP error codes, deadlines enforced on our side). A
conformance harness must see it: the raw gRPC status and message, every response header
and trailer (the ``atp-calls-in-flight`` probe, ATP-ADAPT-024), each message's bytes and
when it arrived, a RST_STREAM, and a ``grpc-timeout`` the client sends but does *not*
enforce itself (so an adapter that ignores its deadline is seen doing so, ATP-ADAPT-008).

Limits (the peer controls them): a message above :data:`MAX_MESSAGE` fails the call
locally; a call keeps at most :data:`MAX_EVENTS` events (more marks it ``overflow``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from atp_proto.adapters.grpc.status import encode_grpc_timeout, method_path

__all__ = ["MAX_EVENTS", "MAX_MESSAGE", "CallEvent", "GrpcCall", "GrpcConn", "open_conn"]

MAX_MESSAGE = 4 << 20  #: gRPC's default receive limit (ATP-ADAPT-023)
MAX_EVENTS = 10_000  #: events kept per call
_WINDOW = 1 << 22


@dataclass(slots=True)
class CallEvent:
    """``kind``: "headers" | "message" | "trailers" | "reset" | "lost" | "too_big"."""

    kind: str
    at: float  #: trio.current_time()
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    code: int = 0  #: RST_STREAM error code


class GrpcCall:
    """One call: its events as they arrived, and its outcome once ended."""

    def __init__(self, conn: GrpcConn, stream_id: int, method: str, started: float) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.method = method
        self.started = started
        self.events: list[CallEvent] = []
        self.ended = False
        self.overflow = False
        self.status: int | None = None  #: grpc-status, once the call ended with one
        self.message = ""  #: grpc-message (percent-decoded)
        self.trailers: dict[str, str] = {}
        self.initial_headers: dict[str, str] = {}
        self._changed = trio.Event()
        self._buf = bytearray()

    # reader side --------------------------------------------------------------------
    def _add(self, ev: CallEvent) -> None:
        if len(self.events) >= MAX_EVENTS:
            self.overflow = True
        else:
            self.events.append(ev)
        self._changed.set()
        self._changed = trio.Event()

    def _on_headers(self, raw: Sequence[tuple[bytes, bytes]], end: bool, now: float) -> None:
        hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
        if not self.initial_headers and not self.trailers and not end and "grpc-status" not in hdrs:
            self.initial_headers = hdrs
            self._add(CallEvent("headers", now, headers=hdrs))
            return
        if not self.initial_headers and not end:
            self.initial_headers = hdrs
        self.trailers = hdrs
        status = hdrs.get("grpc-status")
        if status is not None:
            try:
                self.status = int(status)
            except ValueError:
                self.status = -1
            self.message = unquote(hdrs.get("grpc-message", ""))
        self._add(CallEvent("trailers", now, headers=hdrs))

    def _on_data(self, data: bytes, now: float) -> None:
        self._buf += data
        while len(self._buf) >= 5:
            n = int.from_bytes(self._buf[1:5], "big")
            if n > MAX_MESSAGE:
                self._add(CallEvent("too_big", now, code=n))
                self._end()
                self.conn.reset(self.stream_id)
                return
            if len(self._buf) < 5 + n:
                break
            msg = bytes(self._buf[5 : 5 + n])
            del self._buf[: 5 + n]
            self._add(CallEvent("message", now, data=msg))

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self._changed.set()

    # caller side --------------------------------------------------------------------
    async def wait_change(self, deadline: float) -> bool:
        """Wait for a new event (or the end); False when ``deadline`` passed first."""
        if self.ended:
            return False
        ev = self._changed
        with trio.move_on_at(deadline):
            await ev.wait()
            return True
        return False

    async def wait_end(self, deadline: float) -> bool:
        """True when the call ended (trailers, reset, connection lost) by ``deadline``."""
        with trio.move_on_at(deadline):
            while not self.ended:
                await self._changed.wait()
            return True
        return self.ended

    async def iter_events(self, deadline: float) -> AsyncIterator[CallEvent]:
        """Events in order as they come, until the call ends or ``deadline`` passes."""
        i = 0
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.ended or trio.current_time() >= deadline:
                return
            await self.wait_change(deadline)

    def messages(self) -> list[CallEvent]:
        return [e for e in self.events if e.kind == "message"]

    def cancel(self) -> None:
        """RST_STREAM(CANCEL): the client's cancellation."""
        if not self.ended:
            self.conn.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self._end()


class GrpcConn:
    """One HTTP/2 connection to the target; its reader runs in the caller's nursery."""

    def __init__(self, stream: trio.SocketStream, authority: str) -> None:
        self.stream = stream
        self.authority = authority.encode()
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW)
        self.calls: dict[int, GrpcCall] = {}
        self.settings = trio.Event()
        self.dead: str | None = None
        self._send_lock = trio.Lock()
        self._wake = trio.Event()

    def _flush_soon(self) -> None:
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = self.h2.data_to_send()
            if data:
                async with self._send_lock:
                    await self.stream.send_all(data)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            self._flush_soon()
            task_status.started()
            try:
                await self._reader()
            finally:
                nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        first = True
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                return self._lost(f"connection lost: {exc}")
            if not data:
                return self._lost("connection closed by the adapter")
            if first and len(data) >= 4 and data[3] != 0x04:  # not a SETTINGS frame:
                # an HTTP/1.x server (a router's own port, a web server), not HTTP/2
                http1 = data.startswith(b"HTTP/")
                return self._lost(
                    "the target answered HTTP/1.x, not HTTP/2: not a gRPC server"
                    if http1
                    else "the target's first bytes are not an HTTP/2 SETTINGS frame: "
                    "not a gRPC server"
                )
            first = False
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                return self._lost(f"HTTP/2 protocol error from the adapter: {exc}")
            now = trio.current_time()
            for ev in events:
                self._dispatch(ev, now)
            self._flush_soon()

    def _dispatch(self, ev: h2.events.Event, now: float) -> None:
        sid = getattr(ev, "stream_id", None)
        call = self.calls.get(sid) if sid else None
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings.set()
        elif isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
            if call is not None:
                call._on_headers(ev.headers, ev.stream_ended is not None, now)
        elif isinstance(ev, h2.events.DataReceived):
            if ev.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if call is not None and not call.ended:
                call._on_data(ev.data, now)
        elif isinstance(ev, h2.events.StreamEnded):
            if call is not None:
                call._end()
        elif isinstance(ev, h2.events.StreamReset):
            if call is not None and not call.ended:
                call._add(CallEvent("reset", now, code=int(ev.error_code)))
                call._end()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            last = ev.last_stream_id or 0
            for s, c in list(self.calls.items()):
                if s > last and not c.ended:
                    c._add(CallEvent("lost", now, headers={"why": "GOAWAY"}))
                    c._end()

    def _lost(self, why: str) -> None:
        self.dead = why
        now = trio.current_time()
        for c in self.calls.values():
            if not c.ended:
                c._add(CallEvent("lost", now, headers={"why": why}))
                c._end()
        self.settings.set()

    def reset(
        self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.CANCEL
    ) -> None:
        if self.dead is None:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.h2.reset_stream(stream_id, code)
            self._flush_soon()

    async def call(
        self,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        raw_path: str | None = None,
    ) -> GrpcCall:
        """Start a call: headers (``grpc-timeout`` when ``timeout``), one message,
        half-close. The body goes within the adapter's flow-control window."""
        if self.dead is not None:
            raise ConnectionError(self.dead)
        sid = self.h2.get_next_available_stream_id()
        path = raw_path or method_path(method)
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"atp-conformance/1"),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", encode_grpc_timeout(timeout)))
        call = GrpcCall(self, sid, method, trio.current_time())
        self.calls[sid] = call
        self.h2.send_headers(sid, headers)
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        while data:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                self._flush_soon()
                await trio.sleep(0.005)
                if call.ended:
                    break
                continue
            part, data = data[:window], data[window:]
            self.h2.send_data(sid, part, end_stream=not data)
        self._flush_soon()
        return call


@contextlib.asynccontextmanager
async def open_conn(host: str, port: int, *, connect_timeout: float) -> AsyncIterator[GrpcConn]:
    """A connection to ``host:port`` (waits for the adapter's SETTINGS); closed on exit.

    Raises:
        OSError: cannot connect (the role turns it into TargetUnreachable).
        trio.TooSlowError: no SETTINGS within ``connect_timeout``.
    """
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conn = GrpcConn(tcp, authority)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            with trio.fail_after(connect_timeout):
                await conn.settings.wait()
            if conn.dead is not None:
                raise OSError(conn.dead)
            try:
                yield conn
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.h2.close_connection()
            with trio.move_on_after(0.5):
                await tcp.send_all(conn.h2.data_to_send())
            await tcp.aclose()
