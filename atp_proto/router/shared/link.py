"""The router's connection to Redis (``--redis URL``): the ``redis`` package's sync client,
called on worker threads.

Why the sync client on threads, not its asyncio client or RESP written over trio sockets:
the router runs on trio (the asyncio client would need trio-asyncio on every call), and
the well-kept client already gives us what a hand-written one would have to grow:
connection pooling, reconnection after Redis restarts, pipelining, and Lua scripts by
EVALSHA that reload themselves after a restart (NOSCRIPT). A thread hop costs some tens of
microseconds, paid only when ``--redis`` is configured: admission is one call per stream,
and charges are coalesced into one pipelined call per flush, never one per chunk. Every
call is bounded by the socket timeouts (``timeout_s``) and never retried by the client
itself (``Retry(NoBackoff(), 0)``): the callers decide (fail closed for quotas, local
state for learning).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisLink", "RedisError", "redacted"]

T = TypeVar("T")

RedisError = redis.RedisError


def redacted(url: str) -> str:
    """The URL without its password (for logs and errors: no secrets in logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLink:
    """One pooled client, its key prefix and this router's id among those sharing it."""

    def __init__(self, url: str, *, prefix: str = "atp:", timeout_s: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        #: unique per process start: a restarted worker is a new router
        self.router_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._limiter = trio.CapacityLimiter(16)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which uses :attr:`client`) on a worker thread. Shielded: a started
        call finishes (or times out) so that a counter is never half-updated.

        Raises:
            redis.RedisError: Redis did not answer, or answered an error.
        """
        with trio.CancelScope(shield=True):
            result = await trio.to_thread.run_sync(fn, limiter=self._limiter)
        return result  # noqa: RET504 (mypy: a cancel scope may swallow the return)

    def close(self) -> None:
        self.client.close()
