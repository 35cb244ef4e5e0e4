"""Tenant quotas in Redis: one limit across every router sharing it (ATP-BUDGET-013..017).

Every decision is one Lua script, atomic in Redis, timed by Redis's own clock (``TIME``)
so that routers' clocks do not matter. Every key a script touches carries the tenant as
its hash tag (``PREFIX q:{TENANT}:...``), so it is in one Redis Cluster slot (README
"Scale-out" says what is supported):

* ``q:{T}:b:WINDOW``: the period's usage (fields ``t`` tokens, ``u`` usd_micros);
* ``q:{T}:r``: the stream-rate token bucket;
* ``q:{T}:c``: per router, its streams open (field ``ROUTER``) and its *lease* (field
  ``@ROUTER``: a deadline in Redis's milliseconds, renewed every second while the router
  has streams of this tenant open, ``lease_ms`` ahead: 5 s). The lease lives beside the
  counters it vouches for, in the tenant's slot, instead of one key per router;
* ``q:{T}:h``: the *holds* (ATP-BUDGET-017), one per stream in flight (field
  ``ROUTER/N``: the tokens and usd_micros it may still spend).

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
* write (one per tenant per flush, all of a flush in one MULTI): the usage, the holds'
  settlements, the streams ended, the lease renewal; queued in the process and written
  by :meth:`RedisQuotaStore.run` as soon as they are.

Redis unreachable: :meth:`admit` refuses with EAGENTDOWN and ``retry_after_ms`` (fail
closed: a stream whose cost cannot be accounted for is not run); writes stay queued in
the process and are sent when Redis answers again. A router cut off longer than its
lease is treated as dead: its holds are charged, and what it writes when it is back is
charged on top (an over-count, never an under-count).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

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

from .link import RedisError, RedisLink, redacted

__all__ = ["ALIVE_MS", "RedisQuotaStore"]

log = logging.getLogger("atp.router")

#: a router's lease on a tenant's counters and holds lasts this long; renewed every second
ALIVE_MS = 5000
#: while Redis is known to be away, admission asks it at most this often (the others are
#: refused at once instead of each waiting for a timeout)
PROBE_S = 0.5
#: tenants whose last known totals are kept (for the streams' shared-remainder check)
MAX_KNOWN = 100_000

#: counters saturate here (2^53, exact in Lua's doubles): usage past it means "at least
#: this much" (ATP-BUDGET-012), and an adapter's absurd figure cannot make HINCRBY
#: overflow, which would fail every later write of this router (and refuse every stream)
SATURATE = 2**53

#: shared by both scripts: Redis's clock, a saturating add, and the reaper of the routers
#: whose lease lapsed (their counters deleted, their holds charged); returns the streams
#: open on live routers
_COMMON = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[1])
end
local function add(bkey, f, inc, cap)
  local cur = tonumber(redis.call('HGET', bkey, f) or '0')
  if cur + inc >= cap then
    redis.call('HSET', bkey, f, string.format('%.0f', cap))
    return cap
  end
  return redis.call('HINCRBY', bkey, f, string.format('%.0f', inc))
end
local function reap(ckey, hkey, bkey, me, now, cap)
  local f = redis.call('HGETALL', ckey)
  local live, dead, ndead = {}, {}, 0
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 1) == '@' then
      local r = string.sub(f[i], 2)
      if r == me or tonumber(f[i + 1]) > now then
        live[r] = true
      else
        dead[r] = true
        ndead = ndead + 1
        redis.call('HDEL', ckey, f[i])
      end
    end
  end
  if ndead > 0 then
    local h = redis.call('HGETALL', hkey)
    for i = 1, #h, 2 do
      local r = string.match(h[i], '^(.*)/[^/]*$')
      if r == nil or not live[r] then
        local ht, hu = string.match(h[i + 1], '^(%S+) (%S+)$')
        if tonumber(ht) and tonumber(ht) > 0 then add(bkey, 't', tonumber(ht), cap) end
        if tonumber(hu) and tonumber(hu) > 0 then add(bkey, 'u', tonumber(hu), cap) end
        redis.call('HDEL', hkey, h[i])
      end
    end
  end
  local open = 0
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 1) ~= '@' then
      if live[f[i]] then
        open = open + tonumber(f[i + 1])
      else
        redis.call('HDEL', ckey, f[i])
      end
    end
  end
  return open
end
local function lease(ckey, hkey, me, now, lease_ms, ttl_ms)
  redis.call('HSET', ckey, '@' .. me, string.format('%.0f', now + lease_ms))
  redis.call('PEXPIRE', ckey, ttl_ms)
  if redis.call('EXISTS', hkey) == 1 then redis.call('PEXPIRE', hkey, ttl_ms) end
end
"""

