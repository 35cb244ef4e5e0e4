"""``atp adapter check`` / ``atp conformance run --role adapter`` pointed at a server that
is not HTTP/2 (a router's own WebSocket or metrics port, a web server) instead of a gRPC
adapter (session 9, a new user's walk): the health line said "HTTP/2 protocol error:
Received overlong frame: length 4740180, max 16384" (the status line's "HTT" read as a
frame length) and the verdict "connection closed by the adapter". Both now say what the
server is not. Against real servers on loopback (threads), ``atp`` in-process."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from atp_proto.cli import main


@pytest.fixture
def http1_status_line() -> Iterator[str]:
    """Answers any connection with an HTTP/1.1 status line, as the router's ports do."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"grpc://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture
def http09_error_page() -> Iterator[str]:
    """Python's http.server: to the HTTP/2 preface it writes an error page, no status line."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"grpc://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _check(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    assert main(["adapter", "check", url]) == 3  # unreachable: nothing there speaks gRPC
    out, err = capsys.readouterr()
    assert "overlong frame" not in out + err and "closed by the adapter" not in err
    return out, err.splitlines()


def test_an_http1_port(http1_status_line: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _check(http1_status_line, capsys)
    assert "the server answered HTTP/1.x, not HTTP/2: not a gRPC server" in out, out
    assert err == [
        f"atp adapter check: error: cannot connect to {http1_status_line}: "
        "the target answered HTTP/1.x, not HTTP/2: not a gRPC server"
    ]


def test_a_server_without_a_status_line(
    http09_error_page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _check(http09_error_page, capsys)
    assert "first bytes are not an HTTP/2 SETTINGS frame: not a gRPC server" in out, out
    assert err == [
        f"atp adapter check: error: cannot connect to {http09_error_page}: "
        "the target's first bytes are not an HTTP/2 SETTINGS frame: not a gRPC server"
    ]
