"""The bandit's learning shared through Redis by every router of a fleet (``--redis``).

Each arm is Bayesian ridge regression (:mod:`..routing.learner.model`) whose posterior is
a sum over observations, so routers share the *observations*, not the posteriors: an
arm's ``A`` is 512 x 512 (2 MB) while one observation is a sparse feature vector (a few
dozen hashed words), a quality and a weight. Every ``interval_s`` a router appends what
it learned since the last sync to one Redis stream (XADD, atomic; capped at
``MAX_LOG`` entries) and applies the other routers' entries it has not seen (XRANGE from
its last id) with the same Sherman-Morrison update the learner uses: after a sync every
router holds the posterior of one learner that saw every observation, each counted once.

How observations are seen without touching the model code: the learner's ``arm()``
accessor is wrapped on the instance, and returns arms whose ``update`` also records
``(arm, x, quality, weight)``; other routers' entries are applied with the plain
``Arm.update``, so they are not echoed. The counters outside ``update`` (failures,
feedback reports) travel as deltas in the same entry.

A router that starts with no state replays the log (its last ``MAX_LOG`` entries: give a
new router the fleet's whole state with ``atp routing export | import`` or a state
file); one that loaded a state file starts at the log's end (its file holds the past).
Redis unreachable: the router keeps ranking and learning from its local state, keeps its
entries queued (at most ``MAX_QUEUE`` observations; older ones are dropped with a
warning) and sends them when Redis answers again (README "Scale-out"). Entries are
numbered per router and sent again as they were made, so one whose reply was lost (it
is in the log already) is applied once by the others. The latency
average and pending decisions stay per router.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import trio

from ..routing.learner.bandit import BanditLearner
from ..routing.learner.model import Arm, Vector
from .link import RedisError, RedisLink, redacted

__all__ = ["MAX_LOG", "MAX_QUEUE", "OBS_PER_ENTRY", "SharedLearning"]

log = logging.getLogger("atp.router")

#: entries kept in the Redis stream (XADD MAXLEN ~), each of at most OBS_PER_ENTRY
#: observations: Redis holds at most about MAX_LOG * OBS_PER_ENTRY * ~0.6 kB
MAX_LOG = 1000
OBS_PER_ENTRY = 256
MAX_QUEUE = 100_000  #: observations kept while Redis is away
MAX_ROUTERS = 10_000  #: routers whose last entry number is kept (they restart as new ones)
_READ_BATCH = 1000


@dataclasses.dataclass(slots=True)
class _RecordingArm(Arm):
    """An arm whose updates are also written down for the fleet."""

    _name: str = ""
    _record: Any = None  #: SharedLearning._recorded

    def update(self, x: Vector, quality: float, weight: float = 1.0) -> None:
        Arm.update(self, x, quality, weight)
        if weight > 0 and self._record is not None:
            idx = np.flatnonzero(x)
            self._record(self._name, idx, x[idx], quality, weight)


class SharedLearning:
    """Shares one :class:`BanditLearner`'s observations with the fleet's, through Redis."""

    def __init__(self, learner: BanditLearner, link: RedisLink, *, interval_s: float = 1.0) -> None:
        self.learner = learner
        self.link = link
        self.interval_s = interval_s
        self.up = True
        self.syncs = 0
        self.applied = 0  #: other routers' observations applied here
        self._key = f"{link.prefix}learn:log"
        self._queue: list[list[Any]] = []  #: [arm, idx, val, quality, weight]
        #: entries made and not yet confirmed sent: (number, entry, observations in it);
        #: sent again as they are, and the others apply each number once
        self._unsent: list[tuple[int, str, int]] = []
        self._seq = 0  #: this router's entries numbered
        self._seen: dict[str, int] = {}  #: router -> the last entry number applied here
        self._dropped = 0
        self._counts: dict[str, tuple[int, int]] = {}  #: published (failures, feedback_n)
        #: where this router is in the log: "0" replays it all, None: start at its end
        self._last_id: str | None = "0" if not learner.arms else None
        self._plain_arm = learner.arm
        for name, arm in list(learner.arms.items()):
            learner.arms[name] = self._recording(name, arm)
            self._counts[name] = (arm.failures, arm.feedback_n)
        learner.arm = self._arm  # type: ignore[method-assign]

    @classmethod
    def maybe(cls, learner: Any, link: RedisLink, **kw: Any) -> SharedLearning | None:
        """Sharing for a bandit learner; None for a learner with no learned state."""
        return cls(learner, link, **kw) if isinstance(learner, BanditLearner) else None

    # ------------------------------------------------------------------ recording

    def _recording(self, name: str, arm: Arm) -> _RecordingArm:
        if isinstance(arm, _RecordingArm):
            return arm
        fields = {f.name: getattr(arm, f.name) for f in dataclasses.fields(arm)}
        return _RecordingArm(**fields, _name=name, _record=self._recorded)

    def _arm(self, name: str) -> Arm:
        arm = self.learner.arms.get(name)
        if not isinstance(arm, _RecordingArm):
            arm = self._recording(name, arm if arm is not None else self._plain_arm(name))
            self.learner.arms[name] = arm
        return arm

    def _recorded(self, name: str, idx: Any, val: Any, quality: float, weight: float) -> None:
        self._queue.append([name, idx.tolist(), val.tolist(), quality, weight])
        if len(self._queue) > MAX_QUEUE:
            drop = len(self._queue) - MAX_QUEUE
            del self._queue[:drop]
            self._dropped += drop

    def _count_deltas(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name, arm in self.learner.arms.items():
            f0, n0 = self._counts.get(name, (0, 0))
            if arm.failures != f0 or arm.feedback_n != n0:
                out[name] = [arm.failures - f0, arm.feedback_n - n0]
                self._counts[name] = (arm.failures, arm.feedback_n)
        return out

    # ------------------------------------------------------------------ syncing

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: one sync at start (the fleet's learning before the first
        stream, when Redis answers), then one every ``interval_s``."""
        with trio.move_on_after(3):  # each call is bounded by the link's timeout anyway
            await self.sync()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.sync()

    def _entries(self, dim: int) -> list[tuple[int, str, int]]:
        """What this sync sends: the entries not confirmed sent (as they were made, with
        their numbers: one whose reply was lost may be in the log already), then the
        new observations and counters as new entries. Bounded: past MAX_QUEUE
        observations unsent, the oldest entries of observations are dropped."""
        queue, self._queue = self._queue, []
        counts = self._count_deltas()
        made = [
            json.dumps({"dim": dim, "obs": queue[i : i + OBS_PER_ENTRY], "counts": {}})
            for i in range(0, len(queue), OBS_PER_ENTRY)
        ]
        sizes = [len(queue[i : i + OBS_PER_ENTRY]) for i in range(0, len(queue), OBS_PER_ENTRY)]
        if counts:
            made.append(json.dumps({"dim": dim, "obs": [], "counts": counts}))
            sizes.append(0)
        for entry, size in zip(made, sizes, strict=True):
            self._seq += 1
            self._unsent.append((self._seq, entry, size))
        held = sum(size for _, _, size in self._unsent)
        while held > MAX_QUEUE:
            i = next(i for i, e in enumerate(self._unsent) if e[2])
            held -= self._unsent[i][2]
            self._dropped += self._unsent.pop(i)[2]
        return list(self._unsent)

    async def sync(self) -> bool:
        """Send this router's new observations, apply the others'; False (local state
        kept, observations still queued) when Redis did not answer."""
        dim = self.learner.features.dim
        me = self.link.router_id
        entries_out = self._entries(dim)
        last = self._last_id

        def exchange() -> tuple[str | None, list[Any]]:
            c = self.link.client
            if entries_out:
                pipe = c.pipeline(transaction=True)  # all of this sync's entries, or none
                for seq, entry, _ in entries_out:
                    fields = {"r": me, "n": seq, "d": entry}
                    pipe.xadd(self._key, fields, maxlen=MAX_LOG, approximate=True)
                pipe.execute()
            start = last
            if start is None:  # a router with a state file: from the log's end
                tail = c.xrevrange(self._key, count=1)
                return (tail[0][0].decode() if tail else "0"), []
            got: list[Any] = []
            while True:
                batch = c.xrange(
                    self._key, min=f"({start}" if start != "0" else "-", count=_READ_BATCH
                )
                got.extend(batch)
                if len(batch) < _READ_BATCH:
                    return (batch[-1][0].decode() if batch else start), got
                start = batch[-1][0].decode()

        try:
            self._last_id, entries = await self.link.call(exchange)
        except RedisError as exc:
            # nothing is lost: the entries are sent again, as they are, by the next sync
            if self.up:
                self.up = False
                log.warning(
                    "Redis unreachable: routing keeps learning from local state",
                    extra={"redis": redacted(self.link.url), "error": str(exc)},
                )
            return False
        del self._unsent[: len(entries_out)]
        if not self.up:
            self.up = True
            log.info("Redis reachable again: routing learning shared")
        if self._dropped:
            log.warning(
                "routing observations dropped while Redis was away",
                extra={"dropped": self._dropped},
            )
            self._dropped = 0
        self._apply(entries, me, dim)
        self.syncs += 1
        return True

    def _apply(self, entries: list[Any], me: str, dim: int) -> None:
        learner = self.learner
        for _, fields in entries:
            router = fields.get(b"r", b"").decode()
            if router == me:
                continue
            try:
                if b"n" in fields:  # numbered: an entry sent again is applied once
                    seq = int(fields[b"n"])
                    if seq <= self._seen.get(router, 0):
                        continue
                    self._seen[router] = seq
                    if len(self._seen) > MAX_ROUTERS:  # bounded: the oldest forgotten
                        del self._seen[next(iter(self._seen))]
                doc = json.loads(fields[b"d"])
                if doc["dim"] != dim:
                    continue
                for name, idx, val, quality, weight in doc["obs"]:
                    x = np.zeros(dim)
                    x[np.asarray(idx, dtype=np.int64)] = np.asarray(val, dtype=np.float64)
                    Arm.update(self._arm(str(name)), x, float(quality), float(weight))
                    self.applied += 1
                for name, (df, dn) in doc["counts"].items():
                    arm = self._arm(str(name))
                    arm.failures += int(df)
                    arm.feedback_n += int(dn)
                    f, n = self._counts.get(str(name), (0, 0))
                    self._counts[str(name)] = (f + int(df), n + int(dn))
            except (KeyError, TypeError, ValueError, IndexError):
                log.warning("unreadable routing log entry in Redis skipped")
                continue
        if entries:
            learner.updates += 1  # the state file is rewritten with what others taught
