"""Reporting the quality of a finished stream to the router (ATP-FEED-001/002): one
``POST /v1/feedback`` on the router's HTTP port, spoken with h11 (already a dependency,
through wsproto) over a trio TCP stream.

Re-exported as :func:`atp_proto.client.feedback`.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

__all__ = ["FeedbackRefused", "FeedbackResult", "feedback"]

#: the largest answer read from the router
_MAX_ANSWER = 65536


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    status: int
    body: dict[str, object]

    @property
    def accepted(self) -> bool:
        return self.status == 200 and self.body.get("accepted") is True


class FeedbackRefused(Exception):
    """The router refused the report: ``status`` (400, 401, 404, 409, ...) and its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


async def feedback(
    url: str,
    decision_id: str,
    quality: float,
    *,
    token: str | None = None,
    source: str = "client",
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
) -> FeedbackResult:
    """Report ``quality`` (0..1) for the stream whose FINAL carried ``decision_id``
    (``final.telemetry["decision_id"]``) to the router at ``url`` (its HTTP port,
    ``http://HOST:PORT``, or ``https://`` when the router has TLS, so that the token is
    not sent in the clear: verified against ``ca_file`` or the system's store,
    ``insecure`` verifies nothing, ``ssl_context`` replaces both; the path
    ``/v1/feedback`` is added when the URL has none).

    Raises:
        FeedbackRefused: the router answered with an error status (the message is its).
        ValueError: a URL that is not ``http(s)://HOST:PORT[/path]``.
        ssl.SSLCertVerificationError: ``https://``: the router's certificate was refused.
        OSError, trio.TooSlowError: the router cannot be reached in ``timeout``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"feedback URL must be http(s)://HOST:PORT, got {url!r}")
    tls = parts.scheme == "https"
    if tls and ssl_context is None:
        from atp_proto.transports.tls import TLSConfig

        ssl_context = TLSConfig(ca_file=ca_file, insecure=insecure).client_ssl_context()
    port = parts.port or (443 if tls else 80)
    path = parts.path if parts.path not in ("", "/") else "/v1/feedback"
    body = json.dumps({"decision_id": decision_id, "quality": quality, "source": source}).encode()
    headers = [
        ("Host", f"{parts.hostname}:{port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(parts.hostname, port)
        stream: trio.abc.Stream = tcp
        if ssl_context is not None and tls:
            from atp_proto.transports._tls_stream import TlsStream

            stream = TlsStream(tcp, ssl_context, server_side=False, server_hostname=parts.hostname)
            try:
                await stream.do_handshake()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        async with stream:
            await stream.send_all(
                conn.send(h11.Request(method="POST", target=path, headers=headers))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            status, data = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(16384)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    data += event.data
                    if len(data) > _MAX_ANSWER:
                        raise FeedbackRefused(status, "answer too large")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = {"error": data.decode("utf-8", "replace").strip()}
    if not isinstance(doc, dict):
        doc = {"error": str(doc)}
    if status != 200:
        raise FeedbackRefused(status, str(doc.get("error", "refused")))
    return FeedbackResult(status, doc)
