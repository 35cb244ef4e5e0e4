"""Per-adapter resilience: AIMD concurrency limit, circuit breaker, retries before
output, per-chunk idle timeout, periodic health checks.

``ResilientAdapter(inner)`` is itself an :class:`~atp_proto.adapters.Adapter`, so the
router wraps every adapter once and calls it as before. The router owns the health-check
task: ``nursery.start_soon(adapter.run_health_checks, 5.0)``.

* **Concurrency limit (AIMD, as in Netflix concurrency-limits)**: ``limit`` starts at
  ``initial_limit``. A call that succeeds with latency (time to first chunk, or the whole
  unary call) under ``latency_target`` while the adapter was at least half busy raises it
  by 1 (additive increase, up to ``max_limit``); an error, a timeout, or a latency above
  ``latency_target * spike_factor`` multiplies it by ``backoff_ratio`` (multiplicative
  decrease, down to ``min_limit``). Calls beyond the limit wait up to ``queue_timeout``
  seconds (0: fail at once) and then fail with EWINDOW_AGENT.
* **Circuit breaker**: CLOSED → OPEN after ``failure_threshold`` consecutive failures
  (EAGENTDOWN / ETIMEOUT / EINTERNAL, and EWINDOW_AGENT — the adapter's
  RESOURCE_EXHAUSTED: an overloaded adapter is not helped by more calls; a caller's
  mistake such as EPROTO or ESEC does not count). While OPEN, calls fail at once with
  ``retry_after_ms`` and EAGENTDOWN (EWINDOW_AGENT when overload opened it). After
  ``cooldown`` seconds the breaker is HALF_OPEN: one probe (a call, or a health check)
  goes through; success closes it, failure re-opens it. Stream calls and the unary calls
  (Estimate, Health) keep separate counts of consecutive failures, each reset only by a
  success of its own kind: an adapter that answers every Estimate and every health check
  but refuses every Stream (an overloaded one) still opens the breaker, however the calls
  of many streams interleave.
* **Retries**: a call that fails *before any output was streamed* with a retryable code
  (``retry_on``, default EAGENTDOWN and EWINDOW_AGENT) is retried up to ``max_retries``
  times with exponential backoff and full jitter, never sooner than the adapter's retry
  hint (and not at all when the hint is longer than ``retry_backoff_max``: the caller
  gets it), within the request's deadline. Retries are bounded per adapter by a token
  bucket (``retry_rate`` per second, bursts of ``retry_burst``; as Envoy's retry budget
  and gRPC's retry throttling): a failing adapter gets at most that many extra calls,
  however many streams hit it. Once a chunk has been yielded, failures are raised with
  ``streamed=True`` and never retried (the router decides on failover).
* **Pushback**: an EWINDOW_AGENT (RESOURCE_EXHAUSTED) with a retry hint stops all calls
  to the adapter until the hint has passed: they fail at once with EWINDOW_AGENT and
  the time left, without reaching the adapter (ATP-ADAPT-014).
* **Idle timeout**: waiting more than ``idle_timeout`` seconds for the next chunk (or the
  first one) fails the stream with ETIMEOUT (``streamed`` tells whether output came).
  A chunk the inner stream says is already here (its ``ready()``, as GrpcAdapter's
  :class:`~atp_proto.adapters.grpc.client.ChunkStream` has) is taken without a timer:
  nothing waits, so nothing can time out (one cancel scope less per chunk).
  The inner stream is closed shielded from cancellation, unless it says its ``aclose``
  never checkpoints (``aclose_checkpoints = False``, as ChunkStream does): then nothing
  can cancel it and no scope is opened.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from atp_proto._control import AimdLimit
from atp_proto.frames import ErrorCode

from ._base import Adapter, AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .resilience_breaker import Breaker, BreakerState

__all__ = ["BreakerState", "ResilientAdapter", "ResilienceStats"]  # BreakerState: re-exported

T = TypeVar("T")


@dataclass
class ResilienceStats:
    """Counters for metrics (monotonic)."""

    calls: int = 0
    failures: int = 0
    retries: int = 0
    rejected_open: int = 0  #: failed fast: breaker open
    rejected_limit: int = 0  #: failed: concurrency limit
    idle_timeouts: int = 0
    breaker_opened: int = 0
    rejected_pushback: int = 0  #: failed fast: the adapter's retry hint has not passed
    retries_throttled: int = 0  #: retries refused by the retry budget


class ResilientAdapter(Breaker):
    """Wraps any :class:`Adapter` (see the module docstring)."""

    def __init__(
        self,
        inner: Adapter,
        *,
        initial_limit: float = 8,
        min_limit: float = 1,
        max_limit: float = 256,
        backoff_ratio: float = 0.7,
        latency_target: float = 2.0,
        spike_factor: float = 3.0,
        queue_timeout: float = 1.0,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        max_retries: int = 2,
        retry_backoff: float = 0.05,
        retry_backoff_max: float = 2.0,
        retry_on: Iterable[str] = (ErrorCode.EAGENTDOWN, ErrorCode.EWINDOW_AGENT),
        retry_rate: float = 2.0,
        retry_burst: float = 4.0,
        idle_timeout: float | None = 30.0,
        health_timeout: float = 5.0,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        #: the adaptive concurrency limit (the shared AIMD of atp_proto._control, with a
        #: step of +1 gated by how busy the adapter was, see _adapt)
        self._limit = AimdLimit(initial_limit, min_limit, max_limit, backoff=backoff_ratio)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff_ratio = backoff_ratio
        self.latency_target = latency_target
        self.spike_factor = spike_factor
        self.queue_timeout = queue_timeout
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_on = {str(c) for c in retry_on}
        self.retry_rate = retry_rate
        self.retry_burst = retry_burst
        self._retry_tokens = float(retry_burst)
        self._retry_stamp: float | None = None  # set on first use (inside trio)
        self.pushback_until = -math.inf
        self._open_code: str = ErrorCode.EAGENTDOWN
        self.idle_timeout = idle_timeout
        self.health_timeout = health_timeout
        self.in_flight = 0
        #: bumped on every health change (ATP-BUDGET-019): the breaker's state, or the
        #: status of the last health check (the first report that the adapter takes
        #: work, after none, is no change); the estimate cache compares it
        self.health_changes = 0
        self._breaker = BreakerState.CLOSED
        #: consecutive failures of Stream calls (True) / of unary calls (False)
        self._failures = {True: 0, False: 0}
        self.opened_at = -math.inf
        self._last_health: Health | None = None
        self.stats = ResilienceStats()
        self._probe_in_flight = False
        self._lot = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> dict[str, Any]:
        """Snapshot for metrics: limit, in_flight, breaker state and counters."""
        return {
            "limit": int(self.limit),
            "in_flight": self.in_flight,
            "breaker": str(self.breaker),
            "consecutive_failures": self.consecutive_failures,
            "health": self.last_health.status if self.last_health else None,
            **vars(self.stats),
        }

    # ------------------------------------------------------------------ admission

    async def _acquire(self, deadline: float) -> None:
        """Breaker and pushback checks and a concurrency slot (caller must _release)."""
        self._check_open()
        probe_claimed = self.breaker is BreakerState.HALF_OPEN
        if probe_claimed:
            self._probe_in_flight = True
        if self.in_flight >= int(self.limit):
            wait_until = min(deadline, trio.current_time() + self.queue_timeout)
            with trio.move_on_at(wait_until):
                while self.in_flight >= int(self.limit):
                    await self._lot.park()
            if self.in_flight >= int(self.limit):
                self.stats.rejected_limit += 1
                if self.breaker is BreakerState.HALF_OPEN:
                    self._probe_in_flight = False
                raise AdapterError(
                    ErrorCode.EWINDOW_AGENT,
                    f"adapter concurrency limit reached ({int(self.limit)})",
                    adapter=self.name,
                    retry_after_ms=100,
                )
            # While this call waited, the calls ahead of it may have failed: the breaker
            # may be open, or the adapter may have asked for a pause (ATP-ADAPT-014).
            # A probe this call holds must not refuse the call itself; if the check
            # fails, the probe is given up (the flag stays clear).
            probing = probe_claimed and self._probe_in_flight
            if probing:
                self._probe_in_flight = False
            self._check_open()
            if probing:
                self._probe_in_flight = True
        self.in_flight += 1
        self.stats.calls += 1

    def _release(self) -> None:
        self.in_flight -= 1
        self._lot.unpark()

    def _deadline(self, request: TaskRequest) -> float:
        if request.deadline_ms is None:
            return math.inf
        return trio.current_time() + request.deadline_ms / 1000

    async def _backoff(self, attempt: int, exc: AdapterError, deadline: float) -> bool:
        """Sleep before retry ``attempt`` (1-based); False if no retry fits the deadline."""
        delay = random.uniform(
            0, min(self.retry_backoff_max, self.retry_backoff * 2 ** (attempt - 1))
        )
        if exc.retry_after_ms:
            if exc.retry_after_ms / 1000 > self.retry_backoff_max:
                return False  # a long pause: the caller gets the hint rather than a wait
            delay = max(delay, exc.retry_after_ms / 1000)
        if trio.current_time() + delay >= deadline:
            return False
        if not self._take_retry_token():
            self.stats.retries_throttled += 1
            return False
        self.stats.retries += 1
        await trio.sleep(delay)
        return True

    def _take_retry_token(self) -> bool:
        """The retry budget: a token bucket of ``retry_burst`` refilled at ``retry_rate``
        per second; False (no retry) when it is empty."""
        now = trio.current_time()
        if self._retry_stamp is not None:
            refill = (now - self._retry_stamp) * self.retry_rate
            self._retry_tokens = min(self.retry_burst, self._retry_tokens + refill)
        self._retry_stamp = now
        if self._retry_tokens < 1:
            return False
        self._retry_tokens -= 1
        return True

    def _retryable(self, exc: AdapterError, attempt: int) -> bool:
        return not exc.streamed and str(exc.code) in self.retry_on and attempt < self.max_retries

    @staticmethod
    def _left_ms(request: TaskRequest, deadline: float) -> TaskRequest:
        if deadline == math.inf:
            return request
        left = max(1, int((deadline - trio.current_time()) * 1000))
        return request.with_deadline_ms(left)  # its encoding kept: not encoded per call

    # ------------------------------------------------------------------ adapter API

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        return await self._unary(self.inner.estimate, request)

    async def _unary(self, fn: Callable[[TaskRequest], Awaitable[T]], request: TaskRequest) -> T:
        deadline = self._deadline(request)
        attempt = 0
        while True:
            await self._acquire(deadline)
            t0 = trio.current_time()
            try:
                result = await fn(self._left_ms(request, deadline))
            except AdapterError as exc:
                self._release()
                self._on_failure(exc, work=False)
                if self._retryable(exc, attempt) and await self._backoff(
                    attempt + 1, exc, deadline
                ):
                    attempt += 1
                    continue
                raise
            except BaseException:
                self._release()
                if self._probe_in_flight:
                    self._probe_in_flight = False
                raise
            busy = self.in_flight
            self._release()
            self._on_success(trio.current_time() - t0, busy, work=False)
            return result

    async def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]:
        deadline = self._deadline(request)
        attempt = 0
        yielded = 0
        while True:
            await self._acquire(deadline)
            busy = self.in_flight
            released = False
            t0 = trio.current_time()
            first_latency: float | None = None
            #: the last chunk yielded was final: the call succeeded, even when the caller
            #: stops iterating there (the router does) and this generator is closed
            last_final = False
            succeeded = False
            inner = self.inner.stream(self._left_ms(request, deadline))
            # an inner stream may say its next chunk is already here (GrpcAdapter's
            # ChunkStream.ready): then nothing waits, and no timer is opened for it
            ready: Callable[[], bool] | None = getattr(inner, "ready", None)
            try:
                while True:
                    timeout = self.idle_timeout if self.idle_timeout is not None else math.inf
                    now = trio.current_time()
                    wait_until = min(deadline, now + timeout)
                    chunk: Chunk | None = None
                    done = False
                    if ready is not None and now < wait_until and ready():
                        try:
                            chunk = await inner.__anext__()
                        except StopAsyncIteration:
                            done = True
                    else:
                        with trio.move_on_at(wait_until) as cs:
                            try:
                                chunk = await inner.__anext__()
                            except StopAsyncIteration:
                                done = True
                        if cs.cancelled_caught:
                            self.stats.idle_timeouts += 1
                            what = "next chunk" if yielded else "first chunk"
                            raise AdapterError(
                                ErrorCode.ETIMEOUT,
                                f"no {what} within {min(timeout, max(0.0, wait_until - t0)):.3f}s",
                                adapter=self.name,
                                streamed=yielded > 0,
                            )
                    if done:
                        break
                    assert chunk is not None
                    if first_latency is None:
                        first_latency = trio.current_time() - t0
                    yielded += 1
                    last_final = chunk.final
                    yield chunk
            except AdapterError as exc:
                released = True
                self._release()
                self._on_failure(exc)
                if yielded:
                    if not exc.streamed:
                        exc.streamed = True
                    raise
                if self._retryable(exc, attempt) and await self._backoff(
                    attempt + 1, exc, deadline
                ):
                    attempt += 1
                    continue
                raise
            finally:
                aclose = getattr(inner, "aclose", None)
                if aclose is not None:
                    if getattr(inner, "aclose_checkpoints", True):
                        with trio.CancelScope(shield=True):
                            await aclose()
                    else:
                        # it never checkpoints (GrpcAdapter's ChunkStream): no cancel
                        # can reach it, so no shield (one cancel scope less per stream)
                        await aclose()
                if not released:
                    self._release()
                    if last_final:
                        # a whole answer: a success (it resets the breaker's count of
                        # consecutive failures) whether or not the caller read past it
                        succeeded = True
                        self._on_success(first_latency, busy)
                    elif self._probe_in_flight:  # left early (break / cancel) while probing
                        if yielded:
                            self._on_success(None)  # output came: the adapter is alive
                        else:
                            self._probe_in_flight = False
            if not succeeded:
                self._on_success(first_latency, busy)
            return

    async def health(self) -> Health:
        return await self.inner.health()

    async def check_health(self) -> Health | None:
        """One health check: updates ``last_health`` and the breaker. A successful check
        of a HALF_OPEN (cooled down) adapter closes the breaker; a failed one counts as a
        failure."""
        self._refresh_breaker()
        try:
            with trio.fail_after(self.health_timeout):
                h = await self.inner.health()
        except (AdapterError, trio.TooSlowError) as exc:
            err = (
                exc
                if isinstance(exc, AdapterError)
                else AdapterError(ErrorCode.ETIMEOUT, "health check timed out", adapter=self.name)
            )
            self.last_health = Health(status="DOWN")
            if self.breaker is not BreakerState.OPEN:
                self._on_failure(err, work=False)
            return None
        self.last_health = h
        if h.status in ("READY", "BUSY"):
            if self.breaker is BreakerState.HALF_OPEN or self.consecutive_failures:
                self._on_success(None, work=False)
        elif h.status == "DOWN" and self.breaker is not BreakerState.OPEN:
            self._on_failure(
                AdapterError(ErrorCode.EAGENTDOWN, "reports DOWN", adapter=self.name), work=False
            )
        return h

    async def run_health_checks(self, interval: float) -> None:
        """Check health every ``interval`` seconds (with ±10% jitter) until cancelled.
        Run it in the router's nursery."""
        while True:
            await self.check_health()
            await trio.sleep(interval * random.uniform(0.9, 1.1))

    async def aclose(self) -> None:
        await self.inner.aclose()
