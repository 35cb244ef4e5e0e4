"""End to end through REAL gRPC adapter processes (``atp adapter serve``) and an
independent grpcio server: the router streams, fails over, and never hangs
(ATP-ADAPTER, ATP-ERR EAGENTDOWN).

Routers here are built from a config (``adapters={name: "grpc://..."}``) exactly as
``atp serve`` builds them, so remote adapters get the resilience layer and their
connection tasks run in the router's nursery.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.adapters import ResilientAdapter
from atp_proto.adapters import connect as connect_adapter
from atp_proto.adapters._base import TaskRequest
from atp_proto.adapters.process import spawn_adapter
from atp_proto.client import Final, Partial, StreamError, connect
from atp_proto.router import Router, RouterConfig
from atp_proto.testing.processes import spawn

from ._helpers_e2e import ROOT, clean_env
from .conftest import ws_url

GRPCIO_SERVER = ROOT / "tests" / "adapters" / "grpcio_server.py"


async def _router(nursery: trio.Nursery, adapters: dict[str, str], **fields: Any) -> Router:
    cfg = RouterConfig(
        ws_port=0, metrics_port=None, auth=False, adapters=adapters, health_interval_s=60, **fields
    )
    router = Router(cfg.validate())
    await nursery.start(router.serve)
    return router


async def _run(client, prompt: str, on_partial=None, **kw) -> tuple[list[Partial], Final]:  # type: ignore[no-untyped-def]
    partials: list[Partial] = []
    async with client.stream(prompt, **kw) as st:
        async for item in st:
            if isinstance(item, Final):
                return partials, item
            partials.append(item)
            if on_partial is not None:
                on_partial(len(partials))
    raise AssertionError("no FINAL")


async def test_stream_through_grpc_adapter_processes(nursery: trio.Nursery) -> None:
    """[ATP-BUDGET-006] ATP-ADAPTER: echo and persona served by real processes answer through the router
    exactly as the in-process reference adapters do."""
    async with (
        spawn_adapter("persona", options={"latency_ms": "2"}) as persona,
        spawn_adapter("echo", options={"chunks": "3"}) as echo,
    ):
        router = await _router(nursery, {"persona": persona.url, "echo": echo.url})
        assert all(isinstance(a, ResilientAdapter) for a in router.adapters.values())
        async with connect(ws_url(router)) as client:
            partials, final = await _run(client, "hello grpc", meta={"adapters": ["persona"]})
            _, echoed = await _run(client, "abcdefghi", meta={"adapters": ["echo"]})
            _, both = await _run(client, "together", meta={"fanout": 2})
    local = connect_adapter("p", "builtin:persona")
    expected = "".join([c.content async for c in local.stream(TaskRequest("qa", "hello grpc"))])
    assert final.content["answer"] == expected
    assert final.telemetry["adapters"] == ["persona"]
    assert len(partials) == 4 and all(p.content["adapter"] == "persona" for p in partials)
    assert echoed.content["answer"] == "abcdefghi"
    assert sorted(both.telemetry["adapters"]) == ["echo", "persona"]


async def test_killed_adapter_fails_over_mid_stream(nursery: trio.Nursery) -> None:
    """[ATP-ADAPT-004] ATP-ADAPTER / failover: the adapter serving a stream is killed after its first
    chunk; the router says so in a PARTIAL (content.failover) and finishes the stream
    from the other adapter."""
    async with (
        spawn_adapter("echo", options={"latency_ms": "150", "chunks": "20"}) as victim,
        spawn_adapter("persona", options={"latency_ms": "2"}) as backup,
    ):
        # echo costs nothing, so the router tries it first
        router = await _router(nursery, {"victim": victim.url, "backup": backup.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):

                def kill(n: int) -> None:
                    if n == 1:
                        victim.kill()

                partials, final = await _run(
                    client, "a prompt of forty characters, more or less", kill
                )
            failovers = [p.content["failover"] for p in partials if "failover" in p.content]
            assert (await client.ask("next one")).telemetry["adapters"] == ["backup"]
    assert partials[0].content["adapter"] == "victim"
    assert len(failovers) == 1
    assert failovers[0]["from"] == "victim" and failovers[0]["to"] == "backup"
    assert final.content["adapter"] == "backup"
    assert final.telemetry["adapters"] == ["victim", "backup"]
    assert "the answer is" in final.content["answer"]


@pytest.mark.parametrize("mode", ["latency", "stall"])
async def test_killed_only_adapter_is_eagentdown(nursery: trio.Nursery, mode: str) -> None:
    """[ATP-ADAPT-004, ATP-ERR-004] ATP-ERR: with no other adapter to fail over to, killing the only one mid-stream
    (while it streams slowly, or while it is stalled) ends the stream with EAGENTDOWN
    and a retry hint — never a hang; the session survives."""
    options = (
        {"latency_ms": "150", "chunks": "20"}
        if mode == "latency"
        else {"fail": "stall", "fail_after": "1", "chunks": "5"}
    )
    async with spawn_adapter("persona", options=options) as only:
        router = await _router(nursery, {"only": only.url})
        async with connect(ws_url(router)) as client:
            got: list[Partial] = []
            with trio.fail_after(20), pytest.raises(StreamError) as err:
                async with client.stream("hello") as st:
                    async for item in st:
                        assert isinstance(item, Partial)
                        got.append(item)
                        if len(got) == 1:
                            if mode == "stall":
                                await trio.sleep(0.3)  # let it hang first
                            only.kill()
            assert client.closed is None
    assert err.value.code == "EAGENTDOWN"
    assert err.value.retry_after_ms is not None and err.value.retry_after_ms > 0
    assert len(got) == 1


async def test_error_before_output_is_retried_then_failed_over(nursery: trio.Nursery) -> None:
    """[ATP-ADAPT-004] ATP-ADAPTER: an adapter that fails before producing output is retried by the
    resilience layer (nothing was streamed), and then replaced by the next candidate;
    the client sees a failover PARTIAL and the other adapter's FINAL."""
    async with (
        spawn_adapter("echo", options={"fail": "error"}) as broken,
        spawn_adapter("persona", options={"latency_ms": "1"}) as good,
    ):
        router = await _router(nursery, {"broken": broken.url, "good": good.url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                partials, final = await _run(client, "hello")
        broken_adapter = router.adapters["broken"]
        assert isinstance(broken_adapter, ResilientAdapter)
        assert broken_adapter.stats.retries >= 1
    failovers = [p.content["failover"] for p in partials if "failover" in p.content]
    assert [(f["from"], f["to"]) for f in failovers] == [("broken", "good")]
    assert all(p.content.get("adapter") != "broken" for p in partials)
    assert final.content["adapter"] == "good"
    assert final.telemetry["adapters"] == ["broken", "good"]


async def test_dead_adapter_is_skipped_at_preflight(nursery: trio.Nursery) -> None:
    """[ATP-ADAPT-004] ATP-ADAPTER: an adapter whose process is gone before the stream starts does not
    answer the estimate; the stream goes to the live one without a failover."""
    async with (
        spawn_adapter("echo") as dead,
        spawn_adapter("persona", options={"latency_ms": "1"}) as alive,
    ):
        dead.kill()
        await dead.process.wait()
        router = await _router(
            nursery, {"dead": dead.url, "alive": alive.url}, estimate_timeout_s=3.0
        )
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                partials, final = await _run(client, "hello")
    assert final.telemetry["adapters"] == ["alive"]
    assert not any("failover" in p.content for p in partials)


@asynccontextmanager
async def _grpcio_server(log: Path) -> AsyncIterator[str]:
    """tests/adapters/grpcio_server.py (grpcio, C-core) as a process; yields its URL."""
    argv = [sys.executable, str(GRPCIO_SERVER)]
    env = clean_env({"PYTHONPATH": str(ROOT)})
    async with spawn(argv, log=log, env=env, cwd=ROOT) as proc:  # port 0, from its log line
        yield proc.url


async def test_grpcio_server_serves_the_router(nursery: trio.Nursery, tmp_path: Path) -> None:
    """[ATP-ADAPT-004, ATP-ERR-005] Interop: an AdapterService implemented on grpcio (not our code) serves the router;
    its two chunks arrive as PARTIALs and its usage is charged; a gRPC error status from
    it becomes a stream error with the mapped code (ATP-ADAPT-011: INVALID_ARGUMENT is
    EPROTO, without a retry hint), and the session survives."""
    async with _grpcio_server(tmp_path / "grpcio.log") as url:
        router = await _router(nursery, {"grpcio": url})
        async with connect(ws_url(router)) as client:
            with trio.fail_after(20):
                partials, final = await _run(client, "hello")
                with pytest.raises(StreamError) as err:
                    await client.ask("status:3:bad argument")  # INVALID_ARGUMENT
                again = await client.ask("hello again")
    assert [p.content["text"] for p in partials] == ["hel", "lo"]
    assert final.content["answer"] == "hello" and final.confidence == pytest.approx(0.6)
    assert final.telemetry["tokens"] == 5 and final.telemetry["usd_micros"] == 20
    # the grpcio server aborts Estimate too, so the adapter is dropped at preflight
    assert err.value.code == "EPROTO" and err.value.retry_after_ms is None
    assert "estimate" in err.value.message
    assert again.content["answer"] == "hello"
