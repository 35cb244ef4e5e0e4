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
  (key ``q:{T}:n:ROUTER``, expiring two periods or a minute after the router's last
  write, its lease lapsed or not: not a field of ``q:{T}:c``, which every script reads
  whole and which would grow with every router restart) and skips a flush it has already applied,
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

Redis refusing writes for a while (OOM, READONLY...: :func:`.link.refuses_writes`) is
Redis away for the writer: the flush is kept and sent again, and admission refuses at
once (EAGENTDOWN) until a flush went through; READONLY also drops the connections (a
failover). A write Redis rejects for itself (a script error, a key of another type or a
value that is no number: the scripts check their keys' types and the values they compute
with before writing anything, and store the flush number last, so it changed nothing;
a script failing part-way for another reason, a bug, wrote that part, which its retry
writes again: counted high) puts its tenant's usage back in the queue, merged, sent again after
:data:`REJECT_RETRY_S` doubling to :data:`REJECT_RETRY_MAX_S`; that tenant's streams are
refused meanwhile, the others' writes go on; its lease is renewed all the same, alone
(:data:`.quota_scripts.RENEW`), as its streams run on. Both are counted in
:attr:`write_errors`. A clean stop deletes this router's lease fields (the other routers
need not wait for them to lapse); forfeits are bounded (:data:`.quota_scripts.FORFEITS_MAX`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

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

from .link import LuaScript, RedisError, RedisLink, redacted, refuses_writes
from .quota_scripts import ADMIT, LEASE_MAX_MS, RENEW, WRITE

__all__ = ["ALIVE_MS", "RedisQuotaStore", "key_tag"]

log = logging.getLogger("atp.router")

#: a router's lease on a tenant's counters and holds lasts this long; renewed every second
ALIVE_MS = LEASE_MAX_MS
#: while Redis is known to be away, admission asks it at most this often (the others are
#: refused at once instead of each waiting for a timeout)
PROBE_S = 0.5
#: a stopping writer waits this long for the streams cancelled with it to release their
#: holds (they unwind at once; a stream stuck past it is charged as a dead router's)
STOP_WAIT_S = 0.5
#: tenants whose last known totals are kept (for the streams' shared-remainder check)
MAX_KNOWN = 100_000
#: a tenant whose write Redis rejected (a script error) is written again after this, the
#: wait doubling to REJECT_RETRY_MAX_S while it fails
REJECT_RETRY_S = 1.0
REJECT_RETRY_MAX_S = 30.0

#: counters saturate here (2^53, exact in Lua's doubles): usage past it means "at least
#: this much" (ATP-BUDGET-012), and an adapter's absurd figure cannot make HINCRBY
#: overflow, which would fail every later write of this router (and refuse every stream)
SATURATE = 2**53


#: a flush until Redis confirmed it: (its number, its calls (tenant, period, keys, args),
#: the charges queued by then, what it carries per tenant)
_Flush = tuple[int, list[tuple[str, int, list[str], list[Any]]], int, dict[str, "_Due"]]


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

    def add(self, later: _Due) -> None:
        """Fold ``later`` (what was queued after this) into this one: one write."""
        self.period = max(self.period, later.period)
        self.tokens = min(SATURATE, self.tokens + later.tokens)
        self.usd = min(SATURATE, self.usd + later.usd)
        self.ended += later.ended
        for hid, (t, u, done, st, su) in later.holds.items():
            h = self.holds.setdefault(hid, [0, 0, 0, -1, -1])
            h[0], h[1] = min(SATURATE, h[0] + t), min(SATURATE, h[1] + u)
            h[2] = max(h[2], done)
            if st >= 0:
                h[3] = st
            if su >= 0:
                h[4] = su


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
        self._renew = LuaScript(link, RENEW)
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
        #: tenant -> until when (trio's clock) this router's lease there may still run:
        #: those are deleted at a clean stop (else they ran on for up to lease_ms, and the
        #: other routers took a stopped router's counters for a live one's)
        self._lease_until: dict[str, float] = {}
        self._holds = 0  #: hold ids issued (ROUTER/N)
        #: hold id -> [tokens, usd] its stream charged so far (for resize_hold)
        self._hold_used: dict[str, list[int]] = {}
        self._seq = 0  #: flushes numbered: a write retried with its number counts once
        #: the last flush, until Redis confirmed it: (seq, calls, charges queued by then,
        #: what it carries per tenant)
        self._unconfirmed: _Flush | None = None
        #: quota scripts Redis answered with an error (atp_redis_write_errors_total):
        #: ``refused``, Redis refusing writes for a while (OOM, READONLY...: the flush is
        #: kept and sent again, the router refuses streams meanwhile); ``rejected``, a
        #: write that failed in Redis for itself (a script error: its tenant's usage is
        #: put back in the queue and its streams refused, the other tenants go on)
        self.write_errors = {"refused": 0, "rejected": 0}
        #: the code of Redis's refusal of the writer's last flush (OOM, READONLY...);
        #: None once a flush went through. While set, admission refuses at once
        self._refusing: str | None = None
        #: tenant -> (not written again before, the wait doubling): writes rejected
        self._rejected: dict[str, tuple[float, float]] = {}

    def _keys(self, tenant: str) -> tuple[str, str, str, str, str]:
        """The tenant's keys (budget, bucket, counters, holds, forfeits), all with the
        hash tag ``{tenant}`` (one Cluster slot; :func:`key_tag`)."""
        base = f"{self.link.prefix}q:{{{key_tag(tenant)}}}"
        return f"{base}:b", f"{base}:r", f"{base}:c", f"{base}:h", f"{base}:f"

    def _seq_key(self, tenant: str) -> str:
        """This router's last flush number for ``tenant`` (a key of its own, expiring on
        its own: the counters, which every script reads whole, stay as small as the
        routers alive, however often routers restart)."""
        return f"{self.link.prefix}q:{{{key_tag(tenant)}}}:n:{self.link.router_id}"

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
        if self._refusing is not None:
            # Redis refuses this router's writes (the writer sends them again): fail
            # closed as when it is away, until a write went through
            raise self._unreachable(self._refusing)
        rejected = self._rejected.get(tenant)
        if rejected is not None and (now < rejected[0] or tenant in self._pending):
            raise self._unreachable("rejected")  # until a write of the tenant went through
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
            code = refuses_writes(exc)
            if isinstance(exc, ResponseError) and code is None:
                # an error about this admission (a key of the wrong type: the script
                # checks them before writing anything): the tenant alone fails closed
                self.write_errors["rejected"] += 1
                self._reject([tenant], exc)
                raise self._unreachable("rejected") from None
            self._went_down(exc)
            if code is not None:
                # refused before the script wrote anything (a refusal comes at a
                # script's first write): nothing to count out
                self.write_errors["refused"] += 1
                if code == "READONLY":
                    await self.link.call(self.link.reconnect)
                raise self._unreachable(code) from None
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
        # not the writer's refusal: an admission Redis ran to its end (past maxmemory,
        # one whose first write adds no memory) says nothing of the writes
        self._came_back(writer=False)
        if rejected is not None:
            self._rejected.pop(tenant, None)
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
            self._leases_set([tenant])
        if hold:
            self._hold_used[hold] = [0, 0]
        g = grant_of(q, a, b)
        return Grant(g.tokens_left, g.usd_left, hold or None)

    @staticmethod
    def _unreachable(why: str | None = None) -> ATPError:
        """EAGENTDOWN: Redis away (``why`` None), refusing writes (``why`` its code), or
        rejecting this tenant's (``"rejected"``)."""
        if why is None:
            state = "is unreachable"
        elif why == "rejected":
            state = "refuses this tenant's writes"
        else:
            state = f"refuses writes ({why})"
        return ATPError(
            ErrorCode.EAGENTDOWN,
            f"the quota store (Redis) {state}: the router refuses streams it cannot account for",
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
        for p in (
            self._pending.get(tenant),
            None if self._unconfirmed is None else self._unconfirmed[3].get(tenant),
        ):
            if p is not None:  # not written yet (or not confirmed: counted high, not low)
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
        time), and renew this router's leases every second; when Redis is away or refuses
        writes (OOM, READONLY...) keep the flush and the queue and retry with backoff (0.1 s
        doubling to 2 s; admission fails closed meanwhile). A last write when cancelled."""
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
                    code = refuses_writes(exc)
                    if code is not None:
                        self.write_errors["refused"] += 1
                        self._refusing = code
                        if code == "READONLY":  # a demoted master: a failover
                            await self.link.call(self.link.reconnect)
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
            # a tenant whose write Redis rejected is tried once more now, its wait cut
            # short (the flush skips it until then: its usage would stay here, unsaid)
            self._rejected = {t: (0.0, w) for t, (_, w) in self._rejected.items()}
            if self._pending or self._unconfirmed is not None or self._lease_until:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        if self._pending or self._unconfirmed is not None:
                            await self._flush(False)
                        if self._pending:  # rejected again: put back in the queue
                            raise RedisError("a quota write rejected by Redis")
                        with contextlib.suppress(RedisError):  # else they run out
                            await self._drop_leases()
                    except RedisError as exc:
                        # one line: the error says why; the other routers charge this
                        # one's holds once its lease lapses (ATP-BUDGET-017)
                        unsent = set(self._pending)
                        if self._unconfirmed is not None:
                            unsent.update(c[0] for c in self._unconfirmed[1])
                        log.warning(
                            "quota usage not written at shutdown, Redis unreachable or "
                            "rejecting the write (the other routers charge this router's "
                            "holds once its lease lapses)",
                            extra={
                                "redis": redacted(self.link.url),
                                "tenants": len(unsent),
                                "error": str(exc)[:300],
                            },
                        )

    async def _flush(self, renew: bool) -> None:
        """Write a flush not yet confirmed (again, with its number: a write whose reply
        was lost, or that too few replicas acknowledged, is counted once), then what is
        queued (but a tenant whose write Redis rejected, until its retry is due)."""
        if self._unconfirmed is not None:
            await self._send(*self._unconfirmed)
            self._unconfirmed = None
        now = trio.current_time()
        held = {t for t, (at, _) in self._rejected.items() if now < at}
        if held:
            batch = {t: d for t, d in self._pending.items() if t not in held}
            self._pending = {t: d for t, d in self._pending.items() if t in held}
        else:
            batch, self._pending = self._pending, {}
        queued = self._queued
        renewals = (
            {t: p for t, (_, p) in self._leased.items() if t not in batch and t not in held}
            if renew
            else {}
        )
        # a tenant whose writes Redis rejects keeps its lease all the same (its streams run
        # on): renewed on its own, whatever its write does
        lone = {t: p for t, (_, p) in self._leased.items() if t in held} if renew else {}
        if lone:
            await self._renew_leases(lone)
        if not batch and not renewals:
            if renew and not lone:  # idle: a PING a second keeps `up` (atp_redis_up) true
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
            keys = [bkey, ckey, hkey, fkey, self._seq_key(tenant)]
            calls.append((tenant, due.period, keys, args))
        for tenant, period in renewals.items():
            bkey, _, ckey, hkey, fkey = self._keys(tenant)
            args = [period, 0, 0, SATURATE, router, 0, lease_ms, seq]
            calls.append((tenant, period, [bkey, ckey, hkey, fkey, self._seq_key(tenant)], args))
        self._unconfirmed = (seq, calls, queued, batch)
        await self._send(seq, calls, queued, batch)
        self._unconfirmed = None
        self._leases_set(
            [t for t in batch if t in self._leased and t not in self._rejected] + list(renewals)
        )

    def _leases_set(self, tenants: list[str]) -> None:
        """This router's lease on ``tenants`` was just set (an admission, a write)."""
        until = trio.current_time() + self.lease_ms / 1000
        for tenant in tenants:
            self._lease_until[tenant] = until
        if len(self._lease_until) > MAX_KNOWN:  # bounded: forget those lapsed
            now = trio.current_time()
            self._lease_until = {t: u for t, u in self._lease_until.items() if u > now}

    async def _renew_leases(self, tenants: dict[str, int]) -> None:
        """Renew this router's lease on ``tenants`` (tenant -> period_s) alone, without
        their writes (:data:`.quota_scripts.RENEW`): those of tenants whose writes Redis
        rejects. A tenant whose lease cannot be renewed either (its counters key of
        another type) is counted ``rejected``; Redis away or refusing writes raises.

        Raises:
            RedisError: Redis away, or refusing writes (the caller backs off).
        """
        router, lease_ms = self.link.router_id, self.lease_ms
        calls: list[tuple[str, int, list[str], list[Any]]] = []
        for tenant, period in tenants.items():
            _, _, ckey, hkey, _ = self._keys(tenant)
            calls.append((tenant, period, [ckey, hkey], [router, lease_ms, period]))
        groups = _by_slot(calls) if self.link.cluster else [calls]

        def renew() -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            for group in groups:

                def fill(pipe: Any, group: Any = group) -> None:
                    for _, _, keys, args in group:
                        self._renew(keys, args, client=pipe)

                replies = self.link.pipelined(fill, transaction=False, raise_on_error=False)
                out += [(c[0], r) for c, r in zip(group, replies, strict=True)]
            return out

        renewed: list[str] = []
        for tenant, reply in await self.link.call(renew):
            if isinstance(reply, Exception):
                if refuses_writes(reply) is not None:
                    raise reply
                self.write_errors["rejected"] += 1
            else:
                self._tick(int(reply))
                renewed.append(tenant)
        self._leases_set(renewed)

    async def _drop_leases(self) -> None:
        """At a clean stop, with no stream of a tenant left open: this router's lease
        fields deleted (the others see at once that it vouches for nothing), instead of
        left to run out."""
        now = trio.current_time()
        gone = [
            t for t, until in self._lease_until.items() if until > now and t not in self._leased
        ]
        if not gone:
            return
        field_ = f"@{self.link.router_id}"
        keys = [self._keys(t)[2] for t in gone]

        def drop() -> None:
            def fill(pipe: Any) -> None:
                for key in keys:
                    pipe.hdel(key, field_)

            self.link.pipelined(fill, transaction=False)

        await self.link.call(drop)
        for tenant in gone:
            self._lease_until.pop(tenant, None)

    async def _send(
        self,
        seq: int,
        calls: list[tuple[str, int, list[str], list[Any]]],
        queued: int,
        batch: dict[str, _Due],
    ) -> None:
        """Write flush ``seq``; the charges queued up to ``queued`` are then stored, but
        those of a tenant whose write Redis rejected (a script error, a key of the wrong
        type: it would fail again as it is), which go back to the queue from ``batch``,
        merged with what came since, and are sent again later in a flush of their own
        number (the script writes nothing before it checked the keys and values, and its number
        last: a rejected write changed nothing).

        Raises:
            RedisError: Redis away, or refusing writes (:func:`.link.refuses_writes`):
                not (all) written, the caller keeps the flush and sends it again.
        """
        groups = _by_slot(calls) if self.link.cluster else [calls]

        def write() -> tuple[list[tuple[Any, Any]], Exception | None]:
            # MULTI/EXEC: a group is written whole or not at all. One group on one Redis;
            # on a Cluster one per slot (a transaction cannot span slots). A group sent
            # again after a failure is skipped per tenant by the flush's number (the
            # script keeps each router's last one), so a lost reply counts nothing twice.
            # Each call's reply, or its error reply (the others in the group are written)
            done: list[tuple[Any, Any]] = []
            for group in groups:

                def fill(pipe: Any, group: Any = group) -> None:
                    for _, _, keys, args in group:
                        self._write(keys, args, client=pipe)

                try:
                    replies = self.link.pipelined(fill, transaction=True, raise_on_error=False)
                except ResponseError as exc:  # the transaction discarded: why, for each
                    replies = [exc] * len(group)
                except (RedisError, RedisClusterException) as exc:
                    return done, exc
                done += list(zip(group, replies, strict=True))
            return done, None

        done, error = await self.link.call(write)
        refused: Exception | None = None
        rejected: list[tuple[str, Exception]] = []
        back: list[str] = []
        for (tenant, _, _, _), reply in done:
            if isinstance(reply, Exception):
                if refuses_writes(reply) is not None:
                    refused = refused or reply
                else:
                    rejected.append((tenant, reply))
                continue
            win, t, u, redis_ms = reply
            self._tick(int(redis_ms))
            self._know(tenant, int(win), int(t), int(u))
            if self._rejected.pop(tenant, None) is not None:
                back.append(tenant)
        if error is not None:
            raise RedisError(str(error))
        if refused is not None:
            raise refused  # kept whole and sent again (the rejected ones with it)
        if rejected:
            self.write_errors["rejected"] += len(rejected)
            self._reject([t for t, _ in rejected], rejected[0][1])
            for tenant, _ in rejected:
                due = batch.get(tenant)
                if due is None:
                    continue  # a renewal: the next one renews
                later = self._pending.pop(tenant, None)
                if later is not None:
                    due.add(later)
                self._pending[tenant] = due
        if back:
            log.info(
                "Redis takes the quota writes of the tenant again: its usage is written",
                extra={"tenant": back[0], "tenants": len(back)},
            )
        self._written = queued
        self._flushed.set()
        self._flushed = trio.Event()

    def _reject(self, tenants: list[str], exc: Exception) -> None:
        """Redis answered writes (an admission, a flush) of ``tenants`` with an error about
        themselves: each fails closed (its streams refused) and is written again after a
        wait, doubling while it fails. One log line for those newly in that state."""
        now = trio.current_time()
        new = [t for t in tenants if t not in self._rejected]
        for tenant in tenants:
            _, wait = self._rejected.get(tenant, (0.0, REJECT_RETRY_S / 2))
            wait = min(REJECT_RETRY_MAX_S, wait * 2)
            self._rejected[tenant] = (now + wait, wait)
        if len(self._rejected) > MAX_KNOWN:  # bounded: forget those with nothing queued
            for name in [t for t in self._rejected if t not in self._pending][: MAX_KNOWN // 2]:
                del self._rejected[name]
        if new:
            log.error(
                "Redis rejected a quota write (an error about the write, not Redis being "
                "away: a script error, a key of the wrong type): the tenant's usage stays "
                "queued in this router and is sent again with backoff; its new streams are "
                "refused (EAGENTDOWN) until a write goes through",
                extra={
                    "redis": redacted(self.link.url),
                    "tenant": new[0],
                    "tenants": len(new),
                    "error": str(exc)[:300],
                },
            )

    # ------------------------------------------------------------------ health

    def _went_down(self, exc: Exception) -> None:
        if self.up:
            self.up = False
            code = refuses_writes(exc)
            log.warning(
                "Redis unreachable: new streams are refused (EAGENTDOWN) until it answers"
                if code is None
                else f"Redis refuses writes ({code}): new streams are refused (EAGENTDOWN) "
                "and the usage stays queued until a write goes through",
                extra={"redis": redacted(self.link.url), "error": str(exc)[:300]},
            )

    def _came_back(self, *, writer: bool = True) -> None:
        """Redis answered; ``writer``: a flush went through, ending a refusal of writes."""
        if writer:
            self._refusing = None
        elif self._refusing is not None:
            return  # still refusing the writer: not back
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
