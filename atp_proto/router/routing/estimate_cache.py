"""Estimate reuse, adapter-controlled like HTTP's ``max-age`` (ATP-BUDGET-018/019).

An adapter's ``Estimate`` reply may carry ``max_age_ms``: for that long after the reply
arrived, the router may answer a later stream's preflight for that adapter from it,
instead of a gRPC round trip before the stream's ``Stream`` call. Reuse is allowed only
for a task of the same ``task_type``, the same ``max_tokens`` (both absent or equal) and
the same input-size class (:func:`size_class`); the reply is used as it came (nothing is
scaled: the router cannot tell how an adapter's price grows with its input) and the
preflight guard-bands it per stream as ever (ATP-BUDGET-002: the lane's k applies to the
reused mean and variance).

An adapter's entries are dropped when a call to it fails (``Estimate`` in the preflight,
``Stream`` in the fan-out: :meth:`EstimateCache.drop`) and when its health changes: an
entry remembers the adapter's health status and circuit breaker state when it was
stored, and a lookup that finds them different drops every entry of that adapter (the
first health report after none, saying the adapter takes work, is no change). Each
adapter keeps at most :data:`PER_ADAPTER` entries (the oldest stored goes first), and
expired entries are removed when looked up. ``max_age_ms`` 0 (absent, every adapter
before this field) stores nothing: the router calls ``Estimate`` for every stream.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from atp_proto.adapters import Adapter, CostEstimate, TaskRequest
from atp_proto.adapters.proto.codec import content_json

__all__ = ["MAX_AGE_CAP_MS", "PER_ADAPTER", "EstimateCache", "Key", "cache_key", "size_class"]

#: entries kept per adapter (ATP-BUDGET-019: bounded); the oldest stored is dropped first
PER_ADAPTER = 64
#: the router reuses an estimate for at most this long, whatever the adapter asks
MAX_AGE_CAP_MS = 60_000

#: (task_type, max_tokens, input-size class)
Key = tuple[str, int | None, int]


def size_class(task: TaskRequest) -> int:
    """The input-size class of a task (ATP-BUDGET-018): the bit length of the byte length
    of its input, ``prompt`` and ``content_json`` as the router sends them (UTF-8): 0 for
    an empty input, k for 2^(k-1) <= bytes < 2^k (1 byte: 1; 64..127 bytes: 7)."""
    # content_json: encoded once per request, and kept for its calls (proto codec)
    return (len(task.prompt.encode()) + len(content_json(task))).bit_length()


def cache_key(task: TaskRequest) -> Key:
    return (task.task_type, task.max_tokens, size_class(task))


#: what an entry remembers of its adapter's health: status, breaker state, and the
#: adapter's count of health changes (None: a bare adapter keeps none)
_Health = tuple[str | None, str | None, int | None]


def _health_of(adapter: Adapter) -> _Health:
    """What a health change is measured by: the status of the adapter's last health
    check, its circuit breaker's state and its count of their changes (a
    :class:`ResilientAdapter` has all three; a bare adapter none, so its entries change
    only with failures and age)."""
    health = getattr(adapter, "last_health", None)
    breaker = getattr(adapter, "breaker", None)
    changes = getattr(adapter, "health_changes", None)
    return (
        None if health is None else str(health.status),
        None if breaker is None else str(breaker),
        changes if isinstance(changes, int) else None,
    )


def _changed(stored: _Health, now: _Health) -> bool:
    """A health change since an entry was stored. The adapter's count of changes decides
    when it keeps one, so that a change that flipped back between two preflights (READY,
    DOWN, READY; a breaker opened and closed again) still counts (ATP-BUDGET-019);
    otherwise the states are compared, the first health report saying it takes work
    (READY, BUSY) after none being no change."""
    if stored[2] is not None and now[2] is not None:
        return stored[2] != now[2]
    if stored == now:
        return False
    first_ready = stored[0] is None and now[0] in ("READY", "BUSY")
    return not (first_ready and stored[1] == now[1])


@dataclass(slots=True)
class _Entry:
    estimate: CostEstimate
    expires: float  #: trio clock, seconds
    health: _Health


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    dropped: int = 0  #: adapters' entries dropped for a failure or a health change


class EstimateCache:
    """Reusable estimates per adapter name (see the module docstring)."""

    def __init__(self, per_adapter: int = PER_ADAPTER, max_age_cap_ms: int = MAX_AGE_CAP_MS):
        self.per_adapter = per_adapter
        self.max_age_cap_ms = max_age_cap_ms
        self._entries: dict[str, OrderedDict[Key, _Entry]] = {}
        #: drops per adapter name (names come from the configuration: bounded)
        self._drops: dict[str, int] = {}
        self.stats = CacheStats()

    def holds(self, name: str) -> bool:
        """Whether ``name`` has any entry (the preflight computes no key otherwise)."""
        return bool(self._entries.get(name))

    def get(self, name: str, adapter: Adapter, key: Key, now: float) -> CostEstimate | None:
        """The reusable estimate of ``name`` for ``key`` at ``now``, or None (call
        Estimate). A health change since the entry was stored drops all of ``name``'s."""
        entries = self._entries.get(name)
        if not entries:
            self.stats.misses += 1
            return None
        entry = entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        if _changed(entry.health, _health_of(adapter)):
            self.drop(name)
            self.stats.misses += 1
            return None
        if now >= entry.expires:
            del entries[key]
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry.estimate

    def generation(self, name: str) -> int:
        """How many times ``name``'s estimates were dropped: read before an Estimate
        call, given back to :meth:`put` with its reply."""
        return self._drops.get(name, 0)

    def put(
        self,
        name: str,
        adapter: Adapter,
        key: Key,
        estimate: CostEstimate,
        now: float,
        asked: int | None = None,
    ) -> None:
        """Keep ``estimate`` (answered at ``now``) for its ``max_age_ms``; 0 keeps nothing
        and forgets an older entry of the key. ``asked``: :meth:`generation` when the call
        started; a drop since (another call to the adapter failed meanwhile) keeps
        nothing, as the reply was asked before the failure (ATP-BUDGET-019)."""
        entries = self._entries.get(name)
        age_ms = min(estimate.max_age_ms, self.max_age_cap_ms)
        if asked is not None and asked != self.generation(name):
            age_ms = 0
        if age_ms <= 0:
            if entries:
                entries.pop(key, None)
            return
        if entries is None:
            entries = self._entries[name] = OrderedDict()
        entries.pop(key, None)  # re-stored: it becomes the newest
        entries[key] = _Entry(estimate, now + age_ms / 1000, _health_of(adapter))
        self.stats.stored += 1
        while len(entries) > self.per_adapter:
            entries.popitem(last=False)

    def drop(self, name: str) -> None:
        """Forget every estimate of ``name`` (a failed call, a health change), and any
        reply to a call already under way."""
        self._drops[name] = self.generation(name) + 1
        if self._entries.pop(name, None):
            self.stats.dropped += 1

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries.values())
