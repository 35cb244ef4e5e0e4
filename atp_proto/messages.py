"""The application schema carried in DATA payloads: tasks, partial and final results.

ATP frames carry opaque payloads; this module owns the conventional ones (the seed's
``agent.task`` SYN, ``agent.result.partial`` PARTIALs and ``agent.result.final`` FINALs,
with the FINAL's ``telemetry`` ext). The router, the client, the conformance suite and
the examples share it, so it depends only on :mod:`atp_proto.frames` and raises
:class:`~atp_proto.frames.ATPError` (EPROTO) for a payload that breaks the schema — never
a router type (that would be an upward arrow).

Encoding (router side):

* :func:`partial_body` / :func:`final_body` build bodies with ``cbor2.dumps``;
* :func:`partial_chunk_body` is the per-chunk fast path: a relayed chunk's PARTIAL body
  joined from pre-encoded CBOR pieces, byte-identical to ``cbor2.dumps`` of the dict at
  half the cost (property-tested);
* :func:`telemetry` is the FINAL's ``ext.telemetry``, counters saturating at 2**64 - 1
  (ATP-BUDGET-012).

Decoding (client side): :func:`decode_result` turns a received message into a
:class:`Partial` or a :class:`Final` (a draft-era telemetry ``usd`` is read as
``usd_micros``, ATP-BUDGET-006).

A FINAL that does not repeat a streamed answer (spec §15.5, ATP-FINAL-001…004): a SYN with
``meta.final_answer = "streamed"`` (:data:`STREAMED_FINAL`, what :mod:`atp_proto.client`
sends by default) lets the router send :func:`final_body_streamed` — ``content``
``{"ok", "adapter", "streamed": {"chunks": N}}`` without ``answer`` — when the texts of the
N PARTIALs naming that adapter are the answer; :class:`AnswerAssembler` puts the answer
back on the client side (EPROTO when the count does not match).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from atp_proto.frames import (
    DEFAULT_LIMITS,
    ATPError,
    BudgetWindow,
    ErrorCode,
    FrameDecodeError,
    Payload,
    StreamOpened,
    decode_payload,
)

__all__ = [
    "ADAPTER_KEY",
    "CONFIDENCE_KEY",
    "FINAL_ANSWER_KEY",
    "STREAMED_FINAL",
    "U64_MAX",
    "AnswerAssembler",
    "Final",
    "Partial",
    "Task",
    "adapter_key",
    "confidence_tail",
    "decode_result",
    "final_body",
    "final_body_streamed",
    "meta_adapters",
    "meta_final_streamed",
    "meta_int",
    "meta_number",
    "parse_task",
    "partial_body",
    "partial_chunk_body",
    "read_telemetry",
    "task_body",
    "telemetry",
]

PARTIAL_TYPE = "agent.result.partial"
FINAL_TYPE = "agent.result.final"

#: The largest unsigned integer CBOR encodes without a tag (ATP-FRAME-006): telemetry
#: counters saturate there (ATP-BUDGET-012).
U64_MAX = (1 << 64) - 1

#: The SYN's meta key by which a client asks for a FINAL that need not repeat the answer
#: its PARTIALs carried (spec §15.5): ``"full"`` (the default) or ``"streamed"``.
FINAL_ANSWER_KEY = "final_answer"
#: what a client adds to its SYN's meta to ask for it (ATP-FINAL-001)
STREAMED_FINAL: Mapping[str, str] = {FINAL_ANSWER_KEY: "streamed"}


# ---------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class Task:
    """A SYN's task: ``{"type": ..., "content": {"prompt": ...}}`` with the SYN's meta."""

    task_type: str
    prompt: str
    content: Mapping[str, Any]
    meta: Mapping[str, Any]
    window: BudgetWindow
    ttl: int  #: seconds, 0 when unbounded


def _eproto(message: str, stream_id: int) -> ATPError:
    return ATPError(ErrorCode.EPROTO, message, stream_id=stream_id)


def parse_task(ev: StreamOpened) -> Task:
    """The SYN payload as a task (``content`` may be a bare prompt string).

    Raises:
        ATPError: EPROTO when the payload is not an object with a non-empty text prompt,
            or ``meta.task_type`` is not a string.
    """
    sid = ev.stream_id
    try:
        body = decode_payload(ev.payload, sid)
    except FrameDecodeError as exc:
        raise _eproto(exc.message, sid) from None
    if not isinstance(body, Mapping):
        raise _eproto('the SYN payload must be an object with "content"', sid)
    content = body.get("content", {})
    if isinstance(content, str):
        content = {"prompt": content}
    if not isinstance(content, Mapping):
        raise _eproto('payload "content" must be an object', sid)
    prompt = content.get("prompt", "")
    if not isinstance(prompt, str) or not prompt:
        raise _eproto('payload "content.prompt" must be a non-empty string', sid)
    meta = ev.meta
    task_type = meta.get("task_type", "qa")
    if not isinstance(task_type, str):
        raise _eproto('"meta.task_type" must be a string', sid)
    return Task(task_type, prompt, dict(content), dict(meta), ev.window, ev.ttl)


def meta_int(meta: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """``meta[key]`` as an integer in lo..hi (``default`` when absent).

    Raises:
        ATPError: EPROTO otherwise.
    """
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _eproto(f'"meta.{key}" must be an integer in {lo}..{hi}', 0)
    return v


def meta_number(meta: Mapping[str, Any], key: str, default: float) -> float:
    """``meta[key]`` as a finite number (``default`` when absent).

    Raises:
        ATPError: EPROTO otherwise (a CBOR bignum past a float, NaN, infinity too).
    """
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _eproto(f'"meta.{key}" must be a number', 0)
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise _eproto(f'"meta.{key}" must be a finite number', 0)
    return f


def meta_adapters(meta: Mapping[str, Any]) -> list[str] | None:
    """``meta.adapters``: the adapters the client asks for, in order, without duplicates
    (they would multiply adapter calls); None when absent.

    Raises:
        ATPError: EPROTO when it is not a list of names.
    """
    wanted = meta.get("adapters")
    if wanted is None:
        return None
    if isinstance(wanted, list) and all(isinstance(n, str) for n in wanted):
        return list(dict.fromkeys(wanted))
    raise _eproto('"meta.adapters" must be a list of names', 0)


def meta_final_streamed(meta: Mapping[str, Any], stream_id: int = 0) -> bool:
    """Whether the SYN's meta asks for a FINAL that need not repeat a streamed answer
    (``meta.final_answer``: ``"streamed"`` True, ``"full"`` or absent False).

    Raises:
        ATPError: EPROTO naming the key for any other value (ATP-FINAL-001).
    """
    v = meta.get(FINAL_ANSWER_KEY, "full")
    if v == "streamed":
        return True
    if v == "full":
        return False
    raise _eproto('"meta.final_answer" must be "full" or "streamed"', stream_id)


# ---------------------------------------------------------------------- results (encode)


def task_body(prompt: str, content: Mapping[str, Any] | None = None) -> bytes:
    """CBOR of a SYN's task payload, ``{"type": "agent.task", "content": {"prompt": ...}}``
    (what :func:`parse_task` reads back; extra ``content`` keys ride along)."""
    body = {"type": "agent.task", "content": {"prompt": prompt, **(dict(content or {}))}}
    return cbor2.dumps(body)


def partial_body(content: Mapping[str, Any], confidence: float) -> bytes:
    """A PARTIAL's body with any content (failover and escalation notices)."""
    return cbor2.dumps({"type": PARTIAL_TYPE, "content": content, "confidence": confidence})


