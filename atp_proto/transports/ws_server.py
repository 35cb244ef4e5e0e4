"""WebSocket (RFC 6455) as an ATP transport: wsproto over a trio stream, no extra tasks.

:class:`WsConnection` is one WebSocket connection of either end: the router's (this
module: the upgrade is read with :meth:`~WsConnection.read_request` and answered with
:meth:`~WsConnection.accept` / :meth:`~WsConnection.reject`) and the client's
(:mod:`atp_proto.transports.ws_client` does the client's upgrade and hands over the same
class, so both ends share one receive path and one send path). It implements
:class:`atp_proto.transports.base.Transport`.

Why not trio-websocket here: its
connection runs a reader task that hands every message to the session through a memory
channel, and every send takes a ``trio.Lock`` — a scheduling checkpoint — before it
writes. With a thousand busy streams each of those is a wait for trio's whole run batch;
measured on the 1,000-stream latency benchmark (``atp bench ws``), SYN→first PARTIAL
p50 went from 0.9-1.3 ms to about half of that once those hops were gone. Here:

* the session's reader task reads the socket and parses it with wsproto itself
  (:meth:`WsConnection.receive`): a message reaches the session in the same task step
  that read it;
* after the upgrade, the router frames its data messages itself (:func:`server_frame`:
  a header and one copy of the payload; wsproto's serializer copies a message three or
  four times, ~0.5 ms for a coalesced 216 KiB message on a loaded 2-core host); wsproto
  still parses everything received and frames the control frames (pong, close);
* a send reaches the socket in the sending task's step (:meth:`WsConnection.send`; trio
  yields only after the system call). Sends are serialized without a lock checkpoint:
  an idle connection is claimed synchronously, a busy one is waited for in FIFO order,
  and the slot passes directly from one sender to the next, so bytes leave in the order
  wsproto produced them;
* pings are answered, a peer's close is answered and the connection shut, a message
  larger than ``max_message_size`` is skipped as it arrives and handed on as
  :class:`~atp_proto.transports.base.Oversized` (its first bytes only) so that the session
  answers with ETOOBIG (ATP-WS-012), a frame wsproto cannot parse closes
  with the code wsproto gives (1002 / 1007), and a lost connection is
  :class:`TransportClosed` to the session — never an exception escaping the handler.

No extension (permessage-deflate) is negotiated: ATP payloads are mostly CBOR and
already compact, and compression would cost CPU on every frame.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections import deque
from dataclasses import dataclass

import trio
import wsproto
import wsproto.events as we
from wsproto.connection import ConnectionState
from wsproto.utilities import RemoteProtocolError

from atp_proto.frames import ErrorCode

from ._tls_stream import TlsStream
from .base import Oversized, TransportClosed, close_reason, ws_close_code

__all__ = ["Handshake", "WsConnection", "server_frame"]

#: bytes read per receive_some
RECEIVE_BUFFER = 65536
#: what is kept of an oversized message: a binary frame header (its stream id) / some text
OVERSIZED_PREFIX = 24
OVERSIZED_TEXT_PREFIX = 256
#: how long a closing connection waits for the peer's close reply before dropping TCP
CLOSE_TIMEOUT_S = 2.0


_HEAD_SHORT = struct.Struct(">BB").pack
_HEAD_16 = struct.Struct(">BBH").pack
_HEAD_64 = struct.Struct(">BBQ").pack


def server_frame(message: bytes | str) -> bytes:
    """One whole data message as a server sends it (RFC 6455 5.2): FIN, no RSV bits (no
    extension), opcode 0x1 text / 0x2 binary, not masked, the shortest payload length
    (7 bits, 16 or 64). The same bytes as wsproto's serializer (a differential test in
    tests/transports/ws holds them to it), with one copy of the payload instead of
    three or four: the router's coalesced messages are hundreds of KiB."""
    if isinstance(message, str):
        payload, first = message.encode(), 0x81
    else:
        payload, first = message, 0x82
    n = len(payload)
    if n <= 125:
        return _HEAD_SHORT(first, n) + payload
    if n <= 0xFFFF:
        return _HEAD_16(first, 126, n) + payload
    return _HEAD_64(first, 127, n) + payload


@dataclass(frozen=True)
class Handshake:
    """The upgrade request, as the router's auth and routing need it."""

    path: str  #: request target (path and query string)
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    remote: str  #: peer "host:port"


