"""The example clients run as a user would run them, against a router process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

from .conftest import ROOT, start_router, stop

EXAMPLES = ROOT / "examples"


def _run(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_raw_json_client_with_only_websockets() -> None:
    """ATP-JSON-001, ATP-WS-002, ATP-WS-003: an independent client (the `websockets`
    package) sends the SYN example verbatim and gets PARTIALs and a FINAL."""
    router = start_router("--no-auth", "--adapter", "persona=builtin:persona")
    try:
        out = _run("raw_json_client.py", router.url)
    finally:
        stop(router.proc)
    assert out.returncode == 0, out.stderr
    frames = [json.loads(line) for line in out.stdout.splitlines()]
    assert [f["msg_seq"] for f in frames] == [2, 3, 4, 5, 6]
    assert all(f["session_id"] == "s1" and f["stream_id"] == "st1" for f in frames)
    assert all(f["flags"] == ["MORE"] for f in frames[:-1])
    assert frames[0]["payload"]["type"] == "agent.result.partial"
    final = frames[-1]
    assert final["flags"] == ["FIN"] and final["telemetry"]["tokens"] > 0
    assert "the answer is" in final["payload"]["content"]["answer"]


def test_python_client_example() -> None:
    router = start_router("--no-auth", "--adapter", "echo=builtin:echo?chunks=3")
    try:
        out = _run("python_client.py", "--url", router.url, "--prompt", "example prompt")
    finally:
        stop(router.proc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("PARTIAL echo") == 3
    assert "FINAL   example prompt" in out.stdout
    assert "telemetry {'tokens'" in out.stdout


def test_examples_with_auth() -> None:
    """ATP-WS-006: both scripts pass a token; a bad one is a clear handshake refusal."""
    env = {"ATP_JWT_KEY": secrets.token_hex(32)}
    token = subprocess.run(
        [sys.executable, "-m", "atp_proto.cli", "token", "issue", "--tenant", "examples"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, **env},
    ).stdout.strip()
    router = start_router("--adapter", "echo=builtin:echo", env=env)
    try:
        raw = _run("raw_json_client.py", router.url, "--token", token)
        sdk = _run("python_client.py", "--url", router.url, "--token", token, "--qos", "gold")
        raw_bad = _run("raw_json_client.py", router.url, "--token", "not-a-jwt")
        sdk_bad = _run("python_client.py", "--url", router.url, "--token", "not-a-jwt")
    finally:
        stop(router.proc)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout.splitlines()[-1])["payload"]["content"]["answer"] == "hello"
    assert sdk.returncode == 0, sdk.stderr
    assert "FINAL   hello" in sdk.stdout
    assert (raw_bad.returncode, raw_bad.stderr.strip()) == (2, "handshake refused: HTTP 401")
    assert sdk_bad.returncode == 2 and "handshake refused: HTTP 401" in sdk_bad.stderr
    assert "not-a-jwt" not in sdk_bad.stderr  # ATP-ERR-006: the refusal does not echo it


def test_examples_without_a_router_say_so_in_one_line() -> None:
    """No router listening: one line naming the refusal and exit 2, as each script's
    docstring says (raw_json_client.py printed a traceback; python_client.py an
    ``ExceptionGroup(...)`` repr)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}/ws"
    for proc in (_run("raw_json_client.py", url), _run("python_client.py", "--url", url)):
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"cannot connect to {url}: ") and "refused" in lines[0]
        assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
