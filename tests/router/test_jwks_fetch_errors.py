"""Why a JWKS or OIDC discovery fetch failed, as the router logs it (session 9): urllib's
own texts (``<urlopen error [Errno -2] Name or service not known>``, an HTTPError's repr)
become a few words. The fetches are real, over loopback sockets."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest
import trio

from atp_proto.router.jwks import _fetch_json, _fetch_problem


def _fetch_error(url: str) -> BaseException:
    with pytest.raises(OSError) as ei:
        _fetch_json(url, 5)
    return ei.value


def test_a_refused_port_and_an_http_error() -> None:
    with socket.socket() as s:  # a port free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = _fetch_problem(_fetch_error(f"http://127.0.0.1:{port}/jwks.json"))
    assert refused == "connection refused", refused

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answered = _fetch_problem(_fetch_error(f"http://127.0.0.1:{server.server_address[1]}/x"))
    finally:
        server.shutdown()
        server.server_close()
    assert answered == "HTTP 501 Unsupported method ('GET')", answered
    assert _fetch_problem(trio.TooSlowError()) == "no answer in time"
    assert _fetch_problem(ValueError("JSON nested too deep")) == "JSON nested too deep"