class WsConnection:
    """One WebSocket connection (server side unless ``ws`` is a client-side wsproto
    connection, see :mod:`~atp_proto.transports.ws_client`). Implements
    :class:`~atp_proto.transports.base.Transport`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        remote: str = "",
        ws: wsproto.WSConnection | None = None,
    ) -> None:
        self.stream = stream
        self.remote = remote
        self.max_message_size = max_message_size
        self._ws = ws if ws is not None else wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        #: the peer's close code once it closed (None: no close frame seen)
        self.peer_close_code: int | None = None
        self.peer_close_reason = ""
        self._messages: deque[bytes | str | Oversized] = deque()
        self._binary: bytearray | None = None  # a fragmented binary message so far
        self._text: io.StringIO | None = None  # a fragmented text message so far
        self._part_bytes = 0
        #: the rest of a message over max_message_size is being skipped
        self._skipping = False
        self._closed = False  #: no more sends (close sent / received, or connection lost)
        self._eof = False  #: no more receives
        self._sending = False
        self._send_lot = trio.lowlevel.ParkingLot()
        #: ticket -> bytes of a send cancelled while waiting its turn or while the socket
        #: was full: written by the next sends (or :meth:`flush`) at the place of its
        #: ticket, so a cancelled sender never loses a message or leaves half a frame
        self._held: dict[int, bytes] = {}
        self._ticket = 0
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        #: ``wss://``: the TLS layer keeps a cancelled send's ciphertext and writes it
        #: first next time, so the same guarantees hold (``_tls_stream``)
        self._tls = stream if isinstance(stream, TlsStream) else None
        #: data messages framed by :func:`server_frame` (the router's side, after accept)
        self._own_frames = False

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ handshake

    async def read_request(self) -> Handshake | None:
        """Read the HTTP upgrade request. None when the peer left or sent something that
        is not a WebSocket handshake (it got a 400 answer then, or 426 with the version we
        speak for an unsupported Sec-WebSocket-Version)."""
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_BUFFER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            if not data:
                return None
            try:
                self._ws.receive_data(bytes(data))
                for event in self._ws.events():
                    if isinstance(event, we.Request):
                        return Handshake(
                            path=event.target,
                            headers=[(bytes(k), bytes(v)) for k, v in event.extra_headers],
                            subprotocols=list(event.subprotocols),
                            remote=self.remote,
                        )
            except RemoteProtocolError as exc:
                hint = exc.event_hint
                status, extra = 400, b""
                if isinstance(hint, we.RejectConnection) and hint.status_code == 426:
                    # RFC 6455 4.4: an unsupported version gets 426 and the one we speak
                    status, extra = 426, b"sec-websocket-version: 13\r\n"
                await self._bad_request(str(exc), status, extra)
                return None
            except UnicodeError:
                # wsproto decodes Connection, Sec-WebSocket-Protocol/-Extensions as ASCII
                # and Host as IDNA, and lets the error out (a byte >= 0x80, a 64-byte label)
                await self._bad_request("a header's value is not ASCII (or Host not IDNA)")
                return None

    async def _bad_request(self, why: str, status: int = 400, extra: bytes = b"") -> None:
        reason = b"Upgrade Required" if status == 426 else b"Bad Request"
        body = f"not a WebSocket handshake: {why}\n".encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\n%s"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, extra, len(body))
        )
        await self._write_quietly(head + body)
        await self.abort()

    async def accept(self, subprotocol: str | None) -> None:
        # Frames a client sent right behind its upgrade request (no wait for the 101)
        # sit in h11's buffer, and wsproto does not hand them to the new connection:
        # take them before accepting and feed them after.
        h11_conn = getattr(self._ws.handshake, "_h11_connection", None)
        early = bytes(h11_conn.trailing_data[0]) if h11_conn is not None else b""
        data = self._ws.send(we.AcceptConnection(subprotocol=subprotocol))
        if early:
            self._ws.receive_data(early)
        # No extension was accepted (none is offered back), so a data message is one
        # unmasked frame with FIN set: written here (server_frame), one copy of the
        # payload, where wsproto's serializer makes three or four.
        self._own_frames = True
        await self._send_bytes(data)

    async def reject(
        self, status: int, *, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> None:
        """Refuse the upgrade with an HTTP response, then close the connection."""
        hdrs = list(headers or [])
        hdrs += [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        try:
            data = self._ws.send(
                we.RejectConnection(status_code=status, headers=hdrs, has_body=True)
            )
            data += self._ws.send(we.RejectData(data=body, body_finished=True))
        except Exception:  # wsproto refused (state): nothing sensible left to send
            data = b""
        await self._write_quietly(data)
        await self.abort()

    # ------------------------------------------------------------------ messages

    async def receive(self) -> bytes | str | Oversized:
        """The next whole message, or the start of one over ``max_message_size``.

        Raises:
            TransportClosed: the peer closed, the connection was lost, or it broke the
                WebSocket protocol (then it was closed with the matching code).
        """
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._eof:
                raise TransportClosed
            await self._process_events()
            if self._messages or self._eof:
                continue
            try:
                data = await self.stream.receive_some(RECEIVE_BUFFER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                self._lost()
                continue
            self._ws.receive_data(bytes(data))

    async def _process_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, we.Message):
                data = event.data
                if not self._skipping:
                    self._part_bytes += len(data)
                    if self._part_bytes > self.max_message_size:
                        # ATP-WS-012: the session answers ETOOBIG now (before any close);
                        # nothing more of the message is kept, the rest is skipped.
                        self._messages.append(Oversized(self._head(data), self.max_message_size))
                        self._skipping = True
                if self._skipping:
                    if event.message_finished:
                        self._skipping = False
                        self._part_bytes = 0
                    continue
                # Fragments are joined as they come (a bytearray, or a StringIO for
                # text): memory follows the payload bytes, however many (possibly
                # empty) fragments a peer splits a message into.
                if isinstance(event, we.TextMessage):
                    if event.message_finished and self._text is None:
                        self._messages.append(data)  # one frame: the usual case
                        self._part_bytes = 0
                        continue
                    if self._text is None:
                        self._text = io.StringIO()
                    self._text.write(data)
                    if event.message_finished:
                        self._messages.append(self._text.getvalue())
                        self._text = None
                        self._part_bytes = 0
                else:
                    if event.message_finished and self._binary is None:
                        self._messages.append(bytes(data))  # one frame: the usual case
                        self._part_bytes = 0
                        continue
                    if self._binary is None:
                        self._binary = bytearray()
                    self._binary += data
                    if event.message_finished:
                        self._messages.append(bytes(self._binary))
                        self._binary = None
                        self._part_bytes = 0
            elif isinstance(event, we.Ping):
                if not self._closed:
                    await self._send_bytes(self._ws.send(event.response()))
            elif isinstance(event, we.CloseConnection):
                self.peer_close_code = event.code
                self.peer_close_reason = event.reason or ""
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    # the peer closed: answer, then the TCP connection goes
                    data = self._ws.send(event.response())
                    self._closed = True
                    self._eof = True
                    with trio.move_on_after(CLOSE_TIMEOUT_S):  # a peer not reading
                        await self._write_quietly(data)
                    await self.abort()
                elif self._ws.state is ConnectionState.OPEN:
                    # wsproto could not parse the peer's frames (1002, 1007, ...)
                    await self._close_and_stop(event.code, event.reason or "")
                else:  # our close was answered
                    self._eof = True
                    self._closed = True
                return
            # Pong: nothing to do

    def _head(self, data: bytes | str) -> bytes | str:
        """The first bytes of the message that just passed max_message_size (a binary
        frame header; some text), the parts buffered so far dropped."""
        head: bytes | str
        if isinstance(data, str):
            text = ""
            if self._text is not None:
                self._text.seek(0)
                text = self._text.read(OVERSIZED_TEXT_PREFIX)
            head = (text + data[:OVERSIZED_TEXT_PREFIX])[:OVERSIZED_TEXT_PREFIX]
        else:
            start = bytes(self._binary[:OVERSIZED_PREFIX]) if self._binary is not None else b""
            head = (start + bytes(data[:OVERSIZED_PREFIX]))[:OVERSIZED_PREFIX]
        self._text = None
        self._binary = None
        return head

    async def send(self, message: bytes | str) -> None:
        """Send one message.

        Raises:
            TransportClosed: the connection is closing or gone.
        """
        if self._closed or self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed
        data = self._encode(message)
        await self._send_bytes(data)

    async def send_many(self, messages: list[bytes | str]) -> None:
        """Send several messages with one socket write (what a load generator or a
        writer with many ready messages wants: the cost is per system call).

        Raises:
            TransportClosed: the connection is closing or gone.
        """
        if self._closed or self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed
        encode = self._encode
        await self._send_bytes(b"".join([encode(m) for m in messages]))

    @property
    def buffered(self) -> bool:
        """A whole message is already parsed: :meth:`receive` returns it without
        reading the socket."""
        return bool(self._messages)

    def _encode(self, message: bytes | str) -> bytes:
        if self._own_frames:
            return server_frame(message)
        if isinstance(message, str):
            return self._ws.send(we.TextMessage(data=message))
        return self._ws.send(we.BytesMessage(data=message))

    def try_send(self, message: bytes | str) -> bool:
        """Send now, from the calling task, if that needs no waiting at all: the slot is
        free, nothing is left over from cancelled sends, and the socket takes the bytes
        (what it does not take is kept and goes first with the next send or
        :meth:`flush`). False: nothing was sent; the caller leaves it to its writer.

        Raises:
            TransportClosed: the connection is gone.
        """
        sock, tls = self._sock, self._tls
        if self._sending or self._held or (sock is None and tls is None):
            return False
        if tls is not None and tls.pending:  # a wait is needed: the writer's (in order)
            return False
        if self._closed or self._ws.state is not ConnectionState.OPEN:
            raise TransportClosed
        data = self._encode(message)
        if tls is not None:
            try:
                tls.send_nowait(data)  # what the socket does not take stays queued
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._lost()
                raise TransportClosed from None
            return True
        assert sock is not None
        try:
            sent = os.write(sock.fileno(), data)  # the socket is non-blocking
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            raise TransportClosed from None
        if sent < len(data):
            self._ticket += 1
            self._held[self._ticket] = data[sent:]
        return True

    async def _send_bytes(self, data: bytes) -> None:
        # One writer at a time, without a checkpoint when idle; the slot is handed to
        # the next waiter directly (FIFO), so bytes leave in the order of the calls.
        # Each call takes a ticket; a call cancelled while waiting, or in the middle of
        # writing, leaves its unsent bytes under its ticket, and whoever writes next
        # sends them at their place: before its own bytes if the ticket is earlier, and
        # once nobody is waiting any more, everything left.
        self._ticket += 1
        mine = self._ticket
        if self._sending:
            try:
                await self._send_lot.park()  # woken as the owner of the slot
            except BaseException:
                self._held[mine] = data
                raise
        else:
            self._sending = True
        try:
            if self._held:
                data = self._with_held(mine, data)
            await self._write(data, mine)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._lost()
            raise TransportClosed from None
        finally:
            if self._send_lot:
                self._send_lot.unpark()
            else:
                self._sending = False

    def _with_held(self, mine: int, data: bytes) -> bytes:
        held = self._held
        earlier = sorted(t for t in held if t < mine)
        parts = [held.pop(t) for t in earlier]
        parts.append(data)
        if held and not self._send_lot:  # nobody left in line: later ones go now too
            parts += [held.pop(t) for t in sorted(held)]
        return b"".join(parts)

    async def _write(self, data: bytes, ticket: int) -> None:
        sock = self._sock
        if sock is None:
            # TlsStream: a cancelled send_all has taken its bytes and writes their rest
            # first next time (other streams: tests' in-memory pairs)
            await self.stream.send_all(data)
            return
        # trio's socket send is cancellable only while it waits for room, before the
        # bytes of that call leave: on cancellation exactly ``view`` is still unsent.
        view = memoryview(data)
        try:
            while view:
                sent = await sock.send(view)
                view = view[sent:]
        except trio.Cancelled:
            self._held[ticket] = bytes(view)
            raise

    async def flush(self) -> None:
        """Send what cancelled sends left behind, if anything.

        Raises:
            TransportClosed: the connection is gone.
        """
        if (self._held or (self._tls is not None and self._tls.pending)) and not self._closed:
            await self._send_bytes(b"")

    async def _write_quietly(self, data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(TransportClosed):
            await self._send_bytes(data)

    def _lost(self) -> None:
        self._closed = True
        self._eof = True

    # ------------------------------------------------------------------ closing

    async def _close_and_stop(self, code: int, reason: str) -> None:
        """A protocol fault of the peer: close frame, stop receiving, drop TCP."""
        self._eof = True
        await self.close(code, reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once), wait briefly for the peer's reply, drop TCP."""
        if not self._closed and self._ws.state is ConnectionState.OPEN:
            self._closed = True
            data = self._ws.send(we.CloseConnection(code=code, reason=close_reason(reason)))
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._write_quietly(data)
                if not self._eof:
                    await self._await_close_reply()
        await self.abort()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.close(code, reason)

    async def close_with_error(self, code: ErrorCode | str, reason: str) -> None:
        """Close for a connection-level ATP error: its WebSocket close code (ATP-WS)."""
        await self.close(ws_close_code(code), reason)

    async def _await_close_reply(self) -> None:
        while not self._eof:
            try:
                data = await self.stream.receive_some(RECEIVE_BUFFER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            self._ws.receive_data(bytes(data))
            for event in self._ws.events():
                if isinstance(event, we.CloseConnection):
                    self._eof = True
                    return

    async def abort(self) -> None:
        """Close the TCP connection now."""
        self._closed = True
        self._eof = True
        with trio.CancelScope(shield=True):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()
