"""The adapter role's toolkit: the case session (one connection, the record of every
exchanged message as :class:`~conformance.model.Exchange`), protobuf helpers that can
build what a correct client never sends, and the checks several cases share (a Stream
run to its end, the ``atp-calls-in-flight`` probe). The cases are in :mod:`.adapter`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import trio

from atp_proto.adapters import Chunk
from atp_proto.adapters.proto import codec
from conformance.model import Exchange
from conformance.roles import RunContext

from ._grpc import GrpcCall, GrpcConn

__all__ = [
    "GRPC_NAMES", "LONG_PROMPT", "PROBE_HEADER", "SOFT_CONTENT_LIMIT", "Failed", "Session",
    "Unsupported", "finite_in", "health_status_raw", "probe", "prompt_of", "settles",
    "status_of", "stream_chunks", "stream_ok", "stream_run", "task_bytes", "task_type_of",
    "varint",
]  # fmt: skip

PROBE_HEADER = "atp-calls-in-flight"  #: ATP-ADAPT-024
GRPC_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip
SOFT_CONTENT_LIMIT = 64 << 10  #: a chunk's content above this is NON_STRICT (ATP-ADAPT-023)
LONG_PROMPT = " ".join(f"word{i}" for i in range(400))


class Failed(Exception):
    """A check of the case did not hold: FAIL for a MUST case, NON_STRICT for a SHOULD one,
    unless ``soft`` says which (a SHOULD check inside a MUST case, or the reverse)."""

    def __init__(
        self,
        message: str,
        expected: str = "",
        *,
        soft: bool | None = None,
        violated: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.soft = soft
        self.violated = violated  #: the IDs broken (default: the case's own, less -006)


class Unsupported(Exception):
    """The case needs an optional feature the target does not offer."""


# ------------------------------------------------------------------ protobuf helpers


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _str(n: int, s: str) -> bytes:
    raw = s.encode()
    return varint(n << 3 | 2) + varint(len(raw)) + raw if raw else b""


def task_bytes(
    prompt: str,
    *,
    task_type: str = "qa",
    content_json: str = "",
    max_tokens: int | None = None,
    request_id: str = "atp-conformance",
) -> bytes:
    """An EstimateRequest / StreamRequest (``{Task task = 1}``), any field value allowed
    (the bad-request cases send what a correct client never would)."""
    t = _str(1, task_type) + _str(2, prompt) + _str(3, content_json)
    if max_tokens is not None:
        t += varint(4 << 3) + varint(max_tokens)
    t += _str(6, request_id)
    return varint(1 << 3 | 2) + varint(len(t)) + t


def health_status_raw(data: bytes) -> int:
    """HealthReply.status as sent (codec.decode_health maps unknown values to DOWN)."""
    pos, status = 0, 0
    while pos < len(data):
        key = data[pos]
        pos += 1
        if key == 0x08:
            value, shift = 0, 0
            while True:
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            status = value
        elif key & 7 == 1:
            pos += 8
        elif key & 7 == 0:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        else:
            raise codec.DecodeError("unexpected field in HealthReply")
    return status


# ------------------------------------------------------------------ the case's session


@dataclass
class Session:
    """One case's connection, time bounds and record of every exchanged message."""

    conn: GrpcConn
    ctx: RunContext
    t0: float
    calls: list[tuple[GrpcCall, bytes, float | None]] = field(default_factory=list)
    notes: list[Exchange] = field(default_factory=list)

    def bound(self, seconds: float) -> float:
        return trio.current_time() + self.ctx.timeout(seconds)

    async def call(
        self,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        raw_path: str | None = None,
    ) -> GrpcCall:
        c = await self.conn.call(method, payload, timeout=timeout, raw_path=raw_path)
        self.calls.append((c, payload, timeout))
        return c

    async def unary(self, method: str, payload: bytes, *, timeout: float = 5.0) -> GrpcCall:
        c = await self.call(method, payload)
        if not await c.wait_end(self.bound(timeout)):
            c.cancel()
            raise Failed(f"{method}: no answer within {self.ctx.timeout(timeout):g}s")
        return c

    def note(self, text: str) -> None:
        self.notes.append(Exchange("note", self._ms(trio.current_time()), note=text))

    def _ms(self, at: float) -> float:
        return round((at - self.t0) * 1000, 3)

    def exchange(self) -> list[Exchange]:
        out: list[Exchange] = list(self.notes)
        for c, payload, timeout in self.calls:
            sent: dict[str, Any] = {"method": c.method, "stream_id": c.stream_id}
            if timeout is not None:
                sent["grpc-timeout-ms"] = max(1, math.ceil(timeout * 1000))
            try:
                req = codec.decode_task_request(payload) if payload else None
                if req is not None:
                    sent["task"] = {
                        "task_type": req.task_type,
                        "prompt": req.prompt[:200],
                        "max_tokens": req.max_tokens,
                    }
            except (codec.DecodeError, RecursionError) as exc:
                sent["task"] = f"(not decodable: {type(exc).__name__}: {exc})"
            out.append(Exchange("sent", self._ms(c.started), payload.hex(), sent))
            for ev in c.events:
                decoded: Any = {"event": ev.kind}
                if ev.kind == "message":
                    decoded.update(_decode(c.method, ev.data))
                elif ev.kind in ("headers", "trailers", "lost"):
                    decoded["headers"] = ev.headers
                else:
                    decoded["code"] = ev.code
                out.append(Exchange("received", self._ms(ev.at), ev.data.hex(), decoded))
        out.sort(key=lambda e: e.at_ms)
        return out


