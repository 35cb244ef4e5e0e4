"""The example page in a real headless Chromium against a real router process.

ATP-WS-003: a browser doing ``new WebSocket(url)`` + ``ws.send(JSON.stringify(frame))``
works with no subprotocol. ATP-WS-006: with auth on, the token rides in ?access_token=.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from .conftest import Page, RouterProc, start_router, stop

pytestmark = pytest.mark.slow

PERSONA = ("--adapter", "persona=builtin:persona?latency_ms=10")


@contextmanager
def running(*args: str, env: dict[str, str] | None = None) -> Iterator[RouterProc]:
    """A router process that is stopped whatever happens in the block."""
    router = start_router(*args, env=env)
    try:
        yield router
    finally:
        stop(router.proc)


@contextmanager
def opened(chromium: str, url: str) -> Iterator[Page]:
    page = Page(chromium, url)
    try:
        yield page
    finally:
        page.close()


def _page_url(web: str, router: str, **params: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"router": router, **params}.items())
    return f"{web}/index.html?{query}"


def _received(page: Page) -> list[dict[str, Any]]:
    """#log: one line per received frame, the JSON text as received."""
    return [json.loads(line) for line in page.text("log").splitlines()]


def test_page_streams_partials_then_final(chromium: str, web_server: str) -> None:
    """ATP-WS-003, ATP-JSON-003, ATP-JSON-007: PARTIALs stream in, the FINAL carries
    telemetry, and a second request on the same session reuses the alias "st1"."""
    with (
        running("--no-auth", *PERSONA) as router,
        opened(chromium, _page_url(web_server, router.url, prompt="hello", autorun="1")) as page,
    ):
        assert page.wait_status() == "final", page.text("log") + page.text("answer")
        frames = _received(page)
        partials = [f for f in frames if f["flags"] == ["MORE"]]
        assert len(partials) == 4
        for p in partials:
            assert p["stream_id"] == "st1" and p["session_id"] == "s1"
            assert p["payload"]["type"] == "agent.result.partial"
            assert p["payload"]["content"]["adapter"] == "persona"
            assert isinstance(p["payload"]["content"]["text"], str)
        final = json.loads(page.text("result"))
        assert frames[-1] == final
        assert final["flags"] == ["FIN"] and final["msg_seq"] == 6
        assert final["payload"]["type"] == "agent.result.final"
        assert final["payload"]["content"]["ok"] is True
        assert "the answer is" in final["payload"]["content"]["answer"]
        assert {"tokens", "usd_micros", "latency_ms"} <= final["telemetry"].keys()
        assert "the answer is" in page.text("answer")
        assert "tokens" in page.text("telemetry") and "persona" in page.text("telemetry")
        # the SYN the page sent is the protocol's example with the form's values
        syn = json.loads(page.text("sent").splitlines()[0])
        assert syn["flags"] == ["SYN"] and syn["stream_id"] == "st1" and syn["ttl"] == 8
        assert syn["payload"] == {"type": "agent.result.partial", "content": {"prompt": "hello"}}

        # again, same page, same WebSocket: "st1" names a new stream
        page.eval("document.getElementById('prompt').value = 'second question'")
        page.eval("document.getElementById('qos').value = 'bronze'")
        page.eval("document.getElementById('send').click()")
        assert page.wait_status() == "final", page.text("log")
        assert "second question" in page.text("answer")
        assert json.loads(page.text("sent").splitlines()[-1])["qos"] == "bronze"
        assert len(_received(page)) == 10
        assert "closeCode" not in page.eval("JSON.stringify(document.body.dataset)")


