"""Estimate reuse (ATP-BUDGET-018/019) at unit level: the input-size class, the cache's
key, expiry, bound and drops, and the preflight answering from it with the guard band of
each stream's own lane. The wire (the scripted adapter seeing the calls) is in
tests/conformance/test_router_estimate.py; the SDK and persona side in
tests/adapters/test_estimate_max_age.py."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from atp_proto.adapters import AdapterError, CostEstimate, Health, TaskRequest
from atp_proto.adapters.resilience import ResilientAdapter
from atp_proto.frames import ErrorCode, QoS
from atp_proto.router.metrics import RouterMetrics
from atp_proto.router.routing import preflight
from atp_proto.router.routing._model import Candidate
from atp_proto.router.routing.estimate_cache import (
    MAX_AGE_CAP_MS,
    EstimateCache,
    cache_key,
    size_class,
)

EST = CostEstimate(4, 100, 50, 10.0, variance=16.0, confidence=0.7, max_age_ms=1000)


def _task(prompt: str = "x" * 64, **kw: Any) -> TaskRequest:
    return TaskRequest(task_type=kw.pop("task_type", "qa"), prompt=prompt, **kw)


class Counting:
    """An adapter whose Estimate answers ``reply`` (or raises it) and counts the calls."""

    def __init__(self, reply: CostEstimate | AdapterError = EST, name: str = "a") -> None:
        self.name = name
        self.reply = reply
        self.calls = 0
        self.hang = False

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        self.calls += 1
        if self.hang:
            await trio.sleep_forever()
        if isinstance(self.reply, AdapterError):
            raise self.reply
        return self.reply

    def stream(self, request: TaskRequest) -> Any:  # pragma: no cover - not called
        raise NotImplementedError

    async def health(self) -> Health:
        return Health("READY")

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------ the key


def test_size_class_is_the_bit_length_of_the_input_bytes() -> None:
    """ATP-BUDGET-018: 0 for an empty input, k for 2^(k-1) <= bytes < 2^k; bytes are UTF-8
    of prompt + content_json."""
    assert size_class(_task("")) == 0
    assert size_class(_task("a")) == 1
    assert [size_class(_task("a" * n)) for n in (2, 3, 4, 63, 64, 127, 128)] == [
        2, 2, 3, 6, 7, 7, 8,
    ]  # fmt: skip
    assert size_class(_task("é" * 32)) == 7  # 64 bytes in UTF-8, 32 characters
    # content_json counts: {"k":"vvvv"} is 12 bytes, 52 + 12 = 64
    assert size_class(_task("a" * 52)) == 6
    assert size_class(_task("a" * 52, content={"k": "vvvv"})) == 7


def test_the_key_separates_task_type_and_max_tokens() -> None:
    base = cache_key(_task())
    assert cache_key(_task("y" * 100)) == base  # same class (64..127 bytes)
    assert cache_key(_task(task_type="chat")) != base
    assert cache_key(_task(max_tokens=10)) != base
    assert cache_key(_task(max_tokens=10)) != cache_key(_task(max_tokens=11))
    assert cache_key(_task(max_tokens=0)) != base  # 0 is not absent
    assert cache_key(_task("x" * 128)) != base
    # meta and request_id do not matter: adapters must not depend on them
    assert cache_key(_task(meta={"tenant": "t"}, request_id="r1")) == base


# ------------------------------------------------------------------ the cache


def test_reuse_within_max_age_only() -> None:
    cache, a, key = EstimateCache(), Counting(), cache_key(_task())
    cache.put("a", a, key, EST, now=10.0)
    assert cache.get("a", a, key, now=10.999) is EST
    assert cache.get("a", a, key, now=11.0) is None  # max_age_ms 1000 has passed
    assert len(cache) == 0  # the expired entry is gone
    assert cache.get("b", a, key, now=10.5) is None  # another adapter's


def test_max_age_zero_stores_nothing_and_forgets_the_key() -> None:
    cache, a, key = EstimateCache(), Counting(), cache_key(_task())
    cache.put("a", a, key, CostEstimate(1, 1, 1, 1.0), now=0.0)
    assert len(cache) == 0
    cache.put("a", a, key, EST, now=0.0)
    cache.put("a", a, key, CostEstimate(1, 1, 1, 1.0, max_age_ms=0), now=0.1)
    assert cache.get("a", a, key, now=0.2) is None  # the newer reply said: do not reuse


def test_age_is_capped() -> None:
    cache, a, key = EstimateCache(), Counting(), cache_key(_task())
    cache.put("a", a, key, CostEstimate(1, 1, 1, 1.0, max_age_ms=2**32 - 1), now=0.0)
    assert cache.get("a", a, key, now=MAX_AGE_CAP_MS / 1000 - 0.001) is not None
    assert cache.get("a", a, key, now=MAX_AGE_CAP_MS / 1000) is None


def test_bounded_per_adapter_oldest_first() -> None:
    """ATP-BUDGET-019: at most per_adapter entries; the oldest stored goes first."""
    cache, a = EstimateCache(per_adapter=4), Counting()
    keys = [("qa", n, 7) for n in range(6)]
    for i, k in enumerate(keys):
        cache.put("a", a, k, EST, now=float(i) / 100)
    cache.put("b", a, keys[0], EST, now=0.0)
    assert len(cache) == 5  # 4 of a, 1 of b
    assert cache.get("a", a, keys[0], now=0.1) is None
    assert cache.get("a", a, keys[1], now=0.1) is None
    assert all(cache.get("a", a, k, now=0.1) is EST for k in keys[2:])
    assert cache.get("b", a, keys[0], now=0.1) is EST


def test_drop_forgets_one_adapter() -> None:
    cache, a, key = EstimateCache(), Counting(), cache_key(_task())
    cache.put("a", a, key, EST, now=0.0)
    cache.put("b", a, key, EST, now=0.0)
    cache.drop("a")
    assert cache.get("a", a, key, now=0.1) is None
    assert cache.get("b", a, key, now=0.1) is EST
    assert cache.stats.dropped == 1


async def test_a_health_change_drops_the_adapters_entries() -> None:
    """ATP-BUDGET-019: the health status or the breaker differs from when it was stored."""
    inner = Counting()
    ra = ResilientAdapter(inner)  # type: ignore[arg-type]
    cache, key = EstimateCache(), cache_key(_task())
    cache.put("a", ra, key, EST, now=0.0)  # before the first health check
    ra.last_health = Health("READY")  # the first report says it takes work: no change
    assert cache.get("a", ra, key, now=0.1) is EST
    cache.put("a", ra, key, EST, now=0.0)
    ra.last_health = None
    cache.put("a", ra, ("qa", None, 2), EST, now=0.0)
    ra.last_health = Health("DOWN")  # the first report says it is down: a change
    assert cache.get("a", ra, ("qa", None, 2), now=0.1) is None
    ra.last_health = Health("READY")
    cache.put("a", ra, key, EST, now=0.0)
    cache.put("a", ra, ("qa", None, 3), EST, now=0.0)
    ra.last_health = Health("READY", p95_ms=5.0)  # a new report, the same status
    assert cache.get("a", ra, key, now=0.1) is EST
    ra.last_health = Health("BUSY")
    assert cache.get("a", ra, key, now=0.1) is None
    assert len(cache) == 0  # every entry of the adapter, not only the key looked up
    ra.last_health = Health("READY")
    cache.put("a", ra, key, EST, now=0.2)
    ra._open()  # the circuit breaker opens
    assert cache.get("a", ra, key, now=0.3) is None


# ------------------------------------------------------------------ the preflight


async def _estimate(
    cands: list[Candidate], task: TaskRequest, lane: QoS, cache: EstimateCache | None, **kw: Any
) -> list[AdapterError]:
    return await preflight.estimate(cands, task, lane, kw.get("timeout", 1.0), cache, kw.get("m"))


async def test_preflight_reuses_and_guard_bands_per_lane() -> None:
    """ATP-BUDGET-018 + 002: the second stream of the class makes no Estimate call, and the
    reused estimate is guard-banded with the second stream's lane (bronze, then gold)."""
    a, cache, metrics = Counting(), EstimateCache(), RouterMetrics()
    task = _task()
    bronze = [Candidate("a", a)]  # type: ignore[arg-type]
    await _estimate(bronze, task, QoS.BRONZE, cache, m=metrics)
    gold = [Candidate("a", a)]  # type: ignore[arg-type]
    await _estimate(gold, _task("z" * 70), QoS.GOLD, cache, m=metrics)
    assert a.calls == 1
    assert gold[0].estimate is EST  # as it came: nothing scaled
    assert bronze[0].guarded_tokens == 104 + 0.5 * 4
    assert gold[0].guarded_tokens == 104 + 2.0 * 4
    assert gold[0].guarded_usd == pytest.approx(50 * 112 / 104)
    assert metrics.estimates.get("a", "called") == 1
    assert metrics.estimates.get("a", "reused") == 1


