"""A Stream call whose caller stops at the final chunk (as the router's fan-out does) is a
success for the circuit breaker: failures on either side of it are not consecutive
(ATP-ADAPT-013). Sans sockets: a fake in-process adapter under :class:`ResilientAdapter`.
Found by the conformance case router.adapter.malformed-varint, whose two malformed
streams, with a good one between them, opened the breaker of the reference router."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from atp_proto.adapters import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from atp_proto.adapters.resilience import BreakerState, ResilientAdapter
from atp_proto.frames import ErrorCode

REQ = TaskRequest("qa", "hello", deadline_ms=60_000)


class _Flaky:
    """Fails every Stream call while ``failing``; else answers two chunks, the last final."""

    name = "x"

    def __init__(self) -> None:
        self.failing = True

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        return CostEstimate(1, 1, 1, 1.0)

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        if self.failing:
            raise AdapterError(ErrorCode.EAGENTDOWN, "down", adapter=self.name)
        yield Chunk("a", 0.8, 1, 1)
        yield Chunk("b", 0.8, 2, 2, final=True)

    async def health(self) -> Health:
        return Health("READY")

    async def aclose(self) -> None:
        return None


async def _fail(r: ResilientAdapter) -> None:
    with pytest.raises(AdapterError):
        async for _ in r.stream(REQ):
            pass


async def _read_to_final(r: ResilientAdapter) -> None:
    """As the router reads: stop at the final chunk, close the generator there."""
    chunks = r.stream(REQ)
    try:
        async for chunk in chunks:
            if chunk.final:
                break
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("stop_at_final", [True, False])
async def test_a_whole_answer_resets_the_count_of_consecutive_failures(
    autojump_clock: trio.abc.Clock, stop_at_final: bool
) -> None:
    inner = _Flaky()
    r = ResilientAdapter(inner, failure_threshold=3, max_retries=0)
    await _fail(r)
    await _fail(r)
    assert r.consecutive_failures == 2
    inner.failing = False
    if stop_at_final:
        await _read_to_final(r)
    else:
        async for _ in r.stream(REQ):
            pass
    assert r.consecutive_failures == 0
    inner.failing = True
    await _fail(r)
    await _fail(r)
    assert r.breaker is BreakerState.CLOSED  # 2 consecutive failures, not 4
    await _fail(r)
    assert r.breaker is BreakerState.OPEN  # the third in a row opens it


async def test_a_call_left_before_its_final_chunk_is_no_success(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Leaving after a chunk that is not final says nothing of the answer: the failure
    count stays."""
    inner = _Flaky()
    r = ResilientAdapter(inner, failure_threshold=3, max_retries=0)
    await _fail(r)
    inner.failing = False
    chunks = r.stream(REQ)
    async for _ in chunks:
        break
    await chunks.aclose()  # type: ignore[attr-defined]
    assert r.consecutive_failures == 1