def test_page_with_token_and_with_a_bad_token(chromium: str, web_server: str) -> None:
    """ATP-WS-006, ATP-SEC-001: the token is accepted as ?access_token=; a bad one fails
    the handshake and the page says so."""
    env = {"ATP_JWT_KEY": secrets.token_hex(32)}
    token = (
        subprocess.run(
            [sys.executable, "-m", "atp_proto.cli", "token", "issue", "--tenant", "web"],
            capture_output=True,
            env={**os.environ, **env},
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .strip()
    )
    with running(*PERSONA, env=env) as router:
        url = _page_url(web_server, router.url, prompt="hi there", token=token, autorun="1")
        with opened(chromium, url) as good:
            assert good.wait_status() == "final", good.text("log") + good.text("answer")
            assert "the answer is" in good.text("answer")
            assert "hi there" in good.text("answer")
        url = _page_url(web_server, router.url, prompt="x", token="not-a-jwt", autorun="1")
        with opened(chromium, url) as bad:
            assert bad.wait_status() == "error"
            assert "handshake failed" in bad.text("answer")
            assert bad.text("log") == ""
            # the browser hides the HTTP 401 from scripts: all it sees is an abnormal close
            assert bad.eval("document.body.dataset.closeCode") == "1006"
        url = _page_url(web_server, router.url, prompt="x", autorun="1")  # no token at all
        with opened(chromium, url) as anonymous:
            assert anonymous.wait_status() == "error"
            assert "handshake failed" in anonymous.text("answer")


def test_page_shows_router_errors(chromium: str, web_server: str) -> None:
    """ATP-ERR-001, ATP-ADAPT-004: an ERROR frame (every adapter failed: EAGENTDOWN, with
    retry_after_ms) is shown with its code."""
    with (
        running("--no-auth", "--adapter", "broken=builtin:persona?fail=error") as router,
        opened(chromium, _page_url(web_server, router.url, prompt="hello", autorun="1")) as page,
    ):
        assert page.wait_status() == "error", page.text("log")
        assert "EAGENTDOWN" in page.text("answer")
        assert "retry after" in page.text("answer")
        error = _received(page)[-1]
        assert error["type"] == "ERROR" and error["stream_id"] == "st1"


def test_page_survives_the_idle_timeout(chromium: str, web_server: str, tmp_path: Path) -> None:
    """ATP-TIME-004, ATP-ERR-002: the router closes an idle session (ERROR ETIMEOUT on
    stream 0, close code 4004); the page keeps the answer it has and the next Send opens a
    new session."""
    config = tmp_path / "router.toml"
    config.write_text("[limits]\nidle_timeout_ms = 700\n")
    with (
        running("--no-auth", "--config", str(config), *PERSONA) as router,
        opened(chromium, _page_url(web_server, router.url, prompt="hello", autorun="1")) as page,
    ):
        assert page.wait_status() == "final", page.text("log")
        deadline = time.monotonic() + 10
        while page.eval("document.body.dataset.closeCode || ''") == "":
            assert time.monotonic() < deadline, page.text("log")
            time.sleep(0.1)
        assert page.eval("document.body.dataset.closeCode") == "4004"
        assert page.eval("document.body.dataset.status") == "final"
        assert "the answer is" in page.text("answer")
        assert "ETIMEOUT" in page.text("conn")
        timeout = _received(page)[-1]
        assert timeout["type"] == "ERROR" and timeout["stream_id"] == 0
        assert timeout["error"]["code"] == "ETIMEOUT"

        page.eval("document.getElementById('prompt').value = 'after the timeout'")
        page.eval("document.getElementById('send').click()")
        assert page.wait_status() == "final", page.text("log")
        assert "after the timeout" in page.text("answer")


def test_page_answers_heartbeats(chromium: str, web_server: str) -> None:
    """ATP-TIME-002: the page answers a heartbeat (DATA, stream 0, HB) with HB|ACK and the
    same payload. Our router sends none, so a stand-in server plays the router here."""
    from websockets.sync.server import ServerConnection, serve

    acks: list[dict[str, Any]] = []

    def router(ws: ServerConnection) -> None:
        json.loads(ws.recv(timeout=10))  # the SYN
        hb = {"v": 1, "session_id": "s1", "stream_id": 0, "flags": ["HB"], "payload_b64": "AAE="}
        ws.send(json.dumps(hb))
        acks.append(json.loads(ws.recv(timeout=10)))
        final = {
            "v": 1,
            "session_id": "s1",
            "stream_id": "st1",
            "msg_seq": 2,
            "flags": ["FIN"],
            "payload": {"type": "agent.result.final", "content": {"ok": True, "answer": "ok"}},
            "telemetry": {"tokens": 1, "usd": 0, "latency_ms": 1},
        }
        ws.send(json.dumps(final))
        with contextlib.suppress(Exception):
            ws.recv(timeout=5)  # until the page goes away

    with serve(router, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
            with opened(chromium, _page_url(web_server, url, autorun="1")) as page:
                assert page.wait_status() == "final", page.text("log")
        finally:
            server.shutdown()
            thread.join(10)
    assert acks == [
        {"v": 1, "session_id": "s1", "stream_id": 0, "flags": ["HB", "ACK"], "payload_b64": "AAE="}
    ]
