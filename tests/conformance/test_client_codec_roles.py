"""The client and codec roles against real processes: our Python client and our codec
testee pass 100%; broken variants of each are caught with the requirement they break
(issue 11 items 5 and 6); the Node.js codec testee passes when node is installed (item 7)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import BROKEN, ROOT, failures, run_suite

PY = sys.executable
CLIENT = (
    f"{PY} -m conformance.testees.python_client {{url}} --streams {{streams}} "
    "--prompt-file {prompt_file} --ttl {ttl} --ca {ca}"
)
BROKEN_ENV = f"env PYTHONPATH={BROKEN}:{ROOT}"


def test_python_client_passes_the_client_role() -> None:
    """At L3, with the untrusted-certificate case [ATP-WS-013] and the QUIC cases
    (test_client_role_quic.py has the broken QUIC clients)."""
    code, report, err = run_suite("--role", "client", "--exec", CLIENT, "--level", "L3")
    assert code == 0, (err[-1500:], failures(report))
    assert {c["verdict"] for c in report["cases"]} == {"PASS"}
    assert len(report["cases"]) >= 8
    assert sum(c["id"].startswith("client.quic.") for c in report["cases"]) >= 3


@pytest.mark.parametrize(
    ("variant", "case", "want_id"),
    [
        ("past-credit", "client.flow.credit-respected", "ATP-FLOW-001"),
        ("reuse-stream-id", "client.basic.three-streams", "ATP-STREAM-002"),
        ("no-verify", "client.tls.untrusted-cert", "ATP-WS-013"),
        ("budget-update-ignored", "client.stream.never-opened", "ATP-STREAM-016"),
        ("error-answered", "client.stream.never-opened", "ATP-ERR-011"),
    ],
)
def test_broken_client_is_caught(variant: str, case: str, want_id: str) -> None:
    cmd = (
        f"{BROKEN_ENV} {PY} {BROKEN / 'client_variant.py'} {variant} {{url}} --streams "
        "{streams} --prompt-file {prompt_file} --ttl {ttl}"
    )
    code, report, _ = run_suite("--role", "client", "--exec", cmd, "--run", case, "--level", "L2")
    assert code == 1
    (failed,) = failures(report)
    assert failed["id"] == case and want_id in failed["violated"], failed


def test_python_codec_passes_the_codec_role() -> None:
    code, report, err = run_suite(
        "--role", "codec", "--exec", f"{PY} -m conformance.testees.python_codec", "--seed", "7"
    )
    assert code == 0, (err[-1500:], failures(report))
    assert {c["verdict"] for c in report["cases"]} == {"PASS"}
    assert report["testee"]["hello"]["claims"] == ["L1"]


@pytest.mark.parametrize(
    ("variant", "want_id"),
    [
        ("accept-truncated", "ATP-WS-001"),
        ("accept-reserved-bit", "ATP-FRAME-004"),
        ("unpadded-base64", "ATP-JSON-011"),
    ],
)
def test_broken_codec_is_caught(variant: str, want_id: str) -> None:
    cmd = f"{BROKEN_ENV} {PY} {BROKEN / 'codec_variant.py'} {variant}"
    code, report, _ = run_suite("--role", "codec", "--exec", cmd)
    assert code == 1
    failed = failures(report)
    assert failed and all(
        want_id in c["violated"] or c["id"].startswith("codec.fuzz") for c in failed
    ), failed
    assert any(c["id"].startswith("codec.decode.") and want_id in c["violated"] for c in failed)


NODE = shutil.which("node")


@pytest.mark.skipif(
    NODE is None,
    reason="node is not installed: the Node.js codec testee (examples/node-codec) was not run",
)
def test_node_codec_passes_the_codec_role() -> None:
    """[ATP-FRAME-001] a second language: examples/node-codec/codec.js, node's stdlib only."""
    testee = Path(ROOT, "examples", "node-codec", "codec.js")
    code, report, err = run_suite("--role", "codec", "--exec", f"{NODE} {testee}")
    assert code == 0, (err[-1500:], [(c["id"], c["message"]) for c in failures(report)])
    assert report["testee"]["hello"]["name"] == "node-codec"
