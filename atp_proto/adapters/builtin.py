"""The builtin adapters: ``builtin:echo`` and ``builtin:persona``, in process.

They are deterministic (same request, same output) so tests can assert exact results,
and configurable through the URL's query string, e.g.
``builtin:persona?latency_ms=20&confidence=0.4&fail=cut&fail_after=3``:

============== ===============================================================
latency_ms     delay before each chunk (default 0 echo, 5 persona)
chunks         number of chunks (persona; default 4)
usd_per_1k     micro-dollars per 1000 tokens (default 0 echo, 2000 persona)
confidence     confidence reported (default 0.1 echo, 0.62 persona)
fail           ``error`` (fail at once), ``stall`` (hang after fail_after
               chunks), ``cut`` (die after fail_after chunks)
fail_after     chunks before the failure (default 0)
slow_every     every Nth call (N, 2N, ...) is slow: a tail-latency model (0: none)
slow_ms        how much longer such a call waits before its first chunk
repeat         echo: the answer is the prompt N times (default 1), a long answer
               from a short prompt (``atp bench quic``)
max_age_ms     the Estimate's ``max_age_ms``: how long a router may reuse it
               for tasks of the same type, max_tokens and input-size class
               (default 0: never; ATP-BUDGET-018)
============== ===============================================================

The same behaviours are served over gRPC by ``atp adapter serve echo`` / ``persona``
(the SDK's asyncio server): the same classes, answers, costs, options and failure modes,
built with :data:`ASYNCIO` waits instead of :data:`TRIO` ones (the only I/O they do is
waiting, so the waiting is injected; there is no second "reference" family).

Confidence is an adapter's claim that its answer is right, and consensus weighs answers
by it. Echo only parrots the prompt: it knows nothing about the answer, so it claims
almost nothing (0.1), and a real answer wins consensus over it. (Ignoring answers equal
to the prompt instead would be a heuristic that punishes right answers such as "repeat
after me".)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio

from atp_proto.frames import ErrorCode

from ._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest


@dataclass(frozen=True, slots=True)
class Waits:
    """How a builtin adapter waits: the event loop it runs on, injected."""

    sleep: Callable[[float], Awaitable[None]]  #: ``latency_ms`` between chunks
    forever: Callable[[], Awaitable[object]]  #: ``fail=stall``


async def _asyncio_forever() -> None:
    await asyncio.Event().wait()


#: waiting on trio (the router's process, tests)
TRIO = Waits(trio.sleep, trio.sleep_forever)
#: waiting on asyncio (served by the SDK's grpclib server)
ASYNCIO = Waits(asyncio.sleep, _asyncio_forever)


@dataclass(frozen=True, slots=True)
class BehaviourConfig:
    latency_ms: float = 0.0
    chunks: int = 4
    usd_per_1k: int = 0
    confidence: float = 0.9
    fail: str = ""
    fail_after: int = 0
    slow_every: int = 0
    slow_ms: float = 0.0
    repeat: int = 1
    max_age_ms: int = 0

    @classmethod
    def from_query(cls, query: Mapping[str, str], **defaults: float | int | str) -> BehaviourConfig:
        merged: dict[str, str] = {k: str(v) for k, v in defaults.items()}
        merged.update(query)
        unknown = set(merged) - set(cls.__slots__)
        if unknown:
            raise ValueError(f"unknown adapter option(s): {', '.join(sorted(unknown))}")

        def num(name: str, kind: type[int] | type[float], default: int | float) -> Any:
            text = merged.get(name)
            if text is None:
                return default
            try:
                return kind(text)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"bad adapter option {name}={text!r}: not {what}") from None

        cfg = cls(
            latency_ms=num("latency_ms", float, 0.0),
            chunks=num("chunks", int, 4),
            usd_per_1k=num("usd_per_1k", int, 0),
            confidence=num("confidence", float, 0.9),
            fail=merged.get("fail", ""),
            fail_after=num("fail_after", int, 0),
            slow_every=num("slow_every", int, 0),
            slow_ms=num("slow_ms", float, 0.0),
            repeat=num("repeat", int, 1),
            max_age_ms=num("max_age_ms", int, 0),
        )
        if cfg.fail not in ("", "error", "stall", "cut"):
            raise ValueError("fail must be one of error, stall, cut")
        if not 1 <= cfg.repeat <= 10_000:
            raise ValueError("repeat must be within 1..10000")
        if cfg.slow_every < 0 or cfg.slow_ms < 0:
            raise ValueError("slow_every and slow_ms must not be negative")
        if not 0 <= cfg.max_age_ms < 2**32:
            raise ValueError("max_age_ms must be 0..4294967295")
        if cfg.chunks < 1 or cfg.latency_ms < 0 or not 0 <= cfg.confidence <= 1:
            raise ValueError("chunks >= 1, latency_ms >= 0 and 0 <= confidence <= 1 are required")
        return cfg


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about 4 characters per token."""
    return max(1, (len(text) + 3) // 4)


def _split(text: str, n: int) -> list[str]:
    if n <= 1 or len(text) <= 1:
        return [text]
    step = max(1, -(-len(text) // n))
    return [text[i : i + step] for i in range(0, len(text), step)]


class BehaviourAdapter:
    """Shared machinery: latency, cost, failure modes; subclasses produce the text."""

    kind = "base"

    def __init__(self, name: str, config: BehaviourConfig, *, waits: Waits = TRIO) -> None:
        self.name = name
        self.config = config
        self.waits = waits
        self.calls = 0
        self.chunks_out = 0  #: chunks handed to callers (shows backpressure in tests)

    def answer(self, request: TaskRequest) -> str:
        raise NotImplementedError  # pragma: no cover - abstract

    def _usd(self, tokens: int) -> int:
        return tokens * self.config.usd_per_1k // 1000

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        out = count_tokens(self.answer(request))
        inp = count_tokens(request.prompt)
        return CostEstimate(
            in_tokens=inp,
            out_tokens=out,
            usd_micros=self._usd(inp + out),
            latency_p95_ms=self.config.latency_ms * self.config.chunks * 1.2,
            variance=float(out),
            confidence=self.config.confidence,
            max_age_ms=self.config.max_age_ms,
        )

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        cfg = self.config
        if cfg.fail == "error" and cfg.fail_after == 0:
            raise AdapterError(ErrorCode.EAGENTDOWN, "configured to fail", adapter=self.name)
        text = self.answer(request)
        parts = _split(text, cfg.chunks)
        used = count_tokens(request.prompt)
        last = len(parts) - 1
        per_1k = cfg.usd_per_1k
        confidence = cfg.confidence
        if cfg.slow_every and self.calls % cfg.slow_every == 0 and cfg.slow_ms:
            await self.waits.sleep(cfg.slow_ms / 1000)  # this call is in the tail
        for i, part in enumerate(parts):
            if cfg.fail and i == cfg.fail_after and i > 0:
                if cfg.fail == "stall":
                    await self.waits.forever()
                raise AdapterError(
                    ErrorCode.EAGENTDOWN,
                    "adapter died mid-stream",
                    adapter=self.name,
                    streamed=True,
                )
            if cfg.latency_ms:
                await self.waits.sleep(cfg.latency_ms / 1000)
            used += max(1, (len(part) + 3) // 4)  # count_tokens(part), inlined: hot path
            final = i == last
            self.chunks_out += 1
            yield Chunk(
                part, confidence, used, used * per_1k // 1000, final, "stop" if final else ""
            )

    async def health(self) -> Health:
        return Health(status="READY", p95_ms=self.config.latency_ms * self.config.chunks)

    async def aclose(self) -> None:
        return None


class EchoAdapter(BehaviourAdapter):
    """Answers with the prompt itself (``repeat`` times)."""

    kind = "echo"

    def answer(self, request: TaskRequest) -> str:
        return request.prompt * self.config.repeat


_PERSONAS = (
    "Considering the question carefully",
    "weighing the evidence",
    "and checking it twice,",
    "the answer is",
)


class PersonaAdapter(BehaviourAdapter):
    """A deterministic mock model: a fixed-shape answer derived from the prompt's hash."""

    kind = "persona"

    def answer(self, request: TaskRequest) -> str:
        digest = hashlib.sha256(f"{request.task_type}\0{request.prompt}".encode()).hexdigest()
        return f"{' '.join(_PERSONAS)} {digest[:12]} (re: {request.prompt[:60]!r})."


_KINDS: dict[str, tuple[type[BehaviourAdapter], dict[str, float | int | str]]] = {
    "echo": (EchoAdapter, {"confidence": 0.1, "chunks": 1}),
    "persona": (PersonaAdapter, {"latency_ms": 5, "usd_per_1k": 2000, "confidence": 0.62}),
}


#: the builtin kinds
KINDS = tuple(_KINDS)


def behaviour_adapter(
    kind: str, options: Mapping[str, str], name: str = "", *, waits: Waits = TRIO
) -> BehaviourAdapter:
    """A builtin adapter of ``kind`` with ``options`` over its defaults.

    Raises:
        ValueError: unknown kind or bad options (the message says which).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown builtin adapter {kind!r} (known: {', '.join(_KINDS)})")
    cls, defaults = _KINDS[kind]
    return cls(name or kind, BehaviourConfig.from_query(options, **defaults), waits=waits)


def builtin_adapter(name: str, url: str) -> BehaviourAdapter:
    """Build an adapter from ``builtin:KIND[?options]``.

    Raises:
        ValueError: unknown kind or bad options (the message says which).
    """
    parts = urlsplit(url)
    if parts.scheme != "builtin":
        raise ValueError(f"not a builtin adapter URL: {url!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    return behaviour_adapter(parts.path, query, name)
