"""The adapter role: the contract of ``atp.adapter.v1`` (Estimate / Stream / Health) checked
on the wire against ``grpc://HOST:PORT`` (``atp conformance run --role adapter``, and
``atp adapter check``, which is a front for this module).

Every case opens its own HTTP/2 connection (:mod:`._grpc`), records each message it sent
and received (:class:`~conformance.model.Exchange`: hex and decoded) and names the
requirement IDs it checks (ATP-ADAPT-006 … -024). The gRPC interop cases apply where they
fit an adapter: ``cancel_after_begin``, ``cancel_after_first_response``,
``timeout_on_sleeping_server``, ``status_code_and_message``.

How work stopping is observed (ATP-ADAPT-008): the ``grpc-timeout`` the suite sends is
*not* enforced by the suite, so an adapter that ignores it is seen sending after it; and
an adapter that offers the ``atp-calls-in-flight`` probe on its Health reply
(ATP-ADAPT-024, the Python SDK and the Node example do) is polled after a cancellation
and after a deadline until its count is back to what it was. Without the probe, the
"work stopped" half of a cancellation case cannot be observed and is UNSUPPORTED.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

from atp_proto.adapters.proto import codec
from conformance.model import CaseResult, CaseSpec, Level, Role, Strength, Verdict
from conformance.roles import RunContext, TargetUnreachable

from ._adapter_kit import (
    GRPC_NAMES,
    LONG_PROMPT,
    PROBE_HEADER,
    SOFT_CONTENT_LIMIT,
    Failed,
    Session,
    Unsupported,
    finite_in,
    health_status_raw,
    probe,
    prompt_of,
    settles,
    status_of,
    stream_chunks,
    stream_ok,
    stream_run,
    task_bytes,
    task_type_of,
    varint,
)
from ._grpc import open_conn

__all__ = [
    "CASES",
    "PROBE_HEADER",
    "TargetUnreachable",
    "cases",
    "parse_target",
    "run",
    "task_bytes",
]

# ------------------------------------------------------------------ the cases

Check = Callable[[Session], Awaitable[str]]
_REGISTRY: list[tuple[CaseSpec, Check]] = []


def case(
    id: str,
    title: str,
    reqs: tuple[str, ...],
    *,
    level: Level = Level.L1,
    strength: Strength = Strength.MUST,
    description: str = "",
) -> Callable[[Check], Check]:
    def deco(fn: Check) -> Check:
        spec = CaseSpec(
            id,
            Role.ADAPTER,
            title,
            reqs,
            level,
            strength,
            description or (fn.__doc__ or "").strip(),
        )
        _REGISTRY.append((spec, fn))
        return fn

    return deco


@case(
    "adapter.health.reply",
    "Health answers with a known status and sane figures",
    ("ATP-ADAPT-006", "ATP-ADAPT-022"),
)
async def _health(s: Session) -> str:
    """Sends Health; expects OK, one HealthReply with status READY, BUSY, PAUSE, DRAINING or
    DOWN, p95_ms finite and >= 0, error_rate in [0, 1]."""
    c = await s.unary("Health", b"")
    if c.status != 0:
        raise Failed(f"Health ended with {status_of(c)}", "OK")
    msgs = c.messages()
    if len(msgs) != 1:
        raise Failed(f"{len(msgs)} reply messages", "one HealthReply")
    raw = health_status_raw(msgs[0].data)
    h = codec.decode_health(msgs[0].data)
    if raw not in codec.STATUS_NAMES:
        raise Failed(f"status {raw} is not one of READY..DOWN (1..5)", "status 1..5")
    if not finite_in(h.p95_ms, 0, math.inf) or not finite_in(h.error_rate, 0, 1):
        raise Failed(
            f"p95_ms={h.p95_ms} error_rate={h.error_rate}", "p95_ms >= 0, error_rate in [0,1]"
        )
    return f"status {h.status}"


@case(
    "adapter.estimate.well-formed",
    "Estimate is well-formed: finite, >= 0, confidence in [0,1]",
    ("ATP-ADAPT-006", "ATP-ADAPT-017", "ATP-ADAPT-020"),
)
async def _estimate(s: Session) -> str:
    """Sends Estimate for a short and a long task; expects OK and one Estimate each with
    latency_p95_ms and variance finite and >= 0, and confidence in [0, 1]."""
    shown = ""
    for prompt in (prompt_of(s), LONG_PROMPT):
        c = await s.unary("Estimate", task_bytes(prompt, task_type=task_type_of(s)))
        if c.status != 0:
            raise Failed(f"Estimate ended with {status_of(c)}", "OK")
        msgs = c.messages()
        if len(msgs) != 1:
            raise Failed(f"{len(msgs)} reply messages", "one Estimate")
        try:
            e = codec.decode_estimate(msgs[0].data)
        except codec.DecodeError as exc:
            raise Failed(f"not an Estimate: {exc}") from None
        if not finite_in(e.confidence, 0, 1):
            raise Failed(
                f"confidence {e.confidence}", "confidence in [0, 1]", violated=("ATP-ADAPT-020",)
            )
        for name in ("latency_p95_ms", "variance"):
            v = getattr(e, name)
            if not finite_in(v, 0, math.inf):
                raise Failed(f"{name} {v}", f"{name} finite and >= 0", violated=("ATP-ADAPT-017",))
        shown = shown or f"{e.in_tokens}+{e.out_tokens} tokens, {e.usd_micros} usd_micros"
    return shown


@case(
    "adapter.stream.one-final",
    "Stream: exactly one final chunk, the last, then OK",
    ("ATP-ADAPT-006", "ATP-ADAPT-018"),
)
async def _one_final(s: Session) -> str:
    """Sends Stream (a short and a long task); expects chunks, exactly one with final=true,
    which is the last message, then status OK."""
    _, a = await stream_ok(s)
    _, b = await stream_ok(s, LONG_PROMPT, max_tokens=512)
    return f"{len(a)} and {len(b)} chunk(s)"


@case(
    "adapter.stream.cumulative-usage",
    "Stream: cumulative tokens and usd_micros never decrease",
    ("ATP-ADAPT-007", "ATP-ADAPT-019"),
)
async def _cumulative(s: Session) -> str:
    """Streams a long task; expects tokens and usd_micros of each chunk >= the previous
    chunk's (they are totals so far), and the final chunk's tokens > 0."""
    _, chunks = await stream_run(s, LONG_PROMPT, max_tokens=512)
    if not chunks:
        raise Failed("no chunk", "chunks with cumulative usage")
    for i in range(1, len(chunks)):
        for name in ("tokens", "usd_micros"):
            before, now = getattr(chunks[i - 1], name), getattr(chunks[i], name)
            if now < before:
                raise Failed(
                    f"chunk {i + 1}: {name} {now} after {before}",
                    f"{name} never decreases",
                    violated=("ATP-ADAPT-019",),
                )
    if chunks[-1].tokens <= 0:
        raise Failed(
            "the final chunk reports 0 tokens used",
            "tokens so far, input included",
            violated=("ATP-ADAPT-007",),
        )
    return f"final: {chunks[-1].tokens} tokens, {chunks[-1].usd_micros} usd_micros"


@case(
    "adapter.stream.confidence-range",
    "Stream: every chunk's confidence is in [0, 1]",
    ("ATP-ADAPT-020",),
)
async def _confidence(s: Session) -> str:
    """Streams a short and a long task; expects every chunk's confidence finite, 0..1."""
    for prompt in (prompt_of(s), LONG_PROMPT):
        _, chunks = await stream_run(s, prompt)
        for i, ch in enumerate(chunks):
            if not finite_in(ch.confidence, 0, 1):
                raise Failed(f"chunk {i + 1}: confidence {ch.confidence}", "confidence in [0, 1]")
    return ""