async def test_preflight_calls_again_after_max_age(autojump_clock: trio.testing.MockClock) -> None:
    a, cache = Counting(), EstimateCache()
    for _ in range(2):
        await _estimate([Candidate("a", a)], _task(), QoS.SILVER, cache)  # type: ignore[arg-type]
    assert a.calls == 1
    await trio.sleep(1.0)  # EST.max_age_ms
    await _estimate([Candidate("a", a)], _task(), QoS.SILVER, cache)  # type: ignore[arg-type]
    assert a.calls == 2


async def test_preflight_without_max_age_or_cache_always_calls() -> None:
    a = Counting(CostEstimate(4, 100, 50, 10.0))
    for cache in (EstimateCache(), EstimateCache(), None):
        for _ in range(2):
            await _estimate([Candidate("a", a)], _task(), QoS.GOLD, cache)  # type: ignore[arg-type]
    assert a.calls == 6


async def test_preflight_mixes_reused_and_called_candidates() -> None:
    a, b, cache = (
        Counting(name="a"),
        Counting(CostEstimate(4, 8, 5, 1.0), name="b"),
        EstimateCache(),
    )
    cands = [Candidate("a", a), Candidate("b", b)]  # type: ignore[arg-type]
    await _estimate(cands, _task(), QoS.GOLD, cache)
    cands = [Candidate("a", a), Candidate("b", b)]  # type: ignore[arg-type]
    await _estimate(cands, _task(), QoS.GOLD, cache)
    assert (a.calls, b.calls) == (1, 2)
    assert all(c.estimate is not None for c in cands)


