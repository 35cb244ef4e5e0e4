"""A new user's mistakes get one line and the right exit code (issue 9, item 18).

Each case runs the real ``atp`` command as a subprocess, against real sockets on loopback
(a port someone else holds, a plain HTTP server, a router's plain ``ws://`` port), and
checks the exit code (1 failed, 2 bad usage: ``atp_proto/cli.py``) and that stderr carries
exactly one error line and no traceback.
"""

from __future__ import annotations

import http.server
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router._helpers_e2e import atp, router_process

#: a log record (``atp serve`` logs "authentication is OFF" before failing)
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def one_line(proc: subprocess.CompletedProcess[str], rc: int) -> str:
    """The single error line of a failed command, after checking its exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# ---------------------------------------------------------------------- listening


def test_serve_on_a_port_in_use_is_one_line_exit_2(busy_port: int) -> None:
    proc = atp("serve", "--no-auth", "--ws", f"127.0.0.1:{busy_port}", "--metrics", "off")
    line = one_line(proc, 2)
    assert line.startswith("atp serve: error: cannot listen on")
    assert f"127.0.0.1:{busy_port}" in line and "WebSocket" in line and "in use" in line
    assert line.endswith("pick another port: --ws HOST:PORT)")  # the flag that moves it


def test_serve_with_the_metrics_port_in_use_names_the_metrics_listener(busy_port: int) -> None:
    proc = atp("serve", "--no-auth", "--ws", "127.0.0.1:0", "--metrics", f"127.0.0.1:{busy_port}")
    line = one_line(proc, 2)
    assert f"127.0.0.1:{busy_port} (metrics)" in line and "in use" in line
    assert line.endswith("pick another port: --metrics HOST:PORT, or --metrics off)")


def test_adapter_serve_on_a_port_in_use_exits_2(busy_port: int) -> None:
    proc = atp("adapter", "serve", "echo", "--listen", f"127.0.0.1:{busy_port}")
    line = one_line(proc, 2)
    assert "cannot listen" in line and str(busy_port) in line


# ---------------------------------------------------------------------- tokens


def test_token_rs256_with_an_hs_secret_is_bad_usage() -> None:
    proc = atp("token", "issue", "--algorithm", "RS256", env={"ATP_JWT_KEY": "s" * 40})
    line = one_line(proc, 2)
    assert "RS256" in line and "PEM private key" in line


def test_token_es256_with_an_rsa_key_or_a_public_key_is_bad_usage(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "rsa.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "rsa.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    line = one_line(atp("token", "issue", "--key-file", str(private), "--algorithm", "ES256"), 2)
    assert "ES256 needs an EC key" in line
    line = one_line(atp("token", "issue", "--key-file", str(public), "--algorithm", "RS256"), 2)
    assert "public key" in line
    ok = atp("token", "issue", "--key-file", str(private), "--algorithm", "RS256")
    assert ok.returncode == 0 and ok.stdout.count(".") == 2, ok.stderr


# ---------------------------------------------------------------------- configuration


def _serve_with(tmp_path: Path, toml: str, **env: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "atp.toml"
    cfg.write_text(toml)
    return atp(
        "serve", "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--config", str(cfg),
        env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[admission]\ninitial_limit = -3\n", "initial_limit must be a non-negative int"),
        ("[admission]\ninitial_limit = 2000\n", "initial_limit <= max_limit"),
        ("[admission]\nmin_limit = 0\n", "1 <= min_limit"),
        ("[tenant_window]\nmax_tokens = -1\n", "max_tokens must be a non-negative int"),
    ],
)
def test_config_refuses_impossible_admission_and_windows(
    tmp_path: Path, toml: str, expected: str
) -> None:
    line = one_line(_serve_with(tmp_path, toml), 2)
    assert expected in line


def test_config_unknown_key_is_named_not_a_python_error(tmp_path: Path) -> None:
    line = one_line(_serve_with(tmp_path, "[router]\nmax_sesions = 5\n"), 2)
    assert "[router]: unknown setting 'max_sesions'" in line and "max_sessions" in line
    assert "__init__" not in line


@pytest.mark.parametrize(
    "value", ["foo", "a=ftp://x", '["ftp://host:1"]', "[1]", "[oops"]
)  # fmt: skip
def test_bad_adapter_endpoints_is_blamed_on_the_variable(tmp_path: Path, value: str) -> None:
    line = one_line(_serve_with(tmp_path, "", ADAPTER_ENDPOINTS=value), 2)
    assert "ADAPTER_ENDPOINTS" in line and "--adapter" not in line


# ---------------------------------------------------------------------- atp send


@pytest.mark.parametrize(
    ("flag", "value"), [("--ttl", "-1"), ("--ttl", "70000"), ("--max-tokens", "-5"),
                        ("--timeout", "0")],
)  # fmt: skip
def test_send_bad_numbers_are_bad_usage(flag: str, value: str) -> None:
    # Nothing listens on port 9: the check comes before any connection.
    line = one_line(atp("send", "ws://127.0.0.1:9/ws", "--prompt", "hi", flag, value), 2)
    assert line.startswith("atp send: error:") and flag in line


@pytest.mark.parametrize(
    "argv",
    [
        ["adapter", "serve", "echo", "--listen", "127.0.0.1:0", "--max-concurrency", "-5"],
        ["adapter", "serve", "echo", "--listen", "127.0.0.1:0", "--grace", "-1"],
        ["adapter", "check", "grpc://127.0.0.1:9", "--timeout", "-1"],
        ["token", "issue", "--ttl", "-1"],
    ],
    ids=["max-concurrency", "grace", "check-timeout", "token-ttl"],
)
def test_other_bad_numbers_are_bad_usage_too(argv: list[str]) -> None:
    line = one_line(atp(*argv, env={"ATP_JWT_KEY": "s" * 40}, timeout=20), 2)
    assert ": error: --" in line


@pytest.fixture
def http_server() -> Iterator[int]:
    """A plain HTTP server answering every GET with 200 and a 40 KiB HTML page."""
    page = b"<!DOCTYPE html><html><body>" + b"<p>not a websocket</p>\n" * 1800 + b"</body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_send_to_a_plain_http_url_does_not_dump_the_page(http_server: int) -> None:
    proc = atp("send", f"ws://127.0.0.1:{http_server}/", "--prompt", "hi", "--timeout", "10")
    line = one_line(proc, 1)
    assert "HTTP 200" in line and "not a WebSocket endpoint" in line
    assert "<p>" not in proc.stderr and len(proc.stderr) < 400


def test_send_to_a_wrong_path_prints_the_routers_one_line_reason() -> None:
    with router_process("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off") as router:
        url = router.ws_url.rsplit("/", 1)[0] + "/nope"
        line = one_line(atp("send", url, "--prompt", "hi", "--timeout", "10"), 1)
    assert "HTTP 404" in line and "/ws" in line


def test_send_wss_to_a_plain_port_names_tls() -> None:
    with router_process("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off") as router:
        url = router.ws_url.replace("ws://", "wss://")
        proc = atp("send", url, "--prompt", "hi", "--timeout", "10")
        line = one_line(proc, 1)
        assert "TLS" in line and "ws://" in line and "deadline" not in line
        # and the same router still answers on ws://
        ok = atp("send", router.ws_url, "--prompt", "hi", "--timeout", "10")
    assert ok.returncode == 0 and "FINAL" in ok.stdout, ok.stderr


def test_send_wss_to_a_silent_port_names_tls(busy_port: int) -> None:
    # The listening socket never accepts, so no TLS handshake ever comes back.
    proc = atp("send", f"wss://127.0.0.1:{busy_port}/ws", "--prompt", "hi", "--timeout", "1")
    line = one_line(proc, 1)
    assert "no TLS handshake" in line and "deadline" not in line


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS listener on loopback with a self-signed certificate (no CA trusts it)."""
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "cert.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
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
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate, as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_send_wss_to_an_untrusted_certificate_names_the_certificate(tls_server: int) -> None:
    proc = atp("send", f"wss://127.0.0.1:{tls_server}/ws", "--prompt", "hi", "--timeout", "10")
    line = one_line(proc, 1)
    assert "TLS certificate refused" in line and "deadline" not in line
