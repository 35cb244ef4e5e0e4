"""The router's operator endpoints over HTTP/1.1: ``/metrics``, ``/healthz``, ``/readyz``.

A deliberately tiny server (one request per connection, GET only, 5 s to send the head,
8 KiB of head at most): it answers a scraper and a load balancer's probes, nothing else,
so it needs no HTTP library. What it serves comes from two callables the router passes
in, so this module knows nothing of sessions or adapters.

When the router has TLS (``atp serve --cert/--key`` or ``--dev-cert``) the same port also
answers ``https://`` with the router's certificate: the first byte of a connection tells
a TLS ClientHello (0x16) from a plain request, so a probe or scraper already pointed at
``http://`` keeps working and one that wants TLS gets it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import trio

from atp_proto.transports._tls_stream import TlsStream

__all__ = ["respond", "serve_http"]

#: ``() -> None`` when ready, else the reason it is not (the 503 body)
Readiness = Callable[[], str | None]


#: the first byte of a TLS record carrying a handshake message (a ClientHello)
TLS_HANDSHAKE_RECORD = 0x16


async def serve_http(
    listeners: list[trio.SocketListener],
    render_metrics: Callable[[], str],
    readiness: Readiness,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve the endpoints on ``listeners`` until cancelled; with ``ssl_context``, over
    https too (see the module's docstring)."""

    async def handle(stream: trio.SocketStream) -> None:
        if ssl_context is None:
            await _one_request(stream, render_metrics, readiness)
            return
        first = b""
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                first = bytes(await stream.receive_some(4096))
        if not first:
            await stream.aclose()
            return
        if first[0] != TLS_HANDSHAKE_RECORD:
            await _one_request(stream, render_metrics, readiness, first)
            return
        tls = TlsStream(stream, ssl_context, server_side=True, initial=first)
        try:
            with trio.fail_after(5):
                await tls.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, OSError):  # SSLError is one
            await tls.aclose()
            return
        await _one_request(tls, render_metrics, readiness)

    await trio.serve_listeners(handle, listeners)


async def _one_request(
    stream: trio.abc.Stream,
    render_metrics: Callable[[], str],
    readiness: Readiness,
    data: bytes = b"",
) -> None:
    try:
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            status, ctype, body = respond(method, urlsplit(target).path, render_metrics, readiness)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(head.encode() + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


def respond(
    method: str, path: str, render_metrics: Callable[[], str], readiness: Readiness
) -> tuple[str, str, bytes]:
    """Status line, content type and body for one request."""
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4", render_metrics().encode()
    if path == "/healthz":
        return "200 OK", "text/plain", b"ok\n"
    if path == "/readyz":
        problem = readiness()
        if problem is not None:
            return "503 Service Unavailable", "text/plain", problem.encode()
        return "200 OK", "text/plain", b"ready\n"
    return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
