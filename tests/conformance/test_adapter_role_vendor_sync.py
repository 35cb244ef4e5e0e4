"""The vendor guide (conformance/ADAPTERS.md) followed with a server style we did not ship
before: grpcio's synchronous server, one thread per call (examples/vendor-adapter/
sync_adapter.py, no atp_proto import). It passes every case of the adapter role; and the
pitfall threads bring, a blocking model call that ignores the deadline, is caught by
``adapter.deadline.stops-work`` naming ATP-ADAPT-008."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from atp_proto.testing.processes import spawn
from conformance.model import Verdict
from conformance.roles import RunContext
from conformance.roles import adapter as role
from tests.conformance.test_adapter_role import _not_passed, run_role

ADAPTER = Path(__file__).resolve().parents[2] / "examples" / "vendor-adapter" / "sync_adapter.py"


def _argv(*extra: str) -> list[str]:
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")  # grpc.protos compiles the .proto with it
    return [sys.executable, str(ADAPTER), "--listen", "127.0.0.1:0", *extra]


async def test_the_sync_vendor_adapter_passes_every_case() -> None:
    async with spawn(_argv()) as proc:
        results = await run_role(f"grpc://127.0.0.1:{proc.port}")
    assert _not_passed(results) == {}
    assert len(results) >= 19


async def test_a_blocking_model_call_is_work_that_did_not_stop() -> None:
    case_id = "adapter.deadline.stops-work"
    async with spawn(_argv("--blocking", "3")) as proc:
        ctx = RunContext(target=f"grpc://127.0.0.1:{proc.port}", options={})
        (spec,) = [s for s in role.cases({}) if s.id == case_id]
        got = await role.run(spec, ctx)
    assert got.verdict == Verdict.FAIL, (got.verdict, got.message)
    assert "ATP-ADAPT-008" in got.violated and "in flight" in got.message, got.message
