"""Tenant quotas in Redis: one limit across every router sharing it (ATP-BUDGET-013/014/015).

Every decision is one Lua script, atomic in Redis, timed by Redis's own clock (``TIME``)
so that routers' clocks do not matter:

* admit: the period budget (a hash per tenant and period window, fields ``t`` tokens and
  ``u`` usd_micros), then the concurrent streams (a hash per tenant: one field per router,
  counted only while that router's liveness key exists, so a killed router's streams stop
  counting at most ``ALIVE_MS`` after it died), then the rate (a token bucket). A refusal consumes
  nothing.
* charge: HINCRBY of the period's hash, as usage arrives (coalesced per tenant, written
  by :meth:`RedisQuotaStore.run` as soon as it is queued).
* release: the router's concurrency field minus the streams that ended.

Redis unreachable: :meth:`admit` refuses with EAGENTDOWN and ``retry_after_ms`` (fail
closed: a stream whose cost cannot be accounted for is not run); charges and releases
stay queued in the process and are written when Redis answers again, so no accounting
is lost while it is away (only a router killed while Redis is away loses its queue).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from atp_proto.frames import ATPError, ErrorCode
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

#: a router's liveness key lives this long; it is refreshed every second
ALIVE_MS = 5000
#: while Redis is known to be away, admission asks it at most this often (the others are
#: refused at once instead of each waiting for a timeout)
PROBE_S = 0.5
#: tenants whose last known totals are kept (for the streams' shared-remainder check)
MAX_KNOWN = 100_000

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local period = tonumber(ARGV[1])
local bkey = KEYS[1] .. ':' .. math.floor(tonumber(t[1]) / period)
local used_t = tonumber(redis.call('HGET', bkey, 't') or '0')
local used_u = tonumber(redis.call('HGET', bkey, 'u') or '0')
local lt, lu = tonumber(ARGV[2]), tonumber(ARGV[3])
if (lt >= 0 and used_t >= lt) or (lu >= 0 and used_u >= lu) then
  return {1, used_t, used_u}
end
local cl = tonumber(ARGV[6])
if cl >= 0 then
  local fields = redis.call('HGETALL', KEYS[3])
  local open = 0
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[7] or redis.call('EXISTS', ARGV[8] .. fields[i]) == 1 then
      open = open + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[3], fields[i])
    end
  end
  if open >= cl then return {3, open, 0} end
end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = tonumber(ARGV[5])
  local b = redis.call('HMGET', KEYS[2], 'n', 'at')
  local n = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now
  n = math.min(burst, n + math.max(0, now - at) * rate)
  if n < 1 then return {2, math.ceil((1 - n) / rate * 1000), 0} end
  redis.call('HSET', KEYS[2], 'n', tostring(n - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
end
if cl >= 0 then redis.call('HINCRBY', KEYS[3], ARGV[7], 1) end
return {0, used_t, used_u}
"""

#: counters saturate here (2^53, exact in Lua's doubles): usage past it means "at least
#: this much" (ATP-BUDGET-012), and an adapter's absurd figure cannot make HINCRBY
#: overflow, which would fail every later write of this router (and refuse every stream)
SATURATE = 2**53

_CHARGE = """
local t = redis.call('TIME')
local period = tonumber(ARGV[1])
local win = math.floor(tonumber(t[1]) / period)
local bkey = KEYS[1] .. ':' .. win
local out = {win, 0, 0}
local cap = tonumber(ARGV[4])
for i, f in ipairs({'t', 'u'}) do
  local inc = tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', bkey, f) or '0')
  if cur + inc >= cap then
    redis.call('HSET', bkey, f, ARGV[4])
    out[i + 1] = cap
  else
    out[i + 1] = redis.call('HINCRBY', bkey, f, inc)
  end
end
redis.call('EXPIRE', bkey, period * 2)
return out
"""