@case(
    "adapter.stream.chunk-size",
    "Stream: chunks are bounded (<= 4 MiB; content <= 64 KiB)",
    ("ATP-ADAPT-023",),
    strength=Strength.SHOULD,
)
async def _chunk_size(s: Session) -> str:
    """Streams a long task; a message above 4 MiB fails the case (MUST); a chunk whose content
    exceeds 64 KiB is NON_STRICT (SHOULD: output is streamed as it is produced)."""
    c, chunks = await stream_run(s, LONG_PROMPT, max_tokens=512)
    biggest = max((len(e.data) for e in c.messages()), default=0)
    for i, ch in enumerate(chunks):
        if len(ch.content.encode()) > SOFT_CONTENT_LIMIT:
            raise Failed(
                f"chunk {i + 1} holds {len(ch.content.encode())} bytes of content",
                "content <= 64 KiB per chunk",
                soft=True,
            )
    return f"largest message {biggest} bytes"


@case(
    "adapter.stream.concurrent",
    "Four concurrent Stream calls on one connection each end well",
    ("ATP-ADAPT-006", "ATP-ADAPT-018"),
    level=Level.L2,
)
async def _concurrent(s: Session) -> str:
    """Opens 4 Stream calls at once on one HTTP/2 connection; expects each to end with exactly
    one final chunk and OK."""
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            await stream_ok(s, f"{prompt_of(s)} ({i})")
        except Failed as exc:
            errors.append(f"call {i}: {exc.message}")

    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(one, i)
    if errors:
        raise Failed("; ".join(errors), "each call: one final chunk, then OK")
    return ""


