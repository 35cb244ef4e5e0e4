"""Admission: a global concurrency limit that adapts (AIMD), with QoS lanes.

When the router is at its limit, waiting streams are admitted by weighted fair queuing
across lanes (gold 6 : silver 3 : bronze 1, by virtual finish time), and under pressure
bronze is shed first with EPREEMPT and a ``retry_after_ms`` hint.

The limit moves like TCP's window (Netflix concurrency-limits' AIMD): +1/limit for each
call that finishes under the latency target, ×0.9 on an error or a latency spike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from atp_proto._control import AimdLimit
from atp_proto.frames import ATPError, ErrorCode, QoS
from atp_proto.session.lanes import WEIGHTS, FairQueue


class Shed(ATPError):
    """The stream was shed (EPREEMPT): retry after ``retry_after_ms``."""

    def __init__(self, lane: QoS, retry_after_ms: int, reason: str) -> None:
        super().__init__(ErrorCode.EPREEMPT, reason, retry_after_ms=retry_after_ms)
        self.lane = lane
        self.retry_after_ms: int = retry_after_ms
        self.reason = reason


@dataclass
class _Waiter:
    lane: QoS
    event: trio.Event = field(default_factory=trio.Event)
    shed: Shed | None = None
    admitted: bool = False


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """The global concurrency limit and its queue.

    ``initial_limit`` is only where the limit *starts*: it grows by AIMD while calls finish
    under ``latency_target_s``, up to ``max_limit``. To cap the streams running at once, set
    ``max_limit`` (and ``initial_limit`` no higher); ``min_limit`` is the floor it never
    shrinks below.
    """

    initial_limit: int = 64  #: starting limit, in min_limit..max_limit (not a cap)
    min_limit: int = 4
    max_limit: int = 1024  #: the cap on streams running at once
    latency_target_s: float = 2.0
    max_queue: int = 256  #: waiting streams, all lanes
    bronze_queue_share: float = 0.25  #: bronze is shed once it holds this share of max_queue
    #: bronze is admitted only while fewer than this share of the limit are running (at
    #: least one slot): the rest is headroom that gold and silver never wait behind bronze
    #: for (ATP-ADAPT-026). 1.0, the default: bronze may take every slot.
    bronze_limit_share: float = 1.0

    def __post_init__(self) -> None:
        for name in ("initial_limit", "min_limit", "max_limit", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                "need 1 <= min_limit <= initial_limit <= max_limit, got "
                f"{self.min_limit}, {self.initial_limit}, {self.max_limit} (max_limit is the "
                "cap; initial_limit only where the adaptive limit starts)"
            )
        if not (
            isinstance(self.latency_target_s, int | float)
            and not isinstance(self.latency_target_s, bool)
            and self.latency_target_s > 0
        ):
            raise ValueError(f"latency_target_s must be positive, got {self.latency_target_s!r}")
        if not (
            isinstance(self.bronze_queue_share, int | float)
            and 0.0 <= self.bronze_queue_share <= 1.0
        ):
            raise ValueError(
                f"bronze_queue_share must be within 0..1, got {self.bronze_queue_share!r}"
            )
        if not (
            isinstance(self.bronze_limit_share, int | float)
            and not isinstance(self.bronze_limit_share, bool)
            and 0.0 < self.bronze_limit_share <= 1.0
        ):
            raise ValueError(
                f"bronze_limit_share must be within (0, 1], got {self.bronze_limit_share!r}"
            )


class Admission:
    """Global admission controller. One per router."""

    def __init__(
        self,
        config: AdmissionConfig | None = None,
        on_change: Callable[[Admission], None] | None = None,
    ) -> None:
        self.config = config or AdmissionConfig()
        self._limit = AimdLimit(
            self.config.initial_limit, self.config.min_limit, self.config.max_limit
        )
        self.in_flight = 0
        #: waiters, per lane, in weighted-fair order (the session's writers use the same)
        self._queue: FairQueue[_Waiter] = FairQueue(WEIGHTS)
        self._on_change = on_change

    @property
    def limit(self) -> float:
        """The adaptive concurrency limit (AIMD, :class:`atp_proto._control.AimdLimit`)."""
        return self._limit.value

    @limit.setter
    def limit(self, value: float) -> None:
        self._limit.value = float(value)

    def queue_depth(self, lane: QoS) -> int:
        return self._queue.depth(lane)

    def gauges(self) -> tuple[int, int, int, int]:
        """``(int(limit), queue_depth(GOLD), queue_depth(SILVER), queue_depth(BRONZE))``
        in one call: the router reads it on every admission and release."""
        gold, silver, bronze = self._queue.depths()
        return int(self._limit.value), gold, silver, bronze

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    def _cap(self, lane: QoS) -> int:
        """Streams that may run at once when ``lane`` is admitted (ATP-ADAPT-026)."""
        limit = int(self.limit)
        if lane is QoS.BRONZE and self.config.bronze_limit_share < 1.0:
            return max(1, int(limit * self.config.bronze_limit_share))
        return limit

    def _retry_hint(self) -> int:
        return int(min(30_000, 100 + 50 * self.waiting))

    def refuse_now(self, lane: QoS) -> Shed | None:
        """The :class:`Shed` that :meth:`acquire` would raise at once for ``lane`` now, or
        None (it would admit or queue the stream). The router asks before any adapter work
        for a stream (ATP-ADAPT-025): under a flood, the streams shed anyway must not load
        with Estimate calls the adapters the admitted streams are waiting on."""
        lane = self._queue.lane_of(lane)
        if self.in_flight < self._cap(lane) and not self.waiting:
            return None
        cfg = self.config
        if self.waiting >= cfg.max_queue and not any(
            int(lower) > int(lane) and self._queue.depth(lower)
            for lower in (QoS.BRONZE, QoS.SILVER)
        ):
            return Shed(lane, self._retry_hint(), "the router is overloaded")
        if (
            lane is QoS.BRONZE
            and self._queue.depth(QoS.BRONZE) >= cfg.max_queue * cfg.bronze_queue_share
        ):
            return Shed(lane, self._retry_hint(), "bronze lane is full")
        return None

    async def acquire(self, lane: QoS) -> None:
        """Wait for a slot. Raises :class:`Shed` when the stream is refused."""
        lane = self._queue.lane_of(lane)
        if self.in_flight < self._cap(lane) and not self.waiting:
            self.in_flight += 1
            self._changed()
            return
        cfg = self.config
        if self.waiting >= cfg.max_queue:
            # evict the newest waiter of the lowest lane below this one: bronze, then silver
            victim = None
            for lower in (QoS.BRONZE, QoS.SILVER):
                if int(lower) > int(lane) and (victim := self._newest(lower)) is not None:
                    break
            if victim is None:
                raise Shed(lane, self._retry_hint(), "the router is overloaded")
            self._shed(victim, "shed for a higher lane under load")
        if (
            lane is QoS.BRONZE
            and self._queue.depth(QoS.BRONZE) >= cfg.max_queue * cfg.bronze_queue_share
        ):
            raise Shed(lane, self._retry_hint(), "bronze lane is full")
        waiter = _Waiter(lane)
        self._queue.push(lane, waiter)
        # a slot may be free for this lane while bronze waits for its share (ATP-ADAPT-026)
        self._admit()
        self._changed()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.admitted:
                self.release()
            elif self._queue.remove(lane, waiter):
                self._changed()
            raise
        if waiter.shed is not None:
            raise waiter.shed

    def _newest(self, lane: QoS) -> _Waiter | None:
        return self._queue.newest(lane)

    def _shed(self, waiter: _Waiter, reason: str) -> None:
        self._queue.remove(waiter.lane, waiter)
        waiter.shed = Shed(waiter.lane, self._retry_hint(), reason)
        waiter.event.set()

    def release(self, *, latency_s: float | None = None, error: bool = False) -> None:
        """A call finished: free the slot, adapt the limit, admit the next waiter."""
        self.in_flight -= 1
        self._limit.sample(latency_s, error=error, target_s=self.config.latency_target_s)
        self._admit()
        self._changed()

    def _admit(self) -> None:
        while self.in_flight < int(self.limit):
            # past bronze's share of the limit only gold and silver are admitted
            skip = QoS.BRONZE if self.in_flight >= self._cap(QoS.BRONZE) else None
            best = self._queue.pop(skip)
            if best is None:
                return
            best.admitted = True
            self.in_flight += 1
            best.event.set()

    def shed_bronze(self, fraction: float = 1.0) -> int:
        """Shed waiting bronze streams (operator pressure valve). Returns how many."""
        n = math.ceil(self._queue.depth(QoS.BRONZE) * fraction)
        for _ in range(n):
            newest = self._queue.newest(QoS.BRONZE)
            assert newest is not None
            self._shed(newest, "bronze shed under pressure")
        self._changed()
        return n
