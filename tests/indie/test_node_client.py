"""An independent ATP client, written in JavaScript from spec/atp-v1.md alone, probing a
real ``atp serve`` on loopback (examples/node-client/: its README lists the findings).

The client shares no code with atp_proto: its own CBOR codec (RFC 8949), frame codec
(§3), WebSocket client (RFC 6455 on node:net, so that it can send broken messages) and
HS256 JWT minter. Node's standard library only: no npm install. Each probe is one test
here, citing the requirements it checks; the probes of one router run in one node process
(in parallel, a few seconds in all), so the module stays well under 30 s.

Routers: ``open`` (``--no-auth``, one echo adapter process over gRPC), ``auth`` (HS256 JWT
via ``atp token``, idle_timeout_ms 1500 to probe ATP-TIME-004) and ``drain`` (SIGTERM
while the client holds a stream open: ATP-SESS-005, ATP-SESS-013).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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
        return {"open": [], "auth": [], "drain": []}
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


@pytest.fixture(scope="module")
def adapter() -> Iterator[str]:
    if not NODE_OK:
        pytest.skip(SKIP)
    with adapter_server("echo", options={"chunks": "3"}) as url:
        yield url


@pytest.fixture(scope="module")
def open_results(adapter: str) -> Iterator[dict[str, dict[str, Any]]]:
    with RouterProcess("--no-auth", adapters={"echo": adapter}, metrics="off") as router:
        yield _run(router.url)


@pytest.fixture(scope="module")
def auth_results(adapter: str) -> Iterator[dict[str, dict[str, Any]]]:
    env = clean_env({"ATP_JWT_KEY": SECRET})
    config = "[limits]\nidle_timeout_ms = 1500\n"
    with RouterProcess(adapters={"echo": adapter}, metrics="off", env=env, config_toml=config) as r:
        tokens = ["--token", _token(), "--token-silver", _token("--max-qos", "silver")]
        tokens += ["--token-qa", _token("--task-type", "qa")]
        yield _run(r.url, "--group", "auth", *tokens, env=env)


def _check(results: dict[str, dict[str, Any]], name: str) -> None:
    r = results[name]
    assert r["ok"], f"{name} ({', '.join(r['ids'])}): {r['detail']}"


@pytest.mark.parametrize("name", _params("open"))
def test_router_open(open_results: dict[str, dict[str, Any]], name: str) -> None:
    """One probe against ``atp serve --no-auth`` (see the probe's ids in its message)."""
    _check(open_results, name)


@pytest.mark.parametrize("name", _params("auth"))
def test_router_auth(auth_results: dict[str, dict[str, Any]], name: str) -> None:
    """One probe against ``atp serve`` with HS256 JWT authentication (ATP-SEC-001...)."""
    _check(auth_results, name)


def test_router_drain(adapter: str) -> None:
    """First the session limit (--max-sessions 3: the 4th handshake gets HTTP 503 with
    Retry-After, ATP-LIMIT-003). Then SIGTERM while a stream is held open: EDRAINING announced, an idle session closed at
    once with 1001, a new SYN refused with retry_after_ms, the open stream finishes, then
    the session closes with EDRAINING and 1001 (ATP-SESS-005, ATP-SESS-006, ATP-SESS-013)."""
    assert NODE is not None
    env = clean_env({"ATP_JWT_KEY": SECRET})
    args = ("--grace", "5", "--max-sessions", "3")
    with RouterProcess(*args, adapters={"echo": adapter}, metrics="off", env=env) as r:
        proc = subprocess.Popen(
            [NODE, "run.mjs", r.url, "--json", "--group", "drain", "--parallel", "1"]
            + ["--token", _token()],
            cwd=CLIENT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
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
        assert time.monotonic() - t0 < 5, "the drained session closed only at the grace period"
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
