"""The adapter role against an adapter on grpcio (tests/adapters/grpcio_server.py: the
official C-core gRPC stack, written for interop tests, not for this contract). It offers
no ``atp-calls-in-flight`` probe, so the cases that need one say UNSUPPORTED — never PASS
— and it does not validate tasks, which the suite reports with the rule's ID."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.model import Verdict
from tests.adapters.conftest import grpcio_server
from tests.conformance.test_adapter_role import run_role


async def test_an_adapter_without_the_probe_gets_unsupported_not_pass(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    async with grpcio_server(tmp_path) as proc:
        results = await run_role(proc.url)
    for case_id in (
        "adapter.probe.in-flight",
        "adapter.deadline.stops-work",
        "adapter.cancel.after-begin",
        "adapter.cancel.after-first-response",
    ):
        assert results[case_id].verdict == Verdict.UNSUPPORTED, (case_id, results[case_id])
        assert "atp-calls-in-flight" in results[case_id].message
    # what the wire shows is still judged: it streams well-formed answers ...
    for case_id in (
        "adapter.stream.one-final",
        "adapter.health.reply",
        "adapter.grpc.unimplemented",
    ):
        assert results[case_id].verdict == Verdict.PASS, (case_id, results[case_id])
    # ... and answers an empty prompt, which the contract forbids
    empty = results["adapter.invalid.empty-prompt"]
    assert empty.verdict == Verdict.FAIL and list(empty.violated) == ["ATP-ADAPT-021"]
