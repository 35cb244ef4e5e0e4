"""An independent ATP client, written in JavaScript from spec/atp-v1.md alone, probing a
real ``atp serve`` on loopback (examples/node-client/: its README lists the findings).

The client shares no code with atp_proto: its own CBOR codec (RFC 8949), frame codec
(§3), WebSocket client (RFC 6455 on node:net, so that it can send broken messages) and
HS256 JWT minter. Node's standard library only: no npm install. Each probe is one test
here, citing the requirements it checks; the probes of one router run in one node process
(in parallel, a few seconds in all), so the module stays well under 30 s.

Routers, all behind one echo adapter process over gRPC: ``open`` (``--no-auth``),
``auth`` (HS256 JWT via ``atp token``, idle_timeout_ms 1500 to probe ATP-TIME-004),
``drain`` (``--max-sessions 3``, then SIGTERM while the client holds a stream open:
ATP-LIMIT-003, ATP-SESS-005, ATP-SESS-013) and ``tls`` (``--dev-cert``: wss://). Last, the
other direction: the reference's conformance suite (client role) against the client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atp_proto.testing.processes import RouterProcess, adapter_server, clean_env

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "node-client"
NODE = shutil.which("node")
SECRET = "indie-" + "k" * 40  # an HS256 secret of more than 32 bytes (ATP-SEC-006)

#: probes that find the reference wrong, with why; strict: fixing one makes its test fail
KNOWN: dict[str, str] = {}


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=False)
    return int(out.stdout.strip().lstrip("v").split(".")[0] or 0)


NODE_OK = _node_major() >= 20
SKIP = "needs Node.js 20 or newer on PATH (the independent client is JavaScript)"


def _probe_names() -> dict[str, list[dict[str, Any]]]:
    if not NODE_OK:
        return {"open": [], "auth": [], "drain": [], "tls": []}
    out = subprocess.run(
        [NODE, "run.mjs", "--list"], cwd=CLIENT, capture_output=True, text=True, check=True
    )
    listed: dict[str, list[dict[str, Any]]] = json.loads(out.stdout)
    return listed


PROBES = _probe_names()


def _params(group: str) -> list[Any]:
    if not PROBES[group]:
        return [pytest.param("none", marks=pytest.mark.skip(reason=SKIP))]
    out = []
    for p in PROBES[group]:
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN[p["name"]])] if p["name"] in KNOWN else []
        )
        out.append(pytest.param(p["name"], marks=marks, id=p["name"]))
    return out


def _run(url: str, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    assert NODE is not None
    out = subprocess.run(
        [NODE, "run.mjs", url, "--json", *args],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    if out.returncode not in (0, 1):
        raise AssertionError(f"node run.mjs exited {out.returncode}: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {r["name"]: r for r in report["results"]}


def _token(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "atp_proto", "token", "issue", *args],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env({"ATP_JWT_KEY": SECRET}),
    )
    return out.stdout.strip()


@dataclass
class Routers:
    """The module's three routers, started at once (the probes of the first two have
    already run when a test reads them)."""

    open: dict[str, dict[str, Any]]
    auth: dict[str, dict[str, Any]]
    tls: dict[str, dict[str, Any]]
    drain: RouterProcess
    drain_token: str


@pytest.fixture(scope="module")
def routers() -> Iterator[Routers]:
    """An echo adapter process over gRPC; ``atp serve --no-auth``; ``atp serve`` with HS256
    JWT and idle_timeout_ms 1500; a third for the drain. Everything that can overlap does:
    the routers start together, the tokens are minted meanwhile, both probe runs together."""
    if not NODE_OK:
        pytest.skip(SKIP)
    env = clean_env({"ATP_JWT_KEY": SECRET})
    with adapter_server("echo", options={"chunks": "3"}) as adapter, ThreadPoolExecutor(8) as ex:
        echo = {"echo": adapter}
        open_f = ex.submit(RouterProcess, "--no-auth", adapters=echo, metrics="off")
        auth_f = ex.submit(
            RouterProcess,
            adapters=echo,
            metrics="off",
            env=env,
            config_toml="[limits]\nidle_timeout_ms = 1500\n",
        )
        drain_args = ("--grace", "20", "--max-sessions", "3")
        drain_f = ex.submit(RouterProcess, *drain_args, adapters=echo, metrics="off", env=env)
        # --dev-cert: under this worker's XDG_DATA_HOME (tests/conftest.py)
        tls_args = ("--no-auth", "--dev-cert", "--quic", "off")
        tls_f = ex.submit(RouterProcess, *tls_args, adapters=echo, metrics="off")
        token_f = [
            ex.submit(_token, *a) for a in ((), ("--max-qos", "silver"), ("--task-type", "qa"))
        ]
        started = [f.result() for f in (open_f, auth_f, drain_f, tls_f)]
        try:
            main, silver, qa = (f.result() for f in token_f)
            auth_args = ["--group", "auth", "--token", main, "--token-silver", silver]
            open_run = ex.submit(_run, started[0].url)
            auth_run = ex.submit(_run, started[1].url, *auth_args, "--token-qa", qa, env=env)
            cert = re.search(r"dev certificate (\S+) \(", started[3].log())
            assert cert, started[3].log()[-1000:]
            tls_run = ex.submit(_run, started[3].url, "--group", "tls", "--ca", cert.group(1))
            yield Routers(open_run.result(), auth_run.result(), tls_run.result(), started[2], main)
        finally:
            for r in started:
                r.stop()


def _check(results: dict[str, dict[str, Any]], name: str) -> None:
    r = results[name]
    assert r["ok"], f"{name} ({', '.join(r['ids'])}): {r['detail']}"


@pytest.mark.parametrize("name", _params("open"))
def test_router_open(routers: Routers, name: str) -> None:
    """One probe against ``atp serve --no-auth`` (see the probe's ids in its message)."""
    _check(routers.open, name)


@pytest.mark.parametrize("name", _params("auth"))
def test_router_auth(routers: Routers, name: str) -> None:
    """One probe against ``atp serve`` with HS256 JWT authentication (ATP-SEC-001...)."""
    _check(routers.auth, name)


@pytest.mark.parametrize("name", _params("tls"))
def test_router_tls(routers: Routers, name: str) -> None:
    """One probe against ``atp serve --dev-cert``: wss:// (§13.1: TLS 1.2 or newer, ALPN
    http/1.1), the certificate trusted with ``--ca`` only (ATP-WS-013)."""
    _check(routers.tls, name)


def test_router_drain(routers: Routers) -> None:
    """First the session limit (--max-sessions 3: the 4th handshake gets HTTP 503 with
    Retry-After, ATP-LIMIT-003). Then SIGTERM while a stream is held open: EDRAINING
    announced, an idle session closed at once with 1001, a new SYN refused with
    retry_after_ms, the open stream finishes, then the session closes with EDRAINING and
    1001 (ATP-SESS-005, ATP-SESS-006, ATP-SESS-013)."""
    assert NODE is not None
    r = routers.drain
    argv = [NODE, "run.mjs", r.url, "--json", "--group", "drain", "--parallel", "1"]
    proc = subprocess.Popen(
        [*argv, "--token", routers.drain_token],
        cwd=CLIENT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", f"{line!r} {proc.stderr.read() if proc.stderr else ''}"
    r.terminate()
    t0 = time.monotonic()
    rest, err = proc.communicate(timeout=30)
    report = json.loads(rest.strip().splitlines()[-1])
    for res in report["results"]:  # session_limit_503 (ATP-LIMIT-003), then drain
        assert res["ok"], f"{res['name']}: {res['detail']} ({err[-500:]})"
    assert [res["name"] for res in report["results"]] == ["session_limit_503", "drain"]
    assert time.monotonic() - t0 < 15, "the drained session closed only at the grace period"
    assert r.wait(timeout=10) == 0


def test_probe_ids_exist() -> None:
    """Every requirement a probe cites is in the spec (so the report can be trusted)."""
    if not NODE_OK:
        pytest.skip(SKIP)
    spec = (CLIENT.parents[1] / "spec" / "atp-v1.md").read_text()
    cited = {i for g in PROBES.values() for p in g for i in p["ids"] if i.startswith("ATP-")}
    missing = sorted(i for i in cited if f"**[{i}]**" not in spec)
    assert not missing, missing
    assert os.path.isfile(CLIENT / "package.json")


def test_reference_conformance_suite_passes_the_independent_client(tmp_path: Path) -> None:
    """The other direction: the reference's conformance suite (``atp conformance run --role
    client``, a scripted router) against examples/node-client/client.mjs, L1 and L2 (the
    QUIC cases are L3; Node 20 has no QUIC). Every case must pass: three streams on one
    session, credit respected with a 400 KB task, a SYN from the router refused, no SYN
    after EDRAINING, retry_after_ms, BUDGET_UPDATE, the ttl, an untrusted certificate
    refused (ATP-STREAM-006, ATP-SESS-006, ATP-ERR-008, ATP-TIME-007, ATP-WS-013); the
    client.final.* cases are UNSUPPORTED (it does not ask for meta.final_answer)."""
    if not NODE_OK:
        pytest.skip(SKIP)
    cmd = (
        f"{NODE} {CLIENT / 'client.mjs'} {{url}} --tasks {{streams}} --prompt-file {{prompt_file}}"
    )
    cmd += " --ttl {ttl} --ca {ca}"
    argv = [sys.executable, "-m", "atp_proto", "conformance", "run", "--role", "client"]
    out = subprocess.run(
        [*argv, "--exec", cmd, "--level", "L2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    report = json.loads(out.stdout)
    assert report["counts"]["PASS"] >= 8, report["counts"]
    # client.final.*: the Node client does not ask for a FINAL without the answer
    # (meta.final_answer, spec §15.5, is optional): they are UNSUPPORTED, nothing else
    bad = {
        c["id"]: c["verdict"]
        for c in report["cases"]
        if c["verdict"] not in ("PASS", "SKIPPED")
        and not (c["id"].startswith("client.final.") and c["verdict"] == "UNSUPPORTED")
    }
    assert not bad and out.returncode == 0, (bad, out.stderr[-1500:])


def _node_cli(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, script, *args],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _error_line(proc: subprocess.CompletedProcess[str], script: str, rc: int) -> str:
    """The one ``SCRIPT: error: ...`` line of a finished node command (no stack trace)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    return lines[0].removeprefix(f"{script}: error: ")


_URL = "ws://127.0.0.1:9/ws"

#: (script, arguments, the error's start): bad usage, exit 2, "(see node SCRIPT --help)"
_USAGE = [
    ("client.mjs", (), "a ws:// or wss:// URL is needed"),
    ("client.mjs", ("http://127.0.0.1:9/",), "http://127.0.0.1:9/ is not a ws:// or wss:// URL"),
    ("client.mjs", (_URL, "--tasks", "x"), "--tasks x: a whole number"),
    ("client.mjs", (_URL, "--ttl", "70000"), "--ttl 70000: whole seconds"),
    ("client.mjs", (_URL, "--qos", "platinum"), "--qos platinum: one of"),
    ("client.mjs", (_URL, "--bogus"), "unknown option --bogus"),
    ("client.mjs", (_URL, "--token"), "--token needs a value"),
    ("client.mjs", (_URL, "--prompt-file", "/nonexistent/p.txt"), "cannot read --prompt-file"),
    ("client.mjs", (_URL, "--ca", "."), "cannot read --ca .: not a file"),
    ("run.mjs", (), "a ws:// or wss:// URL is needed"),
    ("run.mjs", (_URL, "--group", "nope"), "--group nope: one of auth, drain, tls"),
    ("run.mjs", (_URL, "--only", "no_such_probe"), "--only no_such_probe: no such probe"),
    ("run.mjs", (_URL, "--parallel", "0"), "--parallel 0: a whole number"),
    ("run.mjs", (_URL, "--verbose"), "unknown option --verbose"),
]


@pytest.mark.skipif(not NODE_OK, reason=SKIP)
@pytest.mark.parametrize(("script", "args", "start"), _USAGE, ids=[" ".join(u[1]) for u in _USAGE])
def test_node_cli_bad_usage_is_one_error_line(
    script: str, args: tuple[str, ...], start: str
) -> None:
    """The node commands' own errors in the project's form: ``client.mjs: error: ...``
    (they printed the usage block, a Node stack trace for a missing --prompt-file, or
    ran no probe at all for an unknown --only name and passed), exit 2."""
    msg = _error_line(_node_cli(script, *args), script, 2)
    assert msg.startswith(start), msg
    assert msg.endswith(f"(see node {script} --help)"), msg
    helped = _node_cli(script, "--help")
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: node {script}")


@pytest.mark.skipif(not NODE_OK, reason=SKIP)
def test_node_client_failures_are_one_error_line() -> None:
    """A failure (exit 1) is ``client.mjs: error: ...`` too, not ``ERROR  ...``: a refused
    connection, a refused handshake (a real ``atp serve`` with JWT auth and no token) and a
    task the router ended with an ERROR (its only adapter is down: EAGENTDOWN)."""
    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"
        msg = _error_line(_node_cli("client.mjs", url), "client.mjs", 1)
        assert msg.startswith(f"cannot connect to {url}: "), msg
        dead = {"dead": f"grpc://127.0.0.1:{port}"}  # the router's only adapter: down
        router = RouterProcess(adapters=dead, metrics="off", env=clean_env({"ATP_JWT_KEY": SECRET}))
        try:
            msg = _error_line(_node_cli("client.mjs", router.url), "client.mjs", 1)
            assert msg == "handshake refused: HTTP 401", msg
            proc = _node_cli("client.mjs", router.url, "--token", _token())
            msg = _error_line(proc, "client.mjs", 1)
            assert msg.startswith("task 1: EAGENTDOWN: "), msg
        finally:
            router.stop()
