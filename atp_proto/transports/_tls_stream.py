"""TLS over a trio socket with a send that a cancellation cannot break.

Why not :class:`trio.SSLStream`: a ``send_all`` cancelled part-way leaves it broken (trio
documents this: the TLS record it was writing is half out), while the WebSocket
transport's contract is that a cancelled send loses nothing and tears nothing (the
transport checker, :mod:`atp_proto.testing.transport_checker`; the session relies on it
not to lose frames it already took from its Connection). So this stream is :class:`ssl.SSLObject` on
memory BIOs, and keeps what it encrypted and could not write yet *in order*, as
ciphertext: a cancelled :meth:`TlsStream.send_all` has taken its bytes (they are
encrypted, in sequence), and the next ``send_all`` — or :meth:`TlsStream.flush` — writes
the rest before anything newer. The socket is written by one sender at a time (the
WebSocket layer serializes its sends), and the receive side never waits on the socket
for writing: TLS's own replies (TLS 1.3 key updates) join the same queue.

The handshake is done once, up front (:meth:`TlsStream.do_handshake`, under the caller's
handshake timeout), so that afterwards only application data moves and the two
directions never wait on each other. TLS 1.2 renegotiation is off
(:meth:`~atp_proto.transports.tls.TLSConfig.server_ssl_context`).

Closing sends close_notify if the socket takes it at once, then closes the socket; a
peer's EOF without close_notify is an end of stream, not an error (as trio's
``https_compatible``): the WebSocket close handshake inside TLS is what tells a clean end
from a cut connection.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections import deque

import trio

__all__ = ["TlsStream"]

#: bytes read from the socket per receive
RAW_RECEIVE = 65536


class TlsStream(trio.abc.Stream):
    """One TLS connection over ``transport`` (a connected :class:`trio.SocketStream`)."""

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        initial: bytes = b"",
    ) -> None:
        """``initial``: bytes already read from ``transport`` (a server that looked at the
        first byte to tell TLS from plain HTTP)."""
        self.transport = transport
        self.socket = transport.socket
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if initial:
            self._in.write(initial)
        self._obj = context.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        #: ciphertext not written yet, oldest first; ``_offset`` into the first chunk
        self._pending: deque[bytes] = deque()
        self._offset = 0
        self._writing = False
        self._broken = False
        self._closed = False

    # ------------------------------------------------------------------ handshake

    @property
    def selected_alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def getpeercert(self) -> dict[str, object] | None:
        return self._obj.getpeercert()  # type: ignore[return-value]

    async def do_handshake(self) -> None:
        """Run the TLS handshake to its end.

        Raises:
            ssl.SSLError: the handshake failed (``ssl.SSLCertVerificationError`` for a
                certificate the client refused).
            trio.BrokenResourceError: the peer closed the connection during it.
        """
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                # what OpenSSL queued (an alert telling the peer why) goes if it can
                self._take_output()
                self._write_nowait()
                self._broken = True
                raise
            await self._drain()
            data = await self._read_raw()
            if not data:
                self._broken = True
                raise trio.BrokenResourceError("the peer closed during the TLS handshake")
            self._in.write(data)
        await self._drain()

    # ------------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext; ``b""`` at the end of the stream.

        Raises:
            trio.BrokenResourceError: a TLS error (a corrupted record, an alert).
            trio.ClosedResourceError: the stream was closed.
        """
        limit = max_bytes or RAW_RECEIVE
        while True:
            if self._closed:
                raise trio.ClosedResourceError
            data = self._decrypt(limit)
            if self._out.pending:  # a reply of TLS itself (a key update)
                self._take_output()
                if not self._writing:
                    self._write_nowait()
            if data is not None:
                return data
            if self._in.eof:
                return b""
            raw = await self._read_raw()
            if raw:
                self._in.write(raw)
            else:
                self._in.write_eof()

    def _decrypt(self, limit: int) -> bytes | None:
        """Plaintext of every whole record received, up to ``limit`` bytes (one call
        hands on many records, as one socket read holds many); b"" at the end; None when
        a record is still incomplete."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            try:
                part = self._obj.read(limit - size)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                part = b""
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS error: {exc.reason or exc}") from exc
            if not part:  # close_notify (or EOF): the end, reported by the next call if
                if parts:  # this one has data
                    break
                return b""
            parts.append(part)
            size += len(part)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_raw(self) -> bytes:
        try:
            return bytes(await self.transport.receive_some(RAW_RECEIVE))
        except (trio.BrokenResourceError, OSError) as exc:
            self._broken = True
            if isinstance(exc, trio.BrokenResourceError):
                raise
            raise trio.BrokenResourceError(str(exc)) from exc

    # ------------------------------------------------------------------ sending

    @property
    def pending(self) -> bool:
        """Ciphertext of earlier sends still waits for the socket."""
        return bool(self._pending)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and write it after what earlier sends left.

        Cancellation-safe: cancelled, the call has still taken all of ``data``; what the
        socket did not take goes first with the next :meth:`send_all` or :meth:`flush`.

        Raises:
            trio.BrokenResourceError: the connection is lost or TLS failed.
            trio.ClosedResourceError: the stream was closed.
        """
        self._encrypt(data)
        await self._drain()

    def send_nowait(self, data: bytes) -> None:
        """Encrypt ``data`` and write what the socket takes now, without waiting; the
        rest goes with the next :meth:`send_all` or :meth:`flush`.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`send_all`.
        """
        self._encrypt(data)
        if not self._writing:
            self._write_nowait()
        if self._broken:
            raise trio.BrokenResourceError("the connection is lost")

    async def flush(self) -> None:
        """Write what cancelled or non-waiting sends left."""
        await self._drain()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        if self._broken:
            raise trio.BrokenResourceError("the connection is lost")
        if data:
            try:
                view = memoryview(data)
                while view:  # a memory BIO takes everything; written counts what went in
                    view = view[self._obj.write(view) :]
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS error: {exc.reason or exc}") from exc
        self._take_output()

    def _take_output(self) -> None:
        if self._out.pending:
            self._pending.append(self._out.read())

    async def _drain(self) -> None:
        """Write the pending ciphertext; one writer at a time (the caller serializes)."""
        if self._writing:
            raise trio.BusyResourceError("another task is writing to this TLS stream")
        self._take_output()
        pending = self._pending
        if not pending:
            await trio.lowlevel.checkpoint()
            return
        self._writing = True
        try:
            while pending:
                chunk = pending[0]
                # trio's socket send is cancellable only before its bytes leave: what it
                # returns left, the rest stays queued
                sent = await self.socket.send(memoryview(chunk)[self._offset :])
                self._advance(sent)
        except OSError as exc:
            self._broken = True
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            self._writing = False

    def _write_nowait(self) -> None:
        """Write what the (non-blocking) socket takes now."""
        try:
            while self._pending:
                chunk = self._pending[0]
                sent = os.write(self.socket.fileno(), memoryview(chunk)[self._offset :])
                self._advance(sent)
        except BlockingIOError:
            pass
        except OSError:
            self._broken = True

    def _advance(self, sent: int) -> None:
        if not self._pending:  # closed while that send was finishing
            return
        self._offset += sent
        if self._offset >= len(self._pending[0]):
            self._pending.popleft()
            self._offset = 0

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it now, and close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if not self._broken and not self._writing:
            with contextlib.suppress(ssl.SSLError):  # WantRead: the peer's is not awaited
                self._obj.unwrap()
            self._take_output()
            self._write_nowait()
        self._closed = True
        self._pending.clear()
        await self.transport.aclose()
