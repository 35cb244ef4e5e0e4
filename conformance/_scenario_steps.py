"""Scenario steps on what the scripted adapter saw (``adapter_meta``, ``adapter_count``,
``adapter_inflight``) and the ``drain`` step (a client that grants credit back only when
the router goes quiet), for :func:`conformance.scenario.run_steps`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import trio

from conformance.scenario import Runner, ScenarioFailed, Unsupported, _ended, matches

__all__ = ["adapter_check", "drain"]


def adapter_check(r: Runner, op: str, arg: Mapping[str, Any]) -> None:
    """What the scripted adapter saw of this run's calls: the task's meta (ATP-SEC-014),
    a count of events (``event``, optional ``adapter``; ``eq`` / ``gte`` / ``lte``), the
    most Stream calls in flight at once (ATP-BUDGET-004)."""
    adapter = r.ctx.options.get("adapter")
    if adapter is None:
        raise Unsupported("needs --adapter-listen")
    events = [
        e
        for e in adapter.events(r.token)[r.mark if arg.get("since_mark") else 0 :]
        if arg.get("adapter") in (None, e.get("adapter"))
    ]
    viol = tuple(arg.get("violated", ()))
    starts = [e for e in events if e.get("event") == "stream_start"]
    if op == "adapter_meta":
        if not starts:
            raise ScenarioFailed("the adapter got no Stream call", "a Stream call", viol)
        meta = starts[0].get("meta") or {}
        if not matches(meta, arg["has"]):
            raise ScenarioFailed(
                f"the adapter's task meta is {json.dumps(meta, default=str)[:300]}",
                f"a meta holding {arg['has']}",
                viol,
            )
    elif op == "adapter_count":
        n = sum(1 for e in events if e.get("event") == arg["event"])
        bad = (
            ("eq" in arg and n != arg["eq"])
            or ("gte" in arg and n < arg["gte"])
            or ("lte" in arg and n > arg["lte"])
        )
        if bad:
            want = {k: arg[k] for k in ("eq", "gte", "lte") if k in arg}
            who = f" on {arg['adapter']}" if arg.get("adapter") else ""
            raise ScenarioFailed(
                f"the adapter saw {n} {arg['event']!r}{who} "
                f"(events {[(e.get('adapter'), e.get('event')) for e in events][:20]})",
                f"{arg['event']} count {want}",
                viol,
            )
    else:
        most = max((int(e.get("inflight") or 0) for e in starts), default=0)
        if most > int(arg["lte"]):
            raise ScenarioFailed(
                f"{most} adapter calls of the stream were in flight at once",
                f"at most {arg['lte']}",
                viol,
            )


async def drain(r: Runner, arg: Mapping[str, Any], timeout: float) -> None:
    """Read until stream ``stream_id`` ends; whenever the router goes quiet (``idle_ms``,
    default 150: it has spent the credit it believes it has), grant back what the DATA
    frames received since the last grant cost. Granting only then makes the credit check
    sharp: a router that prices its frames too low overshoots before any grant comes."""
    sid = arg["stream_id"]
    idle = r.ctx.timeout(float(arg.get("idle_ms", 150)) / 1000)
    granted_to = 0
    with trio.move_on_after(timeout):
        while True:
            if any(f.get("stream_id") == sid and _ended(f) for f in r.s.frames):
                return
            got = await r.s.next(idle)
            if got is None and r.s.closed:
                return
            if got is not None:
                continue
            owed = sum(
                int(f.get("size", 0))
                for f in r.s.frames[granted_to:]
                if f.get("stream_id") == sid and f.get("type") == "DATA"
            )
            granted_to = len(r.s.frames)
            if owed:
                await r.send({"type": "WINDOW_UPDATE", "stream_id": sid, "credit": owed})
