"""Why a JWKS or OIDC discovery fetch failed, as the router logs it (session 9): urllib's
own texts (``<urlopen error [Errno -2] Name or service not known>``, an HTTPError's repr)
become a few words. The fetches are real, over loopback sockets."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from atp_proto.router.jwks import _fetch_json, _fetch_problem

from ._http_server import LoopbackHttp


async def _fetch_error(url: str) -> BaseException:
    with pytest.raises(OSError) as ei:
        await trio.to_thread.run_sync(_fetch_json, url, 5)
    return ei.value


async def _not_found(method: str, path: str, body: bytes) -> tuple[int, Any]:
    return 404, {"error": "no such document"}


async def test_a_refused_port_and_an_http_error(nursery: trio.Nursery) -> None:
    with socket.socket() as s:  # a port free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = _fetch_problem(await _fetch_error(f"http://127.0.0.1:{port}/jwks.json"))
    assert refused == "connection refused", refused
    idp = await nursery.start(LoopbackHttp(_not_found).serve)
    answered = _fetch_problem(await _fetch_error(f"{idp.url}/.well-known/jwks.json"))
    assert answered == "HTTP 404 X", answered  # the loopback server's reason phrase is X
    assert _fetch_problem(trio.TooSlowError()) == "no answer in time"
    assert _fetch_problem(ValueError("JSON nested too deep")) == "JSON nested too deep"
