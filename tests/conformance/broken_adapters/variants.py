"""Deliberately broken adapters for the adapter role (issue 11, item 6): each breaks one
rule of the adapter contract the way a real vendor's code could, and is served as a real
process by the SDK (``atp adapter serve tests.conformance.broken_adapters.variants:NAME``)
so the suite meets it on the wire. :class:`Correct` is the same code without the bug:
it passes every case, so a variant's failure is its bug and nothing else.

=================== ========================================== ==================
class               the bug                                    caught by
=================== ========================================== ==================
TwoFinals           sends a second chunk with final=true       ATP-ADAPT-018
LowersUsage         cumulative tokens go 10, 20, 15            ATP-ADAPT-019
Confidence17        reports confidence 1.7                     ATP-ADAPT-020
IgnoresCancel       keeps working 2 s after the call is        ATP-ADAPT-008
                    cancelled (swallows CancelledError)
IgnoresDeadline     keeps streaming after grpc-timeout passed  ATP-ADAPT-008
(answers_empty_prompt.py: a server that skips the SDK's         ATP-ADAPT-021)
 request validation and answers an empty prompt
=================== ========================================== ==================
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from atp_proto.adapters import Chunk, CostEstimate, TaskRequest


class Correct:
    """A small, correct adapter: one chunk per word (at most 40), 5 ms apart."""

    name = "correct"
    delay = 0.005
    confidence = 0.7

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        n = len(req.prompt) // 4 + 1
        return CostEstimate(n, 40, (n + 40) * 2, 400.0, 100.0, self.confidence)

    def chunk_usage(self, i: int, used: int) -> int:
        return used

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        words = req.prompt.split()[:40] or ["?"]
        used = len(req.prompt) // 4 + 1
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay)
            used += 1
            last = i == len(words) - 1
            tokens = self.chunk_usage(i, used)
            yield Chunk(word, self.confidence, tokens, tokens * 2, last, "stop" if last else "")


class TwoFinals(Correct):
    name = "two-finals"

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        yield Chunk("first ", 0.7, 5, 10, True, "stop")
        yield Chunk("second", 0.7, 6, 12, True, "stop")


class LowersUsage(Correct):
    name = "lowers-usage"

    def chunk_usage(self, i: int, used: int) -> int:
        return used - 5 if i == 2 else used  # a recount that "corrects" the total down


class Confidence17(Correct):
    name = "confidence-1.7"
    confidence = 1.7


class IgnoresCancel(Correct):
    """Finishes the "upstream request" after the router cancelled the call."""

    name = "ignores-cancel"
    delay = 0.02

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        try:
            async for chunk in super().stream(req):
                yield chunk
        except asyncio.CancelledError:
            await asyncio.sleep(2.0)  # the bug: keeps working, then gives up
            raise


class IgnoresDeadline(Correct):
    """Catches the cancellation the deadline causes and goes on streaming."""

    name = "ignores-deadline"
    delay = 0.1

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        words = req.prompt.split()[:8] or ["?"]
        used = len(req.prompt) // 4 + 1
        for i, word in enumerate(words):
            with contextlib.suppress(asyncio.CancelledError):  # the bug
                await asyncio.sleep(self.delay)
            used += 1
            last = i == len(words) - 1
            yield Chunk(word, 0.7, used, used * 2, last, "stop" if last else "")
