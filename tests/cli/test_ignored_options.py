"""An option that would do nothing beside the others given is bad usage: exit 2, one
line naming it and what it needs (the real ``atp`` in a subprocess). Before, each of
these was silently ignored: ``atp serve --restart-limit`` without ``--workers``, the
bandit's options under the default learner, JWT checks beside ``--no-auth``, a QUIC
certificate with QUIC off, a JWT key beside a key set, conformance options that the
role given does not read (the run then passed without the case asked for), and benchmark
options the scenarios chosen do not read or that another one overrides.

A serve case that is not refused would start a router: it runs on a kernel-chosen port
and the subprocess's timeout fails the test."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from atp_proto.testing.certs import make_cert
from tests.router._helpers_e2e import atp

SERVE = ("serve", "--ws", "127.0.0.1:0", "--metrics", "off", "--quic", "off")
CONF = ("conformance", "run")

#: (argv, the one line expected)
CASES: list[tuple[tuple[str, ...], str]] = [
    (
        (*SERVE, "--no-auth", "--restart-limit", "3/60"),
        "atp serve: error: --restart-limit needs --workers N (N > 1): one router process has "
        "no supervisor to restart it (use the service manager's restart limit)",
    ),
    (
        (*SERVE, "--no-auth", "--workers", "1", "--restart-limit", "3/60"),
        "atp serve: error: --restart-limit needs --workers N (N > 1): one router process has "
        "no supervisor to restart it (use the service manager's restart limit)",
    ),
    (
        (*SERVE, "--no-auth", "--routing-state", "{tmp}/state.sqlite"),
        "atp serve: error: --routing-state is for --learner bandit (the learner is cheap-first)",
    ),
    (
        (*SERVE, "--no-auth", "--learner", "cheap-first", "--routing-seed", "3"),
        "atp serve: error: --routing-seed is for --learner bandit (the learner is cheap-first)",
    ),
    (
        (*SERVE, "--no-auth", "--routing-weights", "default=1,0.1,0.02"),
        "atp serve: error: --routing-weights is for --learner bandit (the learner is cheap-first)",
    ),
    (
        (*SERVE, "--no-auth", "--jwt-audience", "atp"),
        "atp serve: error: --jwt-audience with --no-auth: choose one",
    ),
    (
        (*SERVE, "--no-auth", "--jwt-algorithm", "RS256", "--jwt-issuer", "me"),
        "atp serve: error: --jwt-algorithm and --jwt-issuer with --no-auth: choose one",
    ),
    (
        (*SERVE, "--no-auth", "--quic-cert", "{cert}", "--quic-key", "{key}"),
        "atp serve: error: --quic-cert/--quic-key with --quic off: drop one",
    ),
    (
        (*SERVE, "--jwt-key-file", "{key}", "--jwks", "{cert}"),
        "atp serve: error: --jwt-key-file and --jwks exclude each other: the key set verifies",
    ),
    (
        (*CONF, "--role", "adapter", "--target", "grpc://127.0.0.1:9", "--pressure", "5"),
        "atp conformance run: error: --pressure is for --role router, not --role adapter",
    ),
    (
        (*CONF, "--role", "codec", "--exec", "true", "--encoding", "text"),
        "atp conformance run: error: --encoding is for --role router, not --role codec",
    ),
    (
        (*CONF, "--role", "adapter", "--target", "grpc://127.0.0.1:9", "--token", "t"),
        "atp conformance run: error: --token is for --role router, not --role adapter",
    ),
    (
        (*CONF, "--role", "client", "--exec", "c {url}", "--http-url", "http://127.0.0.1:9"),
        "atp conformance run: error: --http-url is for --role router, not --role client",
    ),
    (
        (*CONF, "--role", "router", "--target", "ws://127.0.0.1:9/ws", "--exec", "x"),
        "atp conformance run: error: --exec is for --role client and codec; --role router "
        "takes --target",
    ),
    (
        (*CONF, "--role", "router", "--target", "ws://127.0.0.1:9/ws", "--insecure"),
        "atp conformance run: error: --insecure is for a wss:// or quic:// --target",
    ),
    (
        (*CONF, "--role", "adapter", "--target", "grpc://127.0.0.1:9", "--ca", "{cert}"),
        "atp conformance run: error: --ca is for a wss:// or quic:// --target",
    ),
    (
        ("bench", "e2e", "--quick", "--rate", "50", "--concurrency", "4"),
        "atp bench e2e: error: --rate (open loop) and --concurrency (closed loop) exclude "
        "each other",
    ),
    (
        ("bench", "e2e", "--quick", "--scenario", "load,qos", "--open-streams", "100"),
        "atp bench e2e: error: --open-streams is for --scenario open-streams, which this run "
        "does not include",
    ),
    (
        ("bench", "e2e", "--quick", "--json", "--markdown"),
        "atp bench e2e: error: --json and --markdown exclude each other: pick one output",
    ),
    (
        ("bench", "routing", "--quick", "--levers"),
        "atp bench routing: error: --levers does not run with --quick (several minutes of "
        "in-process runs)",
    ),
]


def _run(argv: tuple[str, ...]) -> tuple[int, list[str]]:
    proc = atp(*argv, timeout=30)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, [ln for ln in proc.stderr.splitlines() if " WARNING " not in ln]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    tmp = tmp_path_factory.mktemp("ignored")
    made = make_cert(tmp)
    return made.cert, made.key, tmp


def test_an_option_that_would_do_nothing_is_bad_usage(cert: tuple[str, str, Path]) -> None:
    cert_file, key_file, tmp = cert
    cases = [
        tuple(
            a.replace("{cert}", cert_file).replace("{key}", key_file).replace("{tmp}", str(tmp))
            for a in argv
        )
        for argv, _ in CASES
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_run, cases))
    for argv, (_, line), (rc, lines) in zip(cases, CASES, results, strict=True):
        assert (rc, lines) == (2, [line]), argv
