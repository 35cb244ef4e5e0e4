"""Adapter faults seen from a client, through REAL adapter processes over gRPC (issue 9):
gRPC statuses mapped to ATP codes with their retry hints, overload not amplified by
retries, saturated telemetry, /readyz following the adapters, escalation, lane downgrade.

The misbehaving adapters are `tests/adapters/vendor_fixtures.py` classes served by
`atp adapter serve` and the independent grpcio server `tests/adapters/grpcio_server.py`
(for statuses and bytes the SDK cannot produce).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import trio
import trio_websocket

from atp_proto.adapters import ResilientAdapter, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import StreamError, connect
from atp_proto.router import Router, RouterConfig, issue_token

from ._helpers_e2e import ROOT, atp, http_get
from .conftest import ws_url
from .test_e2e_grpc import _grpcio_server, _router, _run

FIXTURES = ROOT / "tests" / "adapters"


@pytest.fixture
def vendor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`atp adapter serve vendor_fixtures:CLASS` finds the fixtures module."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(FIXTURES), str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


async def _fail(client, prompt: str, **kw) -> StreamError:  # type: ignore[no-untyped-def]
    with pytest.raises(StreamError) as err:
        await client.ask(prompt, **kw)
    return err.value


# ---------------------------------------------------------------------- item 2


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        (4, "ETIMEOUT", False),  # DEADLINE_EXCEEDED
        (8, "EWINDOW_AGENT", True),  # RESOURCE_EXHAUSTED
        (3, "EPROTO", False),  # INVALID_ARGUMENT
        (16, "ESEC", False),  # UNAUTHENTICATED
        (7, "ESEC", False),  # PERMISSION_DENIED
        (14, "EAGENTDOWN", True),  # UNAVAILABLE
        (13, "EAGENTDOWN", True),  # INTERNAL: any other
    ],
)
async def test_grpc_status_reaches_the_client_mapped(
    nursery: trio.Nursery, tmp_path: Path, status: int, code: str, retry: bool
) -> None:
    """[ATP-ADAPT-011, ATP-ERR-009] With one adapter, a gRPC status from its Stream call
    (and from its Estimate) ends the stream with the mapped ATP code; a retry hint only
    for codes a retry can cure. The session survives and the next stream is answered."""
    async with _grpcio_server(tmp_path / "grpcio.log") as url:
        router = await _router(nursery, {"only": url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                in_stream = await _fail(client, f"streamstatus:{status}:upstream says no")
                assert (await client.ask("hello")).content["answer"] == "hello"
                in_estimate = await _fail(client, f"status:{status}:upstream says no")
                assert (await client.ask("hello")).content["answer"] == "hello"
    for err in (in_stream, in_estimate):
        assert err.code == code, err.message
        if retry:
            assert err.retry_after_ms is not None and err.retry_after_ms > 0
        else:
            assert err.retry_after_ms is None


async def test_retry_hints_reach_the_client(
    nursery: trio.Nursery, tmp_path: Path, vendor_path: None
) -> None:
    """[ATP-ADAPT-011, ATP-ADAPT-015] The adapter's retry hint is the client's
    retry_after_ms: a grpc-retry-pushback-ms trailer (grpcio server), and a
    google.rpc.RetryInfo (SDK adapter raising AdapterError(retry_after_ms=...))."""
    async with (
        _grpcio_server(tmp_path / "grpcio.log") as url,
        spawn_adapter("vendor_fixtures:Overloaded", options={"retry_ms": "4321"}) as sdk,
    ):
        router = await _router(nursery, {"grpcio": url, "sdk": sdk.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                pushback = await _fail(client, "pushback:2750", meta={"adapters": ["grpcio"]})
                info = await _fail(client, "hello", meta={"adapters": ["sdk"]})
    assert pushback.code == "EWINDOW_AGENT" and pushback.retry_after_ms == 2750
    assert info.code == "EWINDOW_AGENT" and info.retry_after_ms == 4321


async def test_failover_reports_the_last_failure(nursery: trio.Nursery, tmp_path: Path) -> None:
    """[ATP-ADAPT-011] When failover tries every adapter and all fail, the stream ends with
    the mapped code of the last failure: here the second adapter's INVALID_ARGUMENT."""
    async with (
        spawn_adapter("echo", options={"fail": "error"}) as broken,
        _grpcio_server(tmp_path / "grpcio.log") as url,
    ):
        # echo costs nothing, so the router tries it first; the grpcio server fails last
        router = await _router(nursery, {"broken": broken.url, "grpcio": url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                err = await _fail(client, "streamstatus:3:bad")
    assert err.code == "EPROTO" and err.retry_after_ms is None


async def test_expired_streams_always_get_etimeout(
    nursery: trio.Nursery, vendor_path: None
) -> None:
    """[ATP-TIME-001, ATP-ADAPT-012] Streams whose ttl passes while their adapter is silent
    all end with the router's ETIMEOUT ("ttl passed"): the adapter call's gRPC deadline is
    later than the ttl, so the adapter's DEADLINE_EXCEEDED never wins the race."""
    async with spawn_adapter("vendor_fixtures:Slow", options={"delay": "30", "n": "1"}) as slow:
        router = await _router(nursery, {"slow": slow.url})
        errors: list[StreamError] = []
        async with connect(ws_url(router)) as client:

            async def one() -> None:
                errors.append(await _fail(client, "hello", ttl=1))

            with trio.fail_after(20):
                async with trio.open_nursery() as n:
                    for _ in range(40):
                        n.start_soon(one)
    assert len(errors) == 40
    assert {(e.code, "ttl" in e.message) for e in errors} == {("ETIMEOUT", True)}, [
        (e.code, e.message) for e in errors if e.code != "ETIMEOUT" or "ttl" not in e.message
    ][:3]


async def test_adapter_deadline_is_later_than_the_ttl(
    nursery: trio.Nursery, vendor_path: None
) -> None:
    """[ATP-ADAPT-012, ATP-TIME-001] The deadline an adapter receives for a call of a stream
    with ttl 2 passes later than the ttl (ttl + 250 ms after the router read the SYN), so
    the router's own ttl timer, not the adapter's DEADLINE_EXCEEDED, decides an expired
    stream."""
    async with spawn_adapter("vendor_fixtures:Deadline") as dl:
        router = await _router(nursery, {"dl": dl.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                sent = time.time()
                final = await client.ask("hello", ttl=2)
                done = time.time()
    deadline_at = float(final.content["answer"])  # the adapter's wall clock (same host)
    # a clear margin (200 ms of the 250 ms grace), not a tie with the router's ttl timer
    # (before: the call's deadline was the ttl itself, counted from a little later)
    assert deadline_at > sent + 2.0 + 0.2, deadline_at - sent
    assert deadline_at <= done + 2.25, deadline_at - done


# ---------------------------------------------------------------------- item 9


async def _stream_calls(url: str) -> int:
    async with GrpcAdapter.from_url("probe", url) as probe:
        est = await probe.estimate(TaskRequest("qa", "stats"))
    return est.out_tokens


async def test_overloaded_adapter_is_not_piled_on(nursery: trio.Nursery, vendor_path: None) -> None:
    """[ATP-ADAPT-014] An adapter that always answers RESOURCE_EXHAUSTED (no retry hint)
    gets at most one call per stream plus the retry budget — not 3 calls per stream: the
    status counts toward the breaker and retries are bounded per adapter per second.
    Every stream ends with EWINDOW_AGENT and a retry hint."""
    async with spawn_adapter("vendor_fixtures:Overloaded", options={"retry_ms": "0"}) as ov:
        router = await _router(nursery, {"ov": ov.url})
        adapter = router.adapters["ov"]
        assert isinstance(adapter, ResilientAdapter)
        errors: list[StreamError] = []
        async with connect(ws_url(router)) as client:

            async def one() -> None:
                errors.append(await _fail(client, "hello", ttl=5))

            t0 = trio.current_time()
            with trio.fail_after(20):
                async with trio.open_nursery() as n:
                    for _ in range(20):
                        n.start_soon(one)
            elapsed = trio.current_time() - t0
            calls = await _stream_calls(ov.url)
    assert len(errors) == 20
    assert {e.code for e in errors} == {"EWINDOW_AGENT"}, {(e.code, e.message) for e in errors}
    assert all(e.retry_after_ms and e.retry_after_ms > 0 for e in errors)
    budget = adapter.retry_burst + adapter.retry_rate * elapsed
    assert adapter.stats.retries <= budget
    assert calls <= 20 + budget, calls  # one call per stream at most, plus the budget
    assert adapter.stats.breaker_opened >= 1 and adapter.stats.rejected_open > 0


async def test_retry_hint_pauses_the_adapter(nursery: trio.Nursery, vendor_path: None) -> None:
    """[ATP-ADAPT-014, ATP-ADAPT-015] After a RESOURCE_EXHAUSTED with a 5 s retry hint, no
    call reaches the adapter until the hint has passed: 20 streams cost it one call (the
    first; the hint is too long to wait for a retry), and every stream ends with
    EWINDOW_AGENT and the time left to wait."""
    async with spawn_adapter("vendor_fixtures:Overloaded", options={"retry_ms": "5000"}) as ov:
        router = await _router(nursery, {"ov": ov.url})
        errors: list[StreamError] = []
        async with connect(ws_url(router)) as client:

            async def one() -> None:
                errors.append(await _fail(client, "hello", ttl=5))

            with trio.fail_after(20):
                await one()
                async with trio.open_nursery() as n:
                    for _ in range(19):
                        n.start_soon(one)
            calls = await _stream_calls(ov.url)
    assert calls == 1
    assert {e.code for e in errors} == {"EWINDOW_AGENT"}
    assert errors[0].retry_after_ms == 5000
    assert all(0 < (e.retry_after_ms or 0) <= 5000 for e in errors)


async def test_readyz_follows_the_adapters(nursery: trio.Nursery) -> None:
    """/readyz is 503 when no adapter can serve (every adapter killed: health checks DOWN,
    breakers opening), while /healthz stays 200; it is 200 again once one is back."""
    async with (
        spawn_adapter("echo") as a,
        spawn_adapter("persona", options={"latency_ms": "1"}) as b,
    ):
        cfg = RouterConfig(
            ws_port=0,
            metrics_port=0,
            auth=False,
            adapters={"a": a.url, "b": b.url},
            health_interval_s=0.1,
        )
        router = Router(cfg.validate())
        await nursery.start(router.serve)
        assert router.metrics_port is not None
        port = router.metrics_port
        with trio.fail_after(20):
            assert (await http_get(port, "/readyz"))[0] == 200
            b_port = b.port
            a.kill()
            b.kill()
            while (got := await http_get(port, "/readyz"))[0] != 503:
                await trio.sleep(0.05)
            assert "no adapter" in got[1]
            assert (await http_get(port, "/healthz"))[0] == 200
            async with spawn_adapter("persona", listen=f"127.0.0.1:{b_port}"):
                while (await http_get(port, "/readyz"))[0] != 200:
                    await trio.sleep(0.05)


# ---------------------------------------------------------------------- item 4


async def test_telemetry_saturates_instead_of_a_bignum(
    nursery: trio.Nursery, vendor_path: None
) -> None:
    """[ATP-BUDGET-012, ATP-FRAME-006, ATP-BUDGET-006] Two adapters each reporting usd_micros
    2**64 - 1 (a valid uint64): FINAL's telemetry usd_micros is 2**64 - 1, an untagged CBOR
    integer, which a strict receiver (our client refuses tags) accepts."""
    async with (
        spawn_adapter("vendor_fixtures:Costly") as c1,
        spawn_adapter("vendor_fixtures:Costly") as c2,
    ):
        router = await _router(nursery, {"c1": c1.url, "c2": c2.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                _, final = await _run(client, "hello", meta={"fanout": 2})
    assert sorted(final.telemetry["adapters"]) == ["c1", "c2"]
    assert final.telemetry["usd_micros"] == 2**64 - 1
    assert "usd" not in final.telemetry  # one name for the unit (issue 9 item 17)


async def test_overlong_varint_in_a_chunk_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    """[ATP-ADAPT-016] A StreamChunk whose usd_micros is a 70-bit varint (10 bytes, the
    last above 1) is malformed: the stream ends with EAGENTDOWN, no FINAL with a number
    beyond uint64; a 10-byte varint of exactly 2**64 - 1 is still accepted."""
    over = "20" + "ff" * 9 + "3f"  # field 4 (usd_micros), varint of 70 bits
    top = "0a0178" + "20" + "ff" * 9 + "01" + "2801"  # "x", usd 2**64 - 1, final
    async with _grpcio_server(tmp_path / "grpcio.log") as url:
        router = await _router(nursery, {"grpcio": url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                err = await _fail(client, f"rawchunk:{over}")
                ok = await client.ask(f"rawchunk:{top}")
    assert err.code == "EAGENTDOWN"
    assert ok.content["answer"] == "x" and ok.telemetry["usd_micros"] == 2**64 - 1


# ---------------------------------------------------------------------- item 21


async def test_escalation_picks_a_more_confident_challenger(nursery: trio.Nursery) -> None:
    """[ATP-ADAPT-005] Below min_confidence the router escalates to the untried adapter
    whose estimate promises the most confidence — never to one that promises less than
    the champion has, however costly."""
    async with (
        spawn_adapter("persona", options={"confidence": "0.5", "usd_per_1k": "10"}) as cheap,
        spawn_adapter("persona", options={"confidence": "0.3", "usd_per_1k": "9000"}) as weak,
        spawn_adapter("persona", options={"confidence": "0.9", "usd_per_1k": "5000"}) as good,
    ):
        router = await _router(nursery, {"cheap": cheap.url, "weak": weak.url, "good": good.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                partials, final = await _run(client, "hello", meta={"min_confidence": 0.8})
                # only a weaker one left: no escalation at all
                p2, f2 = await _run(
                    client, "hello", meta={"min_confidence": 0.8, "adapters": ["cheap", "weak"]}
                )
    escalations = [p.content["escalate"] for p in partials if "escalate" in p.content]
    assert [(e["from"], e["to"]) for e in escalations] == [("cheap", "good")]
    assert final.content["adapter"] == "good"
    assert final.telemetry["adapters"] == ["cheap", "good"]
    assert not any("escalate" in p.content for p in p2)
    assert f2.content["adapter"] == "cheap" and f2.telemetry["adapters"] == ["cheap"]


async def test_lane_downgrade_is_said_on_the_first_frame(
    nursery: trio.Nursery, jwt_env: str
) -> None:
    """[ATP-SEC-015, ATP-SEC-004] A gold SYN with a token capped at max_qos silver runs in
    the silver lane, and the router's first DATA frame says so (ext `lane`, a top-level key
    in the JSON mapping); a stream not downgraded gets no `lane`."""
    async with spawn_adapter("persona", options={"latency_ms": "1"}) as p:
        cfg = RouterConfig(ws_port=0, metrics_port=None, auth=True, adapters={"p": p.url})
        router = Router(cfg.validate())
        await nursery.start(router.serve)
        token = issue_token(jwt_env.encode(), tenant="t", max_qos="silver")

        async def first_and_last(qos: str, sid: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
            syn = {
                "v": 1,
                "stream_id": sid,
                "msg_seq": 1,
                "flags": ["SYN"],
                "qos": qos,
                "payload": {"type": "agent.task", "content": {"prompt": "hello"}},
            }
            await ws.send_message(json.dumps(syn))
            frames = []
            while True:
                frame = json.loads(await ws.get_message())
                if frame.get("stream_id") != sid:
                    continue
                frames.append(frame)
                if "FIN" in frame.get("flags", []) or frame.get("type") == "ERROR":
                    return frames[0], frame

        with trio.fail_after(20):
            url = f"{ws_url(router)}?access_token={token}"
            async with trio_websocket.open_websocket_url(url) as ws:
                first, last = await first_and_last("gold", "a")
                same_first, _ = await first_and_last("silver", "b")
    assert "FIN" in last["flags"]
    assert first["lane"] == "silver"
    assert "lane" not in last or last is first
    assert "lane" not in same_first


async def test_demo_consensus_prefers_the_real_answer() -> None:
    """[ATP-BUDGET-006] `atp demo` (router + echo and persona adapter processes): its
    fan-out to both adapters ends with persona's answer, not echo's parroted prompt (echo
    claims confidence 0.1: it knows nothing about the answer); telemetry has usd_micros."""
    result = await trio.to_thread.run_sync(lambda: atp("demo", "--json", timeout=60))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    summary = json.loads(out if out.startswith("{") else out[out.rindex("\n{") + 1 :])
    final = summary["sdk_final"]
    assert sorted(final["telemetry"]["adapters"]) == ["echo", "persona"]
    assert final["content"]["adapter"] == "persona"
    assert final["content"]["answer"] != "hello"
    assert "usd_micros" in final["telemetry"]
