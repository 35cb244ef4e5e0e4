"""The estimate-reuse cases of conformance/scenarios/router-estimate.yaml (ATP-BUDGET-018,
ATP-BUDGET-019) against real ``atp serve`` processes and the suite's scripted gRPC
adapter: the reference passes them; broken variants (tests/conformance/broken/
estimate_variants.py) that keep estimates past max_age_ms, keep them after a failed
Stream call, or skip the guard band on a reused one are caught with the requirement ID
they break. (The reference also runs them in test_router_role.py's full run.)"""

from __future__ import annotations

import pytest

from .conftest import adapter_socket, failures, router, run_suite

CASES = {
    "router.adapter.estimate-reuse-expiry",
    "router.adapter.estimate-no-max-age",
    "router.adapter.estimate-reuse-guard-band",
    "router.adapter.estimate-reuse-failure",
}


def _run(variant: str | None) -> dict:
    with (
        adapter_socket() as conf,
        router(
            variant=variant, adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"}
        ) as r,
    ):
        code, report, err = run_suite(
            "--role", "router", "--target", r.url, "--level", "L2",
            "--run", "router.adapter.estimate-*", adapter=conf,
        )  # fmt: skip
    assert report, err[-2000:]
    assert {c["id"] for c in report["cases"] if c["verdict"] != "SKIPPED"} == CASES, report
    return {"code": code, "report": report, "err": err}


def test_reference_router_passes_the_estimate_reuse_cases() -> None:
    """[ATP-BUDGET-018, ATP-BUDGET-019, ATP-BUDGET-002] the reference router reuses what the
    scripted adapter allows and no more."""
    got = _run(None)
    assert got["code"] == 0, [(c["id"], c["message"]) for c in failures(got["report"])]


@pytest.mark.parametrize(
    ("variant", "want"),
    [
        (
            "estimate-reuse-forever",
            {
                "router.adapter.estimate-reuse-expiry": "ATP-BUDGET-018",
                "router.adapter.estimate-no-max-age": "ATP-BUDGET-018",
            },
        ),
        (
            "estimate-kept-after-failure+estimate-reuse-unguarded",
            {
                "router.adapter.estimate-reuse-failure": "ATP-BUDGET-019",
                "router.adapter.estimate-reuse-guard-band": "ATP-BUDGET-018",
            },
        ),
    ],
)
def test_broken_estimate_reuse_is_caught(variant: str, want: dict[str, str]) -> None:
    """A router that reuses estimates wrongly fails exactly the cases that say so, each
    naming the requirement it breaks."""
    got = _run(variant)
    failed = {c["id"]: c["violated"] for c in failures(got["report"])}
    assert got["code"] == 1, got["err"][-1500:]
    assert set(failed) == set(want), failed
    for case, rid in want.items():
        assert rid in failed[case], (case, failed[case])
