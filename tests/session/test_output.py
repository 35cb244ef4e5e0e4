"""The session's StreamOutput (atp_proto/session/output.py), sans sockets."""

from __future__ import annotations

from typing import Any

from atp_proto.frames import BudgetWindow, QoS
from atp_proto.session.output import Output


def test_windows_before_the_ledger_subscribes_are_merged_not_lost() -> None:
    """ATP-BUDGET-005/010: WINDOW_UPDATEs read in the SYN's batch, before routing set
    on_window, each name only some fields: the ledger gets all of them, latest last."""
    out = Output(session=Any, stream_id=1, lane=QoS.SILVER)  # type: ignore[arg-type]
    out.window_updated(BudgetWindow(max_tokens=10))
    out.window_updated(BudgetWindow(max_usd_micros=5))
    out.window_updated(BudgetWindow(max_tokens=20))
    got: list[BudgetWindow] = []
    out.on_window = got.append
    assert got == [BudgetWindow(max_tokens=20, max_usd_micros=5)]
    out.window_updated(BudgetWindow(max_parallel=1))  # later ones go straight through
    assert got[-1] == BudgetWindow(max_parallel=1)