#: KEYS: budget (without its window), bucket, counters, holds. ARGV: period, tokens limit,
#: usd limit (-1: none), rate, burst, concurrent limit (-1: none), router, lease_ms, hold
#: id ("": none), the stream's own token and usd caps (-1: none), the saturation
_ADMIT = (
    _COMMON
    + """
local now, secs = clock()
local period = tonumber(ARGV[1])
local bkey = KEYS[1] .. ':' .. math.floor(secs / period)
local me, cap = ARGV[7], tonumber(ARGV[12])
local open = reap(KEYS[3], KEYS[4], bkey, me, now, cap)
if redis.call('EXISTS', bkey) == 1 then redis.call('EXPIRE', bkey, period * 2) end
local used_t = tonumber(redis.call('HGET', bkey, 't') or '0')
local used_u = tonumber(redis.call('HGET', bkey, 'u') or '0')
local lt, lu = tonumber(ARGV[2]), tonumber(ARGV[3])
if (lt >= 0 and used_t >= lt) or (lu >= 0 and used_u >= lu) then
  return {1, used_t, used_u}
end
local cl = tonumber(ARGV[6])
if cl >= 0 and open >= cl then return {3, open, 0} end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = tonumber(ARGV[5])
  local b = redis.call('HMGET', KEYS[2], 'n', 'at')
  local n = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now / 1000
  n = math.min(burst, n + math.max(0, now / 1000 - at) * rate)
  if n < 1 then return {2, math.ceil((1 - n) / rate * 1000), 0} end
  redis.call('HSET', KEYS[2], 'n', tostring(n - 1), 'at', tostring(now / 1000))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
end
if cl >= 0 then redis.call('HINCRBY', KEYS[3], me, 1) end
if ARGV[9] ~= '' then
  local ht, hu = 0, 0
  local ct, cu = tonumber(ARGV[10]), tonumber(ARGV[11])
  if lt >= 0 then ht = lt - used_t; if ct >= 0 and ct < ht then ht = ct end end
  if lu >= 0 then hu = lu - used_u; if cu >= 0 and cu < hu then hu = cu end end
  redis.call('HSET', KEYS[4], ARGV[9], string.format('%.0f %.0f', ht, hu))
end
if cl >= 0 or ARGV[9] ~= '' then
  lease(KEYS[3], KEYS[4], me, now, tonumber(ARGV[8]), math.max(period * 2000, 60000))
end
return {0, used_t, used_u}
"""
)

