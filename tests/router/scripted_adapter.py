"""A vendor adapter for the strategy tests, served by ``atp adapter serve
tests.router.scripted_adapter:Scripted`` as a real gRPC process.

Options (``--option K=V``): ``answer`` (its text; ``{n}`` becomes the call number),
``confidence`` (reported on every chunk), ``est_confidence`` (its estimate's, default
the same), ``usd_per_1k``, ``chunks``, ``latency_ms`` (between chunks), ``slow_ms``
(before the first chunk when the prompt holds ``SLOW``), ``log`` (a file: one line per
call start, end and cancellation, ``start|end|cancelled NAME PROMPT``), ``name``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from atp_proto.adapters import Chunk, CostEstimate, TaskRequest


class Scripted:
    def __init__(self, opts: Mapping[str, str]) -> None:
        self.name = opts.get("name", "scripted")
        self.answer = opts.get("answer", "42")
        self.confidence = float(opts.get("confidence", "0.5"))
        self.est_confidence = float(opts.get("est_confidence", str(self.confidence)))
        self.usd_per_1k = int(opts.get("usd_per_1k", "1000"))
        self.chunks = int(opts.get("chunks", "2"))
        self.latency_s = float(opts.get("latency_ms", "0")) / 1000
        self.slow_s = float(opts.get("slow_ms", "0")) / 1000
        self.log = opts.get("log", "")
        self.calls = 0

    @classmethod
    def from_options(cls, opts: Mapping[str, str]) -> Scripted:
        return cls(opts)

    def _note(self, what: str, req: TaskRequest) -> None:
        if self.log:
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(f"{what} {self.name} {req.prompt}\n")

    def _tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    async def estimate(self, req: TaskRequest) -> CostEstimate:
        out = self._tokens(self.answer)
        inp = self._tokens(req.prompt)
        return CostEstimate(
            in_tokens=inp,
            out_tokens=out,
            usd_micros=(inp + out) * self.usd_per_1k // 1000,
            latency_p95_ms=1.0,
            variance=0.0,
            confidence=self.est_confidence,
        )

    async def stream(self, req: TaskRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        text = self.answer.replace("{n}", str(self.calls))
        words = text.split(" ")
        step = max(1, -(-len(words) // self.chunks))
        parts = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
        parts = [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]
        used = self._tokens(req.prompt)
        self._note("start", req)
        done = False
        try:
            if self.slow_s and "SLOW" in req.prompt:
                await asyncio.sleep(self.slow_s)
            for i, part in enumerate(parts):
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                used += self._tokens(part)
                last = i == len(parts) - 1
                yield Chunk(
                    part,
                    self.confidence,
                    used,
                    used * self.usd_per_1k // 1000,
                    last,
                    "stop" if last else "",
                )
            done = True
        finally:
            self._note("end" if done else "cancelled", req)