_021 = ("ATP-ADAPT-021",)


async def _refused(s: Session, payload: bytes, what: str, *, soft_status: bool = False) -> str:
    """Stream and Estimate with ``payload`` must end INVALID_ARGUMENT, with no chunk."""
    for method in ("Estimate", "Stream"):
        c = await s.call(method, payload)
        if not await c.wait_end(s.bound(5.0)):
            c.cancel()
            raise Failed(f"{method} with {what}: no answer", "INVALID_ARGUMENT", violated=_021)
        if method == "Stream" and c.messages():
            raise Failed(
                f"Stream with {what}: {len(c.messages())} chunk(s) then {status_of(c)}",
                "INVALID_ARGUMENT before any chunk",
                soft=False,
                violated=_021,
            )
        if c.status == 0:
            raise Failed(
                f"{method} with {what} answered OK", "INVALID_ARGUMENT", soft=False, violated=_021
            )
        if c.status != 3:
            raise Failed(
                f"{method} with {what}: {status_of(c)}",
                "INVALID_ARGUMENT",
                soft=True if soft_status else None,
                violated=("ATP-ADAPT-010", "ATP-ADAPT-021"),
            )
    return "INVALID_ARGUMENT"


@case(
    "adapter.invalid.empty-prompt",
    "An empty prompt is refused with INVALID_ARGUMENT",
    ("ATP-ADAPT-010", "ATP-ADAPT-021"),
)
async def _emptyprompt_of(s: Session) -> str:
    """Sends Estimate and Stream with prompt ""; expects INVALID_ARGUMENT and no chunk."""
    return await _refused(s, task_bytes("", task_type=task_type_of(s)), "an empty prompt")


@case(
    "adapter.invalid.negative-max-tokens",
    "A negative max_tokens is refused (INVALID_ARGUMENT)",
    ("ATP-ADAPT-021",),
)
async def _negative_max(s: Session) -> str:
    """Sends Estimate and Stream with max_tokens -1; expects INVALID_ARGUMENT, no chunk."""
    return await _refused(
        s, task_bytes(prompt_of(s), task_type=task_type_of(s), max_tokens=-1), "max_tokens -1"
    )


@case(
    "adapter.invalid.content-not-object",
    "content_json that is not a JSON object is refused",
    ("ATP-ADAPT-021",),
)
async def _content(s: Session) -> str:
    """Sends content_json "[1, 2]" then "{not json"; expects INVALID_ARGUMENT, no chunk."""
    await _refused(
        s,
        task_bytes(prompt_of(s), task_type=task_type_of(s), content_json="[1, 2]"),
        "content_json [1, 2]",
    )
    return await _refused(
        s,
        task_bytes(prompt_of(s), task_type=task_type_of(s), content_json="{not json"),
        "bad content_json",
    )


@case(
    "adapter.invalid.undecodable",
    "A request that is not a Task message is refused",
    ("ATP-ADAPT-021",),
    strength=Strength.SHOULD,
)
async def _undecodable(s: Session) -> str:
    """Sends bytes that are not protobuf (a truncated field); expects an error status and no
    chunk (MUST), INVALID_ARGUMENT rather than e.g. INTERNAL (SHOULD)."""
    return await _refused(s, b"\x0a\x7f\x12", "an undecodable request", soft_status=True)


