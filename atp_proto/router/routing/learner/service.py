"""The learner as the router runs it: built from the configuration, its state loaded at
start, written back every few seconds while it changes and once more at shutdown
(ATP-FEED-007). Writes happen on a worker thread from a snapshot taken on the event loop,
so a stream never waits for the disk. A worker of ``--workers N`` reads and writes its own
rows of the file; the fleet's are merged when no worker runs (:func:`store.merge_workers`,
by the supervisor, or here by a lone router that finds a fleet's file).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from atp_proto.router.config import RouterConfig

from ..learning import CheapFirst, Learner

if TYPE_CHECKING:
    from .bandit import BanditLearner

# The bandit and its store need numpy: they load when a router uses the bandit (the default
# learner, cheap-first, starts without them).

__all__ = ["build_learner", "persist", "save_now"]

log = logging.getLogger("atp.router")


def build_learner(config: RouterConfig) -> Learner:
    """The configured learner, with its saved state when there is one.

    Raises:
        ValueError: a state file that cannot be used (the message says why).
    """
    if config.learner != "bandit":
        return CheapFirst()
    from . import store
    from .bandit import BanditLearner, parse_weights

    learner = BanditLearner(
        weights=parse_weights(config.routing_weights),
        seed=config.routing_seed if config.routing_seed >= 0 else None,
    )
    path = config.routing_state
    if path and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"--routing-state: no directory for {path}")
    worker = config.worker_index if config.worker_index >= 0 else None
    if path and Path(path).exists():
        try:
            if worker is None:  # a lone router: a fleet's workers' rows are folded in first
                store.merge_workers(path, shared=bool(config.redis_url))
            store.apply(learner, store.load(path, worker=worker))
        except store.StateError as exc:
            raise ValueError(f"--routing-state: {exc}") from None
        log.info("routing state loaded", extra={"file": path, "arms": len(learner.arms)})
    return learner


def _bandit(learner: Learner) -> BanditLearner | None:
    """``learner`` if it is the bandit (whose module is then loaded), else None."""
    if isinstance(learner, CheapFirst):
        return None
    from .bandit import BanditLearner

    return learner if isinstance(learner, BanditLearner) else None


def save_now(learner: Learner, path: str, worker: int = -1) -> None:
    """Write the state synchronously (shutdown); ``worker`` >= 0: that worker's rows."""
    bandit = _bandit(learner)
    if bandit is not None and path:
        from . import store

        store.save(path, store.snapshot(bandit), worker=worker if worker >= 0 else None)


async def persist(learner: Learner, path: str, interval_s: float = 5.0, worker: int = -1) -> None:
    """Until cancelled: write the state whenever it changed, at most every ``interval_s``;
    a final write when cancelled (the router stopping). ``worker`` >= 0: a worker of
    ``--workers N`` writes its own rows."""
    own = worker if worker >= 0 else None
    bandit = _bandit(learner)
    if bandit is None or not path:
        await trio.sleep_forever()
        return
    learner = bandit
    from . import store

    saved = learner.updates
    try:
        while True:
            await trio.sleep(interval_s)
            if learner.updates != saved:
                saved = learner.updates
                snap = store.snapshot(learner)
                try:
                    await trio.to_thread.run_sync(partial(store.save, path, snap, worker=own))
                except Exception:
                    log.exception("routing state not saved", extra={"file": path})
    finally:
        if learner.updates != saved:
            with trio.CancelScope(shield=True):
                try:
                    save_now(learner, path, worker)
                except Exception:
                    log.exception("routing state not saved", extra={"file": path})
