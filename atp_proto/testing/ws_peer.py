"""WebSocket and ``wss://`` pairs for the transport checker, over real loopback TCP.

A pair is our server-side :class:`~atp_proto.transports.ws_server.WsConnection` (the
transport under test) and :class:`WsPeer`, a client end parsed by wsproto's own client
connection — it reads only when a check asks it to, so "a peer that does not read" is
its resting state, and its socket buffers are small so that a send blocks soon. For
``wss://`` the transport runs over our :class:`~atp_proto.transports._tls_stream.TlsStream`
and the peer over trio's :class:`trio.SSLStream` (the standard library's ssl through
another send path), so the TLS stream's cancellation safety is checked against an
independent TLS end.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import wsproto
import wsproto.events as we

from atp_proto.transports._tls_stream import TlsStream
from atp_proto.transports.base import ws_close_code
from atp_proto.transports.ws_server import WsConnection

from .transport_checker import Binding, Pair

__all__ = [
    "SMALL_BUF",
    "TLS_BUF",
    "WsPeer",
    "tcp_pair",
    "tls_streams",
    "ws_binding",
    "ws_client_pair",
    "ws_pair",
    "wss_pair",
]

#: the receive limit of a pair unless a check asks for another
MAX_UNIT = 1 << 22

#: socket buffers of a plain pair: small, so "blocked on the socket" is quick to reach
SMALL_BUF = 4096
#: socket buffers of a TLS pair: small too, but room for a few whole TLS records (16 KiB
#: each) — the peer decrypts nothing of a partial record
TLS_BUF = 32768


class WsPeer:
    """The far end of a pair, parsed by a wsproto connection (one channel, 0): a client
    when our server side is under test, a server (``server=True``) when our client is."""

    def __init__(self, stream: trio.abc.Stream, *, server: bool = False) -> None:
        self.stream = stream
        role = wsproto.ConnectionType.SERVER if server else wsproto.ConnectionType.CLIENT
        self.ws = wsproto.WSConnection(role)
        self.messages: list[bytes | str] = []
        self.closes: list[int] = []
        self.fins: set[int] = set()  # a message transport ends no channel on its own
        self._parts: list[Any] = []
        self.bytes_read = 0

    def _feed(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, we.Message):
                self._parts.append(ev.data)
                if ev.message_finished:
                    joined = (
                        "".join(self._parts)
                        if isinstance(ev, we.TextMessage)
                        else b"".join(self._parts)
                    )
                    self.messages.append(joined)
                    self._parts = []
            elif isinstance(ev, we.CloseConnection):
                self.closes.append(ev.code)
            elif isinstance(ev, we.AcceptConnection):
                self.messages.append("<accepted>")

    def received(self, channel: int) -> bytes:
        """Every byte of every message so far (a message transport has one channel)."""
        return b"".join(m.encode() if isinstance(m, str) else m for m in self.messages)

    async def read_for(self, seconds: float) -> None:
        """Read whatever arrives for ``seconds``."""
        with trio.move_on_after(seconds):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                self._feed(bytes(data))

    async def read_until_close_and_answer(self) -> None:
        """Read up to the transport's close frame, then answer it."""
        while not self.closes:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self._feed(bytes(data))
        await self.stream.send_all(self.ws.send(we.CloseConnection(code=1000)))

    async def read_until(
        self, n_messages: int, chunk: int = 65536, delay: float = 0.0
    ) -> list[bytes | str]:
        """Read until ``n_messages`` whole messages have arrived, ``chunk`` bytes a read,
        sleeping ``delay`` between reads (a slow reader)."""
        while len(self.messages) < n_messages:
            data = await self.stream.receive_some(chunk)
            assert data, f"EOF after {len(self.messages)} messages"
            self._feed(bytes(data))
            if delay:
                await trio.sleep(delay)
        return self.messages

    async def read_until_bytes(self, channel: int, n_bytes: int) -> None:
        """Read until ``n_bytes`` of messages have arrived."""
        while len(self.received(channel)) < n_bytes:
            data = await self.stream.receive_some(65536)
            assert data, f"EOF after {len(self.messages)} messages"
            self._feed(bytes(data))

    async def send(self, channel: int, unit: bytes | str) -> None:
        """Send one whole message (binary for bytes, text for str)."""
        await self.send_parts(channel, [unit])

    async def send_parts(self, channel: int, parts: list[bytes | str]) -> None:
        """Send one message in fragments (all bytes, or all text)."""
        out = b""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(part, str):
                out += self.ws.send(we.TextMessage(data=part, message_finished=last))
            else:
                out += self.ws.send(we.BytesMessage(data=part, message_finished=last))
        await self.stream.send_all(out)

    async def stall(self) -> None:
        """Stop reading (the resting state: this peer reads only when asked)."""

    async def resume(self) -> None:
        """Read again (reads happen inside ``read_*``)."""

    async def vanish(self) -> None:
        """Drop the TCP connection without a close frame or close_notify: an RST."""
        sock = _socket_of(self.stream)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


