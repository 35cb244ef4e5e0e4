"""A hostile peer against the HTTP a real ``atp serve`` reads: its WebSocket upgrade
requests and the operator port (``/metrics``, ``/healthz``, ``/readyz``, ``POST
/v1/feedback``). Plain sockets on loopback, bytes written by hand (no client code of
ours, no HTTP library), one router process for the module.

Every attack here once ended in a traceback in the router's log and a connection closed
without an answer; each must now get a clear 4xx and leave the router serving.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator

import pytest

from atp_proto.testing import RouterProcess


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    state = tmp_path_factory.mktemp("hostile-http") / "routing.sqlite"
    with RouterProcess(
        "--no-auth",
        "--learner",
        "bandit",
        "--routing-state",
        str(state),
        adapters={"echo": "builtin:echo"},
    ) as proc:
        yield proc


def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, half-close, read the answer to its end (or the 101's head)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
            if out.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in out:
                break
        return out


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split()[1])


def _upgrade(target: str, *extra: bytes, host: bytes = b"x") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
        % (target.encode(), host, key, b"".join(h + b"\r\n" for h in extra))
    )


def _post(body: bytes, length: bytes | None = None) -> bytes:
    size = str(len(body)).encode() if length is None else length
    return b"POST /v1/feedback HTTP/1.1\r\nContent-Length: %s\r\n\r\n%s" % (size, body)


def _clean_log(router: RouterProcess) -> None:
    log = router.log()
    assert "Traceback" not in log and " ERROR " not in log, router.tail()


def test_upgrade_requests_urlsplit_and_wsproto_cannot_read(router: RouterProcess) -> None:
    """An upgrade whose target is an unclosed IPv6 literal (urlsplit raised
    ValueError in the admission), or with a byte >= 0x80 in Sec-WebSocket-Protocol,
    Sec-WebSocket-Extensions or Host (wsproto let UnicodeError out): a 400 with a body
    saying why; a clean upgrade still gets its 101."""
    port = router.ws_port
    target = _exchange(port, _upgrade("http://[abc/ws"))
    assert _status(target) == 400 and b"malformed request target" in target
    for extra, host in (
        (b"Sec-WebSocket-Protocol: atp.v1, bearer.\xff", b"x"),
        (b"X-Note: fine", b"x\xe9"),
        (b"Sec-WebSocket-Extensions: \xe9", b"x"),
    ):
        answer = _exchange(port, _upgrade("/ws", extra, host=host))
        assert _status(answer) == 400 and b"not ASCII" in answer, (extra, host, answer)
    assert _status(_exchange(port, _upgrade("/ws"))) == 101
    _clean_log(router)


def test_operator_port_requests_that_raised(router: RouterProcess) -> None:
    """[ATP-FEED-002] On the metrics port: a target urlsplit cannot read (GET and POST), a
    feedback ``quality`` of 4,000 digits (math.isfinite raised OverflowError), a
    Content-Length int() reads but HTTP does not ("1_0", "+5", 4,400 digits), a request
    head past 8 KiB: each a 4xx naming the fault, then /healthz still answers."""
    port = router.metrics_port
    assert port is not None
    for raw in (
        b"GET http://[abc/metrics HTTP/1.1\r\n\r\n",
        _post(b"{}").replace(b"/v1", b"//[/v1"),
    ):
        answer = _exchange(port, raw)
        assert _status(answer) == 400 and b"malformed request target" in answer, raw
    huge = _exchange(port, _post(b'{"decision_id": "ab", "quality": ' + b"9" * 4000 + b"}"))
    assert _status(huge) == 400 and b"quality: a number within 0..1" in huge
    for length in (b"1_0", b"+5", b"9" * 4400):
        answer = _exchange(port, _post(b"0123456789", length))
        assert _status(answer) in (411, 413), (length, answer)
    head = _exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
    assert _status(head) == 431
    assert _status(_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200
    _clean_log(router)
