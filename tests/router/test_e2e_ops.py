"""End to end: operating the router (drain, metrics, health, limits, timers, the CLI).

In-process routers on loopback for the session-level behaviour; ``atp serve`` and
``atp send`` as real subprocesses for configuration, signals and exit codes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
import trio_websocket

from atp_proto.client import Final, Partial, connect
from atp_proto.frames import Limits

from ._helpers_e2e import (
    F_ACK,
    F_HB,
    T_DATA,
    T_ERROR,
    atp,
    build_frame,
    http_get,
    metric_value,
    parse_frames,
    router_process,
)
from .conftest import ws_url

SYN = {
    "stream_id": "st1",
    "msg_seq": 1,
    "flags": ["SYN"],
    "qos": "gold",
    "payload": {"type": "agent.task", "content": {"prompt": "hello"}},
}
SLOW = {"slow": "builtin:persona?latency_ms=100&chunks=6"}


async def _closed_code(ws: trio_websocket.WebSocketConnection) -> tuple[list[dict], int | None]:
    """Read JSON replies until the router closes; the replies and the close code."""
    replies = []
    try:
        while True:
            replies.append(json.loads(await ws.get_message()))
    except trio_websocket.ConnectionClosed as exc:
        return replies, exc.reason.code if exc.reason else None


# ---------------------------------------------------------------------- drain


async def test_graceful_drain(start_router, nursery: trio.Nursery) -> None:
    """[ATP-SESS-005, ATP-ERR-002] Drain: the session is told it is going away (ERROR EDRAINING on stream 0 with
    retry_after_ms), a new SYN on it is refused with a stream-level EDRAINING, a new
    handshake gets 503 + Retry-After, /readyz turns 503 while /healthz stays 200, the
    in-flight stream completes with its FINAL, then the session closes with 1001 and
    the router stops (ATP-WS close codes, ATP-ERR EDRAINING)."""
    router = await start_router(adapters=SLOW)
    port = router.metrics_port
    assert (await http_get(port, "/readyz"))[0] == 200
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(SYN))
        first = json.loads(await ws.get_message())
        assert first["flags"] == ["MORE"]
        nursery.start_soon(router.drain, 10)
        going_away = json.loads(await ws.get_message())
        assert going_away["type"] == "ERROR" and going_away["stream_id"] == 0
        assert going_away["error"]["code"] == "EDRAINING"
        assert going_away["error"]["retry_after_ms"] > 0

        await ws.send_message(json.dumps(dict(SYN, stream_id="st2")))
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with trio_websocket.open_websocket_url(ws_url(router)):
                pass  # pragma: no cover
        assert refused.value.status_code == 503
        assert (b"retry-after", b"1") in list(refused.value.headers or ())
        assert (await http_get(port, "/readyz"))[0] == 503
        assert (await http_get(port, "/healthz"))[0] == 200

        replies, code = await _closed_code(ws)
    st2 = [r for r in replies if r["stream_id"] == "st2"]
    assert [(r["type"], r["error"]["code"]) for r in st2] == [("ERROR", "EDRAINING")]
    st1 = [r for r in replies if r["stream_id"] == "st1"]
    assert st1[-1]["flags"] == ["FIN"]
    assert st1[-1]["payload"]["content"]["ok"] is True
    assert len(st1) == 6  # five more PARTIALs and the FINAL: nothing lost
    assert code == 1001
    with trio.fail_after(5):
        await router.stopped.wait()
    assert router.metrics.handshakes_refused.get("503") == 1


async def test_draining_syn_refusal_carries_retry_after(start_router, nursery) -> None:
    """[ATP-SESS-005, ATP-ERR-004] The stream-level EDRAINING refusal of a SYN carries
    retry_after_ms."""
    router = await start_router(adapters=SLOW)
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(SYN))
        await ws.get_message()
        nursery.start_soon(router.drain, 10)
        await ws.get_message()  # EDRAINING on stream 0
        await ws.send_message(json.dumps(dict(SYN, stream_id="st2")))
        replies, _ = await _closed_code(ws)
    (refusal,) = [r for r in replies if r["stream_id"] == "st2"]
    assert refusal["error"]["code"] == "EDRAINING"
    assert refusal["error"].get("retry_after_ms", 0) > 0


async def test_drain_grace_expiry_closes_with_1001(start_router, nursery: trio.Nursery) -> None:
    """[ATP-SESS-005, ATP-ERR-002] A stream still running when the grace period ends is cut: the session closes
    with 1001 and the adapter stops being pulled; drain still finishes."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=100&chunks=100"})
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(SYN))
        await ws.get_message()
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(router.drain, 0.3)
                replies, code = await _closed_code(ws)
    assert code == 1001
    assert not any("FIN" in r.get("flags", []) for r in replies)
    last = replies[-1]  # the connection-level ERROR is sent before the close
    assert last["type"] == "ERROR" and last["stream_id"] == 0
    assert last["error"]["code"] == "EDRAINING"
    assert router.stopped.is_set()
    pulled = router.adapters["slow"].chunks_out
    await trio.sleep(0.3)
    assert router.adapters["slow"].chunks_out == pulled < 100


