"""Real processes for the browser and example tests: a router (`atp serve`), a static
file server for examples/web, and headless Chromium driven over the DevTools protocol.

Chromium comes from Debian's package; when it is missing and we are root, the fixture
installs it (apt-get), as CI does on a fresh machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "examples" / "web"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-allow-origins=*",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RouterProc:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def start_router(*args: str, env: dict[str, str] | None = None) -> RouterProc:
    """``atp serve`` on a free port; returns once it logs that it listens."""
    argv = [sys.executable, "-m", "atp_proto", "serve", "--ws", "127.0.0.1:0", "--metrics", "off"]
    proc = subprocess.Popen(
        [*argv, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(rb"router listening ws=ws://[^:]+:(\d+)/ws", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return RouterProc(proc, int(m.group(1)))
    proc.kill()
    raise RuntimeError(f"router did not start: {seen.decode(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.geteuid() != 0:
        pytest.skip(
            "chromium is not installed and installing it needs root (apt-get install chromium)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout.decode()}\n{done.stderr.decode()}")
    path = shutil.which("chromium")
    assert path, "apt-get installed chromium but it is not on PATH"
    return path


@pytest.fixture(scope="session")
def web_server() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(WEB))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class Page:
    """One headless Chromium tab, driven over the DevTools protocol."""

    def __init__(self, chromium: str, url: str) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="atp-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={port}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pages: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not pages:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
            except OSError:
                time.sleep(0.1)
        if not pages:
            self.close()
            raise RuntimeError("chromium did not expose its DevTools endpoint")
        self._cm = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._cm.__enter__()
        self._id = 0

    def eval(self, expression: str) -> Any:
        self._id += 1
        self.ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        while True:
            reply = json.loads(self.ws.recv(timeout=10))
            if reply.get("id") == self._id:
                return reply["result"]["result"].get("value")

    def wait_status(self, timeout: float = 20.0, *, not_: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.eval("document.body.dataset.status || ''") or ""
            if status in ("final", "error") and status != not_:
                return str(status)
            time.sleep(0.05)
        return str(status)

    def text(self, element_id: str) -> str:
        return str(self.eval(f"document.getElementById({element_id!r}).textContent"))

    def close(self) -> None:
        cm = getattr(self, "_cm", None)
        if cm is not None:
            cm.__exit__(None, None, None)
        stop(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)
