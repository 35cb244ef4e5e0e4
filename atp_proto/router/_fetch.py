"""HTTP answers read in a worker thread, bounded in time as well as in size.

The router asks servers it does not control over HTTP in worker threads (the JWK Set and
OIDC discovery: :mod:`.jwks`; an OPA server: :mod:`.routing.opa`). ``urlopen``'s timeout
bounds each socket operation, not the answer: a server that sends one byte every second
keeps ``resp.read(n)`` going for days, and the thread with it. trio abandons such a
thread at its deadline but keeps its token of the limiter until it ends, so threads of
the default limiter (40) that never end stall everything else the router runs in one
(the decision log, the learner's state).

So: :func:`read_body` stops reading at a deadline, and each fetcher runs in a limiter of
its own (:func:`fetch_limiter`), so that a server slow even in its status line or headers
holds at most that many threads and never the default limiter's.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import trio

__all__ = ["fetch_limiter", "read_body"]


def fetch_limiter(threads: int) -> trio.CapacityLimiter:
    """The limiter a fetcher's worker threads run in (``to_thread.run_sync(limiter=)``)."""
    return trio.CapacityLimiter(threads)


def read_body(resp: Any, limit: int, deadline: float) -> bytes:
    """At most ``limit + 1`` bytes of ``resp`` (an ``http.client.HTTPResponse``), read by
    ``deadline`` (``time.monotonic()``).

    Raises:
        TimeoutError: the deadline passed before the answer ended (or passed the limit).
    """
    fp = getattr(resp, "fp", None)
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer took too long")
        if isinstance(sock, socket.socket):
            sock.settimeout(left)  # a byte a second must not restart the clock
        chunk = resp.read1(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
