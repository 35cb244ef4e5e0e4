"""Vendor adapter classes used by the tests, served by `atp adapter serve vendor_fixtures:CLASS`
(the tests put this directory on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from atp_proto.adapters import AdapterError, Chunk, CostEstimate, TaskRequest


class Minimal:
    """The docs' minimal example: two chunks, no health()."""

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        return CostEstimate(
            in_tokens=len(req.prompt) // 4 + 1, out_tokens=2, usd_micros=5, latency_p95_ms=1.0
        )

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        yield Chunk("Hello, ", confidence=0.8, tokens=1, usd_micros=2)
        yield Chunk(
            req.prompt, confidence=0.8, tokens=2, usd_micros=5, final=True, finish_reason="stop"
        )


class Boom(Minimal):
    """Vendor bugs: the exception text must not reach the router."""

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        raise RuntimeError("secret-internal-detail")

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        yield Chunk("a", confidence=0.5, tokens=1, usd_micros=0)
        raise KeyError("secret-internal-detail")


class Raises(Minimal):
    """Vendor-raised AdapterErrors, by prompt: the ATP code to raise."""

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        raise AdapterError(req.prompt, f"vendor says {req.prompt}", retry_after_ms=5)


class Flaky(Minimal):
    """The first `fail` Stream / Estimate calls fail with EAGENTDOWN before output."""

    def __init__(self, fail: str = "2") -> None:
        self.left = int(fail)

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        if self.left > 0:
            self.left -= 1
            raise AdapterError("EAGENTDOWN", "flaky: not yet")
        async for c in super().stream(req):
            yield c


class Slow(Minimal):
    """Streams `n` chunks, `delay` seconds apart (for drain and deadline tests)."""

    def __init__(self, delay: str = "0.2", n: str = "5") -> None:
        self.delay = float(delay)
        self.n = int(n)

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        for i in range(self.n):
            await asyncio.sleep(self.delay)
            yield Chunk(f"{i} ", confidence=0.5, tokens=i + 1, usd_micros=i, final=i == self.n - 1)


class Overloaded(Minimal):
    """Every Stream call fails with EWINDOW_AGENT (RESOURCE_EXHAUSTED) before output, with
    the retry hint `retry_ms` (0: none). Estimate answers; the prompt "stats" gets the
    number of Stream calls received so far in `out_tokens`."""

    def __init__(self, retry_ms: str = "300") -> None:
        self.retry_ms = int(retry_ms)
        self.calls = 0

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        if req.prompt == "stats":
            return CostEstimate(in_tokens=0, out_tokens=self.calls, usd_micros=0, latency_p95_ms=0)
        return await super().estimate(req)

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        raise AdapterError("EWINDOW_AGENT", "overloaded", retry_after_ms=self.retry_ms or None)
        yield  # pragma: no cover - an async generator


class Costly(Minimal):
    """Reports the largest valid uint64 `usd_micros` (2**64 - 1) for its answer."""

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        yield Chunk("costly", confidence=0.5, tokens=1, usd_micros=2**64 - 1, final=True)


class Deadline(Minimal):
    """Answers with the wall-clock time (time.time()) at which its call's deadline passes,
    from the deadline_ms it received (the gRPC deadline, as the SDK gives it)."""

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        at = time.time() + (req.deadline_ms or 0) / 1000
        yield Chunk(f"{at:.3f}", confidence=0.5, tokens=1, usd_micros=0, final=True)
