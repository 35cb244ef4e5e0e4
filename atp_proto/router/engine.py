"""What the router does with one stream, from SYN to FINAL.

1. Policy: the token's claims must allow the task type (ESEC otherwise).
2. Candidates: the configured adapters, or those named in ``meta.adapters``.
3. Preflight: ``Estimate`` from every candidate at once (bounded by a timeout); an
   estimate is guard-banded as mean + k·sqrt(variance) with k = 2 gold, 1 silver, 0.5
   bronze, and candidates whose guard-banded cost would overflow the budget window are
   dropped (EBUDGET when none is left).
4. Admission: a slot from the global, lane-aware :class:`Admission` (EPREEMPT if shed).
5. Fan-out: the cheapest fitting adapters first, as many as ``meta.fanout`` asks (1 by
   default) and ``window.max_parallel`` allows; each chunk becomes a PARTIAL (MORE) as
   it arrives, after its usage is charged to the budget window (EBUDGET when it would
   pass it, which stops the adapters).
6. Failover: an adapter that fails before producing output is replaced by the next
   candidate; one that dies mid-stream too, with a PARTIAL saying so; with no candidate
   left the stream ends with the mapped code of the last failure (ATP-ADAPT-011:
   EAGENTDOWN, EWINDOW_AGENT, ETIMEOUT, EPROTO, ESEC), with the adapter's retry hint
   where the code admits a retry — never a hang (adapter calls are bounded by the
   stream's TTL, plus a grace so that the router's own TTL timer decides, or the
   router's call timeout).
7. Consensus and escalation: the answer with the highest confidence wins; if it is
   below ``meta.min_confidence`` (or the router's default) and an untried candidate
   whose estimate promises more confidence than the champion has still fits the
   budget, the router escalates to it (champion/challenger, the most confident first).
8. FINAL (FIN) with the answer and telemetry ``{tokens, usd_micros, latency_ms,
   adapters}``; counters saturate at 2**64 - 1 (ATP-BUDGET-012).

The router's first DATA frame on a stream whose lane was lowered by the token's
``max_qos`` carries ext ``lane`` (ATP-SEC-015).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from atp_proto.adapters import Adapter, AdapterError, CostEstimate, TaskRequest
from atp_proto.frames import (
    BudgetExceeded,
    BudgetWindow,
    ErrorCode,
    FrameDecodeError,
    QoS,
    StreamOpened,
    decode_payload,
)

from .admission import Shed

if TYPE_CHECKING:
    from atp_proto.session import Output as StreamHandle
    from atp_proto.session import Session

    from .server import Router

log = logging.getLogger("atp.router")

GUARD_K = {QoS.GOLD: 2.0, QoS.SILVER: 1.0, QoS.BRONZE: 0.5}

#: The largest unsigned integer CBOR encodes without a tag (ATP-FRAME-006): telemetry
#: counters saturate there (ATP-BUDGET-012).
U64_MAX = (1 << 64) - 1

#: Adapter calls get the stream's TTL plus this much: the router's own TTL timer must
#: decide an expired stream (ETIMEOUT, ATP-TIME-001), not an adapter's deadline racing it.
TTL_GRACE_MS = 250

#: ATP codes an adapter failure may end a stream with (ATP-ADAPT-011); any other
#: code is reported as EAGENTDOWN.
_ADAPTER_CODES = {
    ErrorCode.EAGENTDOWN,
    ErrorCode.EWINDOW_AGENT,
    ErrorCode.ETIMEOUT,
    ErrorCode.EPROTO,
    ErrorCode.ESEC,
}
#: ... and those of them a retry may cure: they carry retry_after_ms (§11, ATP-ERR-004);
#: the others (ETIMEOUT, EPROTO, ESEC) never do (ATP-ERR-009).
_RETRYABLE = {ErrorCode.EAGENTDOWN: 1000, ErrorCode.EWINDOW_AGENT: 1000}


class StreamFailed(Exception):
    def __init__(self, code: ErrorCode | str, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


def adapter_failure(last: AdapterError | None, message: str) -> StreamFailed:
    """The stream error when no adapter took over: the mapped code of the last failure
    (ATP-ADAPT-011), with the adapter's retry hint when the code admits a retry (a
    default one for EAGENTDOWN / EWINDOW_AGENT, ATP-ERR-004) and none otherwise."""
    code = ErrorCode.EAGENTDOWN
    if last is not None and str(last.code) in _ADAPTER_CODES:
        code = ErrorCode(str(last.code))
    default = _RETRYABLE.get(code)
    if default is None:
        return StreamFailed(code, message)
    hint = last.retry_after_ms if last is not None else None
    return StreamFailed(code, message, hint if hint and hint > 0 else default)


@dataclass
class Candidate:
    name: str
    adapter: Adapter
    estimate: CostEstimate | None = None
    guarded_tokens: float = 0.0
    guarded_usd: float = 0.0
    error: str = ""
    failure: AdapterError | None = None


@dataclass
class Outcome:
    adapter: str
    text: list[str] = field(default_factory=list)
    confidence: float = 0.0
    tokens: int = 0
    usd_micros: int = 0
    finished: bool = False
    error: AdapterError | None = None

    @property
    def answer(self) -> str:
        return "".join(self.text)


def parse_task(ev: StreamOpened, request_id: str = "") -> TaskRequest:
    """The SYN payload as a task: ``{"type": ..., "content": {"prompt": ...}}``.

    Raises:
        StreamFailed: EPROTO when the payload is not an object with a text prompt.
    """
    try:
        body = decode_payload(ev.payload, ev.stream_id)
    except FrameDecodeError as exc:
        raise StreamFailed(ErrorCode.EPROTO, exc.message) from None
    if not isinstance(body, Mapping):
        raise StreamFailed(ErrorCode.EPROTO, 'the SYN payload must be an object with "content"')
    content = body.get("content", {})
    if isinstance(content, str):
        content = {"prompt": content}
    if not isinstance(content, Mapping):
        raise StreamFailed(ErrorCode.EPROTO, 'payload "content" must be an object')
    prompt = content.get("prompt", "")
    if not isinstance(prompt, str) or not prompt:
        raise StreamFailed(ErrorCode.EPROTO, 'payload "content.prompt" must be a non-empty string')
    meta = ev.meta
    task_type = meta.get("task_type", "qa")
    if not isinstance(task_type, str):
        raise StreamFailed(ErrorCode.EPROTO, '"meta.task_type" must be a string')
    return TaskRequest(
        task_type=task_type,
        prompt=prompt,
        content=dict(content),
        max_tokens=ev.window.max_tokens,
        meta=dict(meta),
        request_id=request_id,
        deadline_ms=ev.ttl * 1000 + TTL_GRACE_MS if ev.ttl else None,
    )


def _meta_int(meta: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise StreamFailed(ErrorCode.EPROTO, f'"meta.{key}" must be an integer in {lo}..{hi}')
    return v


class StreamJob:
    """Runs one stream. Created per SYN by :meth:`Router.run_stream`."""

    def __init__(self, router: Router, session: Session, ev: StreamOpened, handle: StreamHandle):
        self.router = router
        self.session = session
        self.ev = ev
        self.handle = handle
        self.sid = ev.stream_id
        self.lane = handle.lane
        self.started = trio.current_time()
        self.used: list[str] = []
        self.adapter_failures = 0
        self.client_wait_s = 0.0
        self.tokens = 0
        self.usd = 0
        self.chunk_no = 0
        self.estimate_failures: list[AdapterError] = []  #: in the order they came
        # ATP-SEC-015: a lane lowered by the token's max_qos is said on the first frame
        asked = ev.qos if ev.qos is not QoS.UNSPECIFIED else QoS.SILVER
        self.first_ext: dict[str, Any] | None = (
            {"lane": self.lane.label} if self.lane > asked else None
        )

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        metrics = self.router.metrics
        metrics.streams_active.inc(self.lane.label)
        outcome = "error"
        try:
            await self._run()
            outcome = "ok"
        except StreamFailed as exc:
            outcome = str(exc.code)
            self.session.send_error(self.sid, exc.code, exc.message, exc.retry_after_ms)
        except BudgetExceeded as exc:
            outcome = str(exc.code)
            self.session.send_error(self.sid, exc.code, exc.message)
        except trio.Cancelled:
            outcome = "reset" if self.handle.reset is not None else "cancelled"
            raise
        finally:
            metrics.streams_active.inc(self.lane.label, by=-1)
            metrics.streams_total.inc(self.lane.label, outcome)
            metrics.stream_latency.observe(trio.current_time() - self.started, self.lane.label)
            if self.tokens:
                metrics.tokens.inc(self.session.principal.tenant, by=self.tokens)

    async def _run(self) -> None:
        ev, session = self.ev, self.session
        principal = session.principal
        task = parse_task(ev, f"{session.session_id}-{self.sid}")
        if not principal.allows(task.task_type):
            raise StreamFailed(
                ErrorCode.ESEC, f"task type {task.task_type!r} is not allowed for this token"
            )
        candidates = self._candidates(task)
        fanout = _meta_int(ev.meta, "fanout", 1, 1, 16)
        min_conf = ev.meta.get("min_confidence", self.router.config.min_confidence)
        if isinstance(min_conf, bool) or not isinstance(min_conf, int | float):
            raise StreamFailed(ErrorCode.EPROTO, '"meta.min_confidence" must be a number')
        session.conn.cap_window(self.sid, self.router.config.tenant_window)
        window = session.conn.budget_window(self.sid)
        await self._estimate(candidates, task)
        fitting = self._fit(candidates, window)
        max_parallel = window.max_parallel or fanout
        try:
            await self.router.admission.acquire(self.lane)
        except Shed as exc:
            self.router.metrics.shed.inc(self.lane.label)
            raise StreamFailed(ErrorCode.EPREEMPT, exc.reason, exc.retry_after_ms) from None
        admitted = trio.current_time()
        self.client_wait_s = 0.0
        try:
            outcomes = await self._fan_out(task, fitting, min(fanout, max_parallel))
            best = self._consensus(outcomes)
            tried = {o.adapter for o in outcomes}
            remaining = [c for c in fitting if c.name not in tried]
            while best.confidence < float(min_conf) and remaining:
                # The challenger must promise more than the champion has: the most
                # confident untried estimate (the costliest among equals) first.
                remaining = [
                    c
                    for c in remaining
                    if c.estimate is not None and c.estimate.confidence > best.confidence
                ]
                if not remaining:
                    break
                challenger = max(
                    remaining,
                    key=lambda c: (c.estimate.confidence if c.estimate else 0.0, c.guarded_usd),
                )
                remaining.remove(challenger)
                if not self._still_fits(challenger, window):
                    continue
                await self._wait_writable()
                self._partial(
                    {
                        "escalate": {
                            "from": best.adapter,
                            "to": challenger.name,
                            "confidence": best.confidence,
                        }
                    },
                    best.confidence,
                )
                outcome = await self._call(task, challenger)
                if outcome.finished and outcome.confidence >= best.confidence:
                    best = outcome
        except BaseException:
            # A client reset, a budget stop or a stalled reader says nothing about the
            # adapters: release without adapting the global limit (ATP-ERR-005).
            self.router.admission.release()
            raise
        # Adapt on what the adapters did: their failures, and the time spent on them
        # (not the queueing before admission, nor the waits for the client's credit).
        self.router.admission.release(
            latency_s=trio.current_time() - admitted - self.client_wait_s,
            error=self.adapter_failures > 0 and not any(o.finished for o in outcomes),
        )
        await self._wait_writable()
        telemetry = {
            "tokens": min(self.tokens, U64_MAX),  # ATP-BUDGET-012: saturate, no bignum
            "usd_micros": min(self.usd, U64_MAX),
            "latency_ms": round((trio.current_time() - self.started) * 1000),
            "adapters": self.used,
        }
        final = {
            "type": "agent.result.final",
            "content": {"ok": True, "answer": best.answer, "adapter": best.adapter},
            "confidence": best.confidence,
        }
        ext: dict[str, Any] = {"telemetry": telemetry}
        if self.first_ext is not None:
            ext.update(self.first_ext)
            self.first_ext = None
        session.send(self.sid, cbor2.dumps(final), end_stream=True, ext=ext)

    # ------------------------------------------------------------------ steps

    def _candidates(self, task: TaskRequest) -> list[Candidate]:
        adapters = self.router.adapters
        wanted = task.meta.get("adapters")
        if wanted is None:
            names: Sequence[str] = list(adapters)
        elif isinstance(wanted, list) and all(isinstance(n, str) for n in wanted):
            unknown = [n for n in wanted if n not in adapters]
            if unknown:
                raise StreamFailed(ErrorCode.EPROTO, f"unknown adapter(s): {', '.join(unknown)}")
            names = list(dict.fromkeys(wanted))  # duplicates would multiply adapter calls
        else:
            raise StreamFailed(ErrorCode.EPROTO, '"meta.adapters" must be a list of names')
        if not names:
            raise StreamFailed(ErrorCode.EAGENTDOWN, "no adapters are configured", 5000)
        return [Candidate(n, adapters[n]) for n in names]

    async def _estimate(self, candidates: list[Candidate], task: TaskRequest) -> None:
        k = GUARD_K.get(self.lane, 1.0)
        timeout = self.router.config.estimate_timeout_s

        async def one(c: Candidate) -> None:
            with trio.move_on_after(timeout):
                try:
                    est = await c.adapter.estimate(task)
                except AdapterError as exc:
                    log.info(
                        "estimate failed",
                        extra={"adapter": c.name, "code": exc.code, "detail": exc.message[:200]},
                    )
                    c.error = f"{c.name}: {exc.code}"  # details are logged, not sent
                    c.failure = exc
                    self.estimate_failures.append(exc)
                    return
                c.estimate = est
                sd = math.sqrt(max(est.variance, 0.0))
                c.guarded_tokens = est.tokens + k * sd
                scale = c.guarded_tokens / est.tokens if est.tokens else 1.0
                c.guarded_usd = est.usd_micros * scale

        if len(candidates) == 1:  # no concurrency to gain: skip a task spawn (latency)
            await one(candidates[0])
            return
        async with trio.open_nursery() as nursery:
            for c in candidates:
                nursery.start_soon(one, c)

    def _fit(self, candidates: list[Candidate], window: BudgetWindow) -> list[Candidate]:
        alive = [c for c in candidates if c.estimate is not None]
        if not alive:
            reasons = "; ".join(c.error or f"{c.name}: no answer in time" for c in candidates)
            # ATP-ADAPT-011: the last failure decides the code; an adapter that did not
            # answer in time at all is down as far as this stream is concerned.
            timed_out = any(c.failure is None for c in candidates)
            last = None if timed_out else self.estimate_failures[-1]
            raise adapter_failure(last, f"no adapter answered the estimate ({reasons})")
        fitting = [c for c in alive if self._still_fits(c, window)]
        if not fitting:
            c = min(alive, key=lambda c: c.guarded_usd)
            raise StreamFailed(
                ErrorCode.EBUDGET,
                f"no adapter fits the budget window: cheapest ({c.name}) needs about "
                f"{math.ceil(c.guarded_tokens)} tokens / {math.ceil(c.guarded_usd)} usd_micros",
            )
        fitting.sort(key=lambda c: (c.guarded_usd, c.guarded_tokens))  # cheap first
        return fitting

    def _still_fits(self, c: Candidate, window: BudgetWindow) -> bool:
        if window.max_tokens is not None and self.tokens + c.guarded_tokens > window.max_tokens:
            return False
        return not (
            window.max_usd_micros is not None and self.usd + c.guarded_usd > window.max_usd_micros
        )

    async def _fan_out(self, task: TaskRequest, fitting: list[Candidate], n: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        queue = list(fitting)
        fatal: list[Exception] = []

        async def lane(first: Candidate, cancel: trio.CancelScope) -> None:
            cand: Candidate | None = first
            try:
                while cand is not None:
                    outcome = await self._call(task, cand)
                    outcomes.append(outcome)
                    if outcome.finished:
                        return
                    # failover: the next untried candidate, if any
                    cand = queue.pop(0) if queue else None
                    if cand is not None:
                        # the code only: an adapter's own text may hold upstream secrets
                        reason = str(outcome.error.code) if outcome.error else ""
                        await self._wait_writable()
                        self._partial(
                            {
                                "failover": {
                                    "from": outcome.adapter,
                                    "to": cand.name,
                                    "reason": reason,
                                }
                            },
                            0.0,
                        )
            except (BudgetExceeded, StreamFailed) as exc:
                # Budget or window passed: stop every adapter of this stream.
                fatal.append(exc)
                cancel.cancel()

        if min(n, len(queue)) == 1:  # one lane: run it here, no nursery round trip
            with trio.CancelScope() as scope:
                await lane(queue.pop(0), scope)
        else:
            async with trio.open_nursery() as nursery:
                for _ in range(min(n, len(queue))):
                    nursery.start_soon(lane, queue.pop(0), nursery.cancel_scope)
        if fatal:
            raise fatal[0]
        done = [o for o in outcomes if o.finished]
        if not done:
            last = outcomes[-1].error if outcomes else None
            raise adapter_failure(
                last, f"every adapter failed (last: {last.code if last else 'none tried'})"
            )
        return outcomes

    async def _call(self, task: TaskRequest, cand: Candidate) -> Outcome:
        """Stream one adapter's answer as PARTIALs; charge usage as it arrives."""
        session = self.session
        outcome = Outcome(cand.name)
        self.used.append(cand.name)
        session.conn.acquire_parallel(self.sid)
        metrics = self.router.metrics
        base_tokens, base_usd = 0, 0
        adapter_key = _ADAPTER_KEY + cbor2.dumps(cand.name)
        conf = math.nan  # never equal: the first chunk encodes its confidence
        tail = b""
        handle = self.handle
        try:
            # trio.fail_after, without its contextmanager layers (hot path)
            deadline = trio.current_time() + self.router.config.call_timeout_s
            with trio.CancelScope(deadline=deadline) as call_scope:
                async with _aclosing(cand.adapter.stream(task)) as chunks:
                    async for chunk in chunks:
                        d_tok = max(0, chunk.tokens - base_tokens)
                        d_usd = max(0, chunk.usd_micros - base_usd)
                        base_tokens, base_usd = chunk.tokens, chunk.usd_micros
                        # saturating: a lying adapter cannot push FINAL into a bignum
                        self.tokens = min(U64_MAX, self.tokens + d_tok)
                        self.usd = min(U64_MAX, self.usd + d_usd)
                        outcome.tokens, outcome.usd_micros = chunk.tokens, chunk.usd_micros
                        session.conn.charge(self.sid, tokens=d_tok, usd_micros=d_usd)
                        outcome.confidence = chunk.confidence
                        if chunk.content:  # an empty chunk (usage, final marker) says nothing
                            outcome.text.append(chunk.content)
                            if not session.can_write(handle):
                                await self._wait_writable()
                            if chunk.confidence != conf:
                                conf = chunk.confidence
                                tail = _CONFIDENCE_KEY + cbor2.dumps(conf)
                            session.send(
                                self.sid,
                                partial_chunk_body(self.chunk_no, adapter_key, chunk.content, tail),
                                more=True,
                                ext=self._take_first_ext() if self.chunk_no == 0 else None,
                            )
                            self.chunk_no += 1
                            if self.chunk_no == 1:  # time to first output: skip the writer hop
                                session.flush_now()
                        if chunk.final:
                            outcome.finished = True
                            break
            if call_scope.cancelled_caught:
                raise trio.TooSlowError
            if not outcome.finished:
                outcome.finished = True  # a stream that ended without a final marker
            metrics.adapter_calls.inc(cand.name, "ok")
        except AdapterError as exc:
            metrics.adapter_calls.inc(cand.name, str(exc.code))
            self.adapter_failures += 1
            log.info(
                "adapter call failed",
                extra={"adapter": cand.name, "code": exc.code, "detail": exc.message[:200]},
            )
            outcome.error = exc
        except trio.TooSlowError:
            metrics.adapter_calls.inc(cand.name, "ETIMEOUT")
            self.adapter_failures += 1
            outcome.error = AdapterError(
                ErrorCode.ETIMEOUT,
                "adapter call timed out",
                adapter=cand.name,
                streamed=bool(outcome.text),
            )
        finally:
            session.conn.release_parallel(self.sid)
        return outcome

    def _consensus(self, outcomes: list[Outcome]) -> Outcome:
        """Agreement- and confidence-weighted choice among finished answers."""
        done = [o for o in outcomes if o.finished]
        if len(done) == 1:
            return done[0]
        answers = [o.answer for o in done]

        def score(o: Outcome) -> float:
            agree = sum(1 for a in answers if a == o.answer) / len(answers)
            return o.confidence * (0.5 + 0.5 * agree)

        return max(done, key=score)

    def _partial(self, content: dict[str, Any], confidence: float) -> None:
        body = {"type": "agent.result.partial", "content": content, "confidence": confidence}
        self.session.send(self.sid, cbor2.dumps(body), more=True, ext=self._take_first_ext())
        self.chunk_no += 1

    def _take_first_ext(self) -> dict[str, Any] | None:
        ext, self.first_ext = self.first_ext, None
        return ext

    async def _wait_writable(self) -> None:
        """Wait for the client's credit / the session's room, at most write_stall_s: a
        client that stops reading must not hold an admission slot forever."""
        if self.session.can_write(self.handle):
            return
        start = trio.current_time()
        with trio.move_on_after(self.router.config.write_stall_s) as scope:
            await self.session.writable(self.handle)
        self.client_wait_s += trio.current_time() - start
        if scope.cancelled_caught:
            raise StreamFailed(
                ErrorCode.ETIMEOUT,
                f"the client took no output for {self.router.config.write_stall_s:g} s "
                "(no credit granted)",
            )


