"""Servers the router fetches from (an OPA server, a JWKS URL) that answer at once and
then send their body a byte at a time, for ever: a plain-socket "drip" server on loopback.

Once, each such fetch kept its worker thread for as long as the drip lasted (urlopen's
timeout bounds one socket read, not the answer), in trio's default limiter: 40 stuck
fetches stalled every other thread the router runs, and its decision log stopped being
written. Fetches now end at their deadline and run in a limiter of their own
(atp_proto/router/_fetch.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_proto.router.jwks import _fetch_json
from atp_proto.testing import RouterProcess
from atp_proto.testing.hostile_session import Session, syn


@pytest.fixture
def drip() -> Iterator[str]:
    """``http://127.0.0.1:PORT``: every request gets a 200 with Content-Length 10^6, a
    ``{``, then a space every 0.1 s for 15 s (so that a client without a deadline ends, and
    fails, instead of hanging the test), unless it goes first."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=128)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000\r\n\r\n{"
                )
                for _ in range(150):
                    if stop.wait(0.1):
                        break
                    conn.sendall(b" ")
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()


def test_a_dripping_jwks_url_times_out(drip: str) -> None:
    """A JWK Set URL that does not end its answer: the fetch raises TimeoutError at its
    deadline (it read on for as long as the server sent a byte within each 0.5 s)."""
    with pytest.raises(TimeoutError):
        _fetch_json(drip + "/jwks.json", 0.5)


def test_a_dripping_opa_server_does_not_stall_the_decision_log(drip: str, tmp_path: Path) -> None:
    """[ATP-SEC-017] 45 streams at once against an OPA server that never ends an answer:
    each is refused EAGENTDOWN (fail closed), and the decision log still records every
    one of them at once (it waited for a thread of the default limiter, all 40 held by
    the drips, until they ended)."""
    audit = tmp_path / "decisions.jsonl"
    with RouterProcess(
        "--no-auth", "--opa-url", drip, "--audit-log", str(audit), adapters={"echo": "builtin:echo"}
    ) as router:
        s = Session(router.url)
        try:
            sids = [s.new_sid() for _ in range(45)]
            for sid in sids:
                s.track(sid)
            s.link.send([syn(sid, f"prompt {sid}") for sid in sids])
            ends = {s.ended(sid, timeout=30.0) for sid in sids}
            assert ends == {"EAGENTDOWN"}, (ends, s.violations)
        finally:
            s.close()
        deadline = time.monotonic() + 8  # the drips last 15 s: before they end
        while time.monotonic() < deadline:
            if len(audit.read_text().splitlines()) >= len(sids):
                break
            time.sleep(0.1)
        assert len(audit.read_text().splitlines()) == len(sids), router.tail()
        assert "Traceback" not in router.log()
