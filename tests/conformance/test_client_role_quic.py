"""The client role over QUIC (spec §13.2): the suite plays a router on a QUIC socket and
launches the client under test on ``quic://127.0.0.1:PORT`` with ``--ca {ca}``. The Python
client (atp_proto.client, through conformance/testees/python_client.py) passes; each
broken QUIC client — the same testee with one fault, broken/quic_variant.py — is caught
with the requirement ID it breaks. (The Python client passing every QUIC case is in
test_client_codec_roles.py's run of the whole client role at L3 [ATP-QUIC-001,
ATP-QUIC-002, ATP-QUIC-004, ATP-QUIC-005, ATP-QUIC-011, ATP-QUIC-012, ATP-QUIC-015,
ATP-QUIC-021, ATP-QUIC-022].) A client that ignores the router's stateless reset, one that
sees it but answers with a CONNECTION_CLOSE, and one that ends on the decoy (a reset's
shape without the token) all fail ATP-QUIC-022; one that takes the router's FIN,
RESET_STREAM or STOP_SENDING on the control stream for nothing fails ATP-QUIC-025."""

from __future__ import annotations

import sys

import pytest

from .conftest import BROKEN, ROOT, failures, run_suite

PY = sys.executable
ARGS = "{url} --streams {streams} --prompt-file {prompt_file} --ttl {ttl} --ca {ca}"


def test_quic_cases_need_the_ca_placeholder() -> None:
    cmd = f"{PY} -m conformance.testees.python_client {{url}} --streams {{streams}}"
    code, report, _ = run_suite(
        "--role", "client", "--exec", cmd, "--level", "L3", "--run", "client.quic.basic.*"
    )
    assert code == 0
    (case,) = [c for c in report["cases"] if c["verdict"] != "SKIPPED"]
    assert case["verdict"] == "UNSUPPORTED" and "{ca}" in case["message"]


@pytest.mark.parametrize(
    ("variant", "case", "want_id"),
    [
        ("quic-client-fin-early", "client.quic.basic.three-streams", "ATP-QUIC-012"),
        ("quic-client-close-eproto", "client.quic.basic.three-streams", "ATP-QUIC-015"),
        ("quic-client-ignore-reset", "client.quic.stateless-reset", "ATP-QUIC-022"),
        ("quic-client-close-on-reset", "client.quic.stateless-reset", "ATP-QUIC-022"),
        ("quic-client-any-reset", "client.quic.stateless-reset", "ATP-QUIC-022"),
        ("quic-client-control-end-ignored", "client.quic.binding.control-fin", "ATP-QUIC-025"),
        (
            "quic-client-control-reset-ignored",
            "client.quic.binding.control-reset",
            "ATP-QUIC-025",
        ),
        ("quic-client-control-reset-ignored", "client.quic.binding.control-stop", "ATP-QUIC-025"),
    ],
)
def test_broken_quic_client_is_caught(variant: str, case: str, want_id: str) -> None:
    cmd = f"env PYTHONPATH={BROKEN}:{ROOT} {PY} {BROKEN / 'quic_variant.py'} {variant} {ARGS}"
    code, report, _ = run_suite("--role", "client", "--exec", cmd, "--run", case, "--level", "L3")
    assert code == 1
    (failed,) = failures(report)
    assert failed["id"] == case and want_id in failed["violated"], failed
