"""QoS lanes and weighted fair queuing across them, by virtual finish time.

One scheduler for the two places that pick "who goes next" among gold, silver and bronze:
the router's admission queue (:mod:`atp_proto.router.admission`) and the session's
writers waiting for output room (:mod:`atp_proto.session.session`). Weights gold 6 :
silver 3 : bronze 1 (spec §QoS). Each entry gets a virtual finish time
``max(virtual now, its lane's last finish) + 1 / weight`` and the smallest finish goes
first (start-time fair queuing); a lane that was idle starts at the current virtual time,
so idleness earns no burst credit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Generic, TypeVar

from atp_proto.frames import QoS

__all__ = ["LANES", "WEIGHTS", "FairQueue"]

LANES = (QoS.GOLD, QoS.SILVER, QoS.BRONZE)
WEIGHTS: Mapping[QoS, float] = {QoS.GOLD: 6.0, QoS.SILVER: 3.0, QoS.BRONZE: 1.0}

T = TypeVar("T")


class FairQueue(Generic[T]):
    """FIFO per lane; :meth:`pop` takes the head with the smallest virtual finish time."""

    def __init__(self, weights: Mapping[QoS, float] = WEIGHTS) -> None:
        self._weights = weights
        self._queues: dict[QoS, deque[tuple[float, T]]] = {lane: deque() for lane in weights}
        self._vtime = 0.0
        self._last_finish = dict.fromkeys(weights, 0.0)

    def lane_of(self, lane: QoS) -> QoS:
        """``lane`` if it is scheduled here, else silver (an unknown QoS value)."""
        return lane if lane in self._queues else QoS.SILVER

    def push(self, lane: QoS, item: T) -> float:
        """Queue ``item`` in ``lane``; returns its virtual finish time."""
        lane = self.lane_of(lane)
        finish = max(self._vtime, self._last_finish[lane]) + 1.0 / self._weights[lane]
        self._last_finish[lane] = finish
        self._queues[lane].append((finish, item))
        return finish

    def pop(self, skip: QoS | None = None) -> T | None:
        """The next item in fair order (None when every lane is empty), not from lane
        ``skip`` when given (the admission's bronze share of the limit is used up)."""
        best: QoS | None = None
        best_finish = 0.0
        for lane, q in self._queues.items():
            if q and lane is not skip and (best is None or q[0][0] < best_finish):
                best, best_finish = lane, q[0][0]
        if best is None:
            return None
        self._vtime = best_finish
        return self._queues[best].popleft()[1]

    def remove(self, lane: QoS, item: T) -> bool:
        """Take ``item`` out of ``lane`` (e.g. its waiter was cancelled); False if absent."""
        q = self._queues[self.lane_of(lane)]
        for entry in q:
            if entry[1] is item:
                q.remove(entry)
                return True
        return False

    def newest(self, lane: QoS) -> T | None:
        q = self._queues[self.lane_of(lane)]
        return q[-1][1] if q else None

    def depth(self, lane: QoS) -> int:
        return len(self._queues[self.lane_of(lane)])

    def depths(self) -> tuple[int, int, int]:
        """``(depth(GOLD), depth(SILVER), depth(BRONZE))`` in one call."""
        q = self._queues
        silver = q.get(QoS.SILVER)
        gold, bronze = q.get(QoS.GOLD, silver), q.get(QoS.BRONZE, silver)
        return (
            len(gold) if gold is not None else 0,
            len(silver) if silver is not None else 0,
            len(bronze) if bronze is not None else 0,
        )

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:
        return any(self._queues.values())