def final_body(answer: str, adapter: str, confidence: float) -> bytes:
    """The FINAL's body: the chosen answer and the adapter that gave it."""
    return cbor2.dumps(
        {
            "type": FINAL_TYPE,
            "content": {"ok": True, "answer": answer, "adapter": adapter},
            "confidence": confidence,
        }
    )


def final_body_streamed(adapter: str, chunks: int, confidence: float) -> bytes:
    """The FINAL's body when the answer is the texts of the ``chunks`` PARTIALs naming
    ``adapter``, which the client asked not to have repeated (ATP-FINAL-002): no
    ``answer``, and ``streamed.chunks`` for the client to check it has them all."""
    return cbor2.dumps(
        {
            "type": FINAL_TYPE,
            "content": {"ok": True, "adapter": adapter, "streamed": {"chunks": chunks}},
            "confidence": confidence,
        }
    )


def telemetry(
    tokens: int, usd_micros: int, latency_ms: int, adapters: Sequence[str]
) -> dict[str, Any]:
    """The FINAL's ``ext.telemetry``; counters saturate, never a bignum (ATP-BUDGET-012)."""
    return {
        "tokens": min(tokens, U64_MAX),
        "usd_micros": min(usd_micros, U64_MAX),
        "latency_ms": latency_ms,
        "adapters": list(adapters),
    }


