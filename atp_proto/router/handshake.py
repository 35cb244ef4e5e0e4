"""Accept or refuse one WebSocket session: the upgrade request in, a Principal out.

The checks, in order, each with the HTTP status a client can act on:

* path — 404 when the request is not for the ATP endpoint;
* drain — 503 with ``Retry-After`` while the router drains (ATP-SESS-013);
* capacity — 503 with ``Retry-After`` at ``max_sessions``;
* authentication — the bearer token (header, ``access_token`` query parameter or
  subprotocol, :func:`~atp_proto.router.auth.extract_token`) verified as a JWT when auth
  is on: 401 with ``WWW-Authenticate`` for a missing or bad token, 403 for a tenant the
  router does not serve.

Over WebSocket this is the session's whole authentication phase: the session starts
authenticated, with the principal found here. (QUIC authenticates on the first
CAPABILITIES instead: :mod:`atp_proto.session.session`'s ``authenticate`` hook.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from atp_proto.transports.ws_server import Handshake, WsConnection

from .auth import (
    ANONYMOUS,
    ATP_SUBPROTOCOL,
    AuthError,
    Principal,
    TokenVerifier,
    authenticate,
    extract_token,
)
from .config import RouterConfig

__all__ = ["Admitted", "admit"]

log = logging.getLogger("atp.router")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that may become a session."""

    principal: Principal
    subprotocol: str | None  #: the subprotocol to accept (None: none offered / matched)

    @property
    def text(self) -> bool:
        """ATP-WS-010: session-level frames go out as text to a client that has not
        offered atp.v1 (a browser), until it sends its first message."""
        return self.subprotocol != ATP_SUBPROTOCOL


async def admit(
    ws: WsConnection,
    request: Handshake,
    *,
    config: RouterConfig,
    authenticator: TokenVerifier | None,
    draining: bool,
    sessions: int,
    metrics: Any,
) -> Admitted | None:
    """Check ``request``; None when it was refused (the refusal was sent, the connection
    closed), else who the peer is. The caller accepts the upgrade."""
    m = metrics
    try:
        path = urlsplit(request.path).path
    except ValueError:  # "http://[x/ws": an unclosed IPv6 literal
        path = None
    if path is None:
        m.handshakes_refused.inc("400")
        await ws.reject(400, body=b"malformed request target\n")
        return None
    if path != config.ws_path:
        m.handshakes_refused.inc("404")
        await ws.reject(404, body=f"no ATP endpoint at {path}; use {config.ws_path}\n".encode())
        return None
    if draining:
        m.handshakes_refused.inc("503")
        await ws.reject(503, headers=[(b"retry-after", b"1")], body=b"router is draining\n")
        return None
    if sessions >= config.max_sessions:
        m.handshakes_refused.inc("503")
        await ws.reject(503, headers=[(b"retry-after", b"1")], body=b"too many sessions\n")
        return None
    token, subprotocol = extract_token(request.path, request.headers, request.subprotocols)
    principal: Principal = ANONYMOUS
    if authenticator is not None:
        try:
            principal = await authenticate(authenticator, token)
        except AuthError as exc:
            m.handshakes_refused.inc(str(exc.status))
            log.info(
                "handshake refused",
                extra={"status": exc.status, "reason": exc.message, "peer": str(request.remote)},
            )
            headers = [(b"www-authenticate", b'Bearer realm="atp"')] if exc.status == 401 else []
            await ws.reject(exc.status, headers=headers, body=f"{exc.message}\n".encode())
            return None
    return Admitted(principal, subprotocol)
