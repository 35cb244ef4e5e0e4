"""What a new user and an adapter vendor met walking the README from a fresh clone (session
7), each with the real ``atp`` in a subprocess: one line "PROG: error: ..." and the right
exit status, never a traceback.

- A failure (exit 1 or 3) said no "error:": ``atp feedback`` (refused, unreachable),
  ``atp conformance run`` (a failed run, an unreachable target), ``atp audit verify``
  (``TAMPERED: ...``), ``atp send`` (``ERROR  ...``).
- ``atp feedback`` to an https:// metrics port whose certificate it does not trust: a
  Python SSL error text and exit 2 (bad usage) instead of exit 1 with a hint.
- ``atp adapter check`` / ``atp conformance run --role adapter`` against a port that
  accepts and never answers: 17 harness ERRORs after 90 s (exit 1), or no end at all.
- ``atp adapter serve`` said "listening" twice (its log and its stdout line), and on a
  busy port "error while attempting to bind on address ('127.0.0.1', N): ...".
- A missing ``[tls] cert`` named neither the setting nor the config file.
- ``atp routing train`` / ``import`` with a ``--state`` that cannot be written: a
  traceback (sqlite3.OperationalError).
- ``atp token issue`` with a PEM key and no ``--algorithm`` said "with a PEM private key"
  for a public key too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_proto.testing.certs import make_cert
from tests.router._helpers_e2e import ROOT, atp, clean_env, router_process


def _line(proc: subprocess.CompletedProcess[str], rc: int) -> str:
    """The one line on stderr of a finished ``atp`` (no traceback), its status ``rc``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def test_feedback_refused_says_error(tmp_path: Path) -> None:
    """The default learner takes no feedback: refused (409), exit 1, an error line."""
    with router_process("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "127.0.0.1:0") as r:
        url = f"http://127.0.0.1:{r.metrics_port}"
        proc = atp("feedback", "0123456789abcdef", "0.5", "--url", url)
    line = _line(proc, 1)
    assert line.startswith("atp feedback: error: refused (409): "), line


def test_feedback_to_an_untrusted_https_port_is_a_refused_certificate(tmp_path: Path) -> None:
    """Before: ``atp feedback: error: [SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)``,
    exit 2, as if the command line were wrong."""
    cert = make_cert(tmp_path)
    with router_process(
        "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--quic", "off",
        "--cert", cert.cert, "--key", cert.key,
    ) as router:  # fmt: skip
        url = f"https://127.0.0.1:{router.metrics_port}"
        refused = atp("feedback", "0123456789abcdef", "0.5", "--url", url)
        trusted = atp("feedback", "0123456789abcdef", "0.5", "--url", url, "--ca", cert.cert)
    line = _line(refused, 1)
    assert line.startswith(f"atp feedback: error: cannot reach {url}: TLS certificate refused")
    assert line.endswith("(trust its certificate with --ca FILE, or --insecure for local use)")
    assert "_ssl.c" not in line
    # with --ca the request gets through: the router's own refusal (no bandit learner)
    assert _line(trusted, 1).startswith("atp feedback: error: refused (409): ")


def test_conformance_adapter_role_against_a_silent_port_is_unreachable(silent_port: int) -> None:
    """Exit 3 after one connection timeout (scaled), not a harness ERROR per case."""
    t0 = time.monotonic()
    proc = atp(
        "conformance", "run", "--role", "adapter",
        "--target", f"grpc://127.0.0.1:{silent_port}", "--timeout-scale", "0.2",
        timeout=60,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "harness error" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last == (
        "atp conformance run: error: target unreachable: cannot connect to "
        f"grpc://127.0.0.1:{silent_port}: no HTTP/2 SETTINGS within 1 s (is it a gRPC server?)"
    )
    assert time.monotonic() - t0 < 30


def test_adapter_check_against_a_silent_port_ends_unreachable(silent_port: int) -> None:
    proc = atp(
        "adapter", "check", f"grpc://127.0.0.1:{silent_port}", "--timeout", "1",
        "--timeout-scale", "0.2", timeout=60,
    )  # fmt: skip
    line = _line(proc, 3)
    assert line.startswith("atp adapter check: error: cannot connect to ")
    assert "no HTTP/2 SETTINGS" in line
    assert proc.stdout.splitlines() == ["health    FAIL timed out"]


def test_a_failed_conformance_run_ends_with_an_error_line(tmp_path: Path) -> None:
    """A codec testee that answers hello and then nothing useful: the run fails (exit 1)
    and its last line says error."""
    testee = tmp_path / "codec.py"
    testee.write_text(
        "import json, sys\n"
        "for line in sys.stdin:\n"
        "    req = json.loads(line)\n"
        "    if req.get('op') == 'hello':\n"
        "        print(json.dumps({'ok': True, 'name': 'wrong', 'version': '0'}), flush=True)\n"
        "    else:\n"
        "        print(json.dumps({'ok': False, 'error': 'no'}), flush=True)\n"
    )
    proc = atp(
        "conformance", "run", "--role", "codec", "--exec", f"{sys.executable} {testee}",
        timeout=120,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("atp conformance run: error: codec: "), last
    assert "FAIL" in last


def test_adapter_serve_says_listening_once() -> None:
    argv = [sys.executable, "-m", "atp_proto", "adapter", "serve", "echo", "--listen",
            "127.0.0.1:0"]  # fmt: skip
    with subprocess.Popen(
        argv, cwd=ROOT, env=clean_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("adapter echo listening on 127.0.0.1:"), first
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "listening" not in out + err, out + err


def test_adapter_serve_on_a_busy_port_says_it_in_words(silent_port: int) -> None:
    proc = atp("adapter", "serve", "echo", "--listen", f"127.0.0.1:{silent_port}")
    line = _line(proc, 2)
    assert line == (
        f"atp adapter serve: error: cannot listen on 127.0.0.1:{silent_port}: "
        "address already in use"
    )


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_a_missing_tls_file_of_the_config_names_its_setting(tmp_path: Path, missing: str) -> None:
    cert = make_cert(tmp_path)
    files = {"cert": cert.cert, "key": cert.key}
    files[missing] = str(tmp_path / f"absent.{missing}")
    config = tmp_path / "atp.toml"
    config.write_text(f'[tls]\ncert = "{files["cert"]}"\nkey = "{files["key"]}"\n')
    proc = atp("serve", "--no-auth", "--config", str(config), "--metrics", "off")
    assert _line(proc, 2) == (
        f"atp serve: error: cannot read tls.{missing} {files[missing]} (from {config}): "
        "no such file"
    )


@pytest.mark.parametrize("action", ["train", "import"])
def test_routing_state_that_cannot_be_written_is_said_before_the_work(
    tmp_path: Path, action: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = blocker / "state.sqlite"
    source = tmp_path / ("data.jsonl" if action == "train" else "state.json")
    source.write_text("{}\n")
    proc = atp("routing", action, str(source), "--state", str(state))
    assert _line(proc, 2) == f"atp routing {action}: error: --state {state}: no directory {blocker}"


def test_audit_verify_tampered_says_error(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(json.dumps({"seq": 0, "prev": "0" * 64, "hash": "f" * 64}) + "\n")
    line = _line(atp("audit", "verify", str(log)), 1)
    assert line.startswith(f"atp audit verify: error: TAMPERED: {log} line 1"), line


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("rsa", "with an RSA private key, pass --algorithm RS256"),
        ("ec", "with an EC private key, pass --algorithm ES256"),
        ("public", "--key-file holds a public key: tokens are signed with its private key"),
    ],
)
def test_token_issue_with_a_pem_key_says_which_algorithm(
    tmp_path: Path, kind: str, expected: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )  # fmt: skip
    if kind == "public":
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    line = _line(atp("token", "issue", "--key-file", str(path)), 2)
    assert line == f"atp token issue: error: {expected}"
