"""The vendor SDK and the reference adapters, served by real `atp adapter serve` processes
and called through our trio gRPC client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import ROOT, serve_adapter

from atp_proto.adapters import AdapterError, TaskRequest, builtin_adapter
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.frames import ErrorCode

REQ = TaskRequest(
    task_type="summarize", prompt="The quick brown fox jumps over the lazy dog.", request_id="r1"
)


async def _collect(adapter, req=REQ):
    out = []
    err = None
    try:
        async for c in adapter.stream(req):
            out.append(c)  # noqa: PERF401 - keep the chunks that came before an error
    except AdapterError as exc:
        err = (exc.code, exc.streamed)
    return out, err


@pytest.mark.parametrize(
    "url",
    [
        "builtin:echo?chunks=3",
        "builtin:persona?latency_ms=1&usd_per_1k=1500",
        "builtin:persona?latency_ms=0&fail=cut&fail_after=2",
        "builtin:echo?fail=error",
    ],
)
async def test_reference_adapters_behave_like_builtin(tmp_path: Path, url: str) -> None:
    kind, _, query = url.removeprefix("builtin:").partition("?")
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, f"{kind}?{query}") as proc:
            async with GrpcAdapter.from_url("ref", proc.url) as remote:
                local = builtin_adapter("ref", url)
                assert await remote.estimate(REQ) == await local.estimate(REQ)
                assert await _collect(remote) == await _collect(local)
                h = await remote.health()
                assert h.status == "READY"


async def test_validation_and_health(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve_adapter(tmp_path, "echo") as proc,
            GrpcAdapter.from_url("e", proc.url) as a,
        ):
            with pytest.raises(AdapterError) as ei:
                await a.estimate(TaskRequest("t", ""))
            assert ei.value.code == ErrorCode.EPROTO and "prompt" in ei.value.message
            with pytest.raises(AdapterError) as ei:
                await a.estimate(TaskRequest("t", "x", max_tokens=-1))
            assert ei.value.code == ErrorCode.EPROTO and "max_tokens" in ei.value.message
            with pytest.raises(AdapterError) as ei:
                async for _ in a.stream(TaskRequest("t", "")):
                    pass
            assert ei.value.code == ErrorCode.EPROTO and not ei.value.streamed
            for _ in range(3):
                await a.estimate(REQ)
            h = await a.health()
            assert h.status == "READY" and h.error_rate == 0.0 and h.p95_ms > 0


async def test_vendor_exceptions_become_internal_with_safe_message(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            serve_adapter(tmp_path, "vendor_fixtures:Boom") as proc,
            GrpcAdapter.from_url("b", proc.url) as a,
        ):
            with pytest.raises(AdapterError) as ei:
                await a.estimate(REQ)
            assert ei.value.code == ErrorCode.EAGENTDOWN
            assert "grpc status 13" in ei.value.message and "secret" not in ei.value.message
            chunks, err = await _collect(a)
            assert len(chunks) == 1 and err == (ErrorCode.EAGENTDOWN, True)
            assert (await a.health()).error_rate == 1.0
        assert "secret-internal-detail" in proc.log_text()  # logged server-side


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("EAGENTDOWN", ErrorCode.EAGENTDOWN),
        ("ETIMEOUT", ErrorCode.ETIMEOUT),
        ("EWINDOW_AGENT", ErrorCode.EWINDOW_AGENT),
        ("EPROTO", ErrorCode.EPROTO),
        ("ESEC", ErrorCode.ESEC),
        ("ECONSENSUS", ErrorCode.EAGENTDOWN),
    ],
)
async def test_vendor_adapter_errors_round_trip(
    tmp_path: Path, code: str, expected: ErrorCode
) -> None:
    with trio.fail_after(30):
        async with (
            serve_adapter(tmp_path, "vendor_fixtures:Raises") as proc,
            GrpcAdapter.from_url("r", proc.url) as a,
        ):
            with pytest.raises(AdapterError) as ei:
                await a.estimate(TaskRequest("t", code))
            assert ei.value.code == expected
            if code != "ECONSENSUS":
                assert f"vendor says {code}" in ei.value.message


async def test_graceful_shutdown_finishes_in_flight(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(
            tmp_path, "vendor_fixtures:Slow", "--option", "delay=0.1", "--option", "n=8"
        ) as proc:
            async with GrpcAdapter.from_url("s", proc.url) as a:
                got = []
                async for c in a.stream(REQ):
                    got.append(c)
                    if len(got) == 1:
                        proc.terminate()  # SIGTERM mid-stream
                        # The signal is handled asynchronously in the adapter process: wait
                        # until it says it is draining, then a new call must be refused.
                        while "draining" not in proc.log_text():
                            await trio.sleep(0.01)
                        with pytest.raises(AdapterError) as ei:
                            await a.estimate(REQ)  # new calls refused while draining
                        assert (
                            ei.value.code == ErrorCode.EAGENTDOWN and "draining" in ei.value.message
                        )
                assert len(got) == 8 and got[-1].final
            assert await proc.process.wait() == 0
        assert "stopped" in proc.log_text()


async def test_cli_list_check_and_usage(tmp_path: Path) -> None:
    def atp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # not `-m atp_proto.cli`: run as __main__, cli.py's UsageError is another class
            [
                sys.executable,
                "-c",
                "import sys; from atp_proto.cli import main; sys.exit(main())",
                "adapter",
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )

    with trio.fail_after(60):
        r = await trio.to_thread.run_sync(atp, "list")
        assert r.returncode == 0 and {"echo", "persona", "openai"} <= {
            ln.split()[0] for ln in r.stdout.splitlines()
        }
        async with serve_adapter(tmp_path, "vendor_fixtures:Minimal") as proc:
            r = await trio.to_thread.run_sync(atp, "check", proc.url, "--stream")
            assert r.returncode == 0, r.stdout + r.stderr
            assert (
                "health    OK  status=READY" in r.stdout and "stream    OK  2 chunk(s)" in r.stdout
            )
        r = await trio.to_thread.run_sync(atp, "check", proc.url)  # now stopped
        # exit 3: the target is unreachable (issue 11: check fronts the conformance suite)
        assert r.returncode == 3 and "FAIL" in r.stdout
        r = await trio.to_thread.run_sync(atp, "serve", "nosuchmodule:X")
        assert r.returncode == 2 and "cannot import" in r.stderr
        r = await trio.to_thread.run_sync(atp, "serve", "echo", "--option", "bogus=1")
        assert r.returncode == 2 and "bogus" in r.stderr
        r = await trio.to_thread.run_sync(atp, "check", "http://x")
        assert r.returncode == 2
