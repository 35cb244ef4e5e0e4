"""Tenant quotas in Redis: one limit across every router sharing it (ATP-BUDGET-013..017).

Every decision is one Lua script, atomic in Redis, timed by Redis's own clock (``TIME``)
so that routers' clocks do not matter. Every key a script touches carries the tenant as
its hash tag (``PREFIX q:{TENANT}:...``), so it is in one Redis Cluster slot
(``--redis redis+cluster://``; ``T`` below is the tenant, percent-encoded when it holds a
``}`` or a ``%``: :func:`key_tag`):

* ``q:{T}:b:WINDOW``: the period's usage (fields ``t`` tokens, ``u`` usd_micros);
* ``q:{T}:r``: the stream-rate token bucket;
* ``q:{T}:c``: per router, its streams open (field ``ROUTER``) and its *lease* (field
  ``@ROUTER``: a deadline in Redis's milliseconds, renewed every second while the router
  has streams of this tenant open, ``lease_ms`` ahead: 5 s). The lease lives beside the
  counters it vouches for, in the tenant's slot, instead of one key per router;
* ``q:{T}:h``: the *holds* (ATP-BUDGET-017), one per stream in flight (field
  ``ROUTER/N``: the tokens and usd_micros it may still spend); ``q:{T}:f`` the holds
  charged for a router presumed dead (see below).

A hold works like a payment card's: at admission the script reserves the stream's
admitted share (what is left of the tenant's period budget, or less when the client's
window asks for less); every write of the stream's usage charges the period and takes as
much off the hold, and the stream's end deletes what is left, in the same script. While
its router's lease runs, a hold does not count against the tenant (the stream's usage is
charged as it arrives, and streams open at once share the remainder, ATP-BUDGET-016). A
router that dies (SIGKILL, power) stops renewing: the first script of any router that
touches the tenant after the lease lapsed *charges* the dead router's holds (what its
streams had not written yet, up to their share) to the current period and deletes them
with its counters, atomically. So a killed router's stream is charged the larger of what
it had written and what it was admitted to spend; usage charged in the process and not
yet written when it died is covered.

* admit: reap lapsed leases, then the period budget, the concurrent streams (live
  routers' counters), the rate; on success the counter, the hold and the lease. A
  refusal consumes nothing.
* write (one per tenant per flush; a flush is one MULTI, or one per slot on a Redis
  Cluster): the usage, the holds' settlements, the streams ended, the lease renewal;
  queued in the process and written by :meth:`RedisQuotaStore.run` as soon as they are.
  Each flush carries its number; the script keeps each router's last one per tenant
  (field ``#ROUTER`` of the counters, kept for two periods or a minute after the
  router's last write, its lease lapsed or not) and skips a flush it has already applied,
  so a flush whose reply was lost (a connection cut after EXEC, a failover) is sent
  again, whole and with the same number, until it is confirmed, and counts once (a retry
  later than that, after a cut of over a minute and two periods, could count twice). With Redis
  Sentinel (``redis+sentinel://``) a write counts as stored once a replica acknowledged
  it (``WAIT``) or the sentinels confirm the server is the master
  (:meth:`.link.RedisLink.pipelined`).

Redis unreachable: :meth:`admit` refuses with EAGENTDOWN and ``retry_after_ms`` (fail
closed: a stream whose cost cannot be accounted for is not run); writes stay queued in
the process and are sent when Redis answers again. A router cut off longer than its
lease (or all of them, after Redis was down that long) is presumed dead: its holds are
charged and kept as *forfeits* (``q:{T}:f``); when it writes again, a forfeit covers the
usage it was charged for, and the rest is given back at the stream's end in the same
period, so the count is high while the router is away and exact in the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from atp_proto.frames import ATPError, BudgetWindow, ErrorCode
from atp_proto.router.quota import (
    STORE_DOWN_RETRY_MS,
    Grant,
    TenantQuota,
    grant_of,
    refuse_budget,
    refuse_concurrent,
    refuse_rate,
)

from .link import LuaScript, RedisError, RedisLink, redacted
from .quota_scripts import ADMIT, WRITE

__all__ = ["ALIVE_MS", "RedisQuotaStore", "key_tag"]

log = logging.getLogger("atp.router")

#: a router's lease on a tenant's counters and holds lasts this long; renewed every second
ALIVE_MS = 5000
#: while Redis is known to be away, admission asks it at most this often (the others are
#: refused at once instead of each waiting for a timeout)
PROBE_S = 0.5
#: a stopping writer waits this long for the streams cancelled with it to release their
#: holds (they unwind at once; a stream stuck past it is charged as a dead router's)
STOP_WAIT_S = 0.5
#: tenants whose last known totals are kept (for the streams' shared-remainder check)
MAX_KNOWN = 100_000

#: counters saturate here (2^53, exact in Lua's doubles): usage past it means "at least
#: this much" (ATP-BUDGET-012), and an adapter's absurd figure cannot make HINCRBY
#: overflow, which would fail every later write of this router (and refuse every stream)
SATURATE = 2**53


@dataclass(slots=True)
class _Due:
    """What one tenant's next write carries."""

    period: int
    tokens: int = 0
    usd: int = 0
    ended: int = 0  #: counted streams that ended
    #: id -> [tokens, usd, done, share tokens, share usd] (the last two: the share the hold
    #: is resized to, less all its stream charged by the write; -1: unchanged)
    holds: dict[str, list[int]] = field(default_factory=dict)


