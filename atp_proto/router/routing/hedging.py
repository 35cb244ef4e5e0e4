"""Hedged requests (ATP-STRAT-006): when a stream's first adapter is slower to its first
chunk than its observed p95, start another; the first to answer wins, the other is
cancelled.

* :class:`Hedger` (one per router) keeps each adapter's time to first chunk (TTFC) over
  its last :data:`WINDOW` calls and answers its p95 once :data:`MIN_SAMPLES` are known
  (no hedge before: there is nothing to be slower than). It also bounds the hedge rate
  with a token bucket: every stream that may hedge adds ``rate`` tokens (default 0.1:
  at most 10 % of such streams hedge in the long run), up to ``burst``; a hedge takes one.
* :func:`hedged_call` races the primary and, after the delay, the backup: the first call
  to deliver a chunk with text (or to finish) claims the stream — only its chunks reach
  the client — and the other call is cancelled at once (its gRPC call is cancelled,
  ATP-ADAPT-009). Both calls go through :meth:`FanOut.call`, so a hedge is charged to the
  stream's budget and counts against ``max_parallel`` like any call; it starts only when
  the live window has room for both calls' guard-banded estimates and a parallel slot.

The race costs nothing per chunk on streams that do not hedge: the claim happens once, at
a call's first chunk with text (where the TTFC is recorded anyway).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from ._model import Candidate, Outcome

if TYPE_CHECKING:
    from .fanout import FanOut

__all__ = ["MIN_SAMPLES", "WINDOW", "Hedger", "Race", "hedged_call"]

WINDOW = 256  #: TTFC samples kept per adapter
MIN_SAMPLES = 8  #: no hedge before this many samples of the primary
_MAX_ADAPTERS = 4096  #: adapters tracked (names come from configuration, not peers)


class Hedger:
    """Per-adapter TTFC quantiles and the hedge-rate token bucket (router-wide)."""

    def __init__(self, *, rate: float = 0.1, burst: float = 2.0, quantile: float = 0.95) -> None:
        if not 0.0 <= rate <= 1.0 or burst < 1.0 or not 0.0 < quantile < 1.0:
            raise ValueError("hedge rate must be in 0..1, burst >= 1, quantile in (0, 1)")
        self.rate, self.burst, self.quantile = rate, burst, quantile
        self._tokens = burst
        self._ttfc: dict[str, deque[float]] = {}
        self.started = 0  #: hedges started (tests, reports)

    def observe_ttfc(self, adapter: str, seconds: float) -> None:
        """A call of ``adapter`` delivered its first chunk ``seconds`` after it started."""
        samples = self._ttfc.get(adapter)
        if samples is None:
            if len(self._ttfc) >= _MAX_ADAPTERS:
                return
            samples = self._ttfc[adapter] = deque(maxlen=WINDOW)
        samples.append(seconds)

    def threshold(self, adapter: str) -> float | None:
        """The adapter's observed TTFC quantile in seconds (None: too few samples)."""
        samples = self._ttfc.get(adapter)
        if samples is None or len(samples) < MIN_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]

    def offer(self) -> None:
        """A stream that may hedge started: the bucket gains ``rate`` tokens."""
        self._tokens = min(self.burst, self._tokens + self.rate)

    def take(self) -> bool:
        """Spend a token for a hedge; False when the hedge rate is used up."""
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.started += 1
        return True


class Race:
    """Two calls racing for one stream: the first to claim it wins, the other is cancelled."""

    __slots__ = ("outcomes", "progress", "scopes", "winner")

    def __init__(self) -> None:
        self.winner: int | None = None
        self.scopes = (trio.CancelScope(), trio.CancelScope())
        self.outcomes: list[Outcome | None] = [None, None]
        self.progress = trio.Event()  #: set on a claim or when the primary ends

    def claim(self, slot: int) -> bool:
        """Called at a call's first chunk with text: True when ``slot`` may send."""
        if self.winner is None:
            self.winner = slot
            self.scopes[1 - slot].cancel()
            self.progress.set()
        return self.winner == slot


async def hedged_call(
    fan: FanOut, primary: Candidate, queue: list[Candidate], delay_s: float
) -> Outcome:
    """Call ``primary``; if it has not claimed the stream after ``delay_s``, hedge with the
    first candidate of ``queue`` that the live budget and the rate allow (taken off it).
    Returns the winner's outcome (or the primary's when no hedge started)."""
    race = Race()
    ended: list[Outcome | None] = [None, None]

    async def run(slot: int, cand: Candidate) -> None:
        with race.scopes[slot]:
            ended[slot] = out = await fan.call(cand, race, slot)
            if out.finished and race.winner is None:
                race.claim(slot)  # an answer without text: finishing claims
        if slot == 0:
            race.progress.set()

    metrics = fan.ctx.metrics
    backup: Candidate | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, primary)
        with trio.move_on_after(delay_s):
            await race.progress.wait()
        if not race.progress.is_set():
            backup = _backup(fan, primary, queue)
            if backup is not None:
                await fan.emit.wait_writable()
                if race.winner is None:  # the primary may have claimed meanwhile
                    fan.emit.notice(
                        {
                            "hedge": {
                                "from": primary.name,
                                "to": backup.name,
                                "after_ms": round(delay_s * 1000),
                            }
                        },
                        0.0,
                    )
                    metrics.hedges.inc("started")
                    nursery.start_soon(run, 1, backup)
                else:
                    queue.insert(0, backup)
                    backup = None
    for slot in (0, 1):
        lost = race.outcomes[slot]
        if lost is not None and ended[slot] is None:
            lost.cancelled = True
    if backup is not None:
        metrics.hedges.inc("won" if race.winner == 1 else "lost")
        fan.hedged = (primary.name, backup.name, race.winner == 1)
    if race.winner is not None and ended[race.winner] is not None:
        won = ended[race.winner]
        assert won is not None
        return won
    # nobody claimed: both ended without an answer (or only the primary ran)
    if ended[1] is not None and ended[0] is not None and not ended[0].finished:
        return ended[1]
    result = ended[0] or ended[1]
    assert result is not None  # the nursery ran both to their end
    return result


def _backup(fan: FanOut, primary: Candidate, queue: list[Candidate]) -> Candidate | None:
    """The hedge, if the rate, ``max_parallel`` and the live budget allow one."""
    ledger, metrics = fan.ledger, fan.ctx.metrics
    limit = ledger.window.max_parallel
    if limit is not None and ledger.parallel >= limit:
        metrics.hedges.inc("refused")
        return None
    for i, c in enumerate(queue):
        if c.name == primary.name:
            continue
        if ledger.fits(
            primary.guarded_tokens + c.guarded_tokens, primary.guarded_usd + c.guarded_usd
        ):
            if not fan.ctx.hedger.take():
                metrics.hedges.inc("throttled")
                return None
            return queue.pop(i)
    metrics.hedges.inc("refused")
    return None
