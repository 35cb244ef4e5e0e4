"""Fan-out: call the adapters, relay their chunks, fail over (ATP-ADAPT-011, ATP-BUDGET).

The cheapest fitting adapters start first, as many as the width allows (``meta.fanout``,
at most ``window.max_parallel``); each chunk becomes a PARTIAL (MORE) as it arrives,
after its usage is charged to the stream's ledger (EBUDGET when it would pass the window,
which stops every adapter of the stream). An adapter that fails before producing output
is replaced by the next candidate that fits the live budget, cheap first; one that dies
mid-stream too, with a PARTIAL saying so. With no candidate left the stream ends with the
mapped code of the last failure — never a hang: adapter calls are bounded by the stream's
TTL plus a grace (so that the router's own TTL timer decides) and by the router's call
timeout.

The per-chunk path (charge, can_write, send) is kept to bound locals and pre-encoded
CBOR pieces (:func:`atp_proto.messages.partial_chunk_body`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from atp_proto.adapters import AdapterError, TaskRequest
from atp_proto.frames import BudgetExceeded, ErrorCode
from atp_proto.messages import adapter_key, confidence_tail, partial_chunk_body
from atp_proto.router.budget import BudgetLedger

from ._emit import Emitter
from ._model import Candidate, Outcome, StreamFailed, adapter_failure
from .context import RoutingContext
from .hedging import Race, hedged_call

__all__ = ["FanOut"]

log = logging.getLogger("atp.router")


class FanOut:
    """One stream's adapter calls; escalation calls through it too."""

    def __init__(
        self, ctx: RoutingContext, task: TaskRequest, ledger: BudgetLedger, emit: Emitter
    ) -> None:
        self.ctx = ctx
        self.task = task
        self.ledger = ledger
        self.emit = emit
        self.used: list[str] = []  #: adapters called, in order (telemetry)
        #: every call's outcome, escalations included, in the order they ended (learner)
        self.outcomes: list[Outcome] = []
        self.adapter_failures = 0
        #: set by run() when no adapter finished (every call failed): the admission
        #: limit backs off on it
        self.all_failed = False
        #: hedge the stream's first call (Decision.hedge, ATP-STRAT-006)
        self.hedge = False
        #: (primary, backup, backup won) once a hedge started (telemetry)
        self.hedged: tuple[str, str, bool] | None = None

    def _next_fitting(self, queue: list[Candidate]) -> Candidate | None:
        """The cheapest queued candidate that fits the live budget (taken off the queue)."""
        for i, c in enumerate(queue):
            if self.ledger.fits(c.guarded_tokens, c.guarded_usd):
                return queue.pop(i)
        return None

    async def run(
        self, fitting: list[Candidate], ranked: list[Candidate], width: int
    ) -> list[Outcome]:
        """Start ``width`` lanes on the cheapest of ``fitting``; fail over within
        ``ranked``. Returns every outcome (at least one finished).

        Raises:
            BudgetExceeded: the budget window was passed (every lane stopped).
            StreamFailed: the client stalled, or every adapter failed.
        """
        outcomes: list[Outcome] = []
        starters = fitting[: min(width, len(fitting))]
        queue = [c for c in ranked if c not in starters]
        fatal: list[Exception] = []

        async def lane(first: Candidate, cancel: trio.CancelScope | _NoScope) -> None:
            cand: Candidate | None = first
            try:
                while cand is not None:
                    outcome = await self.first_call(cand, queue)
                    outcomes.append(outcome)
                    if outcome.finished:
                        return
                    cand = self._next_fitting(queue)  # failover: the next that fits now
                    if cand is not None:
                        # the code only: an adapter's own text may hold upstream secrets
                        reason = str(outcome.error.code) if outcome.error else ""
                        await self.emit.wait_writable()
                        self.emit.notice(
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

        if len(starters) == 1:
            # one lane: run it here, no nursery round trip, and no cancel scope either:
            # its only use is the fatal path's cancel(), which comes after the lane's
            # last checkpoint (the lane returns right after it), so there is nothing
            # left for it to stop (a scope costs ~35 calls a stream)
            await lane(starters[0], _NO_SCOPE)
        else:
            async with trio.open_nursery() as nursery:
                for c in starters:
                    nursery.start_soon(lane, c, nursery.cancel_scope)
        if fatal:
            raise fatal[0]
        if not any(o.finished for o in outcomes):
            self.all_failed = bool(outcomes)
            last = outcomes[-1].error if outcomes else None
            raise adapter_failure(
                last, f"every adapter failed (last: {last.code if last else 'none tried'})"
            )
        return outcomes

    async def first_call(self, cand: Candidate, queue: list[Candidate]) -> Outcome:
        """The stream's first call, hedged when allowed (once per stream; ATP-STRAT-006);
        any other call is a plain :meth:`call`."""
        if self.hedge and not self.used and queue:
            self.hedge = False
            hedger = self.ctx.hedger
            hedger.offer()
            delay = hedger.threshold(cand.name)
            if delay is not None:
                return await hedged_call(self, cand, queue, delay)
        return await self.call(cand)

    async def call(self, cand: Candidate, race: Race | None = None, slot: int = 0) -> Outcome:
        """Stream one adapter's answer as PARTIALs; charge usage as it arrives. In a hedge
        ``race`` only the call that claims the stream at its first text chunk sends."""
        ledger, emit = self.ledger, self.emit
        output = emit.output
        outcome = Outcome(cand.name)
        self.used.append(cand.name)
        ledger.acquire_parallel()
        metrics = self.ctx.metrics
        base_tokens, base_usd = 0, 0
        akey = adapter_key(cand.name)
        conf = math.nan  # never equal: the first chunk encodes its confidence
        tail = b""
        charge, can_write, send_partial = ledger.charge, output.can_write, output.send_partial
        text = outcome.text
        call_started = trio.current_time()
        if race is not None:
            race.outcomes[slot] = outcome
        try:
            # trio.fail_after, without its contextmanager layers (hot path)
            deadline = trio.current_time() + self.ctx.config.call_timeout_s
            with trio.CancelScope(deadline=deadline) as call_scope:
                async with _aclosing(cand.adapter.stream(self.task)) as chunks:
                    async for chunk in chunks:
                        tokens, usd = chunk.tokens, chunk.usd_micros
                        # max(0, ...) without the builtin's call (once per relayed chunk)
                        d_tok = tokens - base_tokens if tokens > base_tokens else 0
                        d_usd = usd - base_usd if usd > base_usd else 0
                        base_tokens, base_usd = tokens, usd
                        outcome.tokens, outcome.usd_micros = tokens, usd
                        charge(d_tok, d_usd)
                        outcome.confidence = chunk.confidence
                        if chunk.content:  # an empty chunk (usage, final marker) says nothing
                            if not text:  # the call's first text: once per call
                                self.ctx.hedger.observe_ttfc(
                                    cand.name, trio.current_time() - call_started
                                )
                                if race is not None and not race.claim(slot):
                                    outcome.cancelled = True
                                    break
                            if not can_write():
                                await emit.wait_writable()
                            if chunk.confidence != conf:
                                conf = chunk.confidence
                                tail = confidence_tail(conf)
                            n = emit.chunk_no
                            send_partial(
                                partial_chunk_body(n, akey, chunk.content, tail),
                                ext=emit.take_first_ext() if n == 0 else None,
                            )
                            emit.chunk_no = n + 1
                            # kept once sent: the answer is exactly the PARTIALs this call
                            # sent, one text each (a FINAL may name them, ATP-FINAL-002)
                            text.append(chunk.content)
                        if chunk.final:
                            outcome.finished = True
                            break
            if call_scope.cancelled_caught:
                raise trio.TooSlowError
            if outcome.cancelled:
                return outcome  # lost a hedge race: nothing was sent
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
            ledger.release_parallel()
            if outcome.error is not None:  # ATP-BUDGET-019: its reused estimates go
                self.ctx.estimates.drop(cand.name)
            outcome.latency_ms = (trio.current_time() - call_started) * 1000.0
            self.outcomes.append(outcome)
        return outcome


class _NoScope:
    """What a one-lane fan-out's lane gets for the nursery's cancel scope."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_NO_SCOPE = _NoScope()


class _aclosing:
    def __init__(self, it: Any) -> None:
        self.it = it

    async def __aenter__(self) -> Any:
        return self.it

    async def __aexit__(self, *exc: object) -> None:
        aclose = getattr(self.it, "aclose", None)
        if aclose is not None:
            await aclose()
