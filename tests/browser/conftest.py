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
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atp_proto.testing import RouterProcess
from atp_proto.testing.debian import DebianUnavailable, ensure_program

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


#: the router helper is atp_proto.testing's; the old name is kept for the tests
RouterProc = RouterProcess


def start_router(*args: str, env: dict[str, str] | None = None) -> RouterProcess:
    """``atp serve`` on a free port, metrics off; returns once it logs that it listens."""
    return RouterProcess(*args, metrics="off", env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen[Any], *, group: bool = False) -> None:
    """End ``proc`` (and, with ``group``, the process group it leads): TERM, then KILL."""

    def signal_it(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    signal_it(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        proc.wait(5)
    if group:  # helpers that outlived the leader
        signal_it(signal.SIGKILL)


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return ensure_program(("chromium", "chromium-browser"), "chromium")
    except DebianUnavailable as exc:
        if os.geteuid() != 0:
            pytest.skip(str(exc))
        pytest.fail(str(exc))


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
        self._stderr = open(Path(self.profile) / "stderr.txt", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",  # Chromium picks a port: no race for a free one
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # its own process group: close() ends its helpers too
        )
        pages: list[dict[str, Any]] = []
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not pages and self.proc.poll() is None:
            try:
                port = int(active.read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        if not pages:
            err = (Path(self.profile) / "stderr.txt").read_text(errors="replace")[-3000:]
            self.close()
            raise RuntimeError(f"chromium did not expose its DevTools endpoint:\n{err}")
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

    def wait_status(self, timeout: float = 20.0) -> str:
        """Poll ``body[data-status]`` until the page says "final" or "error"."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.eval("document.body.dataset.status || ''") or ""
            if status in ("final", "error"):
                return str(status)
            time.sleep(0.05)
        return str(status)

    def text(self, element_id: str) -> str:
        return str(self.eval(f"document.getElementById({element_id!r}).textContent"))

    def close(self) -> None:
        cm = getattr(self, "_cm", None)
        if cm is not None:
            cm.__exit__(None, None, None)
        stop(self.proc, group=True)
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)
