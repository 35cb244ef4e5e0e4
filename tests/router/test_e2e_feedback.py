"""Feedback end to end: a real router process (``atp serve --learner bandit``, JWT auth on)
over two real gRPC adapter processes of different cost; the FINAL carries a decision id;
``atp feedback`` and plain HTTP clients (ours, and the standard library's urllib as an
independent peer) report on it; the posterior moves and persists across a restart in the
SQLite state; unknown ids, other tenants, missing tokens and bad bodies are refused with
a clear status and message."""

from __future__ import annotations

import json
import re
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import FeedbackRefused, connect, feedback
from atp_proto.router import issue_token
from atp_proto.testing import RouterProcess

from ._helpers_e2e import ROOT, atp, clean_env

SECRET = secrets.token_hex(32)

pytestmark = pytest.mark.deadline(120)


def _router(state: Path, adapters: dict[str, str]) -> RouterProcess:
    return RouterProcess(
        "--learner",
        "bandit",
        "--routing-state",
        str(state),
        "--routing-seed",
        "3",
        adapters=adapters,
        env=clean_env({"ATP_JWT_KEY": SECRET}),
        cwd=ROOT,
    )


def _show(state: Path) -> dict[str, Any]:
    out = atp("routing", "show", "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    arms: dict[str, Any] = json.loads(out.stdout)["arms"]
    return arms


async def _raw_post(port: int, head: str, body: bytes) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()


def _urllib_post(url: str, doc: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_feedback_end_to_end_and_state_survives_a_restart(tmp_path: Path) -> None:
    """[ATP-FEED-001, ATP-FEED-002, ATP-FEED-003, ATP-FEED-004, ATP-FEED-007] The FINAL's
    decision id takes one report over HTTP (``atp feedback``), the report reaches the arm
    of the adapter that answered, and what was learned is still there after a restart."""
    state = tmp_path / "routing.sqlite"
    acme = issue_token(SECRET.encode(), tenant="acme", subject="alice")
    other = issue_token(SECRET.encode(), tenant="globex", subject="bob")
    async with (
        spawn_adapter("persona", options={"usd_per_1k": "100", "latency_ms": "1"}) as cheap,
        spawn_adapter("persona", options={"usd_per_1k": "5000", "latency_ms": "1"}) as dear,
    ):
        adapters = {"cheap": cheap.url, "dear": dear.url}
        with _router(state, adapters) as router:
            http = f"http://127.0.0.1:{router.metrics_port}"
            async with connect(router.url, token=acme) as client:
                final = await client.ask("What is the capital of France?")
                second = await client.ask("And of Italy?")
            did = final.telemetry["decision_id"]
            winner = final.content["adapter"]
            assert re.fullmatch(r"[0-9a-f]{16}", did)
            assert did != second.telemetry["decision_id"]
            # no token, another tenant's token: refused, the decision stays open
            with pytest.raises(FeedbackRefused) as no_token:
                await feedback(http, did, 0.9)
            assert no_token.value.status == 401 and "token" in no_token.value.message
            with pytest.raises(FeedbackRefused) as foreign:
                await feedback(http, did, 0.9, token=other)
            assert foreign.value.status == 404
            # the CLI reports it
            ok = atp("feedback", did, "0.9", "--url", http, "--token", acme, "--source", "eval")
            assert ok.returncode == 0, ok.stderr
            assert "feedback taken" in ok.stdout
            again = atp("feedback", did, "0.9", "--url", http, "--token", acme)
            assert again.returncode == 1
            assert "already reported" in again.stderr and "Traceback" not in again.stderr
            unknown = atp("feedback", "deadbeefdeadbeef", "0.5", "--url", http, "--token", acme)
            assert unknown.returncode == 1
            assert "unknown decision id 'deadbeefdeadbeef'" in unknown.stderr
            assert atp("feedback", did, "1.5", "--url", http).returncode == 2
            # an independent HTTP client (the standard library's) reports the second one
            status, body = await trio.to_thread.run_sync(
                _urllib_post,
                f"{http}/v1/feedback",
                {"decision_id": second.telemetry["decision_id"], "quality": 0.25},
                acme,
            )
            assert (status, body["accepted"]) == (200, True)
            # malformed requests: a clear status and message each
            port = router.metrics_port
            assert port is not None
            auth = f"Authorization: Bearer {acme}"
            big = b"x" * 9000
            s413, _ = await _raw_post(
                port, f"POST /v1/feedback HTTP/1.1\r\n{auth}\r\nContent-Length: {len(big)}", big
            )
            s400, m400 = await _raw_post(
                port, f"POST /v1/feedback HTTP/1.1\r\n{auth}\r\nContent-Length: 5", b"nope!"
            )
            s411, _ = await _raw_post(port, f"POST /v1/feedback HTTP/1.1\r\n{auth}", b"")
            assert (s413, s400, s411) == (413, 400, 411)
            assert "JSON object" in m400
        arms = _show(state)  # written when the router stopped
        assert sum(a["feedback"] for a in arms.values()) == 2
        assert arms[winner]["feedback"] >= 1
        before = arms[winner]["observations"]
        with _router(state, adapters) as router:
            assert "routing state loaded" in router.log()
            http = f"http://127.0.0.1:{router.metrics_port}"
            async with connect(router.url, token=acme) as client:
                third = await client.ask("What is the capital of France?")
            # a decision made before the restart is unknown now
            with pytest.raises(FeedbackRefused) as stale:
                await feedback(http, did, 0.5, token=acme)
            assert stale.value.status == 404
            result = await feedback(http, third.telemetry["decision_id"], 1.0, token=acme)
            assert result.accepted
            winner3 = third.content["adapter"]
    arms = _show(state)
    assert sum(a["feedback"] for a in arms.values()) == 3
    if winner3 == winner:
        assert arms[winner]["observations"] == before + 1


async def test_cheap_first_router_says_it_takes_no_feedback(tmp_path: Path) -> None:
    """[ATP-FEED-003] A router without a learner answers 409, not a silent success."""
    with RouterProcess(
        "--no-auth", adapters={"echo": "builtin:echo"}, env=clean_env(), cwd=ROOT
    ) as router:
        async with connect(router.url) as client:
            final = await client.ask("hi")
        with pytest.raises(FeedbackRefused) as refused:
            await feedback(
                f"http://127.0.0.1:{router.metrics_port}", final.telemetry["decision_id"], 1.0
            )
    assert refused.value.status == 409 and "--learner bandit" in refused.value.message
