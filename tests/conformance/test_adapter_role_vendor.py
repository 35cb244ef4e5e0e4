"""A vendor's adapter written from the documents alone (examples/vendor-adapter/: plain
grpcio, no atp_proto import, the .proto loaded at start) passes every case of the adapter
role, as conformance/ADAPTERS.md promises; and each rule the guide warns about, broken on
purpose (``--misbehave``), is caught by the case of that rule, naming its requirement ID
(ATP-ADAPT-007/019 cumulative usage, ATP-ADAPT-008 work stops on cancellation,
ATP-ADAPT-018 one final chunk, ATP-ADAPT-021 a request that does not decode)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from atp_proto.testing.processes import spawn
from conformance.model import CaseResult, Verdict
from conformance.roles import RunContext
from conformance.roles import adapter as role
from tests.conformance.test_adapter_role import _not_passed, run_role

ADAPTER = Path(__file__).resolve().parents[2] / "examples" / "vendor-adapter" / "adapter.py"


def _argv(*extra: str) -> list[str]:
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")  # grpc.protos_and_services compiles the .proto with it
    return [sys.executable, str(ADAPTER), "--listen", "127.0.0.1:0", *extra]


async def _run(url: str, case_ids: set[str]) -> dict[str, CaseResult]:
    ctx = RunContext(target=url, options={})
    specs = [s for s in role.cases({}) if s.id in case_ids]
    assert {s.id for s in specs} == case_ids
    return {s.id: await role.run(s, ctx) for s in specs}


async def test_the_vendor_adapter_passes_every_case() -> None:
    async with spawn(_argv()) as proc:
        results = await run_role(f"grpc://127.0.0.1:{proc.port}")
    assert _not_passed(results) == {}
    assert len(results) >= 19


@pytest.mark.parametrize(
    ("misbehave", "case_id", "verdict", "requirement"),
    [
        ("usage", "adapter.stream.cumulative-usage", Verdict.FAIL, "ATP-ADAPT-019"),
        ("cancel", "adapter.cancel.after-first-response", Verdict.FAIL, "ATP-ADAPT-008"),
        ("cancel", "adapter.deadline.stops-work", Verdict.FAIL, "ATP-ADAPT-008"),
        ("final", "adapter.stream.one-final", Verdict.FAIL, "ATP-ADAPT-018"),
        # a SHOULD (ATP-ADAPT-021's second sentence): grpcio's own deserializer says UNKNOWN
        ("invalid", "adapter.invalid.undecodable", Verdict.NON_STRICT, "ATP-ADAPT-021"),
    ],
)
async def test_each_broken_rule_is_named(
    misbehave: str, case_id: str, verdict: Verdict, requirement: str
) -> None:
    async with spawn(_argv("--misbehave", misbehave)) as proc:
        results = await _run(f"grpc://127.0.0.1:{proc.port}", {case_id})
    got = results[case_id]
    assert got.verdict == verdict, (case_id, got.verdict, got.message)
    assert requirement in got.violated, (case_id, got.violated, got.message)
