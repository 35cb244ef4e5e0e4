"""Control algorithms shared by the router and the adapters (a low, neutral module).

:class:`AimdLimit` is the adaptive concurrency limit of Netflix concurrency-limits (and
TCP's congestion window): additive increase while calls finish under a latency target,
multiplicative decrease on an error or a latency spike. The router's global admission
(:mod:`atp_proto.router.admission`) uses it; the per-adapter limit of
:mod:`atp_proto.adapters.resilience` is the same algorithm with a different step (+1
while the adapter is at least half busy). Pure: no I/O, no clock.
"""

from __future__ import annotations

__all__ = ["AimdLimit"]


class AimdLimit:
    """A float limit in ``min_limit..max_limit``; callers compare ``int(limit.value)``.

    Args:
        initial: where the limit starts (not a cap).
        min_limit: the floor it never shrinks below.
        max_limit: the cap it never grows past.
        backoff: the multiplicative decrease (×0.9 by default).
    """

    __slots__ = ("backoff", "max_limit", "min_limit", "value")

    def __init__(
        self, initial: float, min_limit: float, max_limit: float, *, backoff: float = 0.9
    ) -> None:
        if not min_limit <= initial <= max_limit:
            raise ValueError(
                f"need min_limit <= initial <= max_limit, got {min_limit}, {initial}, {max_limit}"
            )
        if not 0.0 < backoff < 1.0:
            raise ValueError(f"backoff must be within (0, 1), got {backoff}")
        self.value = float(initial)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff = backoff

    def __int__(self) -> int:
        return int(self.value)

    def increase(self, step: float) -> None:
        """Additive increase by ``step``, up to ``max_limit``."""
        self.value = min(self.max_limit, self.value + step)

    def decrease(self) -> None:
        """Multiplicative decrease, down to ``min_limit``."""
        self.value = max(self.min_limit, self.value * self.backoff)

    def sample(
        self, latency_s: float | None, *, error: bool, target_s: float, spike: float = 2.0
    ) -> None:
        """Adapt on one finished call, per connection-level AIMD: an error or a latency
        over ``spike`` × target decreases; a latency within target increases by
        1/limit (one whole step per limit's worth of calls, like TCP's window); no
        latency (a call that said nothing about the service) leaves it alone."""
        if error or (latency_s is not None and latency_s > spike * target_s):
            self.decrease()
        elif latency_s is not None and latency_s <= target_s:
            self.increase(1.0 / max(self.value, 1.0))