# A PARTIAL's body, {"type": "agent.result.partial", "content": {"chunk": N, "adapter":
# NAME, "text": TEXT}, "confidence": C}, is encoded once per relayed chunk: joining
# pre-encoded CBOR pieces gives the same bytes as cbor2.dumps of the dict at half the cost.
_PARTIAL_HEAD = (
    b"\xa3"
    + cbor2.dumps("type")
    + cbor2.dumps("agent.result.partial")
    + cbor2.dumps("content")
    + b"\xa3"
    + cbor2.dumps("chunk")
)
_ADAPTER_KEY = cbor2.dumps("adapter")
_TEXT_KEY = cbor2.dumps("text")
_CONFIDENCE_KEY = cbor2.dumps("confidence")


def partial_chunk_body(chunk_no: int, adapter_key: bytes, text: str, tail: bytes) -> bytes:
    """CBOR of a chunk's PARTIAL body; ``adapter_key`` is ``_ADAPTER_KEY`` + the encoded
    adapter name, ``tail`` is ``_CONFIDENCE_KEY`` + the encoded confidence."""
    return b"".join(
        (_PARTIAL_HEAD, cbor2.dumps(chunk_no), adapter_key, _TEXT_KEY, cbor2.dumps(text), tail)
    )


class _aclosing:
    def __init__(self, it: Any) -> None:
        self.it = it

    async def __aenter__(self) -> Any:
        return self.it

    async def __aexit__(self, *exc: object) -> None:
        aclose = getattr(self.it, "aclose", None)
        if aclose is not None:
            await aclose()
