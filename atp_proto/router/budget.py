"""One budget ledger per stream: the only copy of a stream's budget (ATP-BUDGET).

The effective window is the client's window (SYN ``window``, moved by WINDOW_UPDATE)
clamped by the router's caps: the tenant's window and the adapters' limits
(ATP-BUDGET-001). Usage (tokens, usd_micros) and the adapter calls in flight are counted
here as routing spends them.

The session hands every ``WindowUpdated.window`` of the stream to :meth:`BudgetLedger.apply`
(through ``StreamOutput.on_window``), so preflight, fan-out, failover and escalation all
read the live window: a mid-stream raise reaches escalation, a lowering ends the stream at
once when usage is already past it (ATP-BUDGET-005, ATP-BUDGET-010). Before this module
the router charged the sans-IO ``Connection`` and decided escalation on a snapshot of it.

Pure: no I/O, no clock. :meth:`charge` is on the per-chunk path and stays a few
attribute reads (the limits are cached as plain ints).
"""

from __future__ import annotations

from dataclasses import dataclass

from atp_proto.frames import BudgetExceeded, BudgetWindow, ErrorCode

__all__ = ["BudgetLedger", "BudgetUsage"]


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """What a stream has spent so far, and its adapter calls in flight."""

    tokens: int = 0
    usd_micros: int = 0
    parallel: int = 0


class BudgetLedger:
    """A stream's budget: window ∩ caps, usage, parallel calls.

    Args:
        window: the client's window (SYN ``window``).
        cap: the router's cap on it (tenant window, adapter limits); more caps may be
            added with :meth:`restrict`.
        stream_id: for the errors raised.
    """

    __slots__ = (
        "_max_t",
        "_max_u",
        "cap",
        "parallel",
        "stream_id",
        "tokens",
        "usd_micros",
        "window",
    )

    def __init__(self, window: BudgetWindow, cap: BudgetWindow, *, stream_id: int = 0) -> None:
        self.cap = cap
        self.window = window.clamp(cap)
        self.tokens = 0
        self.usd_micros = 0
        self.parallel = 0
        self.stream_id = stream_id
        self._max_t = self.window.max_tokens
        self._max_u = self.window.max_usd_micros

    # ------------------------------------------------------------------ usage

    @property
    def usage(self) -> BudgetUsage:
        return BudgetUsage(self.tokens, self.usd_micros, self.parallel)

    def charge(self, tokens: int, usd_micros: int) -> None:
        """Record usage (it was spent, so it is recorded even when over the window).

        Raises:
            BudgetExceeded: EBUDGET when the tokens or money passed the window.
        """
        self.tokens += tokens
        self.usd_micros += usd_micros
        if (self._max_t is not None and self.tokens > self._max_t) or (
            self._max_u is not None and self.usd_micros > self._max_u
        ):
            self._raise_over()

    def fits(self, tokens: float, usd_micros: float) -> bool:
        """Whether spending this much more (a guard-banded estimate) stays in the window."""
        if self._max_t is not None and self.tokens + tokens > self._max_t:
            return False
        return not (self._max_u is not None and self.usd_micros + usd_micros > self._max_u)

    def acquire_parallel(self) -> None:
        """Count one more adapter call in flight.

        Raises:
            BudgetExceeded: EWINDOW when ``max_parallel`` calls are already in flight.
        """
        limit = self.window.max_parallel
        if limit is not None and self.parallel >= limit:
            raise BudgetExceeded(
                ErrorCode.EWINDOW,
                f"max_parallel {limit} adapter calls already in flight",
                stream_id=self.stream_id,
            )
        self.parallel += 1

    def release_parallel(self) -> None:
        if self.parallel > 0:
            self.parallel -= 1

    # ------------------------------------------------------------------ window

    def apply(self, window: BudgetWindow) -> None:
        """A WINDOW_UPDATE's budget window: the fields it names replace the client's,
        never past the cap (ATP-BUDGET-001).

        Raises:
            BudgetExceeded: EBUDGET when usage is already past the new window
                (ATP-BUDGET-005); the window is applied all the same.
        """
        self._set(self.window.merged(window).clamp(self.cap))

    def restrict(self, cap: BudgetWindow) -> None:
        """Add a cap (the tenant's window, an adapter's limits): window ∩ cap from now on.

        Raises:
            BudgetExceeded: EBUDGET when usage is already past the capped window.
        """
        self.cap = self.cap.clamp(cap)
        self._set(self.window.clamp(self.cap))

    def _set(self, window: BudgetWindow) -> None:
        self.window = window
        self._max_t = window.max_tokens
        self._max_u = window.max_usd_micros
        if (self._max_t is not None and self.tokens > self._max_t) or (
            self._max_u is not None and self.usd_micros > self._max_u
        ):
            self._raise_over()

    def _raise_over(self) -> None:
        if self._max_t is not None and self.tokens > self._max_t:
            msg = f"{self.tokens} tokens used, budget window allows {self._max_t}"
        else:
            msg = f"{self.usd_micros} usd_micros spent, budget window allows {self._max_u}"
        raise BudgetExceeded(ErrorCode.EBUDGET, msg, stream_id=self.stream_id)
