"""The connection's timers, as pure functions of time (ATP-SESS: TTL, heartbeat, idle).

A stream's ``ttl`` gives it a deadline; after ``heartbeat`` seconds without sending we
send HB; with no stream open, ``idle_timeout_ms`` without receiving ends the session.
:func:`next_deadline` says when the earliest is due; :func:`expired` and :func:`due`
say *what* is due at ``now``, and the connection acts on the answer (these never call
back into it: a timer that sent errors itself would close a circle). The connection
asks :func:`due` after it has reset the expired streams, since resetting the last stream
makes the idle timeout apply again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

__all__ = ["Due", "Timed", "due", "expired", "next_deadline"]


class Timed(Protocol):
    """What a timer needs of a stream."""

    @property
    def stream_id(self) -> int: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def closed(self) -> bool: ...


class Due(NamedTuple):
    idle: bool  #: the idle timeout passed with no stream open: end the session
    heartbeat: bool  #: time to send HB


def next_deadline(
    streams: Iterable[Timed],
    *,
    open_streams: int,
    last_recv: float,
    last_send: float,
    heartbeat: float | None,
    idle_timeout_ms: int,
) -> float | None:
    """When the earliest timer is due (None: nothing pending)."""
    candidates: list[float] = []
    if idle_timeout_ms and not open_streams:
        candidates.append(last_recv + idle_timeout_ms / 1000)
    if heartbeat is not None:
        candidates.append(last_send + heartbeat)
    candidates.extend(s.deadline for s in streams if s.deadline is not None and not s.closed)
    return min(candidates) if candidates else None


def expired(streams: Iterable[Timed], now: float) -> list[int]:
    """Ids of the open streams whose ttl has passed at ``now``."""
    return [
        s.stream_id
        for s in streams
        if s.deadline is not None and now >= s.deadline and not s.closed
    ]


def due(
    now: float,
    *,
    open_streams: int,
    last_recv: float,
    last_send: float,
    heartbeat: float | None,
    idle_timeout_ms: int,
) -> Due:
    """What the session-level timers owe at ``now``."""
    idle = bool(idle_timeout_ms) and not open_streams and now - last_recv >= idle_timeout_ms / 1000
    hb = heartbeat is not None and now - last_send >= heartbeat
    return Due(idle, hb)