@case(
    "adapter.grpc.status-and-message",
    "Errors carry a valid grpc-status and a grpc-message",
    ("ATP-ADAPT-010",),
    strength=Strength.SHOULD,
)
async def _status_message(s: Session) -> str:
    """gRPC interop status_code_and_message: an empty-prompt Stream's trailers hold a
    grpc-status (0..16, MUST) and a non-empty grpc-message saying why (SHOULD)."""
    c = await s.unary("Stream", task_bytes("", task_type=task_type_of(s)))
    if c.status == 0:
        raise Failed(
            "an empty prompt answered OK: no error to inspect (ATP-ADAPT-021)",
            "INVALID_ARGUMENT with a grpc-message",
            violated=_021,
        )
    raw = c.trailers.get("grpc-status")
    if raw is None or c.status is None or not 0 <= c.status <= 16:
        raise Failed(f"trailers {c.trailers}", "grpc-status 0..16", soft=False)
    if not c.message:
        raise Failed(f"{status_of(c)} without grpc-message", "a grpc-message", soft=True)
    return f"{status_of(c)}"


@case(
    "adapter.grpc.unimplemented",
    "An unknown method of the service answers UNIMPLEMENTED",
    ("ATP-ADAPT-006",),
)
async def _unimplemented(s: Session) -> str:
    """Calls /atp.adapter.v1.AdapterService/NoSuchMethod; expects UNIMPLEMENTED (gRPC)."""
    c = await s.call("NoSuchMethod", b"", raw_path="/atp.adapter.v1.AdapterService/NoSuchMethod")
    if not await c.wait_end(s.bound(5.0)):
        c.cancel()
        raise Failed("no answer", "UNIMPLEMENTED")
    if c.status != 12:
        raise Failed(status_of(c), "UNIMPLEMENTED")
    return ""


def _hostile_tasks(task_type: str) -> list[tuple[str, bytes]]:
    deep = '{"a":' + "[" * 5000 + "]" * 5000 + "}"
    bad_utf8 = b"\x12\x04\xff\xfe\xc0\x80"  # Task.prompt: not UTF-8
    raw = varint(1 << 3 | 2) + varint(len(bad_utf8)) + bad_utf8
    return [
        (
            "control characters",
            task_bytes("a\x00b\x1b[2J\u202e\U0001f600 " * 50, task_type=task_type),
        ),
        ("JSON nested 5000 deep", task_bytes("hello", task_type=task_type, content_json=deep)),
        ("a prompt that is not UTF-8", raw),
        ("a 256 KiB prompt", task_bytes("x" * (256 << 10), task_type=task_type)),
    ]


@case(
    "adapter.untrusted.hostile-task",
    "A hostile task gets an answer or an error, never a crash",
    ("ATP-SEC-012", "ATP-ADAPT-010", "ATP-ADAPT-021"),
)
async def _hostile(s: Session) -> str:
    """Streams tasks built to hurt a naive parser (control characters, JSON nested 5000
    deep, a prompt that is not UTF-8, 256 KiB); expects each call to end with a status (OK
    with one final chunk, or an error such as INVALID_ARGUMENT) and Health to answer after
    each: the adapter treats its input as untrusted. An error other than INVALID_ARGUMENT
    (UNKNOWN, INTERNAL: the adapter's parser failed) is NON_STRICT (ATP-ADAPT-021)."""
    seen = []
    tasks = _hostile_tasks(task_type_of(s))
    for what, payload in tasks:
        c = await s.call("Stream", payload)
        if not await c.wait_end(s.bound(10.0)):
            c.cancel()
            raise Failed(
                f"{what}: no end within {s.ctx.timeout(10):g}s",
                "a status",
                violated=("ATP-SEC-012",),
            )
        if c.status is None:
            raise Failed(
                f"{what}: the call ended with {status_of(c)}",
                "a gRPC status",
                violated=("ATP-SEC-012",),
            )
        h = await s.unary("Health", b"")
        if h.status != 0:
            raise Failed(
                f"Health after {what}: {status_of(h)}",
                "the adapter still answers",
                violated=("ATP-SEC-012",),
            )
        seen.append(GRPC_NAMES.get(c.status, str(c.status)))
    odd = [f"{what}: {name}" for (what, _), name in zip(tasks, seen, strict=True)
           if name not in ("OK", "INVALID_ARGUMENT")]  # fmt: skip
    if odd:
        raise Failed(
            f"a hostile task got {'; '.join(odd)}",
            "OK or INVALID_ARGUMENT (a refused task is the caller's fault)",
            soft=True,
            violated=("ATP-ADAPT-021",),
        )
    return ", ".join(seen)