class RedisQuotaStore:
    """The shared :class:`~atp_proto.router.quota.QuotaStore`. Start :meth:`run` in the
    router's nursery (it writes usage, settlements and releases, and renews the leases)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        lease_ms: int = ALIVE_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.lease_ms = lease_ms
        #: this process's clock (seconds, any origin): only intervals of it are used,
        #: Redis's clock (``TIME``, in every script's reply) numbers the periods
        self.clock = clock
        self._redis_offset: float | None = None  #: Redis's clock - ours, at the last reply
        self._admit = LuaScript(link, ADMIT)
        self._write = LuaScript(link, WRITE)
        self._pending: dict[str, _Due] = {}
        self._wake = trio.Event()
        self._queued = 0  #: charges queued since start
        self._written = 0  #: of them, the first this many are in Redis
        self._flushed = trio.Event()  #: set (and replaced) after each write
        self.up = True
        self._tried = -1e9  #: when admit last asked Redis
        #: tenant -> (period window by Redis's clock, tokens, usd): what Redis last answered
        self._known: dict[str, tuple[int, int, int]] = {}
        #: tenant -> (streams of this router holding a lease there, period_s): renewed
        self._leased: dict[str, tuple[int, int]] = {}
        self._holds = 0  #: hold ids issued (ROUTER/N)
        #: hold id -> [tokens, usd] its stream charged so far (for resize_hold)
        self._hold_used: dict[str, list[int]] = {}
        self._seq = 0  #: flushes numbered: a write retried with its number counts once
        #: the last flush, until Redis confirmed it: (seq, calls, charges queued by then)
        self._unconfirmed: tuple[int, list[tuple[str, int, list[str], list[Any]]], int] | None
        self._unconfirmed = None

    def _keys(self, tenant: str) -> tuple[str, str, str, str, str]:
        """The tenant's keys (budget, bucket, counters, holds, forfeits), all with the
        hash tag ``{tenant}`` (one Cluster slot; :func:`key_tag`)."""
        base = f"{self.link.prefix}q:{{{key_tag(tenant)}}}"
        return f"{base}:b", f"{base}:r", f"{base}:c", f"{base}:h", f"{base}:f"

    # ------------------------------------------------------------------ the store

    async def admit(
        self, tenant: str, q: TenantQuota, period_s: int, cap: BudgetWindow | None = None
    ) -> Grant:
        """Admit or refuse; an admitted stream of a budgeted tenant gets a hold of its
        share (``cap``: the client's window, which may ask for less than the remainder)."""
        keys = self._keys(tenant)
        budgeted = q.tokens is not None or q.usd_micros is not None
        hold = ""
        if budgeted:
            self._holds += 1
            hold = f"{self.link.router_id}/{self._holds}"
        ct = cap.max_tokens if cap is not None and cap.max_tokens is not None else -1
        cu = cap.max_usd_micros if cap is not None and cap.max_usd_micros is not None else -1
        args = [
            period_s,
            -1 if q.tokens is None else q.tokens,
            -1 if q.usd_micros is None else q.usd_micros,
            q.streams_per_s or 0,
            q.bucket,
            -1 if q.concurrent is None else q.concurrent,
            self.link.router_id,
            self.lease_ms,
            hold,
            ct,
            cu,
            SATURATE,
        ]
        now = trio.current_time()
        if not self.up and now - self._tried < PROBE_S:
            raise self._unreachable()  # known down: answer at once, probe twice a second
        self._tried = now
        probe = not self.up
        sent = False  #: whether the script may have reached Redis

        def ask() -> list[int]:
            nonlocal sent
            # queued behind the thread limiter while an earlier call found Redis away:
            # answer at once instead of waiting for a timeout of its own
            if not probe and not self.up:
                raise RedisError("Redis went away while this call waited")
            if probe and not self.link.cluster:
                # Redis was away: a PING first, so that a probe that finds it still away
                # surely did not run the script (a Cluster's PING asks every node)
                self.link.client.ping()
            sent = True
            if self.link.replicas:  # acknowledged by the replicas, or refused (a failover)
                return self.link.pipelined(  # type: ignore[no-any-return]
                    lambda pipe: self._admit(list(keys), args, client=pipe), transaction=False
                )[0]
            return self._admit(list(keys), args)  # type: ignore[no-any-return]

        try:
            reply = await self.link.call(ask)
        except RedisError as exc:
            self._went_down(exc)
            # the script may have run and its answer been lost: drop the hold, and count
            # the stream out (else this router's own admissions, which never reap its
            # counter, would refuse the tenant's last slot for as long as it lives). Had
            # it not run, the count is one low until this router's streams end (a write
            # deletes a counter that falls to 0 or below): one stream too many for each
            # admission in flight when Redis went; the probes while it is away PING
            # first, and one that found it still away sent nothing to count out
            if sent and (hold or q.concurrent is not None):
                due = self._pending.setdefault(tenant, _Due(period_s))
                if hold:
                    due.holds[hold] = [0, 0, 1, -1, -1]
                if q.concurrent is not None:
                    due.ended += 1
                self._queued += 1
                self._wake.set()
            raise self._unreachable() from None
        self._came_back()
        status, a, b, win, redis_ms = (int(x) for x in reply)
        self._tick(redis_ms)
        if status not in {2, 3}:
            self._know(tenant, win, a, b)
        if status == 1:
            raise refuse_budget(q, a, b, period_s)
        if status == 2:
            raise refuse_rate(q.streams_per_s or 0.0, a)
        if status == 3:
            raise refuse_concurrent(q.concurrent or 0)
        if budgeted or q.concurrent is not None:
            n, p = self._leased.get(tenant, (0, period_s))
            self._leased[tenant] = (n + 1, max(p, period_s))
        if hold:
            self._hold_used[hold] = [0, 0]
        g = grant_of(q, a, b)
        return Grant(g.tokens_left, g.usd_left, hold or None)

    @staticmethod
    def _unreachable() -> ATPError:
        return ATPError(
            ErrorCode.EAGENTDOWN,
            "the quota store (Redis) is unreachable: the router refuses streams it "
            "cannot account for",
            retry_after_ms=STORE_DOWN_RETRY_MS,
        )

    def _tick(self, redis_ms: int) -> None:
        """A script's reply carried Redis's clock: keep its offset from ours."""
        self._redis_offset = redis_ms / 1000 - self.clock()

    def window(self, period_s: int) -> int | None:
        """The current period's number by Redis's clock (as the scripts number it), from
        the offset of the last reply; None before the first."""
        if self._redis_offset is None:
            return None
        return int((self.clock() + self._redis_offset) // period_s)

    def _know(self, tenant: str, win: int, tokens: int, usd: int) -> None:
        """Redis's totals of ``tenant`` in period ``win`` (numbered by Redis's clock)."""
        self._known[tenant] = (win, tokens, usd)
        if len(self._known) > MAX_KNOWN:  # bounded: forget the oldest answers
            for name in list(self._known)[: MAX_KNOWN // 2]:
                del self._known[name]

    def spent(self, tenant: str, period_s: int) -> tuple[int, int]:
        """What Redis last said the tenant spent this period, plus this router's usage
        not yet written (the other routers' is seen at the next write's answer). The
        period is numbered by Redis's clock, so routers whose own clocks disagree agree
        on it, and on when it ends."""
        win = self.window(period_s)
        w, t, u = self._known.get(tenant, (win, 0, 0))
        if w != win:
            t = u = 0
        p = self._pending.get(tenant)
        if p is not None:
            t, u = t + p.tokens, u + p.usd
        return t, u

    def charge(
        self, tenant: str, tokens: int, usd_micros: int, period_s: int, hold: str | None = None
    ) -> None:
        if tokens <= 0 and usd_micros <= 0:
            return
        p = self._pending.get(tenant)
        if p is None:
            p = self._pending[tenant] = _Due(period_s)
        p.period = max(p.period, period_s)
        p.tokens = min(SATURATE, p.tokens + max(0, tokens))
        p.usd = min(SATURATE, p.usd + max(0, usd_micros))
        if hold is not None:
            h = p.holds.setdefault(hold, [0, 0, 0, -1, -1])
            h[0] = min(SATURATE, h[0] + max(0, tokens))
            h[1] = min(SATURATE, h[1] + max(0, usd_micros))
            used = self._hold_used.get(hold)
            if used is not None:
                used[0] = min(SATURATE, used[0] + max(0, tokens))
                used[1] = min(SATURATE, used[1] + max(0, usd_micros))
        self._queued += 1
        self._wake.set()

    def release(self, tenant: str, q: TenantQuota, hold: str | None = None) -> None:
        if q.concurrent is None and hold is None:
            return
        # the period the admission named: a write reaps dead holds into its window
        n, period = self._leased.get(tenant, (1, 1))
        if n <= 1:
            self._leased.pop(tenant, None)
        else:
            self._leased[tenant] = (n - 1, period)
        p = self._pending.get(tenant)
        if p is None:
            p = self._pending[tenant] = _Due(period)
        p.period = max(p.period, period)
        if q.concurrent is not None:
            p.ended += 1
        if hold is not None:
            p.holds.setdefault(hold, [0, 0, 0, -1, -1])[2] = 1
            self._hold_used.pop(hold, None)
        self._queued += 1
        self._wake.set()

    def resize_hold(
        self, tenant: str, period_s: int, hold: str, tokens: int | None, usd: int | None
    ) -> None:
        """Set the share ``hold`` reserves to ``tokens`` / ``usd_micros`` (None: that one
        unchanged), less what its stream charged so far, from its next write on: lowered
        to the preflight's guard-banded estimate, raised back to the admitted share when
        the stream outspends it (ATP-BUDGET-017). Never blocks, never raises."""
        used = self._hold_used.get(hold)
        if used is None:
            return  # its stream ended
        p = self._pending.get(tenant)
        if p is None:
            p = self._pending[tenant] = _Due(period_s)
        h = p.holds.setdefault(hold, [0, 0, 0, -1, -1])
        if tokens is not None:
            h[3] = max(0, tokens)
        if usd is not None:
            h[4] = max(0, usd)
        self._queued += 1
        self._wake.set()

    async def settle(self) -> None:
        """Wait until what was charged (and released) so far is written (at most the link's timeout
        twice: when Redis is away the charges stay queued, and the caller goes on)."""
        target = self._queued
        if not self.up:  # known to be away: the usage waits in the queue, not the FINAL
            return
        with trio.move_on_after(2 * self.link.timeout_s + 0.1):
            while self._written < target:
                await self._flushed.wait()

    @property
    def pending(self) -> int:
        """Tenants with usage or releases not yet written (for tests and logs)."""
        return len(self._pending)

    @property
    def holds_open(self) -> int:
        """Tenants where this router holds a lease (streams open; for tests and logs)."""
        return len(self._leased)

    # ------------------------------------------------------------------ the writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: write what is queued as soon as it is (one pipelined call at a
        time), and renew this router's leases every second; on failure keep the queue and
        retry with backoff (0.1 s doubling to 2 s). A last write when cancelled."""
        backoff = 0.1
        last_renewal = trio.current_time()
        task_status.started()
        try:
            while True:
                with trio.move_on_after(1.0):
                    await self._wake.wait()
                self._wake = trio.Event()
                renew = trio.current_time() - last_renewal >= 1.0
                try:
                    await self._flush(renew)
                except RedisError as exc:
                    self._went_down(exc)
                    await trio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    self._wake.set()
                    continue
                backoff = 0.1
                if renew:
                    last_renewal = trio.current_time()
                self._came_back()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_WAIT_S):
                # a stop cancels the streams with this writer: those still unwinding
                # (their own shielded cleanup) release their holds after it, which must
                # reach Redis too, or the holds outlive this router and are charged
                # (ATP-BUDGET-017). Wait for them a little, writing as they come
                while self._leased:
                    self._wake = trio.Event()
                    await self._wake.wait()
            if self._pending or self._unconfirmed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._flush(False)
                    except RedisError as exc:
                        # one line: the error says why; the other routers charge this
                        # one's holds once its lease lapses (ATP-BUDGET-017)
                        unsent = set(self._pending)
                        if self._unconfirmed is not None:
                            unsent.update(c[0] for c in self._unconfirmed[1])
                        log.warning(
                            "Redis unreachable at shutdown: quota usage not written (the "
                            "other routers charge this router's holds once its lease lapses)",
                            extra={
                                "redis": redacted(self.link.url),
                                "tenants": len(unsent),
                                "error": str(exc),
                            },
                        )

    async def _flush(self, renew: bool) -> None:
        """Write a flush not yet confirmed (again, with its number: a write whose reply
        was lost, or that too few replicas acknowledged, is counted once), then what is
        queued."""
        if self._unconfirmed is not None:
            await self._send(*self._unconfirmed)
            self._unconfirmed = None
        batch, self._pending = self._pending, {}
        queued = self._queued
        renewals = {t: p for t, (_, p) in self._leased.items() if t not in batch} if renew else {}
        if not batch and not renewals:
            if renew:  # idle: a PING a second keeps `up` (atp_redis_up) true to Redis
                await self.link.call(self.link.client.ping)
            return
        self._seq += 1
        router, lease_ms, seq = self.link.router_id, self.lease_ms, self._seq
        calls: list[tuple[str, int, list[str], list[Any]]] = []
        for tenant, due in batch.items():
            bkey, _, ckey, hkey, fkey = self._keys(tenant)
            args: list[Any] = [due.period, due.tokens, due.usd, SATURATE, router, due.ended]
            args += [lease_ms if tenant in self._leased else 0, seq]
            for hid, (t, u, done, st, su) in due.holds.items():
                # a resized hold keeps its share less all its stream charged, all of
                # which this flush writes (the queue is the batch)
                used = self._hold_used.get(hid, (0, 0))
                rt = -1 if st < 0 else max(0, st - used[0])
                ru = -1 if su < 0 else max(0, su - used[1])
                args += [hid, t, u, done, rt, ru]
            calls.append((tenant, due.period, [bkey, ckey, hkey, fkey], args))
        for tenant, period in renewals.items():
            bkey, _, ckey, hkey, fkey = self._keys(tenant)
            args = [period, 0, 0, SATURATE, router, 0, lease_ms, seq]
            calls.append((tenant, period, [bkey, ckey, hkey, fkey], args))
        self._unconfirmed = (seq, calls, queued)
        await self._send(seq, calls, queued)
        self._unconfirmed = None

    async def _send(
        self, seq: int, calls: list[tuple[str, int, list[str], list[Any]]], queued: int
    ) -> None:
        """Write flush ``seq``; the charges queued up to ``queued`` are then stored.

        Raises:
            RedisError: not (all) written: the caller keeps the flush and sends it again.
        """
        groups = _by_slot(calls) if self.link.cluster else [calls]

        def write() -> tuple[list[tuple[str, int, Any]], Exception | None]:
            # MULTI/EXEC: a group is written whole or not at all. One group on one Redis;
            # on a Cluster one per slot (a transaction cannot span slots). A group sent
            # again after a failure is skipped per tenant by the flush's number (the
            # script keeps each router's last one), so a lost reply counts nothing twice
            written: list[tuple[str, int, Any]] = []
            for group in groups:
                try:

                    def fill(pipe: Any, group: Any = group) -> None:
                        for _, _, keys, args in group:
                            self._write(keys, args, client=pipe)

                    replies = self.link.pipelined(fill, transaction=True)
                    written += [(c[0], c[1], r) for c, r in zip(group, replies, strict=True)]
                except (RedisError, RedisClusterException) as exc:
                    return written, exc
            return written, None

        written, error = await self.link.call(write)
        for tenant, _, (win, t, u, redis_ms) in written:
            self._tick(int(redis_ms))
            self._know(tenant, int(win), int(t), int(u))
        if error is not None:
            raise RedisError(str(error))
        self._written = queued
        self._flushed.set()
        self._flushed = trio.Event()

    # ------------------------------------------------------------------ health

    def _went_down(self, exc: Exception) -> None:
        if self.up:
            self.up = False
            log.warning(
                "Redis unreachable: new streams are refused (EAGENTDOWN) until it answers",
                extra={"redis": redacted(self.link.url), "error": str(exc)},
            )

    def _came_back(self) -> None:
        if not self.up:
            self.up = True
            log.info("Redis reachable again", extra={"redis": redacted(self.link.url)})


def key_tag(tenant: str) -> str:
    """The tenant as its keys' hash tag spells it: itself, unless it holds a ``}`` or a
    ``%`` (or is empty), then with ``%``, ``{`` and ``}`` percent-encoded. A ``}`` would end
    the tag early, and a tag that ends at once (``{}``, a tenant starting with ``}``)
    makes Redis Cluster hash each whole key: a script's keys in several slots, refused
    (CROSSSLOT) at every admission and, in the flush that releases it, at every write of
    the router. Encoding ``%`` keeps two tenants from ever sharing a key."""
    if not tenant:
        return "%"  # no encoded name is a bare '%'
    if "}" not in tenant and "%" not in tenant:
        return tenant
    return tenant.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _by_slot(calls: list[Any]) -> list[list[Any]]:
    """Calls grouped by the Redis Cluster slot of their keys (each call's keys share one)."""
    groups: dict[int, list[Any]] = {}
    for call in calls:
        groups.setdefault(key_slot(call[2][1].encode()), []).append(call)
    return list(groups.values())
