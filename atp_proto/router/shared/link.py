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

``redis+cluster://HOST:PORT`` (or ``rediss+cluster://``) names one node of a Redis
Cluster: the client is then ``RedisCluster`` (it discovers the others and follows
``MOVED``), made on first use rather than at start (it connects when made, and a router
must start, and fail closed, while the cluster is away). Every key one script or one
transaction touches shares one hash tag (the tenant's; the learning log is one key), and
scripts go by EVAL there (a cluster pipeline refuses EVALSHA): :class:`LuaScript`.

``redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER_NAME[?db=N]`` names Redis Sentinels
(:mod:`.urls`): the client is ``redis.sentinel.Sentinel(...).master_for(NAME)``, whose
pool asks the sentinels for the master's address on every new connection, and drops its
connections when the address changed or the old master answers READONLY (demoted). A
call during a failover fails like any unreachable Redis (fail closed for quotas, local
state for learning); the next one after the sentinels promoted a replica reaches it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from .urls import SENTINEL_SCHEMES, parse_sentinel, redact_netloc

__all__ = ["LuaScript", "RedisError", "RedisLink", "redacted", "refuses_writes"]

T = TypeVar("T")

log = logging.getLogger("atp.router")

#: how long a master the sentinels confirmed short of replicas is written to without
#: waiting for the missing ones (and without asking the sentinels again)
TRUST_S = 1.0

RedisError = redis.RedisError

#: the error replies by which Redis refuses every write for a while, whatever the write:
#: its state, not the request's (the reply's code; the client strips some of them from the
#: message, and names those by their class). OOM: past ``maxmemory`` (with ``noeviction``);
#: READONLY: a replica (a master demoted by a failover, a DNS name still naming it);
#: MASTERDOWN, NOREPLICAS, MISCONF: a replica cut off from its master, fewer replicas than
#: ``min-replicas-to-write``, a failed RDB save with ``stop-writes-on-bgsave-error``;
#: LOADING: a restart reading its data; BUSY: a script past ``busy-reply-threshold``;
#: TRYAGAIN, CLUSTERDOWN: a cluster resharding or down; NOSCRIPT: the script cache
#: flushed between the client's load and its call (the next call loads it again)
_REFUSING_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (MasterDownError, "MASTERDOWN"),
    (BusyLoadingError, "LOADING"),
    (TryAgainError, "TRYAGAIN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (NoScriptError, "NOSCRIPT"),
)
_REFUSING_CODES = frozenset(
    {"OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "LOADING", "BUSY"}
    | {"TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT"}
)


#: a refusal inside a script as Redis before 7 wraps it in a plain ``ERR`` (the client
#: strips the ``ERR``): ``Error running script (call to f_...): @user_script:4:
#: @user_script: 4: -OOM command not allowed when used memory > 'maxmemory'.``
_WRAPPED = re.compile(r"(?:^|\s)-([A-Z]+)\s")


def refuses_writes(exc: BaseException) -> str | None:
    """The code of an error reply by which Redis refuses writes for a while (OOM,
    READONLY, ...: :data:`_REFUSING_CODES`), else None (a connection error, or a reply
    about this write itself: a script error, a key of the wrong type).

    Known by the client's class for the code, else by the message's first word (an
    ``ERR OOM ...`` from a proxy or an older server: the client strips the ``ERR``), else,
    in Redis's own script-error wrapper (before Redis 7 a refusal met inside a script
    comes as ``ERR Error running script ...: -OOM ...``), by the code it quotes."""
    if not isinstance(exc, redis.ResponseError):
        return None
    for cls, code in _REFUSING_CLASSES:
        if isinstance(exc, cls):
            return code
    text = str(exc)
    code = text.split(" ", 1)[0]
    if code in _REFUSING_CODES:
        return code
    if text.startswith(("Error running script", "ERR Error running script")):
        for quoted in _WRAPPED.findall(text):
            if quoted in _REFUSING_CODES:
                return str(quoted)
    return None


def redacted(url: str) -> str:
    """The URL without its passwords (for logs and errors: no secrets in logs): the user
    part's, and a ``?password=`` option's (the client reads one there too), or any other
    option named ``...password`` (a Sentinel URL's ``sentinel_password``)."""
    head, q, query = url.partition("?")
    if q:
        query = "&".join(
            f"{name}=***" if unquote(name).lower().endswith("password") else item
            for item in query.split("&")
            for name in [item.partition("=")[0]]
        )
    return redact_netloc(head) + q + query


class RedisLink:
    """One pooled client, its key prefix and this router's id among those sharing it."""

    def __init__(self, url: str, *, prefix: str = "atp:", timeout_s: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        scheme = urlsplit(url).scheme
        self.cluster = scheme.endswith("+cluster")  #: a Redis Cluster (redis+cluster://)
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self._client: Any = None
        self._made = threading.Lock()
        self.sentinel = scheme in SENTINEL_SCHEMES  #: a master found through Sentinels
        #: replicas that must acknowledge every quota write (WAIT) before it counts as
        #: stored: a Sentinel URL's ``?replicas=N`` (default 1), else 0
        self.replicas = 0
        self.wait_ms = 0  #: how long a write waits for them (``?wait_ms=N``, default 50)
        self._sentinels: Sentinel | None = None
        #: a master the sentinels confirmed short of replicas: (address, the replicas
        #: that acknowledged, until when, on time.monotonic) (:meth:`pipelined`)
        self._trusted: tuple[tuple[str, int], int, float] | None = None
        self._short = False  #: said so in the log (said again once they are back)
        self._master_name = ""
        if self.sentinel:
            parsed = parse_sentinel(url)
            self.replicas, self.wait_ms = parsed.replicas, parsed.wait_ms
            self._client = self._sentinel_client(url)
        elif not self.cluster:
            self._client = redis.Redis.from_url(url, retry_on_timeout=False, **self._options)
        #: unique per process start: a restarted worker is a new router
        self.router_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._limiter = trio.CapacityLimiter(16)

    def _sentinel_client(self, url: str) -> Any:
        """The master's client through the sentinels (connects lazily: a router starts,
        and fails closed, while they are away)."""
        parsed = parse_sentinel(url)
        asked = dict(self._options)  # the sentinels' own credentials, if they want some
        if parsed.sentinel_password is not None:
            asked["password"] = parsed.sentinel_password
            asked["username"] = parsed.sentinel_username
        self._sentinels = Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.sentinels),
            sentinel_kwargs=asked,
            min_other_sentinels=parsed.min_other_sentinels,
        )
        self._master_name = parsed.master
        return self._sentinels.master_for(  # type: ignore[no-untyped-call]
            parsed.master,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.ssl,
            retry_on_timeout=False,
            **self._options,
        )

    @property
    def client(self) -> Any:
        """The client (``redis.Redis``, or ``redis.RedisCluster`` made on first use).

        Raises:
            redis.RedisError: the cluster could not be reached to be discovered.
        """
        if self._client is None:
            with self._made:
                if self._client is None:
                    plain = self.url.replace("+cluster://", "://", 1)
                    try:
                        self._client = redis.RedisCluster.from_url(plain, **self._options)
                    except RedisClusterException as exc:
                        raise RedisError(f"Redis Cluster unreachable: {exc}") from None
        return self._client

    def reconnect(self) -> None:
        """(On a worker thread.) Drop the client's connections, so that the next call
        connects again: after READONLY, the server behind the URL is a replica now (a
        failover), and a name resolved again (a DNS name that follows the master), or
        the sentinels asked again, may give the new master. A Cluster's client follows
        its nodes' redirections by itself."""
        if self._client is not None and not self.cluster:
            self._client.connection_pool.disconnect()

    def pipelined(
        self, fill: Callable[[Any], None], *, transaction: bool, raise_on_error: bool = True
    ) -> list[Any]:
        """(On a worker thread.) The replies to what ``fill`` queues on a pipeline, one
        round trip; ``transaction``: in one MULTI/EXEC. ``raise_on_error`` False: a
        command's error reply is returned in its place (a transaction Redis discarded
        whole, a command refused when queued, still raises).

        With :attr:`replicas` (a Sentinel URL), a ``WAIT`` follows on the same connection,
        and a write fewer replicas acknowledged within :attr:`wait_ms` counts only if
        the sentinels name that server as the master with no failover under way: so a
        write into an old master the sentinels are failing over, or have replaced (it
        goes on answering until they demote it, and its last writes are then lost), is
        refused here; the pool finds the new master, and the caller sends it again
        (a quota write with its flush number: counted once). A master left without
        replicas (after a failover, before the old one rejoins; a replica down) is written
        to: once the sentinels confirmed it, the writes of the next :data:`TRUST_S`
        seconds to it wait only for the replicas that acknowledged then (none: no WAIT,
        no sentinel asked), so that a master short of replicas costs one ``wait_ms`` and
        one question to the sentinels a second, not one per admission (the first write
        after that window waits for all ``replicas`` again).

        Raises:
            redis.RedisError: no answer, an error reply, or a write into a master that is
                not (or may soon not be) the sentinels' master.
        """
        if not self.replicas:
            pipe = self.client.pipeline(transaction=transaction)
            fill(pipe)
            return pipe.execute(raise_on_error=raise_on_error)  # type: ignore[no-any-return]
        client = self.client
        pipe = client.pipeline(transaction=False)
        conn = client.connection_pool.get_connection()
        pipe.connection = conn  # the WAIT must follow the writes on their connection
        address = (conn.host, int(conn.port))
        want = self.replicas
        trusted = self._trusted
        if trusted is not None and trusted[0] == address and time.monotonic() < trusted[2]:
            want = trusted[1]  # confirmed short of replicas a moment ago
        try:
            if transaction:
                pipe.execute_command("MULTI")
            fill(pipe)
            if transaction:
                pipe.execute_command("EXEC")
            if want:
                pipe.execute_command("WAIT", want, self.wait_ms)
            replies = pipe.execute(raise_on_error=False)
        finally:
            pipe.reset()  # the connection back to the pool (execute did it, unless it raised)
        if want and isinstance(replies[-1], Exception):
            raise replies[-1]
        acked = int(replies[-1]) if want else 0
        if want:
            replies = replies[:-1]
        if transaction:
            if isinstance(replies[-1], Exception):  # discarded (EXECABORT): say why
                raise next((r for r in replies if isinstance(r, Exception)), replies[-1])
            replies = list(replies[-1] or ())
        else:
            replies = list(replies)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        if acked >= self.replicas:
            if self._short:
                self._short = False
                log.info("the Redis master's replicas acknowledge the quota writes again")
            return replies
        if acked >= want and want < self.replicas:
            return replies  # within the window the sentinels confirmed
        if not self._the_master(address):
            client.connection_pool.disconnect(inuse_connections=False)
            raise RedisError(
                f"{acked} of {self.replicas} replica(s) acknowledged the write and the "
                "sentinels name another master or a failover under way"
            )
        self._trusted = (address, acked, time.monotonic() + TRUST_S)
        if not self._short:
            self._short = True
            log.warning(
                "the Redis master has fewer replicas than the quota writes ask for: "
                "writes count on the master alone (checked with the sentinels every second)",
                extra={"acknowledged": acked, "replicas": self.replicas},
            )
        return replies

    def _the_master(self, address: tuple[str, int]) -> bool:
        """Whether a sentinel names ``address`` as the master, with no failover under way
        (the first that answers and sees ``?min_other_sentinels`` others: one sentinel's
        word, as the client's own discovery takes it; the quorum is the sentinels')."""
        assert self._sentinels is not None
        for sentinel in self._sentinels.sentinels:
            try:
                masters: Any = sentinel.sentinel_masters()
                state = masters.get(self._master_name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if not state or int(state.get("num-other-sentinels", 0)) < (
                self._sentinels.min_other_sentinels
            ):
                continue
            flags = str(state.get("flags", ""))
            return (
                (str(state["ip"]), int(state["port"])) == address
                and "failover_in_progress" not in flags
                and not state.get("is_sdown")
                and not state.get("is_odown")
            )
        return False

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which uses :attr:`client`) on a worker thread. Shielded: a started
        call finishes (or times out) so that a counter is never half-updated.

        Raises:
            redis.RedisError: Redis did not answer, or answered an error.
        """

        def run() -> T:
            try:
                return fn()
            except RedisClusterException as exc:  # the cluster client's own errors
                raise RedisError(str(exc)) from None

        with trio.CancelScope(shield=True):
            result = await trio.to_thread.run_sync(run, limiter=self._limiter)
        return result  # noqa: RET504 (mypy: a cancel scope may swallow the return)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LuaScript:
    """A Lua script run on the link's Redis: by EVALSHA (the client loads it again after a
    restart's NOSCRIPT) on one Redis, by EVAL on a Cluster (whose pipelines refuse
    EVALSHA, and whose nodes each need the script)."""

    def __init__(self, link: RedisLink, text: str) -> None:
        self.link = link
        self.text = text
        self._script: Any = None

    def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
        if self.link.cluster:
            target = client if client is not None else self.link.client
            return target.execute_command("EVAL", self.text, len(keys), *keys, *args)
        if self._script is None:
            self._script = self.link.client.register_script(self.text)
        return self._script(keys=keys, args=args, client=client)