def _decode(method: str, data: bytes) -> dict[str, Any]:
    try:
        if method == "Stream":
            ch = codec.decode_chunk(data)
            return {
                "content": ch.content[:200],
                "confidence": ch.confidence,
                "tokens": ch.tokens,
                "usd_micros": ch.usd_micros,
                "final": ch.final,
                "finish_reason": ch.finish_reason,
            }
        if method == "Estimate":
            e = codec.decode_estimate(data)
            return {
                "in_tokens": e.in_tokens,
                "out_tokens": e.out_tokens,
                "usd_micros": e.usd_micros,
                "latency_p95_ms": e.latency_p95_ms,
                "variance": e.variance,
                "confidence": e.confidence,
            }
        if method == "Health":
            h = codec.decode_health(data)
            return {
                "status": health_status_raw(data),
                "p95_ms": h.p95_ms,
                "error_rate": h.error_rate,
                "capacity": h.capacity,
            }
    except (codec.DecodeError, IndexError) as exc:
        return {"undecodable": str(exc)}
    return {}


def status_of(c: GrpcCall) -> str:
    if c.status is not None:
        name = GRPC_NAMES.get(c.status, str(c.status))
        return f"{name} {c.message!r}" if c.message else name
    kinds = [e.kind for e in c.events if e.kind in ("reset", "lost", "too_big")]
    return kinds[-1] if kinds else "no status"


def stream_chunks(c: GrpcCall) -> list[Chunk]:
    out: list[Chunk] = []
    for i, ev in enumerate(c.messages()):
        try:
            out.append(codec.decode_chunk(ev.data))
        except codec.DecodeError as exc:
            raise Failed(f"chunk {i + 1} is not a StreamChunk: {exc}", "StreamChunk") from None
    return out


def finite_in(x: float, lo: float, hi: float) -> bool:
    return math.isfinite(x) and lo <= x <= hi


def prompt_of(s: Session) -> str:
    return str(s.ctx.options.get("prompt") or "Say hello to the conformance suite.")


def task_type_of(s: Session) -> str:
    return str(s.ctx.options.get("task_type") or "qa")


async def stream_run(
    s: Session, prompt: str | None = None, **kw: Any
) -> tuple[GrpcCall, list[Chunk]]:
    """One Stream call run to its end with status OK, its chunks decoded (each case then
    checks its own rule, so a broken adapter fails the cases of its bug only)."""
    c = await s.call("Stream", task_bytes(prompt or prompt_of(s), task_type=task_type_of(s), **kw))
    if not await c.wait_end(s.bound(10.0)):
        c.cancel()
        raise Failed(f"Stream: not finished within {s.ctx.timeout(10):g}s")
    if any(e.kind == "too_big" for e in c.events):
        raise Failed(
            "a StreamChunk message is larger than 4 MiB",
            "messages <= 4 MiB",
            soft=False,
            violated=("ATP-ADAPT-023",),
        )
    if c.status != 0:
        raise Failed(
            f"Stream ended with {status_of(c)}",
            "status OK after the final chunk",
            violated=("ATP-ADAPT-006",),
        )
    return c, stream_chunks(c)


async def stream_ok(
    s: Session, prompt: str | None = None, **kw: Any
) -> tuple[GrpcCall, list[Chunk]]:
    """:func:`_stream_run`, checked for exactly one final chunk as the last message
    (ATP-ADAPT-018)."""
    c, chunks = await stream_run(s, prompt, **kw)
    finals = [i for i, ch in enumerate(chunks) if ch.final]
    if not finals:
        raise Failed(
            f"{len(chunks)} chunk(s), none final",
            "exactly one final chunk, the last",
            violated=("ATP-ADAPT-018",),
        )
    if len(finals) > 1:
        raise Failed(
            f"{len(finals)} final chunks (chunks {', '.join(str(i + 1) for i in finals)})",
            "exactly one final chunk",
            violated=("ATP-ADAPT-018",),
        )
    if finals[0] != len(chunks) - 1:
        raise Failed(
            f"{len(chunks) - 1 - finals[0]} chunk(s) after the final one",
            "nothing after the final chunk",
            violated=("ATP-ADAPT-018",),
        )
    return c, chunks


async def probe(s: Session) -> int | None:
    """The adapter's ``atp-calls-in-flight`` (None: it offers no probe)."""
    c = await s.unary("Health", b"")
    value = c.initial_headers.get(PROBE_HEADER, c.trailers.get(PROBE_HEADER))
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise Failed(
            f"{PROBE_HEADER}: {value!r} is not a number",
            "a decimal count",
            violated=("ATP-ADAPT-024",),
        ) from None
    if n < 0:
        raise Failed(f"{PROBE_HEADER}: negative ({n})", "a count >= 0", violated=("ATP-ADAPT-024",))
    return n


async def settles(s: Session, baseline: int, within: float, what: str) -> None:
    """Poll the probe until the adapter's calls in flight are back to ``baseline``."""
    end = s.bound(within)
    n = baseline + 1
    while trio.current_time() < end:
        got = await probe(s)
        if got is None:
            raise Unsupported("the probe disappeared")
        n = got
        if n <= baseline:
            s.note(f"{PROBE_HEADER} back to {n}")
            return
        await trio.sleep(0.05)
    raise Failed(
        f"still {n} call(s) in flight {s.ctx.timeout(within):g}s after {what}",
        f"work stops: {PROBE_HEADER} back to {baseline}",
        violated=("ATP-ADAPT-008",),
    )