async def tcp_pair(buffer: int) -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of TCP sockets on 127.0.0.1 (server end, client end) whose
    server send buffer and client receive buffer are about ``buffer`` bytes (set before
    the connection, so the TCP window is small from the start)."""
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    except BaseException:
        client.close()
        raise
    finally:
        listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    return trio.SocketStream(server), trio.SocketStream(client)


async def _upgraded(stream: trio.abc.Stream, peer: WsPeer, max_message_size: int) -> WsConnection:
    server = WsConnection(stream, max_message_size=max_message_size, remote="pair")
    await peer.stream.send_all(peer.ws.send(we.Request(host="localhost", target="/ws?q=1")))
    request = await server.read_request()
    assert request is not None and request.path == "/ws?q=1"
    await server.accept(None)
    assert await peer.read_until(1) == ["<accepted>"]
    peer.messages.clear()
    peer.bytes_read = 0
    return server


async def ws_pair(*, max_message_size: int = MAX_UNIT) -> Pair:
    """The checker's pair for ``ws://``: handshake done, nothing read yet."""
    server_end, client_end = await tcp_pair(SMALL_BUF)
    peer = WsPeer(client_end)
    ws = await _upgraded(server_end, peer, max_message_size)
    return Pair(ws, peer, ws_close_code, max_unit=max_message_size)


async def tls_streams(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, small: bool = True
) -> tuple[TlsStream, trio.SSLStream[trio.SocketStream]]:
    """Our server :class:`TlsStream` and trio's client :class:`trio.SSLStream` on
    loopback TCP (small buffers unless ``small`` is False), TLS handshake done."""
    server_end, client_end = await tcp_pair(TLS_BUF if small else 1 << 20)
    server = TlsStream(server_end, server_ctx, server_side=True)
    client = trio.SSLStream(client_end, client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def wss_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, max_message_size: int = MAX_UNIT
) -> Pair:
    """The checker's pair for ``wss://``: our WsConnection over our TlsStream, the peer a
    wsproto client over trio's SSLStream."""
    tls, client = await tls_streams(server_ctx, client_ctx)
    peer = WsPeer(client)
    ws = await _upgraded(tls, peer, max_message_size)
    return Pair(ws, peer, ws_close_code, max_unit=max_message_size)


async def ws_client_pair(*, max_message_size: int = MAX_UNIT) -> Pair:
    """The checker's pair for our *client* end of ``ws://``: :func:`connect_ws` (masked
    frames built by wsproto, the same send path) against a wsproto server peer on
    loopback TCP with small buffers; upgrade done, nothing read yet."""
    from atp_proto.transports.ws_client import connect_ws

    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer: WsPeer | None = None
    try:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)  # inherited
        port = listener.getsockname()[1]

        async def serve_one() -> None:
            nonlocal peer
            sock, _ = await listener.accept()
            peer = WsPeer(trio.SocketStream(sock), server=True)
            while True:
                data = await peer.stream.receive_some(65536)
                assert data, "the client left during the upgrade"
                peer.ws.receive_data(bytes(data))
                if any(isinstance(ev, we.Request) for ev in peer.ws.events()):
                    await peer.stream.send_all(peer.ws.send(we.AcceptConnection()))
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            ws = await connect_ws(
                f"ws://127.0.0.1:{port}/ws?q=1", max_message_size=max_message_size
            )
    finally:
        listener.close()
    assert peer is not None
    assert isinstance(ws.stream, trio.SocketStream)
    ws.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
    return Pair(ws, peer, ws_close_code, max_unit=max_message_size)


@asynccontextmanager
async def ws_binding(
    server_ctx: ssl.SSLContext | None = None,
    client_ctx: ssl.SSLContext | None = None,
    *,
    client_side: bool = False,
) -> AsyncIterator[Binding]:
    """The checker's binding for our server end of ``ws://`` (or ``wss://`` given both TLS
    contexts), or for our client end of ``ws://`` (``client_side``): every pair it made
    is aborted on exit."""
    pairs: list[Pair] = []

    async def make(max_unit: int | None = None) -> Pair:
        size = max_unit or MAX_UNIT
        if client_side:
            pair = await ws_client_pair(max_message_size=size)
        elif server_ctx is not None and client_ctx is not None:
            pair = await wss_pair(server_ctx, client_ctx, max_message_size=size)
        else:
            pair = await ws_pair(max_message_size=size)
        pairs.append(pair)
        return pair

    name = "ws-client" if client_side else "wss" if server_ctx is not None else "ws"
    try:
        yield Binding(name, make)
    finally:
        with trio.CancelScope(shield=True):
            for pair in pairs:
                await pair.transport.abort()
                peer = pair.peer
                assert isinstance(peer, WsPeer)
                gone = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
                with contextlib.suppress(*gone):
                    await trio.aclose_forcefully(peer.stream)
