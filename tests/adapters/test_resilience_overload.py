"""The resilience layer's rules for an overloaded adapter, sans sockets (ATP-ADAPT-014):
a fake in-process adapter under :class:`ResilientAdapter`, virtual time (autojump clock).
The same rules through a real adapter process: tests/router/test_e2e_adapter_faults.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from atp_proto.adapters import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from atp_proto.adapters.resilience import BreakerState, ResilientAdapter
from atp_proto.frames import ErrorCode
from atp_proto.router.routing import adapter_failure

REQ = TaskRequest("qa", "hello", deadline_ms=60_000)


class _Exhausted:
    """Every Stream call fails at once with RESOURCE_EXHAUSTED (EWINDOW_AGENT)."""

    name = "x"

    def __init__(self, retry_after_ms: int | None) -> None:
        self.retry_after_ms = retry_after_ms
        self.calls: list[float] = []

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        return CostEstimate(1, 1, 1, 1.0)

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        self.calls.append(trio.current_time())
        raise AdapterError(
            ErrorCode.EWINDOW_AGENT, "busy", adapter=self.name, retry_after_ms=self.retry_after_ms
        )
        yield  # pragma: no cover

    async def health(self) -> Health:
        return Health("READY")

    async def aclose(self) -> None:
        return None


async def _fail(r: ResilientAdapter) -> AdapterError:
    with pytest.raises(AdapterError) as ei:
        async for _ in r.stream(REQ):
            pass
    return ei.value


async def test_retry_budget_bounds_retries_per_second(autojump_clock: trio.abc.Clock) -> None:
    """Without a hint, retries are bounded by the token bucket however many calls come:
    at most `retry_burst` at once, then `retry_rate` per second."""
    inner = _Exhausted(None)
    r = ResilientAdapter(inner, failure_threshold=10**6, retry_rate=2.0, retry_burst=4.0)
    start = trio.current_time()
    for _ in range(50):
        err = await _fail(r)
        assert err.code == ErrorCode.EWINDOW_AGENT
    elapsed = trio.current_time() - start
    assert r.stats.retries <= 4 + 2.0 * elapsed + 1
    assert len(inner.calls) == 50 + r.stats.retries
    assert r.stats.retries_throttled > 0


async def test_resource_exhausted_opens_the_breaker(autojump_clock: trio.abc.Clock) -> None:
    r = ResilientAdapter(_Exhausted(None), failure_threshold=3, max_retries=0)
    for _ in range(3):
        await _fail(r)
    assert r.breaker is BreakerState.OPEN
    err = await _fail(r)
    assert err.code == ErrorCode.EWINDOW_AGENT and err.message == "circuit open"
    assert err.retry_after_ms and err.retry_after_ms > 0


async def test_retry_hint_pauses_every_call(autojump_clock: trio.abc.Clock) -> None:
    """After a RESOURCE_EXHAUSTED with a 500 ms hint, no call reaches the adapter for
    500 ms: callers fail at once with EWINDOW_AGENT and the time left."""
    inner = _Exhausted(500)
    r = ResilientAdapter(inner, failure_threshold=10**6, max_retries=0)
    t0 = trio.current_time()
    await _fail(r)
    await trio.sleep(0.2)
    err = await _fail(r)
    assert err.retry_after_ms is not None and 250 <= err.retry_after_ms <= 300
    assert len(inner.calls) == 1 and r.stats.rejected_pushback == 1
    await trio.sleep(0.31)
    await _fail(r)
    assert len(inner.calls) == 2 and inner.calls[1] - t0 >= 0.5


@pytest.mark.parametrize(
    ("code", "hint", "want", "want_retry"),
    [
        (ErrorCode.EWINDOW_AGENT, 1234, ErrorCode.EWINDOW_AGENT, 1234),
        (ErrorCode.EWINDOW_AGENT, None, ErrorCode.EWINDOW_AGENT, 1000),
        (ErrorCode.EAGENTDOWN, 50, ErrorCode.EAGENTDOWN, 50),
        (ErrorCode.ETIMEOUT, 50, ErrorCode.ETIMEOUT, None),
        (ErrorCode.EPROTO, 50, ErrorCode.EPROTO, None),
        (ErrorCode.ESEC, None, ErrorCode.ESEC, None),
        ("EWHATEVER", 7, ErrorCode.EAGENTDOWN, 7),
        (ErrorCode.EINTERNAL, None, ErrorCode.EAGENTDOWN, 1000),
    ],
)
def test_stream_error_of_the_last_failure(
    code: str, hint: int | None, want: ErrorCode, want_retry: int | None
) -> None:
    """[ATP-ADAPT-011, ATP-ERR-004, ATP-ERR-009] The client's code and retry hint."""
    failed = adapter_failure(AdapterError(code, "m", retry_after_ms=hint), "msg")
    assert (failed.code, failed.retry_after_ms) == (want, want_retry)
    assert adapter_failure(None, "none").code == ErrorCode.EAGENTDOWN


async def test_estimates_and_ready_health_do_not_forgive_failed_streams(
    autojump_clock: trio.abc.Clock,
) -> None:
    """[ATP-ADAPT-014, ATP-ADAPT-013] An adapter that answers every Estimate and every
    Health (READY) but refuses every Stream with RESOURCE_EXHAUSTED: each stream's
    Estimate comes between two Stream failures, and a health check between them too, yet
    the breaker opens after `failure_threshold` Stream failures. (Estimates and READY
    used to reset the count, so under concurrent streams the breaker never opened.)"""
    inner = _Exhausted(None)
    r = ResilientAdapter(inner, failure_threshold=3, max_retries=0, cooldown=30.0)
    for _ in range(3):
        await r.estimate(REQ)
        await r.check_health()
        await _fail(r)
    assert r.breaker is BreakerState.OPEN
    assert r.stats.breaker_opened == 1
    calls = len(inner.calls)
    err = await _fail(r)  # fails fast, no call reaches the adapter
    assert len(inner.calls) == calls
    assert err.code == ErrorCode.EWINDOW_AGENT and err.retry_after_ms


async def test_a_successful_estimate_still_closes_a_half_open_breaker(
    autojump_clock: trio.abc.Clock,
) -> None:
    """[ATP-ADAPT-013] After the cooldown, one probe goes through; an Estimate is a probe
    like any call: its success closes the breaker."""
    inner = _Exhausted(None)
    r = ResilientAdapter(inner, failure_threshold=2, max_retries=0, cooldown=1.0)
    for _ in range(2):
        await _fail(r)
    assert r.breaker is BreakerState.OPEN
    await trio.sleep(1.5)
    await r.estimate(REQ)
    assert r.breaker is BreakerState.CLOSED
