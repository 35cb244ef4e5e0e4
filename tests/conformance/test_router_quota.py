"""The tenant-quota cases (conformance/roles/_router_quota.py) against real routers: the
reference with ``[quota] tokens`` and ``concurrent`` passes them, and a router that checks
the quota only at admission (tests/conformance/broken/gaps_variants.py) is caught."""

from __future__ import annotations

from typing import Any

from .conftest import adapter_socket, router, run_suite

TOKENS = 1000
CONCURRENT = 4
_QUOTA = f"[quota]\ntokens = {TOKENS}\nconcurrent = {CONCURRENT}\n"


def _run(*cases: str, variant: str | None = None) -> tuple[int, dict[str, dict[str, Any]], str]:
    with (
        adapter_socket() as conf,
        router(
            variant=variant,
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
            config_toml=_QUOTA,
        ) as r,
    ):
        args = ["--role", "router", "--target", r.url, "--level", "L2", "--encoding", "binary"]
        args += ["--quota-tokens", str(TOKENS), "--quota-concurrent", str(CONCURRENT)]
        for case in cases:
            args += ["--run", case]
        code, report, err = run_suite(*args, adapter=conf)
    return code, {c["id"]: c for c in report.get("cases", [])}, err


def test_reference_router_passes_the_quota_cases() -> None:
    """[ATP-BUDGET-013, ATP-BUDGET-014, ATP-BUDGET-016] concurrent and shared in one run
    (spent after them finds the quota spent: UNSUPPORTED, saying so); spent alone on a
    fresh router."""
    code, cases, err = _run("router.quota.*")
    got = {k: (c["verdict"], c["message"]) for k, c in cases.items()}
    assert got["router.quota.concurrent"][0] == "PASS", (got, err[-1500:])
    assert got["router.quota.shared"][0] == "PASS", (got, err[-1500:])
    assert got["router.quota.spent"][0] == "UNSUPPORTED", got
    assert "already spent" in got["router.quota.spent"][1]
    assert code == 0, got
    code, cases, err = _run("router.quota.spent")
    spent = cases["router.quota.spent"]
    assert code == 0 and spent["verdict"] == "PASS", (spent, err[-1500:])
    assert "then EBUDGET" in spent["message"]


def test_without_the_flags_the_quota_cases_name_them() -> None:
    """Without --quota-tokens / --quota-concurrent each case is UNSUPPORTED naming its flag."""
    with (
        adapter_socket() as conf,
        router(adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"}) as r,
    ):
        code, report, _ = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L2",
            "--run",
            "router.quota.*",
            adapter=conf,
        )
    got = {c["id"]: (c["verdict"], c["message"]) for c in report["cases"]}
    assert code == 0, got
    assert got["router.quota.concurrent"][0] == "UNSUPPORTED", got
    assert "--quota-concurrent N" in got["router.quota.concurrent"][1]
    for case in ("router.quota.shared", "router.quota.spent"):
        assert got[case][0] == "UNSUPPORTED" and "--quota-tokens N" in got[case][1], got


def test_a_router_checking_the_quota_only_at_admission_is_caught() -> None:
    """[ATP-BUDGET-016, ATP-BUDGET-013] no tenant window, no check as usage arrives: four
    streams at once each spend 0.9 of the quota (016); one after another the second is
    not capped (013)."""
    code, cases, _ = _run("router.quota.shared", variant="quota-at-admission-only")
    shared = cases["router.quota.shared"]
    assert code == 1 and shared["verdict"] == "FAIL", shared
    assert shared["violated"] == ["ATP-BUDGET-016"], shared
    code, cases, _ = _run("router.quota.spent", variant="quota-at-admission-only")
    spent = cases["router.quota.spent"]
    assert code == 1 and spent["verdict"] == "FAIL", spent
    assert spent["violated"] == ["ATP-BUDGET-013"], spent


def test_a_concurrent_refusal_without_retry_after_is_caught() -> None:
    """[ATP-BUDGET-014] EWINDOW over the concurrent limit without retry_after_ms: caught."""
    code, cases, _ = _run("router.quota.concurrent", variant="quota-no-retry-after")
    case = cases["router.quota.concurrent"]
    assert code == 1 and case["verdict"] == "FAIL", case
    assert case["violated"] == ["ATP-BUDGET-014"], case
    assert "retry_after_ms" in case["expected"], case