#: KEYS: budget (without its window), counters, holds. ARGV: period, tokens, usd,
#: saturation, router, streams ended, lease_ms (0: no renewal), then per hold: id, tokens,
#: usd, 1 when its stream ended. Returns {window, tokens used, usd used}.
_WRITE = (
    _COMMON
    + """
local now, secs = clock()
local period = tonumber(ARGV[1])
local win = math.floor(secs / period)
local bkey = KEYS[1] .. ':' .. win
local cap, me = tonumber(ARGV[4]), ARGV[5]
reap(KEYS[2], KEYS[3], bkey, me, now, cap)
local out = {win, 0, 0}
local dt, du = tonumber(ARGV[2]), tonumber(ARGV[3])
out[2] = dt > 0 and add(bkey, 't', dt, cap) or tonumber(redis.call('HGET', bkey, 't') or '0')
out[3] = du > 0 and add(bkey, 'u', du, cap) or tonumber(redis.call('HGET', bkey, 'u') or '0')
if dt > 0 or du > 0 then redis.call('EXPIRE', bkey, period * 2) end
for i = 8, #ARGV, 4 do
  local id = ARGV[i]
  if ARGV[i + 3] == '1' then
    redis.call('HDEL', KEYS[3], id)
  else
    local v = redis.call('HGET', KEYS[3], id)
    if v then
      local ht, hu = string.match(v, '^(%S+) (%S+)$')
      ht = math.max(0, tonumber(ht) - tonumber(ARGV[i + 1]))
      hu = math.max(0, tonumber(hu) - tonumber(ARGV[i + 2]))
      redis.call('HSET', KEYS[3], id, string.format('%.0f %.0f', ht, hu))
    end
  end
end
local ended = tonumber(ARGV[6])
if ended > 0 then
  if redis.call('HINCRBY', KEYS[2], me, -ended) <= 0 then redis.call('HDEL', KEYS[2], me) end
end
local lease_ms = tonumber(ARGV[7])
if lease_ms > 0 then lease(KEYS[2], KEYS[3], me, now, lease_ms, math.max(period * 2000, 60000)) end
return out
"""
)


@dataclass(slots=True)
class _Due:
    """What one tenant's next write carries."""

    period: int
    tokens: int = 0
    usd: int = 0
    ended: int = 0  #: counted streams that ended
    holds: dict[str, list[int]] = field(default_factory=dict)  #: id -> [tokens, usd, done]

    def merge(self, other: _Due) -> None:
        """Add ``other``'s (a batch put back after a failed write meets a newer one)."""
        self.period = max(self.period, other.period)
        self.tokens = min(SATURATE, self.tokens + other.tokens)
        self.usd = min(SATURATE, self.usd + other.usd)
        self.ended += other.ended
        for hid, (t, u, done) in other.holds.items():
            h = self.holds.setdefault(hid, [0, 0, 0])
            h[0], h[1], h[2] = h[0] + t, h[1] + u, max(h[2], done)