# ---------------------------------------------------------------------- metrics, health


async def test_metrics_endpoint(start_router) -> None:
    """[ATP-BUDGET-003] /metrics (Prometheus text) reflects what happened: sessions, frames by direction
    and type, ERROR frames by code, the stream-duration histogram, refused handshakes;
    /healthz and /readyz are 200; other paths 404 and other methods 405."""
    router = await start_router()
    port = router.metrics_port
    assert await http_get(port, "/healthz") == (200, "ok\n")
    assert (await http_get(port, "/readyz"))[0] == 200
    assert (await http_get(port, "/nope"))[0] == 404
    async with connect(ws_url(router)) as client:
        await client.ask("hello", qos="gold")
        from atp_proto.frames import BudgetWindow

        with pytest.raises(Exception, match="EBUDGET"):
            await client.ask("hello", window=BudgetWindow(max_tokens=1))
        status, live = await http_get(port, "/metrics")
        assert status == 200
        assert metric_value(live, "atp_sessions_active") == 1
    with pytest.raises(trio_websocket.ConnectionRejected):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{router.ws_port}/other"):
            pass  # pragma: no cover
    with trio.fail_after(5):
        while router.sessions:
            await trio.sleep(0.02)
    _, text = await http_get(port, "/metrics")
    assert "# TYPE atp_sessions_active gauge" in text
    assert metric_value(text, "atp_sessions_active") == 0
    assert metric_value(text, "atp_sessions_total") == 1
    assert metric_value(text, "atp_errors_total", code="EBUDGET") == 1
    assert metric_value(text, "atp_handshakes_refused_total", status="404") == 1
    assert metric_value(text, "atp_frames_total", direction="in", type="DATA") >= 2
    assert metric_value(text, "atp_frames_total", direction="in", type="CAPABILITIES") == 1
    assert metric_value(text, "atp_frames_total", direction="out", type="ERROR") == 1
    assert metric_value(text, "atp_streams_total", lane="gold", outcome="ok") == 1
    assert metric_value(text, "atp_streams_total", lane="silver", outcome="EBUDGET") == 1
    assert "# TYPE atp_stream_duration_seconds histogram" in text
    assert metric_value(text, "atp_stream_duration_seconds_count", lane="gold") == 1
    assert metric_value(text, "atp_stream_duration_seconds_bucket", lane="gold", le="+Inf") == 1
    assert metric_value(text, "atp_adapter_calls_total", adapter="echo", outcome="ok") == 1
    assert metric_value(text, "atp_concurrency_limit") is not None


async def test_max_sessions_refusal(start_router) -> None:
    """[ATP-LIMIT-003] ATP-LIMIT: one handshake beyond max_sessions gets 503 (with Retry-After); the
    first session is unaffected."""
    router = await start_router(max_sessions=1)
    async with connect(ws_url(router)) as client:
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with trio_websocket.open_websocket_url(ws_url(router)):
                pass  # pragma: no cover
        assert refused.value.status_code == 503
        assert b"too many sessions" in (refused.value.body or b"")
        assert (await client.ask("still fine")).content["ok"]


async def test_unknown_path_is_404(start_router) -> None:
    """[ATP-WS-003] ATP-WS: only the configured path upgrades; anything else is a 404 before upgrade."""
    router = await start_router()
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{router.ws_port}/wss"):
            pass  # pragma: no cover
    assert refused.value.status_code == 404
    assert b"/ws" in (refused.value.body or b"")
    assert not router.sessions


# ---------------------------------------------------------------------- timers


async def test_idle_timeout_closes_with_etimeout(start_router) -> None:
    """[ATP-TIME-004, ATP-ERR-002] ATP-TIME: a session with no open stream and no frame for idle_timeout_ms gets a
    connection-level ERROR ETIMEOUT and is closed (ATP-WS: 4000 + registry index)."""
    router = await start_router(limits=Limits(idle_timeout_ms=300))
    start = trio.current_time()
    # a binary client offers atp.v1; a silent client without it gets text (ATP-WS-010)
    async with trio_websocket.open_websocket_url(ws_url(router), subprotocols=["atp.v1"]) as ws:
        with trio.fail_after(5):
            msg = await ws.get_message()
            (frame,) = parse_frames(msg)
            assert frame.type == T_ERROR and frame.stream_id == 0
            assert frame.ext["error"]["code"] == "ETIMEOUT"
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert trio.current_time() - start >= 0.25
    assert closed.value.reason.code == 4004
    with trio.fail_after(2):
        while router.sessions:
            await trio.sleep(0.02)