# A chunk's PARTIAL body, {"type": "agent.result.partial", "content": {"chunk": N, "adapter":
# NAME, "text": TEXT}, "confidence": C}, is encoded once per relayed chunk: joining
# pre-encoded CBOR pieces gives the same bytes as cbor2.dumps of the dict at half the cost.
_PARTIAL_HEAD = (
    b"\xa3"
    + cbor2.dumps("type")
    + cbor2.dumps(PARTIAL_TYPE)
    + cbor2.dumps("content")
    + b"\xa3"
    + cbor2.dumps("chunk")
)
ADAPTER_KEY = cbor2.dumps("adapter")
_TEXT_KEY = cbor2.dumps("text")
CONFIDENCE_KEY = cbor2.dumps("confidence")


def adapter_key(name: str) -> bytes:
    """The ``adapter_key`` piece of :func:`partial_chunk_body` (once per adapter call)."""
    return ADAPTER_KEY + cbor2.dumps(name)


def confidence_tail(confidence: float) -> bytes:
    """The ``tail`` piece of :func:`partial_chunk_body` (once per change of confidence)."""
    return CONFIDENCE_KEY + cbor2.dumps(confidence)


_HEAD_16 = struct.Struct(">BH").pack
_HEAD_32 = struct.Struct(">BI").pack
_HEAD_64 = struct.Struct(">BQ").pack


def _cbor_head(major: int, n: int) -> bytes:
    """A CBOR item head (RFC 8949 3.1), shortest form, for 0 <= n < 2**64: what cbor2
    writes for an unsigned int (major 0x00) or before a text's UTF-8 (major 0x60)."""
    if n < 0x100:
        return _SMALL_HEADS[major][n]
    if n < 0x10000:
        return _HEAD_16(major | 25, n)
    if n < 0x100000000:
        return _HEAD_32(major | 26, n)
    return _HEAD_64(major | 27, n)


def _small_head(major: int, n: int) -> bytes:
    return bytes((major | n,)) if n < 24 else bytes((major | 24, n))


#: the heads of 0..255 (most chunk numbers and chunk texts), looked up rather than built
_SMALL_HEADS = {major: [_small_head(major, n) for n in range(0x100)] for major in (0, 0x60)}
_UINT_HEADS = _SMALL_HEADS[0]
_TEXT_HEADS = _SMALL_HEADS[0x60]


def partial_chunk_body(chunk_no: int, adapter_key: bytes, text: str, tail: bytes) -> bytes:
    """CBOR of a chunk's PARTIAL body; ``adapter_key`` is ``ADAPTER_KEY`` + the encoded
    adapter name, ``tail`` is ``CONFIDENCE_KEY`` + the encoded confidence. The chunk number
    and the text's head are written here (cheaper than two ``cbor2.dumps`` calls per
    relayed chunk; the same bytes, tests/router/test_streams.py)."""
    data = text.encode()
    size = len(data)
    # the common widths looked up / packed here, not through _cbor_head (a call less per
    # head: this runs once per relayed chunk, ~0.3 us of its ~0.8)
    if 0 <= chunk_no < 0x10000:
        number = _UINT_HEADS[chunk_no] if chunk_no < 0x100 else _HEAD_16(25, chunk_no)
    elif 0 <= chunk_no < 1 << 64:
        number = _cbor_head(0, chunk_no)
    else:
        number = cbor2.dumps(chunk_no)
    text_head = _TEXT_HEADS[size] if size < 0x100 else _cbor_head(0x60, size)
    return b"".join((_PARTIAL_HEAD, number, adapter_key, _TEXT_KEY, text_head, data, tail))


# ---------------------------------------------------------------------- results (decode)


@dataclass(frozen=True, slots=True)
class Partial:
    """A PARTIAL frame's payload (``agent.result.partial``)."""

    content: Any
    confidence: float | None
    payload: Any = field(repr=False, default=None)


@dataclass(frozen=True, slots=True)
class Final:
    """The FINAL frame: the answer and the telemetry ``{tokens, usd_micros, latency_ms,
    ...}`` (a draft-era ``usd`` is read as ``usd_micros``, ATP-BUDGET-006)."""

    content: Any
    confidence: float | None
    telemetry: Mapping[str, Any]
    payload: Any = field(repr=False, default=None)