class RedisQuotaStore:
    """The shared :class:`~atp_proto.router.quota.QuotaStore`. Start :meth:`run` in the
    router's nursery (it writes usage, settlements and releases, and renews the leases)."""

    def __init__(self, link: RedisLink, *, lease_ms: int = ALIVE_MS) -> None:
        self.link = link
        self.lease_ms = lease_ms
        c = link.client
        self._admit = c.register_script(_ADMIT)
        self._write = c.register_script(_WRITE)
        self._pending: dict[str, _Due] = {}
        self._wake = trio.Event()
        self._queued = 0  #: charges queued since start
        self._written = 0  #: of them, the first this many are in Redis
        self._flushed = trio.Event()  #: set (and replaced) after each write
        self.up = True
        self._tried = -1e9  #: when admit last asked Redis
        #: tenant -> (period window, tokens, usd): the totals Redis last answered
        self._known: dict[str, tuple[int, int, int]] = {}
        #: tenant -> (streams of this router holding a lease there, period_s): renewed
        self._leased: dict[str, tuple[int, int]] = {}
        self._holds = 0  #: hold ids issued (ROUTER/N)

    def _keys(self, tenant: str) -> tuple[str, str, str, str]:
        """The tenant's keys, all with the hash tag ``{tenant}`` (one Cluster slot)."""
        base = f"{self.link.prefix}q:{{{tenant}}}"
        return f"{base}:b", f"{base}:r", f"{base}:c", f"{base}:h"

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

        def ask() -> list[int]:
            # queued behind the thread limiter while an earlier call found Redis away:
            # answer at once instead of waiting for a timeout of its own
            if not probe and not self.up:
                raise RedisError("Redis went away while this call waited")
            return self._admit(keys=list(keys), args=args)  # type: ignore[no-any-return]

        try:
            reply = await self.link.call(ask)
        except RedisError as exc:
            self._went_down(exc)
            if hold:  # the script may have run and its answer been lost: drop the hold
                self._pending.setdefault(tenant, _Due(period_s)).holds[hold] = [0, 0, 1]
            raise self._unreachable() from None
        self._came_back()
        status, a, b = (int(x) for x in reply)
        if status not in {2, 3}:
            self._know(tenant, period_s, a, b)
        if status == 1:
            raise refuse_budget(q, a, b, period_s)
        if status == 2:
            raise refuse_rate(q.streams_per_s or 0.0, a)
        if status == 3:
            raise refuse_concurrent(q.concurrent or 0)
        if budgeted or q.concurrent is not None:
            n, p = self._leased.get(tenant, (0, period_s))
            self._leased[tenant] = (n + 1, max(p, period_s))
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

    def _know(self, tenant: str, period_s: int, tokens: int, usd: int) -> None:
        self._known[tenant] = (int(time.time() // period_s), tokens, usd)
        if len(self._known) > MAX_KNOWN:  # bounded: forget the oldest answers
            for name in list(self._known)[: MAX_KNOWN // 2]:
                del self._known[name]

    def spent(self, tenant: str, period_s: int) -> tuple[int, int]:
        """What Redis last said the tenant spent this period, plus this router's usage
        not yet written (the other routers' is seen at the next write's answer)."""
        win = int(time.time() // period_s)
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
            h = p.holds.setdefault(hold, [0, 0, 0])
            h[0] = min(SATURATE, h[0] + max(0, tokens))
            h[1] = min(SATURATE, h[1] + max(0, usd_micros))
        self._queued += 1
        self._wake.set()

    def release(self, tenant: str, q: TenantQuota, hold: str | None = None) -> None:
        if q.concurrent is None and hold is None:
            return
        p = self._pending.get(tenant)
        if p is None:
            p = self._pending[tenant] = _Due(1)
        if q.concurrent is not None:
            p.ended += 1
        if hold is not None:
            p.holds.setdefault(hold, [0, 0, 0])[2] = 1
        n, period = self._leased.get(tenant, (1, 1))
        if n <= 1:
            self._leased.pop(tenant, None)
        else:
            self._leased[tenant] = (n - 1, period)
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
            if self._pending:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._flush(False)
                    except RedisError:
                        log.exception(
                            "quota usage not written to Redis at shutdown",
                            extra={"tenants": len(self._pending)},
                        )

    async def _flush(self, renew: bool) -> None:
        batch, self._pending = self._pending, {}
        queued = self._queued
        renewals = {t: p for t, (_, p) in self._leased.items() if t not in batch} if renew else {}
        if not batch and not renewals:
            return
        router, lease_ms = self.link.router_id, self.lease_ms
        leased = {t: t in self._leased for t in batch}

        def write() -> list[tuple[str, int, Any]]:
            # MULTI/EXEC: the batch is written whole or not at all, so putting it back
            # after a failure cannot count a part of it twice
            pipe = self.link.client.pipeline(transaction=True)
            order: list[tuple[str, int]] = []
            for tenant, due in batch.items():
                bkey, _, ckey, hkey = self._keys(tenant)
                args: list[Any] = [due.period, due.tokens, due.usd, SATURATE, router, due.ended]
                args.append(lease_ms if leased[tenant] else 0)
                for hid, (t, u, done) in due.holds.items():
                    args += [hid, t, u, done]
                self._write(keys=[bkey, ckey, hkey], args=args, client=pipe)
                order.append((tenant, due.period))
            for tenant, period in renewals.items():
                bkey, _, ckey, hkey = self._keys(tenant)
                args = [period, 0, 0, SATURATE, router, 0, lease_ms]
                self._write(keys=[bkey, ckey, hkey], args=args, client=pipe)
                order.append((tenant, period))
            replies = pipe.execute()
            return [(name, period, r) for (name, period), r in zip(order, replies, strict=True)]

        try:
            for tenant, period, (_, t, u) in await self.link.call(write):
                self._know(tenant, period, int(t), int(u))
            self._written = queued
            self._flushed.set()
            self._flushed = trio.Event()
        except BaseException:
            for tenant, due in batch.items():  # put it back: nothing is lost
                later = self._pending.get(tenant)
                if later is not None:
                    due.merge(later)
                self._pending[tenant] = due
            raise

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