async def _deadline_call(s: Session, timeout: float) -> str:
    slack = s.ctx.timeout(0.4)
    c = await s.call(
        "Stream",
        task_bytes(LONG_PROMPT, task_type=task_type_of(s), max_tokens=4096),
        timeout=timeout,
    )
    deadline = c.started + timeout
    await c.wait_end(deadline + slack + s.ctx.timeout(0.5))
    late = [e for e in c.messages() if e.at > deadline + slack]
    if late:
        c.cancel()
        raise Failed(
            f"{len(late)} chunk(s) sent after the {timeout * 1000:g} ms deadline "
            f"(the last {(late[-1].at - deadline) * 1000:.0f} ms after it)",
            "no chunk after the deadline",
        )
    if not c.ended or (c.events and c.events[-1].at > deadline + slack):
        c.cancel()
        raise Failed(
            f"the call was still open {slack * 1000:.0f} ms after its deadline",
            "DEADLINE_EXCEEDED (or done) by the deadline",
        )
    if c.status == 0:
        chunks = stream_chunks(c)
        if not chunks or not chunks[-1].final:
            raise Failed("OK at the deadline without a final chunk", "DEADLINE_EXCEEDED")
        return "finished in time"
    if c.status in (1, 4):
        return GRPC_NAMES[c.status]
    raise Failed(f"ended with {status_of(c)}", "DEADLINE_EXCEEDED")


@case(
    "adapter.deadline.timeout-on-sleeping-server",
    "A call's grpc-timeout is honoured: nothing after the deadline",
    ("ATP-ADAPT-008",),
)
async def _deadline(s: Session) -> str:
    """gRPC interop timeout_on_sleeping_server: Streams with grpc-timeout 1 ms and 100 ms
    (the suite does not enforce them); expects the call ended by the deadline (+400 ms):
    DEADLINE_EXCEEDED, CANCELLED, or a complete answer; no chunk after it."""
    a = await _deadline_call(s, 0.001)
    b = await _deadline_call(s, 0.1)
    return f"1 ms: {a}; 100 ms: {b}"


@case(
    "adapter.deadline.stops-work",
    "After a deadline the adapter's work stops (probe)",
    ("ATP-ADAPT-008", "ATP-ADAPT-024"),
)
async def _deadline_work(s: Session) -> str:
    """Reads the atp-calls-in-flight probe, runs a Stream with grpc-timeout 100 ms, and
    expects the probe back to its first value within 1 s of the deadline."""
    base = await probe(s)
    if base is None:
        raise Unsupported(f"no {PROBE_HEADER} probe on Health (ATP-ADAPT-024)")
    c = await s.call(
        "Stream", task_bytes(LONG_PROMPT, task_type=task_type_of(s), max_tokens=4096), timeout=0.1
    )
    await trio.sleep(0.1)
    await settles(s, base, 1.0, "the deadline")
    c.cancel()
    return ""


async def _cancel_case(s: Session, *, after_first: bool) -> str:
    base = await probe(s)
    c = await s.call("Stream", task_bytes(LONG_PROMPT, task_type=task_type_of(s), max_tokens=4096))
    if after_first:
        end = s.bound(5.0)
        while not c.messages() and not c.ended:
            if not await c.wait_change(end):
                c.cancel()
                raise Failed("no first chunk within 5 s", "a chunk")
        if not c.messages():
            raise Failed(f"Stream ended with {status_of(c)} before any chunk", "a chunk")
    c.cancel()
    s.note("client sent RST_STREAM(CANCEL)")
    t = trio.current_time()
    h = await s.unary("Health", b"", timeout=2.0)
    if h.status != 0:
        raise Failed(f"Health after the cancellation: {status_of(h)}", "OK")
    if base is None:
        ms = (trio.current_time() - t) * 1000
        raise Unsupported(
            f"the connection stays usable ({ms:.0f} ms),"
            f" but whether work stopped is not observable: no {PROBE_HEADER}"
            " probe on Health (ATP-ADAPT-024)"
        )
    await settles(s, base, 1.0, "the cancellation")
    return ""


