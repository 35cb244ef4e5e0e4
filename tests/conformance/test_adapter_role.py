"""The adapter role (conformance/roles/adapter.py) against real adapter processes over
gRPC: the reference adapters as the demo serves them and the SDK guide's example pass
every case; each deliberately broken adapter (tests/conformance/broken_adapters/) fails
the case of its bug, with the requirement ID of the rule it breaks, and the report holds
the exchanged messages that show it."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.testing.processes import serve_adapter, spawn
from conformance.model import CaseResult, Verdict
from conformance.roles import RunContext
from conformance.roles import adapter as role

from .conftest import refused_port

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = "tests.conformance.broken_adapters.variants"


async def run_role(url: str, **options: Any) -> dict[str, CaseResult]:
    ctx = RunContext(target=url, options=options)
    return {spec.id: await role.run(spec, ctx) for spec in role.cases({})}


def _not_passed(results: Mapping[str, CaseResult]) -> dict[str, str]:
    return {k: f"{r.verdict}: {r.message}" for k, r in results.items() if r.verdict != "PASS"}


def test_every_case_names_known_adapter_requirements() -> None:
    yaml = pytest.importorskip("yaml")
    reqs = {
        r["id"]: r
        for r in yaml.safe_load((ROOT / "spec" / "requirements.yaml").read_text())["requirements"]
    }
    specs = role.cases({})
    assert len({s.id for s in specs}) == len(specs) >= 18
    for spec in specs:
        assert spec.requirements and spec.description, spec.id
        for rid in spec.requirements:
            assert "adapter" in reqs[rid]["roles"], (spec.id, rid)
    # every MUST of the adapter role has a case
    musts = {
        i for i, r in reqs.items() if r["roles"] == ["adapter"] and r["keyword"].startswith("MUST")
    }
    assert musts <= {rid for s in specs for rid in s.requirements}


@pytest.mark.parametrize(
    ("target", "options"),
    [
        ("persona", {"latency_ms": "60"}),  # the demo's two reference adapters
        ("echo", {"latency_ms": "20"}),
        ("persona", {}),  # and their defaults
        ("echo", {}),
        (f"{VARIANTS}:Correct", {}),
    ],
)
async def test_reference_adapters_pass_every_case(target: str, options: dict[str, str]) -> None:
    async with serve_adapter(target, options=options, cwd=ROOT) as proc:
        results = await run_role(proc.url)
    assert _not_passed(results) == {}


async def test_the_sdk_guides_example_passes_every_case(tmp_path: Path) -> None:
    from tests.test_adapter_sdk_doc import example_module

    (tmp_path / "mymodel.py").write_text(example_module())
    async with serve_adapter("mymodel:MyModel", cwd=tmp_path) as proc:
        results = await run_role(proc.url)
    assert _not_passed(results) == {}


BROKEN = [
    ("TwoFinals", "adapter.stream.one-final", "ATP-ADAPT-018", "2 final chunks"),
    ("LowersUsage", "adapter.stream.cumulative-usage", "ATP-ADAPT-019", "tokens"),
    ("Confidence17", "adapter.stream.confidence-range", "ATP-ADAPT-020", "confidence 1.7"),
    ("IgnoresCancel", "adapter.cancel.after-first-response", "ATP-ADAPT-008", "in flight"),
    ("IgnoresDeadline", "adapter.deadline.timeout-on-sleeping-server", "ATP-ADAPT-008",
     "after the"),
]  # fmt: skip


async def atp_check(url: str, *args: str) -> tuple[int, str]:
    """``atp adapter check URL ARGS`` as a process: (exit status, stdout)."""
    argv = [sys.executable, "-m", "atp_proto", "adapter", "check", url, *args]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode() + done.stderr.decode()


@pytest.mark.parametrize(("cls", "case_id", "rid", "says"), BROKEN)
async def test_atp_adapter_check_fails_a_broken_adapter_on_the_case_of_its_bug(
    cls: str, case_id: str, rid: str, says: str
) -> None:
    async with serve_adapter(f"{VARIANTS}:{cls}", cwd=ROOT) as proc:
        code, out = await atp_check(proc.url, "--json")
    assert code == 1, out
    results = {r["case"]: r for r in json.loads(out)["results"]}
    r = results[case_id]
    assert r["verdict"] == "FAIL" and rid in r["requirements"] and says in r["message"], r
    assert r["violated"] == [rid], r  # the rule it broke, not just the case's list
    # no case errs, none is UNSUPPORTED (the SDK offers the probe): a sharp report
    assert {x["verdict"] for x in results.values()} <= {"PASS", "FAIL"}, results


async def test_atp_adapter_check_passes_a_good_adapter_and_prints_a_table() -> None:
    async with serve_adapter("persona", options={"latency_ms": "20"}) as proc:
        code, out = await atp_check(proc.url, "--stream")
    assert code == 0, out
    assert "stream    OK  4 chunk(s)" in out  # the replies it always printed
    assert re.search(r"PASS\s+adapter\.stream\.one-final\s+ATP-ADAPT-006 ATP-ADAPT-018", out)
    n = len(role.cases({}))
    assert f"conformance (adapter role): {n} cases: {n} PASS" in out


async def test_atp_adapter_check_exit_status_for_bad_usage_and_no_adapter() -> None:
    code, out = await atp_check("http://127.0.0.1:1")
    assert code == 2 and "grpc://HOST:PORT" in out and "Traceback" not in out
    with refused_port() as port:
        code, out = await atp_check(f"grpc://127.0.0.1:{port}")
    assert code == 3 and "cannot reach" in out and "Traceback" not in out


async def test_the_report_shows_the_second_final_chunk() -> None:
    async with serve_adapter(f"{VARIANTS}:TwoFinals", cwd=ROOT) as proc:
        ctx = RunContext(target=proc.url)
        r = await role.run(role.CASES["adapter.stream.one-final"][0], ctx)
    finals = [e for e in r.exchange if isinstance(e.decoded, dict) and e.decoded.get("final")]
    assert len(finals) == 2 and all(e.hex for e in finals)
    assert list(r.violated) == ["ATP-ADAPT-018"]
    assert any(e.direction == "sent" and e.decoded["method"] == "Stream" for e in r.exchange)


async def test_an_adapter_answering_an_empty_prompt_fails() -> None:
    argv = [sys.executable, "-m", "tests.conformance.broken_adapters.answers_empty_prompt"]
    async with spawn(argv, cwd=ROOT) as proc:
        url = f"grpc://127.0.0.1:{proc.port}"
        results = await run_role(url)
        code, out = await atp_check(url)
    r = results["adapter.invalid.empty-prompt"]
    assert r.verdict == Verdict.FAIL and list(r.violated) == ["ATP-ADAPT-021"]
    assert "answered OK" in r.message
    assert code == 1 and re.search(
        r"FAIL\s+adapter\.invalid\.empty-prompt\s+ATP-ADAPT-010 ATP-ADAPT-021", out
    )


async def test_an_unreachable_target_is_reported_as_such() -> None:
    with refused_port() as port, pytest.raises(role.TargetUnreachable):
        await role.run(role.cases({})[0], RunContext(target=f"grpc://127.0.0.1:{port}"))


def test_parse_target_refuses_what_is_not_grpc() -> None:
    assert role.parse_target("grpc://127.0.0.1:7070") == ("127.0.0.1", 7070)
    for bad in ("ws://h:1", "grpc://h", "grpc://h:1/x", "grpcs://h:1"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            role.parse_target(bad)


def test_a_task_nested_too_deep_is_a_decode_error_not_a_crash() -> None:
    """Found by adapter.untrusted.hostile-task: the SDK answered UNKNOWN (a RecursionError
    escaped json.loads); now it refuses the task with INVALID_ARGUMENT (ATP-ADAPT-021)."""
    from atp_proto.adapters.proto import codec

    deep = '{"a":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(codec.DecodeError, match="nested too deeply"):
        codec.decode_task_request(role.task_bytes("hi", content_json=deep))