def read_telemetry(ext: Mapping[str, Any]) -> Mapping[str, Any]:
    """A FINAL's telemetry from its ext; the seed's draft name ``usd`` is read as
    ``usd_micros`` (ATP-BUDGET-006). Anything but a map reads as empty."""
    tel = ext.get("telemetry", {})
    if not isinstance(tel, Mapping):
        return {}
    if "usd" in tel and "usd_micros" not in tel:
        return {**tel, "usd_micros": tel["usd"]}
    return tel


def decode_result(
    payload: Payload, *, end_stream: bool, ext: Mapping[str, Any], stream_id: int = 0
) -> Partial | Final:
    """A received result message as a :class:`Partial` (MORE) or :class:`Final` (FIN).

    Raises:
        FrameDecodeError: EPROTO when the payload is not strict CBOR / JSON.
    """
    body = decode_payload(payload, stream_id)
    content = body.get("content") if isinstance(body, dict) else body
    conf = body.get("confidence") if isinstance(body, dict) else None
    if end_stream:
        return Final(content, conf, read_telemetry(ext), body)
    return Partial(content, conf, body)


class AnswerAssembler:
    """Client side of ATP-FINAL-004: the texts of a stream's PARTIALs per adapter, and a
    FINAL without ``answer`` (``content.streamed``) completed from them, so that the user
    gets the FINAL a full one would have been (``content`` ``{"ok", "answer", "adapter"}``
    and ``payload`` with it). A FINAL that carries ``answer`` is returned as it is."""

    __slots__ = ("_dropped", "_dropped_more", "_kept", "_limit", "_texts")

    def __init__(self, limit: int = DEFAULT_LIMITS.max_message_size) -> None:
        #: what is kept is bounded by ``limit`` characters over all adapters (a full FINAL
        #: is bounded by the receiver's max_message_size, ATP-LIMIT-006): past it, texts are
        #: dropped and a streamed FINAL naming an adapter that lost some is EPROTO
        self._limit = limit
        self._kept = 0
        self._texts: dict[str, list[str]] = {}
        self._dropped: set[str] = set()
        self._dropped_more = False  # texts dropped of more adapters than _dropped holds

    def partial(self, content: Any) -> None:
        """A PARTIAL's content: a chunk ``{"adapter", "text"}`` is kept (notices are not)."""
        if isinstance(content, dict):
            text, adapter = content.get("text"), content.get("adapter")
            if isinstance(text, str) and isinstance(adapter, str):
                if self._kept + len(text) > self._limit:
                    if len(self._dropped) < 64:  # the names are bounded too
                        self._dropped.add(adapter)
                    else:
                        self._dropped_more = True
                    return
                self._kept += len(text)
                texts = self._texts.get(adapter)
                if texts is None:
                    texts = self._texts[adapter] = []
                texts.append(text)

    def final(self, final: Final, stream_id: int = 0) -> Final:
        """``final`` with its answer put back from the PARTIALs when it has none.

        Raises:
            ATPError: EPROTO when ``streamed`` is malformed, or the count of PARTIALs of
                its adapter with text is not ``streamed.chunks`` (the answer would be
                wrong: ATP-FINAL-004).
        """
        c = final.content
        if not isinstance(c, Mapping) or "streamed" not in c or "answer" in c:
            return final
        streamed, adapter = c.get("streamed"), c.get("adapter")
        chunks = streamed.get("chunks") if isinstance(streamed, Mapping) else None
        if (
            not isinstance(adapter, str)
            or isinstance(chunks, bool)
            or not isinstance(chunks, int)
            or chunks < 0
        ):
            raise _eproto(
                'a FINAL without "answer" must name its "adapter" and "streamed.chunks"',
                stream_id,
            )
        if adapter in self._dropped or self._dropped_more:
            raise _eproto(
                f"the PARTIALs of {adapter[:64]!r} are longer than this client keeps "
                f'({self._limit} characters, its max_message_size): ask for final_answer "full"',
                stream_id,
            )
        texts = self._texts.get(adapter, [])
        if len(texts) != chunks:
            raise _eproto(
                f"the FINAL says {chunks} PARTIALs of {adapter[:64]!r} carry the answer; "
                f"{len(texts)} arrived",
                stream_id,
            )
        content: dict[str, Any] = {"ok": c["ok"]} if "ok" in c else {}
        content["answer"] = "".join(texts)
        content.update((k, v) for k, v in c.items() if k not in ("ok", "streamed"))
        body = final.payload
        if isinstance(body, dict):
            body = {**body, "content": content}
        return Final(content, final.confidence, final.telemetry, body)
