"""The example page in a real headless Chromium against a real router process.

ATP-WS-003: a browser doing ``new WebSocket(url)`` + ``ws.send(JSON.stringify(frame))``
works with no subprotocol. ATP-WS-006: with auth on, the token rides in ?access_token=.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from .conftest import Page, RouterProc, start_router, stop

pytestmark = pytest.mark.slow


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


def test_page_streams_partials_then_final(chromium: str, web_server: str) -> None:
    """ATP-WS-003, ATP-JSON-003: PARTIALs stream in, the FINAL carries telemetry, and a
    second request on the same session reuses the alias "st1"."""
    with (
        running("--no-auth", "--adapter", "persona=builtin:persona?latency_ms=10") as router,
        opened(chromium, _page_url(web_server, router.url, prompt="hello", autorun="1")) as page,
    ):
        assert page.wait_status() == "final", page.text("log")
        log = page.text("log").splitlines()
        partials = [
            json.loads(line[3:]) for line in log if line.startswith("<- ") and '"MORE"' in line
        ]
        assert len(partials) == 4
        assert all(p["stream_id"] == "st1" and p["session_id"] == "s1" for p in partials)
        final = json.loads(page.text("result"))
        assert final["flags"] == ["FIN"] and final["msg_seq"] == 6
        assert "the answer is" in page.text("answer")
        assert "tokens" in page.text("telemetry") and "persona" in page.text("telemetry")
        # again, same page, same WebSocket: "st1" names a new stream
        page.eval("document.getElementById('prompt').value = 'second question'")
        page.eval("document.getElementById('send').click()")
        assert page.wait_status() == "final", page.text("log")
        assert "second question" in page.text("answer")


def test_page_with_token_and_with_a_bad_token(chromium: str, web_server: str) -> None:
    """ATP-WS-006, ATP-SEC-001: the token is accepted as ?access_token=; a bad one fails
    the handshake and the page says so."""
    env = {"ATP_JWT_KEY": secrets.token_hex(32)}
    token = (
        subprocess.run(
            [sys.executable, "-m", "atp_proto", "token", "issue", "--tenant", "web"],
            capture_output=True,
            env={**os.environ, **env},
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    with running("--adapter", "echo=builtin:echo", env=env) as router:
        url = _page_url(web_server, router.url, prompt="hi there", token=token, autorun="1")
        with opened(chromium, url) as good:
            assert good.wait_status() == "final", good.text("log")
            assert good.text("answer") == "hi there"
        url = _page_url(web_server, router.url, prompt="x", token="not-a-jwt", autorun="1")
        with opened(chromium, url) as bad:
            assert bad.wait_status() == "error"
            assert "cannot connect" in bad.text("answer")


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
