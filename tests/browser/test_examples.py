"""The example clients run as a user would run them, against a router process."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT, start_router, stop


def test_raw_json_client_with_only_websockets() -> None:
    """ATP-JSON-001, ATP-WS-002: an independent client (the `websockets` package) sends the
    SYN example verbatim and gets PARTIALs and a FINAL."""
    router = start_router("--no-auth", "--adapter", "persona=builtin:persona")
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "raw_json_client.py"), router.url],
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        stop(router.proc)
    assert out.returncode == 0, out.stderr.decode()
    frames = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [f["msg_seq"] for f in frames] == [2, 3, 4, 5, 6]
    assert frames[-1]["flags"] == ["FIN"] and frames[-1]["telemetry"]["tokens"] > 0


def test_python_client_example() -> None:
    router = start_router("--no-auth", "--adapter", "echo=builtin:echo?chunks=3")
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "python_client.py"),
                "--url",
                router.url,
                "--prompt",
                "example prompt",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        stop(router.proc)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert text.count("PARTIAL") == 3
    assert "FINAL   example prompt" in text
