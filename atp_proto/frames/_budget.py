"""Router-side budget accounting on the core's streams (ATP-BUDGET).

# compat: removed at merge. The per-stream ledger moves to ``router/budget.py``
# (``BudgetLedger``, fed by ``WindowUpdated.window``); until then :class:`BudgetMixin`
# keeps ``Connection.charge / acquire_parallel / release_parallel / usage / cap_window /
# budget_window`` working unchanged, so that other branches need not follow yet. The core
# itself keeps only the wire rules: a window is well formed (``_validate``), a client's
# WINDOW_UPDATE never moves it past the router's cap, and usage already past a lowered
# window is EBUDGET (:func:`over_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import BudgetExceeded, StreamClosedError
from ._types import BudgetWindow, ErrorCode

if TYPE_CHECKING:
    from ._stream import Stream

__all__ = ["BudgetMixin", "Usage", "over_budget"]


@dataclass(slots=True)
class Usage:
    tokens: int = 0
    usd_micros: int = 0
    parallel: int = 0


def over_budget(rec: Stream) -> tuple[ErrorCode, str] | None:
    """The error when the stream's usage has passed its budget window, else None."""
    w, u = rec.window, rec.usage
    if w.max_tokens is not None and u.tokens > w.max_tokens:
        return ErrorCode.EBUDGET, f"{u.tokens} tokens used, budget window allows {w.max_tokens}"
    if w.max_usd_micros is not None and u.usd_micros > w.max_usd_micros:
        return (
            ErrorCode.EBUDGET,
            f"{u.usd_micros} usd_micros spent, budget window allows {w.max_usd_micros}",
        )
    return None


class BudgetMixin:
    """The budget methods of :class:`~atp_proto.frames.Connection` (compat, see above)."""

    _streams: dict[int, Stream]

    def budget_window(self, stream_id: int) -> BudgetWindow:
        rec = self._streams.get(stream_id)
        return rec.window if rec is not None else BudgetWindow()

    def cap_window(self, stream_id: int, cap: BudgetWindow) -> None:
        """Limit the stream's budget window by ``cap`` (router: the tenant's and the
        adapters' limits), now and after every WINDOW_UPDATE (ATP-BUDGET-001)."""
        rec = self._streams.get(stream_id)
        if rec is not None:
            rec.cap = rec.cap.clamp(cap)
            rec.window = rec.window.clamp(rec.cap)

    def charge(self, stream_id: int, *, tokens: int = 0, usd_micros: int = 0) -> None:
        """Charge usage to the stream's budget window (ATP-BUDGET).

        Raises:
            BudgetExceeded: EBUDGET when the tokens or money would pass the window; the
                usage is still recorded (it was spent). The caller ends the stream.
        """
        rec = self._streams.get(stream_id)
        if rec is None:
            return
        rec.usage.tokens += tokens
        rec.usage.usd_micros += usd_micros
        over = over_budget(rec)
        if over is not None:
            raise BudgetExceeded(over[0], over[1], stream_id=stream_id)

    def acquire_parallel(self, stream_id: int) -> None:
        """Count one more adapter call in flight for the stream.

        Raises:
            BudgetExceeded: EWINDOW when max_parallel calls are already in flight.
        """
        rec = self._streams.get(stream_id)
        if rec is None:
            raise StreamClosedError(ErrorCode.EPROTO, "stream is closed", stream_id=stream_id)
        limit = rec.window.max_parallel
        if limit is not None and rec.usage.parallel >= limit:
            raise BudgetExceeded(
                ErrorCode.EWINDOW,
                f"max_parallel {limit} adapter calls already in flight",
                stream_id=stream_id,
            )
        rec.usage.parallel += 1

    def release_parallel(self, stream_id: int) -> None:
        rec = self._streams.get(stream_id)
        if rec is not None and rec.usage.parallel > 0:
            rec.usage.parallel -= 1

    def usage(self, stream_id: int) -> dict[str, int]:
        rec = self._streams.get(stream_id)
        if rec is None:
            return {"tokens": 0, "usd_micros": 0, "parallel": 0}
        u = rec.usage
        return {"tokens": u.tokens, "usd_micros": u.usd_micros, "parallel": u.parallel}