async def test_idle_timeout_spares_sessions_with_open_streams(start_router) -> None:
    """[ATP-TIME-004] ATP-TIME: idle counts only while no stream is open: a stream longer than the idle
    timeout completes, and the session is closed after it."""
    router = await start_router(
        adapters={"slow": "builtin:persona?latency_ms=150&chunks=5"},
        limits=Limits(idle_timeout_ms=300),
    )
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(SYN))
        replies, code = await _closed_code(ws)
    assert replies[-2]["flags"] == ["FIN"]
    assert replies[-1]["type"] == "ERROR" and replies[-1]["error"]["code"] == "ETIMEOUT"
    assert code == 4004


async def test_heartbeat_is_answered(start_router) -> None:
    """[ATP-TIME-002] ATP-TIME / ATP-FRAME: a client HB (DATA, stream 0) is answered with HB|ACK echoing
    the payload; the session goes on."""
    router = await start_router()
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(build_frame(T_DATA, F_HB, 0, raw_payload=b"ping-42"))
        (reply,) = parse_frames(await ws.get_message())
        assert reply.type == T_DATA and reply.stream_id == 0
        assert reply.flags == F_HB | F_ACK
        assert reply.payload == b"ping-42"
        await ws.send_message(json.dumps(SYN))
        assert json.loads(await ws.get_message())["stream_id"] == "st1"


# ---------------------------------------------------------------------- atp serve


