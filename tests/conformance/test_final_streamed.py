"""The cases of a FINAL that does not repeat a streamed answer (spec §15.5) against the
reference router and client, and against real ``atp serve`` processes / client testees
broken in one way each (tests/conformance/broken/final_variants.py): each must fail the
case citing the MUST it breaks. The reference router runs them in
test_router_role.py's full run too; this file runs only these cases (two adapters, so the
fan-out stream of router.final.streamed runs as well)."""

from __future__ import annotations

import sys

import pytest

from .conftest import BROKEN, ROOT, adapter_socket, failures, router, run_suite

_CASES = (
    "router.final.streamed",
    "router.text.final.streamed",
    "router.final.bad-value",
    "router.text.final.bad-value",
)


def _router_run(variant: str | None) -> tuple[int, dict, str]:
    runs = [a for c in _CASES for a in ("--run", c)]
    with (
        adapter_socket() as conf,
        adapter_socket() as conf2,
        router(
            variant=variant,
            adapters={
                "conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}",
                "conf2": f"grpc://127.0.0.1:{conf2.getsockname()[1]}",
            },
        ) as r,
    ):
        return run_suite(
            "--role", "router", "--target", r.url, "--level", "L2", *runs, adapter=(conf, conf2)
        )  # fmt: skip


def test_reference_router_passes() -> None:
    """[ATP-FINAL-001] [ATP-FINAL-002] [ATP-FINAL-003]"""
    code, report, err = _router_run(None)
    assert code == 0, (err[-1500:], failures(report))
    ran = {c["id"]: c["verdict"] for c in report["cases"] if c["verdict"] != "SKIPPED"}
    assert ran == dict.fromkeys(_CASES, "PASS")


@pytest.mark.parametrize(
    ("variant", "caught"),
    [
        # held-back PARTIALs with the answer left out; bad values taken (one process)
        (
            "final-partials-held-back+final-value-unchecked",
            {
                "router.final.streamed": "ATP-FINAL-002",
                "router.text.final.streamed": "ATP-FINAL-002",
                "router.final.bad-value": "ATP-FINAL-001",
                "router.text.final.bad-value": "ATP-FINAL-001",
            },
        ),
        (
            "final-always-streamed",
            {
                "router.final.streamed": "ATP-FINAL-003",
                "router.text.final.streamed": "ATP-FINAL-003",
            },
        ),
        (
            "final-key-means-streamed",
            {
                "router.final.streamed": "ATP-FINAL-003",
                "router.text.final.streamed": "ATP-FINAL-003",
            },
        ),
    ],
    ids=["held-back", "always-streamed", "key-means-streamed"],
)
def test_broken_router_is_caught(variant: str, caught: dict[str, str]) -> None:
    code, report, err = _router_run(variant)
    assert code == 1, err[-1500:]
    failed = {c["id"]: c for c in failures(report)}
    assert set(failed) == set(caught), failed
    for case, want in caught.items():
        assert failed[case]["violated"] == [want], failed[case]


_CLIENT = (
    f"{sys.executable} -m conformance.testees.python_client {{url}} --streams {{streams}} "
    "--prompt-file {prompt_file} --ttl {ttl}"
)


def test_client_cases() -> None:
    """[ATP-FINAL-004] the reference client passes both; a client that ignores
    streamed.chunks fails the short one, naming the MUST."""
    runs = ["--run", "client.final.streamed", "--run", "client.final.streamed-short"]
    code, report, err = run_suite("--role", "client", "--exec", _CLIENT, *runs, "--level", "L2")
    assert code == 0, (err[-1500:], failures(report))
    ran = {c["id"]: c["verdict"] for c in report["cases"] if c["verdict"] != "SKIPPED"}
    assert ran == dict.fromkeys(runs[1::2], "PASS")
    broken = (
        f"env PYTHONPATH={BROKEN}:{ROOT} {sys.executable} {BROKEN / 'client_variant.py'} "
        "client-streamed-count-unchecked {url} --streams {streams} --prompt-file "
        "{prompt_file} --ttl {ttl}"
    )
    code, report, _ = run_suite("--role", "client", "--exec", broken, *runs, "--level", "L2")
    assert code == 1
    (failed,) = failures(report)
    assert failed["id"] == "client.final.streamed-short", failed
    assert failed["violated"] == ["ATP-FINAL-004"], failed
