"""Broken-router variants for conformance/scenarios/router-estimate.yaml (estimate reuse,
ATP-BUDGET-018/019), loaded into router_variant.VARIANTS: each patches the router's
estimate cache so that a REAL ``atp serve`` process reuses estimates wrongly in one way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def estimate_reuse_forever() -> None:  # every estimate kept 60 s, whatever max_age_ms says
    from atp_proto.router.routing import estimate_cache

    orig = estimate_cache.EstimateCache.put

    def put(
        self: Any, name: str, adapter: Any, key: Any, estimate: Any, now: float, *args: Any
    ) -> None:
        longer = dataclasses.replace(estimate, max_age_ms=60_000)
        orig(self, name, adapter, key, longer, now, *args)

    estimate_cache.EstimateCache.put = put  # type: ignore[method-assign]


def estimate_kept_after_failure() -> None:  # a failed call forgets nothing (ATP-BUDGET-019)
    from atp_proto.router.routing import estimate_cache

    estimate_cache.EstimateCache.drop = lambda self, name: None  # type: ignore[method-assign]


def estimate_reuse_unguarded() -> None:  # a reused estimate is not guard-banded: variance 0
    from atp_proto.router.routing import estimate_cache

    orig = estimate_cache.EstimateCache.get

    def get(self: Any, name: str, adapter: Any, key: Any, now: float) -> Any:
        est = orig(self, name, adapter, key, now)
        return None if est is None else dataclasses.replace(est, variance=0.0)

    estimate_cache.EstimateCache.get = get  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "estimate-reuse-forever": estimate_reuse_forever,
    "estimate-kept-after-failure": estimate_kept_after_failure,
    "estimate-reuse-unguarded": estimate_reuse_unguarded,
}