@pytest.mark.parametrize(
    ("setup", "args", "words"),
    [
        ("bad-toml", ["--config", "{cfg}"], ["not valid TOML"]),
        ("unknown-section", ["--config", "{cfg}"], ["unknown section", "bogus"]),
        ("wrong-type", ["--config", "{cfg}"], ["router.max_sessions", "int"]),
        ("tenants-string", ["--config", "{cfg}"], ["allowed_tenants", "list"]),
        ("", ["--ws", "localhost"], ["--ws", "HOST:PORT"]),
        ("", ["--ws", "127.0.0.1:99999"], ["--ws"]),
        ("", ["--adapter", "x=http://example.com"], ["adapter x", "unsupported URL"]),
        ("", ["--adapter", "x=builtin:nope"], ["adapter x", "nope"]),
        ("", ["--adapter", "x=builtin:persona?bogus=1"], ["adapter x", "bogus"]),
        ("", ["--adapter", "no-equals-sign"], ["NAME=URL"]),
        ("no-key", [], ["no key", "--no-auth"]),
        ("", ["--jwt-key-file", "/nonexistent/key.pem"], ["/nonexistent/key.pem"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_serve_refuses_bad_config(tmp_path: Path, setup: str, args: list[str], words) -> None:
    """``atp serve`` with a bad setting exits 2 with one line naming the problem (and
    never a traceback)."""
    cfg = tmp_path / "atp.toml"
    cfg.write_text(
        {
            "bad-toml": "[router\nws = 1\n",
            "unknown-section": '[router]\nws = "127.0.0.1:0"\n[bogus]\nx = 1\n',
            "wrong-type": '[router]\nmax_sessions = "many"\n',
            "tenants-string": '[auth]\nallowed_tenants = "acme"\n',
        }.get(setup, "")
    )
    env = {} if setup == "no-key" else {"ATP_JWT_KEY": "k" * 40}
    argv = [a.format(cfg=cfg) for a in args] + ["--metrics", "off"]
    if setup == "":
        argv += ["--ws", "127.0.0.1:0"] if "--ws" not in argv else []
    done = atp("serve", *argv, env=env, timeout=20)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("atp serve: error:")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.skipif(
    sys.platform != "linux", reason="binds 127.0.0.2 and 127.0.0.3 (Linux loopback)"
)
def test_serve_precedence_flags_env_file(tmp_path: Path) -> None:
    """Configuration layers: flags > environment > file > defaults (here: the WS address).
    Each layer names another loopback address, port 0 (the kernel picks the port: no race
    for a free one), and the router's "listening" line says which address it took."""
    a, b, c = "127.0.0.1", "127.0.0.2", "127.0.0.3"
    cfg = tmp_path / "atp.toml"
    cfg.write_text(f'[router]\nws = "{a}:0"\nmetrics = "off"\n[auth]\nenabled = false\n')
    with router_process("--config", str(cfg)) as r:
        assert r.ws_url.startswith(f"ws://{a}:"), r.ws_url
    with router_process("--config", str(cfg), env={"ATP_WS": f"{b}:0"}) as r:
        assert r.ws_url.startswith(f"ws://{b}:"), r.ws_url
    with router_process("--config", str(cfg), "--ws", f"{c}:0", env={"ATP_WS": f"{b}:0"}) as r:
        assert r.ws_url.startswith(f"ws://{c}:"), r.ws_url
        assert "auth=off" in r.log()


async def test_sigterm_drains_then_exits_zero() -> None:
    """[ATP-SESS-005, ATP-SESS-006] SIGTERM to ``atp serve`` with a stream in flight: the stream completes (the client
    is told the router is going away), then the process exits 0 within the grace."""
    adapter = "slow=builtin:persona?latency_ms=150&chunks=8"
    args = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--adapter", adapter)
    with router_process(*args, "--grace", "10") as r:
        items: list[Partial | Final] = []
        async with connect(r.ws_url) as client:
            async with client.stream("hello") as st:
                async for item in st:
                    items.append(item)
                    if len(items) == 1:
                        r.terminate()
            draining = client.draining
        start = trio.current_time()
        code = await trio.to_thread.run_sync(lambda: r.proc.wait(timeout=10))
        assert trio.current_time() - start < 10
        log = r.log()
    assert isinstance(items[-1], Final) and items[-1].content["ok"]
    assert len(items) == 9
    assert draining
    assert code == 0, log
    assert "signal received, draining" in log
    assert "Traceback" not in log


# ---------------------------------------------------------------------- atp send


async def _send(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: atp("send", *args, env=env))


async def test_send_prints_partials_and_final(start_router) -> None:
    """[ATP-BUDGET-006] ``atp send``: exit 0, PARTIAL lines then a FINAL line with telemetry."""
    router = await start_router(adapters={"persona": "builtin:persona?latency_ms=1&chunks=3"})
    done = await _send(ws_url(router), "--prompt", "hello there", "--qos", "gold")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    partials = [ln for ln in lines if ln.startswith("PARTIAL")]
    assert len(partials) == 3 and all("[persona]" in p for p in partials)
    final = next(i for i, ln in enumerate(lines) if ln.startswith("FINAL"))
    assert final > lines.index(partials[-1])
    assert "the answer is" in lines[final]
    assert "adapters=persona" in lines[final + 1]


async def test_send_json_lines(start_router) -> None:
    """[ATP-BUDGET-006] ``atp send --json``: one JSON object per line, partials then the final."""
    router = await start_router(adapters={"echo": "builtin:echo?chunks=2"})
    done = await _send(ws_url(router), "--prompt", "abcdef", "--json", "--text")
    assert done.returncode == 0, done.stderr
    objs = [json.loads(ln) for ln in done.stdout.splitlines()]
    assert [o["kind"] for o in objs] == ["partial", "partial", "final"]
    assert objs[-1]["content"]["answer"] == "abcdef"
    assert objs[-1]["telemetry"]["adapters"] == ["echo"]


async def test_send_budget_error_exits_1(start_router) -> None:
    """[ATP-BUDGET-002] ``atp send --max-tokens 1``: the router refuses with EBUDGET; exit 1 with an ERROR
    line (and a JSON error object with --json)."""
    router = await start_router()
    done = await _send(ws_url(router), "--prompt", "hello", "--max-tokens", "1")
    assert done.returncode == 1
    assert "atp send: error: EBUDGET" in done.stderr
    done = await _send(ws_url(router), "--prompt", "hello", "--max-tokens", "1", "--json")
    assert done.returncode == 1
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["kind"] == "error" and last["code"] == "EBUDGET"


async def test_send_refused_handshake_exits_1(start_router, jwt_env) -> None:
    """[ATP-WS-006] ``atp send`` without a token against an authenticating router: exit 1, the HTTP
    status in the ERROR line."""
    router = await start_router(auth=True)
    done = await _send(ws_url(router), "--prompt", "hello")
    assert done.returncode == 1
    assert "atp send: error: handshake refused: HTTP 401" in done.stderr
    from atp_proto.router import issue_token

    done = await _send(
        ws_url(router), "--prompt", "hello", env={"ATP_TOKEN": issue_token(jwt_env.encode())}
    )
    assert done.returncode == 0, done.stderr
