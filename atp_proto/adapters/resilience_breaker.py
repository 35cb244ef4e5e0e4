"""The circuit breaker of :class:`~atp_proto.adapters.resilience.ResilientAdapter`: its
states, the codes that count as the adapter's failures, and how each call's outcome moves
the breaker, the consecutive-failure counts, the adapter's pushback and the AIMD limit
(the module docstring of :mod:`atp_proto.adapters.resilience` says the rules;
ATP-ADAPT-014 for overload and pushback).

:class:`Breaker` is a base class of ``ResilientAdapter``, not an object of its own: the
breaker's state lives on the adapter (tests and metrics read it there), and the
adapter's ``__init__`` sets every attribute declared below.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING

import trio

from atp_proto.frames import ErrorCode

from ._base import AdapterError, Health

if TYPE_CHECKING:
    from atp_proto._control import AimdLimit

    from .resilience import ResilienceStats

__all__ = ["BREAKER_FAILURES", "Breaker", "BreakerState"]

log = logging.getLogger("atp.adapter.resilience")

BREAKER_FAILURES = {
    ErrorCode.EAGENTDOWN,
    ErrorCode.ETIMEOUT,
    ErrorCode.EINTERNAL,
    ErrorCode.EWINDOW_AGENT,  # ATP-ADAPT-014: overload counts; the local limit does not
}


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """The breaker's state and its transitions, on the adapter (see the module doc)."""

    # set by ResilientAdapter.__init__
    name: str
    cooldown: float
    failure_threshold: int
    latency_target: float
    spike_factor: float
    pushback_until: float
    opened_at: float
    health_changes: int
    stats: ResilienceStats
    _breaker: BreakerState
    _failures: dict[bool, int]
    _last_health: Health | None
    _probe_in_flight: bool
    _open_code: str
    _limit: AimdLimit
    _lot: trio.lowlevel.ParkingLot

    @property
    def limit(self) -> float:
        """The current concurrency limit (calls compare ``int(limit)``)."""
        return self._limit.value

    def _decrease(self) -> None:
        self._limit.decrease()

    @property
    def breaker(self) -> BreakerState:
        return self._breaker

    @breaker.setter
    def breaker(self, state: BreakerState) -> None:
        if state is not self._breaker:
            self.health_changes += 1
        self._breaker = state

    @property
    def last_health(self) -> Health | None:
        """The last health check's report (None before the first)."""
        return self._last_health

    @last_health.setter
    def last_health(self, h: Health | None) -> None:
        old = None if self._last_health is None else self._last_health.status
        new = None if h is None else h.status
        if old != new and not (old is None and new in ("READY", "BUSY")):
            self.health_changes += 1
        self._last_health = h

    @property
    def available(self) -> bool:
        """Whether a call could be served now: the breaker is not open (a cooled-down
        breaker lets a probe through) and the last health check did not find the
        adapter DOWN or DRAINING (none yet: assumed available). Used by ``/readyz``."""
        self._refresh_breaker()
        if self.breaker is BreakerState.OPEN:
            return False
        return self.last_health is None or self.last_health.status not in ("DOWN", "DRAINING")

    def _refresh_breaker(self) -> None:
        if (
            self.breaker is BreakerState.OPEN
            and trio.current_time() - self.opened_at >= self.cooldown
        ):
            self.breaker = BreakerState.HALF_OPEN
            self._probe_in_flight = False

    def _retry_after_ms(self) -> int:
        left = self.cooldown - (trio.current_time() - self.opened_at)
        return max(1, math.ceil(left * 1000))

    def _open(self, code: str = ErrorCode.EAGENTDOWN) -> None:
        self._open_code = (
            ErrorCode.EWINDOW_AGENT if code == ErrorCode.EWINDOW_AGENT else ErrorCode.EAGENTDOWN
        )
        if self.breaker is not BreakerState.OPEN:
            self.stats.breaker_opened += 1
            log.warning(
                "adapter %s: circuit open after %d failure(s)", self.name, self.consecutive_failures
            )
        self.breaker = BreakerState.OPEN
        self.opened_at = trio.current_time()
        self._probe_in_flight = False

    @property
    def consecutive_failures(self) -> int:
        """The longer run of consecutive failures, of Stream calls or of unary calls."""
        return max(self._failures.values())

    def _on_success(self, latency: float | None, busy: int = 0, *, work: bool = True) -> None:
        """``busy``: calls in flight when this one ran (including it); ``work``: a Stream
        call (False: Estimate or Health)."""
        if self.breaker is BreakerState.CLOSED:
            self._failures[work] = 0
        else:
            self._failures = {True: 0, False: 0}  # a probe succeeded
        if self.breaker is not BreakerState.CLOSED:
            log.info("adapter %s: circuit closed", self.name)
        self.breaker = BreakerState.CLOSED
        self._probe_in_flight = False
        if latency is not None:
            if latency > self.latency_target * self.spike_factor:
                self._decrease()
            elif latency <= self.latency_target and busy * 2 >= self.limit:
                self._limit.increase(1)
                self._lot.unpark_all()

    def _on_failure(self, exc: AdapterError, *, work: bool = True) -> None:
        self.stats.failures += 1
        code = str(exc.code)
        if code in BREAKER_FAILURES:
            self._decrease()
        if code == ErrorCode.EWINDOW_AGENT and exc.retry_after_ms and exc.retry_after_ms > 0:
            # ATP-ADAPT-014: the adapter said when it can take calls again; until then
            # no call of ours reaches it (all of them fail fast with the time left).
            until = trio.current_time() + exc.retry_after_ms / 1000
            self.pushback_until = max(self.pushback_until, until)
        if code not in BREAKER_FAILURES:
            if self.breaker is BreakerState.HALF_OPEN:
                self._probe_in_flight = False  # not the adapter's fault: let another probe
            return
        self._failures[work] += 1
        if (
            self.breaker is BreakerState.HALF_OPEN
            or self.consecutive_failures >= self.failure_threshold
        ):
            self._open(code)

    def _check_open(self) -> None:
        """Fail at once (no call) when the breaker is open, a half-open probe is out, or
        the adapter's retry hint has not passed.

        Raises:
            AdapterError: EAGENTDOWN (EWINDOW_AGENT when overload opened the breaker, or
                for a pushback), with ``retry_after_ms``.
        """
        self._refresh_breaker()
        if self.breaker is BreakerState.OPEN or (
            self.breaker is BreakerState.HALF_OPEN and self._probe_in_flight
        ):
            self.stats.rejected_open += 1
            raise AdapterError(
                self._open_code,
                "circuit open",
                adapter=self.name,
                retry_after_ms=self._retry_after_ms() if self.breaker is BreakerState.OPEN else 100,
            )
        now = trio.current_time()
        if now < self.pushback_until:
            self.stats.rejected_pushback += 1
            raise AdapterError(
                ErrorCode.EWINDOW_AGENT,
                "adapter asked for a pause (resource exhausted)",
                adapter=self.name,
                retry_after_ms=max(1, math.ceil((self.pushback_until - now) * 1000)),
            )