@case(
    "adapter.cancel.after-begin",
    "A call cancelled before any reply stops (cancel_after_begin)",
    ("ATP-ADAPT-008",),
)
async def _cancel_begin(s: Session) -> str:
    """Opens a Stream and resets it at once (RST_STREAM CANCEL); expects the connection to
    stay usable and, with the probe, the adapter's calls in flight back within 1 s."""
    return await _cancel_case(s, after_first=False)


@case(
    "adapter.cancel.after-first-response",
    "A call cancelled after its first chunk stops (cancel_after_first_response)",
    ("ATP-ADAPT-008",),
)
async def _cancel_first(s: Session) -> str:
    """Opens a long Stream, resets it after the first chunk; expects the connection to stay
    usable and, with the probe, the adapter's calls in flight back within 1 s."""
    return await _cancel_case(s, after_first=True)


@case(
    "adapter.probe.in-flight",
    "Health offers the atp-calls-in-flight probe",
    ("ATP-ADAPT-024",),
    level=Level.L2,
    strength=Strength.MAY,
)
async def _probe_case(s: Session) -> str:
    """Sends Health; expects an atp-calls-in-flight response header holding a count."""
    n = await probe(s)
    if n is None:
        raise Unsupported(f"no {PROBE_HEADER} header on the Health reply")
    return f"{n} call(s) in flight"


CASES: dict[str, tuple[CaseSpec, Check]] = {spec.id: (spec, fn) for spec, fn in _REGISTRY}


def cases(options: Mapping[str, Any]) -> list[CaseSpec]:
    """Every case of the adapter role (the options do not change the list)."""
    return [spec for spec, _ in _REGISTRY]


def parse_target(target: str) -> tuple[str, int]:
    """``grpc://HOST:PORT`` -> (host, port).

    Raises:
        ValueError: not such a URL (the message says why).
    """
    parts = urlsplit(target)
    if parts.scheme != "grpc":
        raise ValueError(f"the adapter role needs --target grpc://HOST:PORT, not {target!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {target!r}") from None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"the adapter role needs grpc://HOST:PORT, not {target!r}")
    return parts.hostname, port


async def run(case: CaseSpec, ctx: RunContext) -> CaseResult:
    """Run one case on a fresh connection to ``ctx.target``.

    Raises:
        TargetUnreachable: no connection to the target at all.
    """
    spec, fn = CASES[case.id]
    host, port = parse_target(ctx.target)
    t0 = time.perf_counter()
    connect_timeout = ctx.timeout(5.0)
    try:
        cm = open_conn(host, port, connect_timeout=connect_timeout)
        conn = await cm.__aenter__()
    except BaseException as exc:
        # the wait for the adapter's SETTINGS fails inside open_conn's nursery: a group
        # of one (before, a listener that never answers was 17 harness ERRORs, exit 1)
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, trio.TooSlowError):
            why = f"no HTTP/2 SETTINGS within {connect_timeout:g} s (is it a gRPC server?)"
            raise TargetUnreachable(f"cannot connect to {ctx.target}: {why}") from None
        if isinstance(leaf, OSError):
            raise TargetUnreachable(f"cannot connect to {ctx.target}: {leaf}") from None
        raise
    session = Session(conn, ctx, trio.current_time())
    verdict, message, expected = Verdict.PASS, "", ""
    violated: tuple[str, ...] = ()
    try:
        message = await fn(session)
    except Failed as exc:
        soft = spec.strength is not Strength.MUST if exc.soft is None else exc.soft
        verdict = Verdict.NON_STRICT if soft else Verdict.FAIL
        message, expected = exc.message, exc.expected
        own = tuple(r for r in spec.requirements if r != "ATP-ADAPT-006")
        violated = exc.violated or own or spec.requirements
    except Unsupported as exc:
        verdict, message = Verdict.UNSUPPORTED, str(exc)
    except ConnectionError as exc:
        verdict, message = Verdict.FAIL, f"the adapter dropped the connection: {exc}"
        violated = ("ATP-ADAPT-006",)
    finally:
        await cm.__aexit__(None, None, None)
    return CaseResult(
        case=spec,
        verdict=verdict,
        message=message,
        expected=expected,
        duration_ms=(time.perf_counter() - t0) * 1000,
        exchange=session.exchange(),
        violated=violated,
    )
