"""ResilientAdapter around real adapter processes that are killed, stall and cut."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import serve_adapter

from atp_proto.adapters import AdapterError, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.resilience import BreakerState, ResilientAdapter
from atp_proto.frames import ErrorCode

REQ = TaskRequest("t", "The quick brown fox jumps over the lazy dog.")


async def _drain(
    adapter: ResilientAdapter, req: TaskRequest = REQ
) -> tuple[int, AdapterError | None]:
    n = 0
    try:
        async for _ in adapter.stream(req):
            n += 1
    except AdapterError as exc:
        return n, exc
    return n, None


async def test_killed_adapter_opens_breaker_then_probe_closes_it(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with serve_adapter(tmp_path, "echo") as proc:
            port = proc.port
            inner = GrpcAdapter.from_url("e", proc.url, backoff_initial=0.01, backoff_max=0.05)
            async with inner:
                r = ResilientAdapter(inner, failure_threshold=3, cooldown=0.5, max_retries=0)
                assert (await _drain(r))[1] is None
                proc.kill()
                await proc.process.wait()
                codes = []
                for _ in range(3):
                    with pytest.raises(AdapterError) as ei:
                        await r.estimate(REQ)
                    codes.append(ei.value.code)
                    await trio.sleep(0.06)  # past the client's connect backoff: a real attempt
                assert codes == [ErrorCode.EAGENTDOWN] * 3
                assert r.state["breaker"] == BreakerState.OPEN
                with pytest.raises(AdapterError) as ei:
                    await r.estimate(REQ)  # fails fast, inner not called
                assert ei.value.message == "circuit open" and ei.value.retry_after_ms
                n, err = await _drain(r)
                assert (
                    n == 0
                    and err is not None
                    and err.message == "circuit open"
                    and not err.streamed
                )
                assert r.stats.rejected_open == 2
                async with serve_adapter(tmp_path, "echo", port=port):
                    await trio.sleep(0.6)  # cooldown
                    assert r.state["breaker"] == "open"
                    h = await r.check_health()  # the health check is the probe
                    assert h is not None and h.status == "READY"
                    assert r.breaker is BreakerState.CLOSED
                    assert (await _drain(r))[1] is None


async def test_stall_times_out_instead_of_hanging_and_is_not_retried(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path,
            "persona",
            "--option",
            "latency_ms=0",
            "--option",
            "fail=stall",
            "--option",
            "fail_after=2",
        ) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as inner:
                r = ResilientAdapter(inner, idle_timeout=0.3, max_retries=3)
                n, err = await _drain(r)
                assert n == 2 and err is not None
                assert err.code == ErrorCode.ETIMEOUT and err.streamed is True
                assert r.stats.retries == 0 and r.stats.idle_timeouts == 1
                assert r.in_flight == 0
                # the adapter is still usable afterwards (the stalled call was reset)
                assert (await r.estimate(REQ)).in_tokens > 0


async def test_cut_mid_stream_is_streamed_and_not_retried(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path,
            "persona",
            "--option",
            "latency_ms=0",
            "--option",
            "fail=cut",
            "--option",
            "fail_after=2",
        ) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as inner:
                r = ResilientAdapter(inner, max_retries=3)
                n, err = await _drain(r)
                assert n == 2 and err is not None
                assert err.code == ErrorCode.EAGENTDOWN and err.streamed is True
                assert r.stats.retries == 0


async def test_failure_before_output_is_retried(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, "vendor_fixtures:Flaky", "--option", "fail=2") as proc:
            async with GrpcAdapter.from_url("f", proc.url) as inner:
                r = ResilientAdapter(inner, max_retries=3, retry_backoff=0.01)
                n, err = await _drain(r)
                assert err is None and n == 2
                assert r.stats.retries == 2 and r.breaker is BreakerState.CLOSED
        async with serve_adapter(tmp_path, "echo", "--option", "fail=error") as proc:
            async with GrpcAdapter.from_url("e", proc.url) as inner:
                r = ResilientAdapter(inner, max_retries=2, retry_backoff=0.01)
                n, err = await _drain(r)
                assert (
                    n == 0
                    and err is not None
                    and err.code == ErrorCode.EAGENTDOWN
                    and not err.streamed
                )
                assert r.stats.retries == 2


async def test_concurrency_limit_aimd(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path, "vendor_fixtures:Slow", "--option", "delay=0.1", "--option", "n=2"
        ) as proc:
            async with GrpcAdapter.from_url("s", proc.url) as inner:
                r = ResilientAdapter(
                    inner, initial_limit=2, max_limit=2, queue_timeout=0, max_retries=0
                )
                outcomes: list[str] = []

                async def one() -> None:
                    _, err = await _drain(r)
                    outcomes.append("ok" if err is None else str(err.code))

                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(one)
                assert sorted(outcomes) == ["EWINDOW_AGENT", "EWINDOW_AGENT", "ok", "ok"]
                assert r.state["in_flight"] == 0 and r.stats.rejected_limit == 2
                # waiting instead of failing fast: all get through
                r = ResilientAdapter(inner, initial_limit=1, max_limit=1, queue_timeout=10)
                outcomes.clear()
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(one)
                assert len(outcomes) == 3
                # additive increase on fast successes, multiplicative decrease on errors
                r3 = ResilientAdapter(inner, initial_limit=1, max_limit=4, latency_target=5.0)
                for _ in range(5):
                    await r3.estimate(REQ)
                assert r3.limit == 3  # 1 -> 2 -> 3, then one call at a time is "underused"
            proc.kill()
            await proc.process.wait()
            async with GrpcAdapter.from_url("s", proc.url) as dead:
                r4 = ResilientAdapter(dead, initial_limit=10, max_retries=0, failure_threshold=100)
                with pytest.raises(AdapterError):
                    await r4.estimate(REQ)
                assert r4.limit == 7
