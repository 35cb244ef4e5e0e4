"""Tenant quotas in-process (atp_proto.router.quota): the [quota] section, the local
store's budget, rate and concurrency, and the ledger that charges the tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_proto.frames import ATPError, BudgetExceeded, BudgetWindow
from atp_proto.router.config import ConfigError, build_config
from atp_proto.router.quota import (
    LocalQuotaStore,
    QuotaLedger,
    TenantQuota,
    parse_quota_section,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_quota_section_defaults_and_tenants() -> None:
    q = parse_quota_section(
        {"period_s": 60, "tokens": 100, "tenants": {"acme": {"streams_per_s": 2, "burst": 4}}}
    )
    assert q.period_s == 60 and q.enabled
    assert q.for_tenant("other") == TenantQuota(tokens=100)
    acme = q.for_tenant("acme")
    assert acme.streams_per_s == 2.0 and acme.bucket == 4.0 and acme.tokens is None
    assert not parse_quota_section({}).enabled


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"tokens": -1}, "quota.tokens must be a non-negative int"),
        ({"tokens": True}, "quota.tokens"),
        ({"concurrent": 1.5}, "quota.concurrent"),
        ({"streams_per_s": 0}, "must be above 0"),
        ({"tokenz": 1}, "unknown setting 'tokenz'"),
        ({"period_s": 0}, "quota.period_s"),
        ({"tenants": {"a": 3}}, "[quota.tenants.NAME]"),
        ({"tenants": {"a": {"usd_micros": "x"}}}, "quota.tenants.a.usd_micros"),
    ],
)
def test_quota_section_errors_name_the_setting(doc: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_quota_section(doc)
    assert says in str(exc.value)


def test_config_file_quota_and_redis(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('[redis]\nurl = "redis://127.0.0.1:6390/2"\n[quota]\nconcurrent = 2\n')
    cfg = build_config(file=str(f), env={}, flags={})
    assert cfg.redis_url == "redis://127.0.0.1:6390/2" and cfg.quota.default.concurrent == 2
    f.write_text("[quota]\nconcurrent = -2\n")
    with pytest.raises(ConfigError, match=r"quota\.concurrent"):
        build_config(file=str(f), env={}, flags={})
    with pytest.raises(ConfigError, match="--redis expects"):
        build_config(file=None, env={}, flags={"redis_url": "http://x"})
    with pytest.raises(ConfigError, match="--workers"):
        build_config(file=None, env={}, flags={"workers": 0})
    assert build_config(file=None, env={"ATP_REDIS_URL": "redis://h:1"}, flags={}).redis_url


async def test_local_budget_per_period() -> None:
    """[ATP-BUDGET-013] The grant is what is left; spent: EBUDGET naming the quota; the
    next period starts from zero."""
    clock = Clock()
    store = LocalQuotaStore(clock)
    q = TenantQuota(tokens=100, usd_micros=1000)
    grant = await store.admit("t", q, 60)
    assert (grant.tokens_left, grant.usd_left) == (100, 1000)
    store.charge("t", 60, 10, 60)
    assert (await store.admit("t", q, 60)).tokens_left == 40
    store.charge("t", 40, 0, 60)
    with pytest.raises(ATPError) as exc:
        await store.admit("t", q, 60)
    assert str(exc.value.code) == "EBUDGET" and exc.value.retry_after_ms is None
    assert "tenant quota exhausted: 100 tokens used of the tenant's 100 per 60 s" in str(
        exc.value.message
    )
    assert (await store.admit("other", q, 60)).tokens_left == 100  # tenants apart
    clock.now += 60
    assert (await store.admit("t", q, 60)).tokens_left == 100


async def test_local_rate_and_concurrency() -> None:
    """[ATP-BUDGET-014] A bucket of 2 at 1/s, and 1 stream at once: refusals are EWINDOW
    with retry_after_ms and consume nothing."""
    clock = Clock()
    store = LocalQuotaStore(clock)
    rate = TenantQuota(streams_per_s=1.0, burst=2)
    await store.admit("r", rate, 60)
    await store.admit("r", rate, 60)
    with pytest.raises(ATPError) as exc:
        await store.admit("r", rate, 60)
    assert str(exc.value.code) == "EWINDOW" and exc.value.retry_after_ms == 1000
    clock.now += 0.5
    with pytest.raises(ATPError) as exc:
        await store.admit("r", rate, 60)
    assert exc.value.retry_after_ms == 500
    clock.now += 0.5
    await store.admit("r", rate, 60)  # refilled one
    conc = TenantQuota(concurrent=1)
    await store.admit("c", conc, 60)
    with pytest.raises(ATPError) as exc:
        await store.admit("c", conc, 60)
    assert str(exc.value.code) == "EWINDOW" and exc.value.retry_after_ms
    store.release("c", conc)
    await store.admit("c", conc, 60)


def test_quota_ledger_charges_the_tenant_and_caps_the_stream() -> None:
    """[ATP-BUDGET-013] The stream's ledger is capped at what is left of the quota and
    hands every charge to the tenant's store, also the one that passes the window."""
    charged: list[tuple[int, int]] = []
    ledger = QuotaLedger(
        BudgetWindow(max_tokens=500),
        BudgetWindow(max_tokens=30),
        lambda t, u: charged.append((t, u)),
        stream_id=3,
    )
    assert ledger.window.max_tokens == 30
    ledger.charge(20, 5)
    with pytest.raises(BudgetExceeded):
        ledger.charge(20, 5)
    assert charged == [(20, 5), (20, 5)]