async def test_a_failed_or_silent_estimate_drops_the_adapters_entries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ATP-BUDGET-019: an Estimate that fails, or does not answer in time, for ANY key
    forgets the adapter's reusable estimates of every key."""
    a, cache = Counting(), EstimateCache()
    other = _task("q" * 300)  # another class
    await _estimate([Candidate("a", a)], _task(), QoS.GOLD, cache)  # type: ignore[arg-type]
    a.reply = AdapterError(ErrorCode.EAGENTDOWN, "down", adapter="a")
    failures = await _estimate([Candidate("a", a)], other, QoS.GOLD, cache)  # type: ignore[arg-type]
    assert [str(f.code) for f in failures] == ["EAGENTDOWN"]
    a.reply = EST
    await _estimate([Candidate("a", a)], _task(), QoS.GOLD, cache)  # type: ignore[arg-type]
    assert a.calls == 3  # the first key was forgotten
    a.hang = True
    c = Candidate("a", a)  # type: ignore[arg-type]
    await _estimate([c], other, QoS.GOLD, cache, timeout=0.5)
    assert c.estimate is None
    a.hang = False
    await _estimate([Candidate("a", a)], _task(), QoS.GOLD, cache)  # type: ignore[arg-type]
    assert a.calls == 5


async def test_a_health_change_that_flips_back_still_drops_the_entries() -> None:
    """ATP-BUDGET-019: a change between two preflights counts even when the adapter is
    back in the state the entry was stored in (READY, DOWN, READY; a breaker that opened,
    cooled down and closed): the estimate came before the change, so it is forgotten."""
    ra = ResilientAdapter(Counting(), cooldown=0.5)  # type: ignore[arg-type]
    cache, key = EstimateCache(), cache_key(_task())
    ra.last_health = Health("READY")
    cache.put("a", ra, key, EST, now=0.0)
    ra.last_health = Health("DOWN")  # a health check between two preflights ...
    ra.last_health = Health("READY")  # ... and the next one: up again
    assert cache.get("a", ra, key, now=0.1) is None
    cache.put("a", ra, key, EST, now=0.2)
    ra._open()  # the breaker opens ...
    ra._on_success(None, work=False)  # ... and a probe closes it again
    assert cache.get("a", ra, key, now=0.3) is None


async def test_an_estimate_asked_before_a_failure_is_not_kept() -> None:
    """ATP-BUDGET-019: a stream's Estimate is in flight when another stream's call to the
    same adapter fails (its estimates are dropped); the reply that comes after the drop
    was asked of the adapter before the failure, so it is used once, not kept."""

    class Slow(Counting):
        def __init__(self) -> None:
            super().__init__()
            self.go = trio.Event()

        async def estimate(self, request: TaskRequest) -> CostEstimate:
            await self.go.wait()
            return await super().estimate(request)

    a, cache = Slow(), EstimateCache()
    c = Candidate("a", a)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_estimate, [c], _task(), QoS.GOLD, cache)
        await trio.testing.wait_all_tasks_blocked()
        cache.drop("a")  # a Stream call to it failed meanwhile (fanout)
        a.go.set()
    assert c.estimate is EST  # this stream uses it ...
    assert not cache.holds("a")  # ... the next preflight asks again
