"""The router's operator endpoints over HTTP/1.1: ``/metrics``, ``/healthz``, ``/readyz``,
and ``POST /v1/feedback`` (:mod:`.feedback`, ATP-FEED-002) when the router gives a handler.

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
import logging
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import trio

from atp_proto.transports._tls_stream import TlsStream

__all__ = ["MAX_POST_BODY", "respond", "serve_http"]

log = logging.getLogger("atp.router")

#: ``() -> None`` when ready, else the reason it is not (the 503 body)
Readiness = Callable[[], str | None]
#: ``(path, headers (lower-case names), body) -> (status line, content type, body)``
PostHandler = Callable[[str, dict[str, str], bytes], tuple[str, str, bytes]]
#: the largest POST body read (ATP-FEED-002); a larger one is refused with 413
MAX_POST_BODY = 8192


#: the first byte of a TLS record carrying a handshake message (a ClientHello)
TLS_HANDSHAKE_RECORD = 0x16


async def serve_http(
    listeners: list[trio.SocketListener],
    render_metrics: Callable[[], str],
    readiness: Readiness,
    ssl_context: ssl.SSLContext | None = None,
    post: PostHandler | None = None,
) -> None:
    """Serve the endpoints on ``listeners`` until cancelled (POSTs go to ``post``); with
    ``ssl_context``, over https too (see the module's docstring)."""

    async def handle(stream: trio.SocketStream) -> None:
        if ssl_context is None:
            await _one_request(stream, render_metrics, readiness, post)
            return
        first = b""
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                first = bytes(await stream.receive_some(4096))
        if not first:
            await stream.aclose()
            return
        if first[0] != TLS_HANDSHAKE_RECORD:
            await _one_request(stream, render_metrics, readiness, post, first)
            return
        tls = TlsStream(stream, ssl_context, server_side=True, initial=first)
        try:
            with trio.fail_after(5):
                await tls.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, OSError):  # SSLError is one
            await tls.aclose()
            return
        await _one_request(tls, render_metrics, readiness, post)

    await trio.serve_listeners(handle, listeners)


async def _one_request(
    stream: trio.abc.Stream,
    render_metrics: Callable[[], str],
    readiness: Readiness,
    post: PostHandler | None = None,
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
            path = _path(target)
            if b"\r\n\r\n" not in data:
                status, ctype, body = (
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    (b"at most 8192 bytes of request head\n"),
                )
            elif path is None:
                status, ctype, body = "400 Bad Request", "text/plain", b"malformed request target\n"
            elif method == "POST" and post is not None:
                status, ctype, body = await _post(stream, data, path, post)
            else:
                status, ctype, body = respond(method, path, render_metrics, readiness)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            await stream.send_all(head.encode() + body)
            if method == "POST" or status.startswith("431"):  # the client may still be sending
                await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:  # a handler's bug must not take the router down with this server
        log.exception("HTTP request failed")
    finally:
        await stream.aclose()


async def _linger(stream: trio.abc.Stream) -> None:
    """After answering a POST (perhaps before reading its body: 413), read and drop what the
    client still sends for a moment, so that closing does not reset the connection before
    it read the answer."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(0.5):
        dropped = 0
        while dropped < 4 * MAX_POST_BODY and (chunk := await stream.receive_some(4096)):
            dropped += len(chunk)


async def _post(
    stream: trio.abc.Stream, data: bytes, path: str, post: PostHandler
) -> tuple[str, str, bytes]:
    """Read a POST's body (Content-Length, at most :data:`MAX_POST_BODY`) and hand it on."""
    head, _, body = data.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for raw in head.split(b"\r\n")[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        return "411 Length Required", "text/plain", b"send a Content-Length, not chunks\n"
    value = headers.get("content-length", "")
    # digits only: int() would also take "+5", "1_0", " 5" and other scripts' digits
    if not (value.isascii() and value.isdigit()):
        return "411 Length Required", "text/plain", b"a Content-Length is required\n"
    if len(value) > 9 or int(value) > MAX_POST_BODY:  # int() refuses 4,301 digits
        return "413 Content Too Large", "text/plain", f"at most {MAX_POST_BODY} bytes\n".encode()
    length = int(value)
    while len(body) < length:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return "400 Bad Request", "text/plain", b"body shorter than Content-Length\n"
        body += chunk
    return post(path, headers, body[:length])


def _path(target: str) -> str | None:
    """The path of a request target (origin or absolute form), None when it is malformed
    (urlsplit raises ValueError on ``http://[x``: an unclosed IPv6 literal)."""
    try:
        return urlsplit(target).path
    except ValueError:
        return None


def respond(
    method: str, path: str, render_metrics: Callable[[], str], readiness: Readiness
) -> tuple[str, str, bytes]:
    """Status line, content type and body for one request."""
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only (POST: /v1/feedback)\n"
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
