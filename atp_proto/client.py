"""An ATP client on trio over WebSocket (``ws://``, and ``wss://`` verified by default)
or QUIC (``quic://``).

::

    async with atp_proto.client.connect("ws://127.0.0.1:7443/ws", token=tok) as client:
    # or connect("quic://127.0.0.1:7443", token=tok, ca_file=...) (spec §13.2)
        async with client.stream("hello", task_type="qa", qos="gold") as stream:
            async for item in stream:          # Partial ... then Final
                print(item)
        final = await client.ask("hello")      # the same, collected

Each message is acknowledged (credit returned to the router) only when the caller takes
it from the iterator, so a slow consumer slows the router, and through it the adapters.
Errors from the router are raised as :class:`StreamError` with the spec's code; a session
that ends under an open stream without an ERROR frame raises :class:`ConnectionLost` (a
``StreamError`` whose code is read from the WebSocket close code, EINTERNAL when that
says nothing).

The client runs on the same session driver as the router (:mod:`atp_proto.session`) over
the shared raw WebSocket client (:mod:`atp_proto.transports.ws_client`): one reader, one
coalescing writer, and the core's timers — a stream's TTL (ETIMEOUT), heartbeats and the
idle timeout fire on the client side too.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio

from atp_proto._feedback import FeedbackRefused, FeedbackResult, feedback
from atp_proto.frames import (
    WS_MESSAGE_SLACK,
    ATPError,
    BudgetWindow,
    Connection,
    ConnectionClosed,
    Encoding,
    Event,
    GoingAway,
    HeartbeatAcked,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    Role,
    StreamReset,
)
from atp_proto.messages import (
    STREAMED_FINAL,
    AnswerAssembler,
    Final,
    Partial,
    decode_result,
    task_body,
)
from atp_proto.session import Session
from atp_proto.transports._quic_conn import QuicTransport
from atp_proto.transports.base import error_code_for_quic_close, error_code_for_ws_close
from atp_proto.transports.quic_client import QuicConnectError, connect_quic
from atp_proto.transports.tls import TLSConfig
from atp_proto.transports.ws_client import HandshakeRefused, connect_ws
from atp_proto.transports.ws_server import WsConnection

__all__ = [
    "Client",
    "ConnectionLost",
    "FeedbackRefused",
    "FeedbackResult",
    "Final",
    "HandshakeRefused",
    "Partial",
    "QuicConnectError",
    "StreamError",
    "connect",
    "feedback",  # ATP-FEED-002: the quality of a finished stream, by its decision id
]


class StreamError(ATPError):
    """The router (or our own side's core: a TTL, a limit) ended the stream or the
    session with an ERROR of ``code``."""

    def __init__(
        self,
        code: str,
        message: str,
        retry_after_ms: int | None = None,
        *,
        stream_id: int = 0,
    ) -> None:
        super().__init__(code, message, stream_id=stream_id, retry_after_ms=retry_after_ms)
        self.code: str = str(code)


class ConnectionLost(StreamError):
    """The session ended under an open stream without an ERROR frame: the connection was
    lost or closed. ``code`` is what the WebSocket close code maps to (EINTERNAL for a
    normal close, a lost connection or none)."""


_QOS = {"gold": QoS.GOLD, "silver": QoS.SILVER, "bronze": QoS.BRONZE}


class Stream:
    """One open stream; iterate to get :class:`Partial` items and then a :class:`Final`."""

    def __init__(self, client: Client, stream_id: int, *, assemble: bool = False) -> None:
        self.client = client
        self.stream_id = stream_id
        #: the PARTIALs' texts, for a FINAL that does not repeat them (ATP-FINAL-004): kept
        #: only when the SYN asked for one, and at most max_message_size characters
        self._assembler = (
            AnswerAssembler(client._conn.limits.max_message_size) if assemble else None
        )
        # Unbounded here, bounded by credit: the router sends at most our initial window
        # per stream before we acknowledge, and we acknowledge only what is consumed. A
        # bounded channel would let one unconsumed stream stall every other stream.
        self._send, self._recv = trio.open_memory_channel[MessageReceived | StreamError](math.inf)
        self.finished = False

    def __aiter__(self) -> AsyncIterator[Partial | Final]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Partial | Final]:
        while not self.finished:
            try:
                item = await self._recv.receive()
            except trio.EndOfChannel:
                item = self.client.closed or self.client._lost()
            if isinstance(item, StreamError):
                self.finished = True
                raise item
            yield self._convert(item)
            self.client._acknowledge(self.stream_id, item.size)

    def _convert(self, msg: MessageReceived) -> Partial | Final:
        if msg.end_stream:
            self.finished = True
        result = decode_result(
            msg.payload, end_stream=msg.end_stream, ext=msg.ext, stream_id=msg.stream_id
        )
        assembler = self._assembler
        if isinstance(result, Partial):
            if assembler is not None:
                assembler.partial(result.content)
            return result
        if assembler is None:
            return result
        try:  # the answer the PARTIALs carried, as a full FINAL would have had it
            return assembler.final(result, msg.stream_id)
        except ATPError as exc:
            raise StreamError(str(exc.code), exc.message, stream_id=msg.stream_id) from None

    async def cancel(self) -> None:
        """Abandon the stream (RST); returns once the RST was handed to the transport."""
        if not self.finished:
            self.finished = True
            self.client._conn.reset_stream(self.stream_id)
            await self.client._session.flush()


class Client:
    """A session with a router. Use :func:`connect`."""

    def __init__(
        self,
        ws: WsConnection | QuicTransport,
        *,
        text: bool,
        limits: Limits,
        heartbeat_s: float | None = None,
    ) -> None:
        self._ws = ws
        self._encoding = Encoding.JSON if text else Encoding.BINARY
        self._session = Session(
            ws,
            role=Role.CLIENT,
            limits=limits,
            session_id="client",
            on_event=self._on_event,
            heartbeat=heartbeat_s,
            encoding=self._encoding,  # session-level frames too (heartbeats, ERRORs)
        )
        self._conn: Connection = self._session.conn
        self._streams: dict[int, Stream] = {}
        self.closed: StreamError | None = None
        self.draining = False
        #: round-trip time of the last heartbeat the router acknowledged (seconds)
        self.heartbeat_rtt: float | None = None

    async def _run(self) -> None:
        """The session, then every stream still open learns why it ended."""
        try:
            await self._session.run()
        finally:
            self.closed = self.closed or self._lost()
            for st in list(self._streams.values()):
                st._send.send_nowait(self.closed)
                st._send.close()
            self._streams.clear()

    def _lost(self) -> ConnectionLost:
        code = self._ws.peer_close_code
        if isinstance(self._ws, QuicTransport):  # the close code is the authority (§13.2)
            reason = self._ws.peer_close_reason
            detail = f"QUIC code 0x{code:x} {reason}" if code else (reason or "lost")
            ec = error_code_for_quic_close(code)
            return ConnectionLost(ec, f"connection closed ({detail.strip()})")
        detail = f"{code} {self._ws.peer_close_reason}".strip() if code else "no close frame"
        return ConnectionLost(error_code_for_ws_close(code), f"connection closed ({detail})")

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, MessageReceived):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                st._send.send_nowait(ev)
                if ev.end_stream:
                    self._streams.pop(ev.stream_id, None)
            else:  # a stream we gave up on: its credit still flows back
                self._conn.acknowledge(ev.stream_id, ev.size)
        elif isinstance(ev, StreamReset):
            st = self._streams.pop(ev.stream_id, None)
            if st is not None:
                err = StreamError(ev.code, ev.message, ev.retry_after_ms, stream_id=ev.stream_id)
                st._send.send_nowait(err)
        elif isinstance(ev, ConnectionClosed):
            self.closed = StreamError(ev.code, ev.message)
        elif isinstance(ev, GoingAway):
            self.draining = True
        elif isinstance(ev, HeartbeatAcked):
            self.heartbeat_rtt = ev.rtt

    async def _flush(self) -> None:
        """Wait until what the connection has queued was handed to the transport."""
        await self._session.flush()

    async def _flush_before_close(self) -> None:
        """On leaving ``connect()``: hand what the core still queues (an ERROR refusing a
        malformed frame, ATP-FLOW-004, ATP-ERR-001) to the transport first, within 1 s,
        so that a caller who exits on a stream error does not drop the frame saying why."""
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._session.flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        self._conn.acknowledge(stream_id, size)
        self._session.kick()  # the session's writer sends the credit

    @asynccontextmanager
    async def stream(
        self,
        prompt: str,
        *,
        task_type: str = "qa",
        qos: str = "silver",
        ttl: int = 0,
        window: BudgetWindow | None = None,
        meta: Mapping[str, Any] | None = None,
        content: Mapping[str, Any] | None = None,
        streamed_final: bool = True,
    ) -> AsyncIterator[Stream]:
        """Open a stream (SYN) for ``prompt``; yields a :class:`Stream` to iterate.

        ``streamed_final`` (the default) asks the router for a FINAL that need not repeat
        the answer its PARTIALs streamed (``meta.final_answer``, spec §15.5); the stream
        puts the answer back from them, so its :class:`Final` is the same either way
        (a :class:`StreamError` EPROTO when the PARTIALs the FINAL counts did not all
        arrive). ``meta`` may say ``final_answer`` itself."""
        if self.closed is not None:
            raise self.closed
        if qos not in _QOS:
            raise ValueError("qos must be gold, silver or bronze")
        full_meta = {
            "task_type": task_type,
            **(STREAMED_FINAL if streamed_final else {}),
            **(dict(meta) if meta else {}),
        }
        try:
            sid = self._conn.open_stream(
                task_body(prompt, content),
                qos=_QOS[qos],
                ttl=ttl,
                window=window,
                meta=full_meta,
                encoding=self._encoding,
                now=trio.current_time(),
            )
        except LocalProtocolError as exc:  # draining router, stream limit, closed session
            raise StreamError(str(exc.code), exc.message, exc.retry_after_ms) from None
        st = Stream(self, sid, assemble=full_meta.get("final_answer") == "streamed")
        self._streams[sid] = st
        # the SYN leaves from this task when the socket takes it at once, else the writer
        self._session.flush_now()
        self._session.kick()
        try:
            yield st
        finally:
            if not st.finished and self.closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await st.cancel()
            self._streams.pop(sid, None)

    async def ask(self, prompt: str, **kwargs: Any) -> Final:
        """Open a stream and return its :class:`Final` (partials are dropped)."""
        async with self.stream(prompt, **kwargs) as st:
            async for item in st:
                if isinstance(item, Final):
                    return item
        raise StreamError("EPROTO", "the stream ended without a FINAL")


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    text: bool = False,
    limits: Limits | None = None,
    connect_timeout: float = 10.0,
    capabilities: bool = True,
    heartbeat_s: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
) -> AsyncIterator[Client]:
    """Open a session. ``text=True`` speaks the JSON mapping (like a browser).
    ``wss://`` verifies the router's certificate and name (ATP-WS-013): against
    ``ca_file`` when given (e.g. ``atp serve --dev-cert``'s certificate), else the
    system's trust store; ``insecure=True`` verifies nothing (local use; it warns);
    ``ssl_context`` replaces all three.
    ``heartbeat_s``: send a heartbeat after that long without sending (ATP-SESS
    heartbeats; the acknowledged round trip lands in :attr:`Client.heartbeat_rtt`).
    ``limits.idle_timeout_ms`` closes an idle session from this side too (ETIMEOUT).

    ``quic://HOST:PORT``: the QUIC binding (spec §13.2); the token goes as ``caps.auth``
    of the first CAPABILITIES (ATP-QUIC-008); ``ca_file`` / ``insecure``: how the router's
    certificate is verified (verified against the system's CAs by default).

    Raises:
        HandshakeRefused: the router refused the handshake (e.g. 401); ``status`` says.
        ssl.SSLCertVerificationError: ``wss://``: the router's certificate was refused.
        atp_proto.transports.tls.TLSConfigError: ``ca_file`` cannot be used.
        QuicConnectError: the QUIC handshake failed (certificate, ALPN, no answer).
    """
    if url.startswith("quic://"):
        if text:
            raise ValueError("the JSON mapping is not used over QUIC (ATP-QUIC-003)")
        async with _connect_quic(
            url,
            token,
            limits or Limits(),
            connect_timeout,
            capabilities,
            heartbeat_s,
            ca_file,
            insecure,
        ) as client:
            yield client
        return
    if ssl_context is None and url.startswith("wss://"):
        ssl_context = TLSConfig(ca_file=ca_file, insecure=insecure).client_ssl_context()
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else None
    limits = limits or Limits()
    ws = await connect_ws(
        url,
        headers=headers,
        connect_timeout=connect_timeout,
        max_message_size=limits.max_frame_size + WS_MESSAGE_SLACK,  # ATP-WS-011
        ssl_context=ssl_context,
    )
    try:
        client = Client(ws, text=text, limits=limits, heartbeat_s=heartbeat_s)
        if capabilities:
            client._conn.send_capabilities(encoding=client._encoding)
            client._session.kick()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                await client._flush_before_close()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await ws.close(1000, "")


@asynccontextmanager
async def _connect_quic(
    url: str,
    token: str | None,
    limits: Limits,
    connect_timeout: float,
    capabilities: bool,
    heartbeat_s: float | None,
    ca_file: str | None,
    insecure: bool,
) -> AsyncIterator[Client]:
    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        raise ValueError(f"expected quic://HOST:PORT, got {url!r}")
    idle = limits.idle_timeout_ms / 1000 + 5 if limits.idle_timeout_ms else 60.0
    async with connect_quic(
        parts.hostname,
        parts.port,
        ca_file=ca_file,
        insecure=insecure,
        connect_timeout=connect_timeout,
        idle_timeout=max(idle, 10.0),
    ) as transport:
        client = Client(transport, text=False, limits=limits, heartbeat_s=heartbeat_s)
        if capabilities:  # first on the control stream, with the credential (ATP-QUIC-008)
            client._conn.send_capabilities(auth=f"Bearer {token}" if token else None)
            client._session.kick()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                await client._flush_before_close()
                nursery.cancel_scope.cancel()