_RELEASE = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"""


class RedisQuotaStore:
    """The shared :class:`~atp_proto.router.quota.QuotaStore`. Start :meth:`run` in the
    router's nursery (it writes charges and releases, and keeps this router alive)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        c = link.client
        self._admit = c.register_script(_ADMIT)
        self._charge = c.register_script(_CHARGE)
        self._release = c.register_script(_RELEASE)
        #: tenant -> [tokens, usd_micros, period_s, streams ended]
        self._pending: dict[str, list[int]] = {}
        self._wake = trio.Event()
        self._queued = 0  #: charges queued since start
        self._written = 0  #: of them, the first this many are in Redis
        self._flushed = trio.Event()  #: set (and replaced) after each write
        self.up = True
        self._tried = -1e9  #: when admit last asked Redis
        #: tenant -> (period window, tokens, usd): the totals Redis last answered
        self._known: dict[str, tuple[int, int, int]] = {}
        self._alive_key = f"{link.prefix}alive:{link.router_id}"

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        base = f"{self.link.prefix}q:{{{tenant}}}"
        return f"{base}:b", f"{base}:r", f"{base}:c"

    # ------------------------------------------------------------------ the store

    async def admit(self, tenant: str, q: TenantQuota, period_s: int) -> Grant:
        keys = self._keys(tenant)
        args = [
            period_s,
            -1 if q.tokens is None else q.tokens,
            -1 if q.usd_micros is None else q.usd_micros,
            q.streams_per_s or 0,
            q.bucket,
            -1 if q.concurrent is None else q.concurrent,
            self.link.router_id,
            f"{self.link.prefix}alive:",
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
        return grant_of(q, a, b)

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
            t, u = t + p[0], u + p[1]
        return t, u

    def charge(self, tenant: str, tokens: int, usd_micros: int, period_s: int) -> None:
        if tokens <= 0 and usd_micros <= 0:
            return
        p = self._pending.setdefault(tenant, [0, 0, period_s, 0])
        p[2] = max(p[2], period_s)
        p[0] = min(SATURATE, p[0] + max(0, tokens))
        p[1] = min(SATURATE, p[1] + max(0, usd_micros))
        self._queued += 1
        self._wake.set()

    def release(self, tenant: str, q: TenantQuota) -> None:
        if q.concurrent is None:
            return
        p = self._pending.setdefault(tenant, [0, 0, 1, 0])
        p[3] += 1
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

    # ------------------------------------------------------------------ the writer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: write what is queued as soon as it is (one pipelined call at a
        time), and refresh this router's liveness key every second; on failure keep the
        queue and retry with backoff (0.1 s doubling to 2 s). A last write when cancelled."""
        backoff = 0.1
        last_alive = -1e9
        try:  # alive before the first stream: other routers count our streams from now
            await self._flush(True)
            last_alive = trio.current_time()
        except RedisError as exc:
            self._went_down(exc)
        task_status.started()
        try:
            while True:
                with trio.move_on_after(1.0):
                    await self._wake.wait()
                self._wake = trio.Event()
                alive = trio.current_time() - last_alive >= 1.0
                try:
                    await self._flush(alive)
                except RedisError as exc:
                    self._went_down(exc)
                    await trio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    self._wake.set()
                    continue
                backoff = 0.1
                if alive:
                    last_alive = trio.current_time()
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

    async def _flush(self, alive: bool) -> None:
        batch, self._pending = self._pending, {}
        queued = self._queued
        if not batch and not alive:
            return
        router = self.link.router_id

        def write() -> list[tuple[str, int, Any]]:
            # MULTI/EXEC: the batch is written whole or not at all, so putting it back
            # after a failure cannot count a part of it twice
            pipe = self.link.client.pipeline(transaction=True)
            charged: list[tuple[str, int]] = []
            for tenant, (tokens, usd, period, ended) in batch.items():
                bkey, _, ckey = self._keys(tenant)
                if tokens or usd:
                    self._charge(keys=[bkey], args=[period, tokens, usd, SATURATE], client=pipe)
                    charged.append((tenant, period))
                if ended:
                    self._release(keys=[ckey], args=[router, ended], client=pipe)
            if alive:
                pipe.set(self._alive_key, 1, px=ALIVE_MS)
            replies = pipe.execute()
            totals = [r for r in replies if isinstance(r, list)]
            return [(name, period, r) for (name, period), r in zip(charged, totals, strict=True)]

        try:
            for tenant, period, (_, t, u) in await self.link.call(write):
                self._know(tenant, period, int(t), int(u))
            self._written = queued
            self._flushed.set()
            self._flushed = trio.Event()
        except BaseException:
            for tenant, p in batch.items():  # put it back: nothing is lost
                q = self._pending.setdefault(tenant, [0, 0, p[2], 0])
                q[0] += p[0]
                q[1] += p[1]
                q[3] += p[3]
                q[2] = max(q[2], p[2])
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
