"""Bad inputs found by walking the README as a new user (the real ``atp`` in a
subprocess): each is one line for a person with the right exit status, and no traceback.

- ``atp send`` with a URL whose port or host cannot be parsed printed a traceback; a
  refused connection said only "all attempts to connect ... failed"; ``--ca`` on a
  ``ws://`` URL named wss:// only, though quic:// takes it too; ``ws://`` to a ``wss://``
  port gave no hint.
- ``atp conformance run`` with a target of the wrong kind ran every case against it (17
  or 328 ERRORs, exit 1) instead of saying so once (exit 2).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_proto.testing.certs import make_cert
from tests.router._helpers_e2e import atp, router_process


def _line(argv: tuple[str, ...], rc: int) -> str:
    proc = atp(*argv, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:99999/ws", "the port must be within 1..65535"),
        ("ws://127.0.0.1:0/ws", "the port must be within 1..65535"),
        ("ws://[::1/ws", "invalid ipv6 url"),
        ("ws:///ws", "no host"),
        ("quic://127.0.0.1", "expected quic://HOST:PORT"),
        ("http://127.0.0.1:7443/ws", "must start with ws://, wss:// or quic://"),
    ],
)
def test_send_with_a_url_it_cannot_use_is_bad_usage(url: str, expected: str) -> None:
    line = _line(("send", url, "--prompt", "hi"), 2)
    assert line.startswith("atp send: error: ") and expected in line


def test_send_ca_on_a_plain_url_names_both_tls_schemes() -> None:
    line = _line(("send", "ws://127.0.0.1:9/ws", "--prompt", "hi", "--ca", "x.pem"), 2)
    assert "wss:// and quic://" in line


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_send_to_a_refused_port_says_refused(refused_port: int) -> None:
    line = _line(("send", f"ws://127.0.0.1:{refused_port}/ws", "--prompt", "hi"), 1)
    assert line == (
        f"atp send: error: cannot connect to ws://127.0.0.1:{refused_port}/ws: "
        "connection refused (is a router listening there?)"
    )


def test_send_ws_to_a_wss_port_hints_at_wss(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    with router_process(
        "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--quic", "off",
        "--cert", cert.cert, "--key", cert.key,
    ) as router:  # fmt: skip
        url = router.ws_url.replace("wss://", "ws://")
        line = _line(("send", url, "--prompt", "hi", "--timeout", "10"), 1)
    assert line.endswith("(is it a wss:// port? then use wss://)"), line


@pytest.mark.parametrize(
    ("role", "target", "expected"),
    [
        ("router", "http://127.0.0.1:9/ws", "the router role needs --target ws://"),
        ("router", "ws://127.0.0.1:99999/ws", "port out of range"),
        ("router", "quic://127.0.0.1", "a port for quic://"),
        ("adapter", "http://127.0.0.1:9", "the adapter role needs --target grpc://HOST:PORT"),
    ],
)
def test_conformance_target_of_the_wrong_kind_is_bad_usage(
    role: str, target: str, expected: str
) -> None:
    line = _line(("conformance", "run", "--role", role, "--target", target), 2)
    assert line.startswith("atp conformance run: error: ") and expected in line


def test_conformance_report_dir_that_cannot_be_made_is_said_before_the_run(
    tmp_path: Path,
) -> None:
    """Before: the whole suite ran, then writing the reports failed."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _line(
        ("conformance", "run", "--role", "router", "--target", "ws://127.0.0.1:9/ws",
         "--report-dir", str(blocker / "reports")),
        2,
    )  # fmt: skip
    assert line.startswith(f"atp conformance run: error: --report-dir {blocker / 'reports'}: ")


def test_a_codec_testee_that_exits_at_once_is_unreachable_not_a_traceback() -> None:
    """``--exec`` of a program that exits without answering: exit 3, one line (before: a
    ValueError from reading the testee's stderr after its file was closed)."""
    proc = atp("conformance", "run", "--role", "codec", "--exec", f"{sys.executable} -c pass")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert "the codec testee did not answer hello" in proc.stderr.splitlines()[-1]


def test_audit_verify_a_directory_says_so(tmp_path: Path) -> None:
    line = _line(("audit", "verify", str(tmp_path)), 2)
    assert line == f"atp audit verify: error: cannot read {tmp_path}: not a file"


def test_feedback_to_a_refused_port_says_refused(refused_port: int) -> None:
    url = f"http://127.0.0.1:{refused_port}"
    line = _line(("feedback", "0123456789abcdef", "0.5", "--url", url), 1)
    assert line == (
        f"atp feedback: error: cannot reach {url}: "
        "connection refused (is the router's metrics port listening there?)"
    )


def test_adapter_list_json_is_for_scripts() -> None:
    import json

    proc = atp("adapter", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert {"echo", "persona"} <= set(table) and all(isinstance(v, str) for v in table.values())


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_demo_on_a_port_in_use_is_one_line_exit_2(busy_port: int) -> None:
    """Before: an exception group traceback ending in OSError [Errno 98]."""
    line = _line(("demo", "--port", str(busy_port)), 2)
    assert line.startswith(f"atp demo: error: cannot listen on 127.0.0.1:{busy_port}: ")
    assert "in use" in line


def test_demo_port_out_of_range_is_bad_usage() -> None:
    line = _line(("demo", "--port", "99999"), 2)
    assert "expected a port within 0..65535" in line


def test_feedback_url_port_out_of_range_names_the_url() -> None:
    line = _line(("feedback", "abc", "0.5", "--url", "http://127.0.0.1:99999"), 2)
    assert line == (
        "atp feedback: error: --url http://127.0.0.1:99999: the port must be within 1..65535"
    )


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--run", "router.no-such-case*", "--run 'router.no-such-case*' matches no router case"),
        ("--requirement", "ATP-NOPE-0", "--requirement ATP-NOPE-0 is cited by no router case"),
    ],
)
def test_conformance_selection_of_nothing_is_a_typo_not_a_pass(
    flag: str, value: str, expected: str
) -> None:
    """Before: every case SKIPPED, exit 0, as if the router had passed."""
    line = _line(
        ("conformance", "run", "--role", "router", "--target", "ws://127.0.0.1:9/ws",
         flag, value),
        2,
    )  # fmt: skip
    assert line.startswith(f"atp conformance run: error: {expected}")


def test_serve_with_a_negative_grace_names_it() -> None:
    """It said "timeouts must be positive", naming neither the option nor its value."""
    line = _line(("serve", "--no-auth", "--grace", "-1", "--metrics", "off"), 2)
    assert line == "atp serve: error: the drain grace must not be negative, got -1 s"


def test_serve_with_an_identity_provider_and_no_auth_is_bad_usage(tmp_path: Path) -> None:
    """--jwks (or --jwt-key-file, --oidc-issuer) beside --no-auth was silently ignored: a
    router left open that its operator meant to guard (ATP-SEC: no unauthenticated access
    where auth is configured)."""
    line = _line(("serve", "--no-auth", "--jwks", str(tmp_path / "keys.json")), 2)
    assert line == "atp serve: error: --jwks with --no-auth: choose one"
