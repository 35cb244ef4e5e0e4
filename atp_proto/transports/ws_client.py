"""The client end of WebSocket: the upgrade by hand with wsproto, then a
:class:`~atp_proto.transports.ws_server.WsConnection` in client mode.

One raw client for everything that talks to a router from outside it: the client library
(:mod:`atp_proto.client`), the load generator of ``atp bench ws``, the tests, and later the
conformance suite. No reader task and no lock: a message reaches the caller in the task
step that read it, and a send reaches the socket in the sending task's step — the same
send path (FIFO slot, cancellation-safe tickets) as the router's side, so a benchmark's
figure holds the router's time and the kernel's, not a client library's hops.

::

    ws = await connect_ws("ws://127.0.0.1:7443/ws", headers=[(b"authorization", b"Bearer t")])
    await ws.send(frame_bytes)
    message = await ws.receive()   # bytes | str | Oversized; TransportClosed at the end
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import trio
import wsproto
import wsproto.events as we

from ._tls_stream import TlsStream
from .base import TransportClosed
from .tls import TLSConfig
from .ws_server import RECEIVE_BUFFER, WsConnection

__all__ = ["HandshakeRefused", "connect_ws"]

#: the subprotocol ATP offers (ATP-WS-002); also what the router's auth reads
ATP_SUBPROTOCOL = "atp.v1"


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"handshake refused: HTTP {status} {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


async def connect_ws(
    url: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] | None = None,
    subprotocols: Sequence[str] = (),
    max_message_size: int = 1 << 22,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> WsConnection:
    """Open a TCP connection to ``url`` (``ws://host:port/path?query``), do the upgrade,
    and return the connection, ready for messages. ``subprotocols``: what to offer, e.g.
    ``(ATP_SUBPROTOCOL,)``; none by default (then the router starts its session-level
    frames as text, ATP-WS-010, until the first binary message).

    ``wss://``: the TLS handshake is done first, with ``ssl_context`` (default: verify
    against the system's trust store, :meth:`TLSConfig.client_ssl_context`, ATP-WS-013),
    over :class:`~._tls_stream.TlsStream` so that cancelled sends stay safe.

    Raises:
        HandshakeRefused: the server answered with another status (401, 404, 503, ...).
        TransportClosed: the server closed the connection during the upgrade.
        OSError: the TCP connection failed; ``ssl.SSLError`` (an OSError): the TLS
            handshake failed, ``ssl.SSLCertVerificationError`` for a refused certificate.
        TimeoutError: no connection and upgrade within ``connect_timeout`` (an OSError,
            as a refused connection is).
        ValueError: not a ``ws://`` or ``wss://`` URL.
    """
    u = urlsplit(url)
    if u.scheme not in ("ws", "wss"):
        raise ValueError(f"only ws:// and wss:// URLs are supported, got {url!r}")
    tls = u.scheme == "wss"
    host, port = u.hostname or "127.0.0.1", u.port or (443 if tls else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    with trio.move_on_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        try:
            if tls:
                ctx = ssl_context or TLSConfig().client_ssl_context()
                stream = TlsStream(tcp, ctx, server_side=False, server_hostname=host)
                try:
                    await stream.do_handshake()  # under connect_timeout too
                except trio.BrokenResourceError:
                    raise TransportClosed(
                        "the server closed the connection during the TLS handshake"
                    ) from None
            return await _upgrade(
                stream, f"{host}:{port}", target, headers, subprotocols, max_message_size
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
    raise TimeoutError(f"no WebSocket handshake with {host}:{port} within {connect_timeout:g} s")


async def _upgrade(
    stream: trio.abc.Stream,
    host: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]] | None,
    subprotocols: Sequence[str],
    max_message_size: int,
) -> WsConnection:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = we.Request(
        host=host,
        target=target,
        extra_headers=list(headers or []),
        subprotocols=list(subprotocols),
    )
    await stream.send_all(ws.send(request))
    status, reject_headers, body = 0, list[tuple[bytes, bytes]](), b""
    while True:
        try:
            data = await stream.receive_some(RECEIVE_BUFFER)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            if status:
                raise HandshakeRefused(status, reject_headers, body)
            raise TransportClosed("the server closed the connection during the upgrade")
        ws.receive_data(bytes(data))
        for event in ws.events():
            if isinstance(event, we.AcceptConnection):
                # frames right behind the 101 are already inside wsproto's connection
                return WsConnection(stream, max_message_size=max_message_size, remote=host, ws=ws)
            if isinstance(event, we.RejectConnection):
                status = event.status_code
                reject_headers = [(bytes(k), bytes(v)) for k, v in event.headers]
                if not event.has_body:
                    raise HandshakeRefused(status, reject_headers, b"")
            elif isinstance(event, we.RejectData):
                body += bytes(event.data)
                if event.body_finished:
                    raise HandshakeRefused(status, reject_headers, body)
