"""A replay adapter: one model's recorded outcomes (``routing-data`` format) served as if
it were that model, for judging a router on real data (``atp bench routing``).

    atp adapter serve atp_proto.adapters.replay:ReplayAdapter \\
        --option data=public.jsonl --option model=gpt-4-1106-preview [--option ms_per_token=0.05]

For a prompt of the file (found by ``meta.replay_id`` = the record's ``id``, else by the
prompt's text) it streams an answer of the recorded length and reports the recorded tokens
(input + output) and cost. It never reveals correctness: the answer is filler, and the
confidence it reports is a constant 0.5 that carries no information. Its Estimate is what a
router could know before the call: the prompt's recorded input tokens, and the model's
*mean* output length and mean cost per token over the file, not this prompt's outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from atp_proto.frames import ErrorCode

from ._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest

__all__ = ["ReplayAdapter"]

#: the confidence every replayed chunk reports: no information about correctness
CONFIDENCE = 0.5
_FILLER = "replayed answer text "


@dataclass(frozen=True, slots=True)
class _Entry:
    in_tokens: int
    out_tokens: int
    usd_micros: int


class ReplayAdapter:
    """Serves one model's recorded outcomes; see the module docstring."""

    def __init__(
        self, data: str, model: str, ms_per_token: float = 0.0, chunk_tokens: int = 64
    ) -> None:
        from atp_proto.routing_data import price_model, read_records

        self.name = model
        self.ms_per_token = ms_per_token
        self.chunk_tokens = max(1, chunk_tokens)
        self.by_id: dict[str, _Entry] = {}
        self.by_prompt: dict[str, _Entry] = {}
        records = read_records(data)
        for r in records:
            o = r.models.get(model)
            if o is None:
                continue
            e = _Entry(o.in_tokens, o.out_tokens, round(o.cost_usd * 1e6))
            self.by_id[r.id] = e
            self.by_prompt.setdefault(_key(r.prompt), e)
        prices = price_model(records, model)
        if prices is None:
            raise ValueError(f"model {model!r} has no recorded outcome in {data}")
        self.prices = prices
        self.mean_out = prices.mean_out

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> ReplayAdapter:
        unknown = set(options) - {"data", "model", "ms_per_token", "chunk_tokens"}
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        if "data" not in options or "model" not in options:
            raise ValueError("options data=FILE.jsonl and model=NAME are required")
        return cls(
            options["data"],
            options["model"],
            float(options.get("ms_per_token", 0.0)),
            int(options.get("chunk_tokens", 64)),
        )

    def _entry(self, request: TaskRequest) -> _Entry:
        rid = request.meta.get("replay_id") if request.meta else None
        entry = self.by_id.get(rid) if isinstance(rid, str) else None
        if entry is None:
            entry = self.by_prompt.get(_key(request.prompt))
        if entry is None:
            raise AdapterError(
                ErrorCode.EAGENTDOWN, f"{self.name}: no recorded answer for this prompt"
            )
        return entry

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        e = self._entry(request)
        out, usd = self.prices.estimate(e.in_tokens)
        return CostEstimate(
            in_tokens=e.in_tokens,
            out_tokens=out,
            usd_micros=usd,
            latency_p95_ms=self.ms_per_token * out * 2,
            variance=float(out),
            confidence=CONFIDENCE,
        )

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        e = self._entry(request)
        total = e.in_tokens + e.out_tokens
        sent = 0
        while True:
            step = min(self.chunk_tokens, e.out_tokens - sent)
            sent += max(step, 0)
            final = sent >= e.out_tokens
            if self.ms_per_token and step > 0:
                await asyncio.sleep(self.ms_per_token * step / 1000)
            tokens = e.in_tokens + sent
            usd = e.usd_micros if final else e.usd_micros * tokens // max(total, 1)
            text = (_FILLER * (1 + step * 4 // len(_FILLER)))[: max(step, 1) * 4]
            yield Chunk(text, CONFIDENCE, tokens, usd, final, "stop" if final else "")
            if final:
                return

    async def health(self) -> Health:
        return Health(status="READY", p95_ms=self.ms_per_token * self.mean_out * 2)


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()
