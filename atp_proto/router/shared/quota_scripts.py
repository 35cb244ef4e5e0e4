"""The Lua scripts of the shared quota store (:mod:`.redis_quota` says what they keep and
why). Each is atomic in Redis, timed by its clock, and touches only keys with one tenant's
hash tag (one Redis Cluster slot): the declared KEYS and the period windows derived from
KEYS[1]."""

from __future__ import annotations

__all__ = ["ADMIT", "COMMON", "FORFEITS_MAX", "LEASE_MAX_MS", "RENEW", "WRITE"]

#: the longest lease a router takes (redis_quota.ALIVE_MS): a deadline further ahead than
#: this from Redis's clock can only be one set before that clock went back (a restart or
#: a failover onto a host whose clock is behind), and is counted from now instead
LEASE_MAX_MS = 5000

#: the most forfeits (``q:{T}:f``) kept per tenant: past it the oldest (by period) go
#: first. Forfeits of periods before the last one go at every reap anyway: their
#: period's counters have expired (kept two periods), so there is nothing to give back
#: to, and a router cut off that long was charged for its streams (its flush number,
#: kept as long, has gone too). Without the bound the key grew for as long as routers
#: kept dying, its expiry renewed by each reap
FORFEITS_MAX = 10_000

#: shared by both scripts: Redis's clock, the keys' types checked, saturating adds, and the
#: reaper of the routers whose lease lapsed (their counters deleted, their holds charged
#: and kept as forfeits; returns the streams open on live routers)
COMMON = (
    """
-- each key of the script of its type (or absent), checked before anything is written:
-- a key of another type (a clash with another user of the Redis, a hand edit) fails the
-- script whole, with nothing written, instead of half-way (Redis undoes nothing), so
-- that sending the write again later is exact (redis_quota: a rejected write)
local function check(keys, types)
  for i = 1, #keys do
    local t = redis.call('TYPE', keys[i])['ok']
    if t ~= 'none' and t ~= types[i] then
      return redis.error_reply('WRONGTYPE the quota key ' .. keys[i] .. ' holds a ' .. t)
    end
  end
  return nil
end
-- the fields of a hash key the script computes with, each a number (or absent), checked
-- with the types: a value that is not (a hand edit, another tool) would fail the script
-- at its arithmetic after it wrote part of its work, and the retry of a rejected write
-- would write that part again (the tokens counted once more at every retry)
local function numeric(key, fields)
  local v = redis.call('HMGET', key, unpack(fields))
  for i = 1, #fields do
    if v[i] and not tonumber(v[i]) then
      return redis.error_reply('ERR the quota key ' .. key .. ' field ' .. fields[i] ..
        ' holds no number')
    end
  end
  return nil
end
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
  if cur + inc <= 0 then
    redis.call('HSET', bkey, f, '0')
    return 0
  end
  return redis.call('HINCRBY', bkey, f, string.format('%.0f', inc))
end
local LEASE_MAX_MS = """
    + str(LEASE_MAX_MS)
    + """
local FORFEITS_MAX = """
    + str(FORFEITS_MAX)
    + """
-- the forfeits bounded: those of periods before the last one dropped (nothing left to
-- give back to), then the oldest past FORFEITS_MAX
local function trim_forfeits(fkey, win)
  local f = redis.call('HGETALL', fkey)
  local kept = {}
  for i = 1, #f, 2 do
    local fw = tonumber(string.match(f[i + 1], ' (%S+)$') or '')
    if fw == nil or fw < win - 1 then
      redis.call('HDEL', fkey, f[i])
    else
      kept[#kept + 1] = {fw, f[i]}
    end
  end
  if #kept > FORFEITS_MAX then
    table.sort(kept, function(x, y) return x[1] < y[1] end)
    for i = 1, #kept - FORFEITS_MAX do redis.call('HDEL', fkey, kept[i][2]) end
  end
end
local function reap(ckey, hkey, fkey, bbase, me, now, cap, ttl_ms, win)
  local f = redis.call('HGETALL', ckey)
  for i = 1, #f, 2 do  -- deadlines and counters whole numbers, before anything is written
    if string.sub(f[i], 1, 1) ~= '#' and not string.match(f[i + 1], '^%-?%d+$') then
      return nil, redis.error_reply('ERR the quota key ' .. ckey .. ' field ' .. f[i] ..
        ' holds no whole number')
    end
  end
  local live, ndead = {}, 0
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 1) == '@' then
      local r = string.sub(f[i], 2)
      local deadline = tonumber(f[i + 1])
      if r == me or deadline > now then
        live[r] = true
        if deadline > now + LEASE_MAX_MS then
          -- set before Redis's clock went back: a router that died then would otherwise
          -- be presumed alive (and its holds not count) for as long as the clock went back
          redis.call('HSET', ckey, f[i], string.format('%.0f', now + LEASE_MAX_MS))
        end
      else
        ndead = ndead + 1
        -- its last flush number (its own key, WRITE's KEYS[5]) stays, for ttl_ms: a
        -- router only cut off sends its last flush again when it is back, and that must
        -- count once
        redis.call('HDEL', ckey, f[i])
      end
    end
  end
  if ndead > 0 then
    local h = redis.call('HGETALL', hkey)
    for i = 1, #h, 2 do
      local r = string.match(h[i], '^(.*)/[^/]*$')
      if r == nil or not live[r] then
        -- a hold is "tokens usd token-limit usd-limit window": the streams of a tenant
        -- share what is left (ATP-BUDGET-016), so together they could not have spent
        -- past the quota: holds are charged up to it, never past it, and into the period
        -- they were taken in (a hold without a window, from an older router: this one)
        local ht, hu, lt, lu, hw = string.match(h[i + 1], '^(%S+) (%S+) (%S+) (%S+) ?(%S*)$')
        ht, hu = tonumber(ht) or 0, tonumber(hu) or 0
        lt, lu = tonumber(lt) or -1, tonumber(lu) or -1
        hw = tonumber(hw) or win
        local bkey = bbase .. ':' .. hw
        local used_t = tonumber(redis.call('HGET', bkey, 't') or '0')
        local used_u = tonumber(redis.call('HGET', bkey, 'u') or '0')
        if lt >= 0 then ht = math.min(ht, math.max(0, lt - used_t)) end
        if lu >= 0 then hu = math.min(hu, math.max(0, lu - used_u)) end
        if ht > 0 then add(bkey, 't', ht, cap) end
        if hu > 0 then add(bkey, 'u', hu, cap) end
        -- the period's counters may be new here (a renewal's write charges nothing else)
        if ht > 0 or hu > 0 then redis.call('PEXPIRE', bkey, ttl_ms) end
        redis.call('HDEL', hkey, h[i])
        redis.call('HSET', fkey, h[i], string.format('%.0f %.0f %d', ht, hu, hw))
        redis.call('PEXPIRE', fkey, ttl_ms)
      end
    end
    trim_forfeits(fkey, win)
  end
  local open = 0
  for i = 1, #f, 2 do
    local kind = string.sub(f[i], 1, 1)
    if kind == '#' then
      -- an older router's last flush number (now a key per router), kept ttl_ms
      local at = tonumber(string.match(f[i + 1], ' (%S+)$') or '0')
      if at + ttl_ms < now then redis.call('HDEL', ckey, f[i]) end
    elseif kind ~= '@' then
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
)

#: KEYS: budget (without its window), bucket, counters, holds, forfeits. ARGV: period,
#: tokens limit, usd limit (-1: none), rate, burst, concurrent limit (-1: none), router,
#: lease_ms, hold id ("": none), the stream's own token and usd caps (-1: none), the
#: saturation. Returns {status, a, b, window, Redis's clock in ms}: status 0 admitted
#: (a, b: tokens and usd used), 1 budget spent (the same), 2 rate (a: retry ms), 3
#: concurrency (a: streams open). A hold is "tokens usd token-limit usd-limit window"
ADMIT = (
    COMMON
    + """
local now, secs = clock()
local period = tonumber(ARGV[1])
local win = math.floor(secs / period)
local bkey = KEYS[1] .. ':' .. win
local me, cap, ttl = ARGV[7], tonumber(ARGV[12]), math.max(period * 2000, 60000)
local bad = check({bkey, KEYS[2], KEYS[3], KEYS[4], KEYS[5]},
  {'hash', 'hash', 'hash', 'hash', 'hash'}) or numeric(bkey, {'t', 'u'})
if bad then return bad end
local open, bad_value = reap(KEYS[3], KEYS[4], KEYS[5], KEYS[1], me, now, cap, ttl, win)
if bad_value then return bad_value end
if redis.call('EXISTS', bkey) == 1 then redis.call('EXPIRE', bkey, period * 2) end
local used_t = tonumber(redis.call('HGET', bkey, 't') or '0')
local used_u = tonumber(redis.call('HGET', bkey, 'u') or '0')
local lt, lu = tonumber(ARGV[2]), tonumber(ARGV[3])
if (lt >= 0 and used_t >= lt) or (lu >= 0 and used_u >= lu) then
  return {1, used_t, used_u, win, now}
end
local cl = tonumber(ARGV[6])
if cl >= 0 and open >= cl then return {3, open, 0, win, now} end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = tonumber(ARGV[5])
  local b = redis.call('HMGET', KEYS[2], 'n', 'at')
  local n = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now / 1000
  n = math.min(burst, n + math.max(0, now / 1000 - at) * rate)
  if n < 1 then return {2, math.ceil((1 - n) / rate * 1000), 0, win, now} end
  redis.call('HSET', KEYS[2], 'n', tostring(n - 1), 'at', tostring(now / 1000))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
end
if cl >= 0 then redis.call('HINCRBY', KEYS[3], me, 1) end
if ARGV[9] ~= '' then
  local ht, hu = 0, 0
  local ct, cu = tonumber(ARGV[10]), tonumber(ARGV[11])
  if lt >= 0 then ht = lt - used_t; if ct >= 0 and ct < ht then ht = ct end end
  if lu >= 0 then hu = lu - used_u; if cu >= 0 and cu < hu then hu = cu end end
  redis.call('HSET', KEYS[4], ARGV[9],
    string.format('%.0f %.0f %.0f %.0f %d', ht, hu, lt, lu, win))
end
if cl >= 0 or ARGV[9] ~= '' then lease(KEYS[3], KEYS[4], me, now, tonumber(ARGV[8]), ttl) end
return {0, used_t, used_u, win, now}
"""
)

#: KEYS: counters, holds. ARGV: router, lease_ms, period. The router's lease alone,
#: renewed for a tenant whose writes Redis rejects (redis_quota: a rejected write): its
#: streams run on, and a lapsed lease would have the other routers charge their holds
#: (counted high) and count them out while they run. Returns Redis's clock in ms
RENEW = (
    COMMON
    + """
local now = clock()
local bad = check({KEYS[1]}, {'hash'})
if bad then return bad end
lease(KEYS[1], KEYS[2], ARGV[1], now, tonumber(ARGV[2]), math.max(tonumber(ARGV[3]) * 2000, 60000))
return now
"""
)

#: KEYS: budget (without its window), counters, holds, forfeits, the router's flush
#: number (a key per router and tenant, expiring ttl after its last write: not in the
#: counters, which every script reads whole). ARGV: period, tokens,
#: usd, saturation, router, streams ended, lease_ms (0: no renewal), the router's flush
#: number, then per hold: id, tokens, usd, 1 when its stream ended, and what the hold is
#: set to once the usage is taken off it (tokens, usd; -1: unchanged). A flush number not
#: above the router's last one (KEYS[5]: a retry of a write whose reply was lost) changes
#: nothing and returns the totals; the number is stored last, so a write that fails
#: part-way (a script error) is not taken as applied when it is sent again. A hold found forfeited
#: (its router was presumed dead, and it was charged) covers the usage it was charged
#: for, and what is left of it is given back, to the period the hold was taken (and
#: charged) in, when the stream ends: a router cut off for a while is charged exactly in
#: the end. Returns {window, tokens used, usd used, Redis's clock in ms}.
WRITE = (
    COMMON
    + """
local now, secs = clock()
local period = tonumber(ARGV[1])
local win = math.floor(secs / period)
local bkey = KEYS[1] .. ':' .. win
local cap, me, ttl = tonumber(ARGV[4]), ARGV[5], math.max(period * 2000, 60000)
local bad = check({bkey, KEYS[2], KEYS[3], KEYS[4], KEYS[5]},
  {'hash', 'hash', 'hash', 'hash', 'string'}) or numeric(bkey, {'t', 'u'})
if bad then return bad end
-- the holds and forfeits this write settles, parsed below after writes: checked first
for i = 9, #ARGV, 6 do
  local v = redis.call('HGET', KEYS[3], ARGV[i])
  local ht, hu = string.match(v or '0 0 -', '^(%S+) (%S+) .+$')
  local f = redis.call('HGET', KEYS[4], ARGV[i])
  local ft, fu, fw = string.match(f or '0 0 0', '^(%S+) (%S+) (%S+)$')
  if not (tonumber(ht) and tonumber(hu) and tonumber(ft) and tonumber(fu) and tonumber(fw)) then
    return redis.error_reply('ERR the quota hold ' .. ARGV[i] .. ' is not one the router wrote')
  end
  if f and tonumber(fw) ~= win and redis.call('EXISTS', KEYS[1] .. ':' .. fw) == 1 then
    bad = check({KEYS[1] .. ':' .. fw}, {'hash'}) or numeric(KEYS[1] .. ':' .. fw, {'t', 'u'})
    if bad then return bad end
  end
end
local _, bad_value = reap(KEYS[2], KEYS[3], KEYS[4], KEYS[1], me, now, cap, ttl, win)
if bad_value then return bad_value end
local seq = tonumber(ARGV[8])
local last = redis.call('GET', KEYS[5])
if last and tonumber(last) >= seq then
  return {win, tonumber(redis.call('HGET', bkey, 't') or '0'),
          tonumber(redis.call('HGET', bkey, 'u') or '0'), now}
end
local dt, du = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 9, #ARGV, 6 do
  local id, ut, uu, done = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local rt, ru = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local v = redis.call('HGET', KEYS[3], id)
  if v then
    if done == '1' then
      redis.call('HDEL', KEYS[3], id)
    else
      local ht, hu, limits = string.match(v, '^(%S+) (%S+) (.+)$')
      ht = math.max(0, tonumber(ht) - ut)
      hu = math.max(0, tonumber(hu) - uu)
      if rt >= 0 then ht = rt end
      if ru >= 0 then hu = ru end
      redis.call('HSET', KEYS[3], id, string.format('%.0f %.0f %s', ht, hu, limits))
    end
  else
    local f = redis.call('HGET', KEYS[4], id)
    if f then
      local ft, fu, fw = string.match(f, '^(%S+) (%S+) (%S+)$')
      ft, fu = tonumber(ft), tonumber(fu)
      local ct, cu = math.min(ut, ft), math.min(uu, fu)
      dt, du, ft, fu = dt - ct, du - cu, ft - ct, fu - cu
      if done == '1' then
        -- what the stream did not use is given back to the period it was charged to
        redis.call('HDEL', KEYS[4], id)
        local fkey = KEYS[1] .. ':' .. fw
        if tonumber(fw) == win then
          dt, du = dt - ft, du - fu
        elseif redis.call('EXISTS', fkey) == 1 then
          if ft > 0 then add(fkey, 't', -ft, cap) end
          if fu > 0 then add(fkey, 'u', -fu, cap) end
        end
      else
        redis.call('HSET', KEYS[4], id, string.format('%.0f %.0f %s', ft, fu, fw))
      end
    end
  end
end
local out = {win, 0, 0, now}
out[2] = dt ~= 0 and add(bkey, 't', dt, cap) or tonumber(redis.call('HGET', bkey, 't') or '0')
out[3] = du ~= 0 and add(bkey, 'u', du, cap) or tonumber(redis.call('HGET', bkey, 'u') or '0')
if dt ~= 0 or du ~= 0 then redis.call('EXPIRE', bkey, period * 2) end
local ended = tonumber(ARGV[6])
if ended > 0 then
  if redis.call('HINCRBY', KEYS[2], me, -ended) <= 0 then redis.call('HDEL', KEYS[2], me) end
end
local lease_ms = tonumber(ARGV[7])
if lease_ms > 0 then lease(KEYS[2], KEYS[3], me, now, lease_ms, ttl) end
redis.call('SET', KEYS[5], string.format('%.0f', seq), 'PX', ttl)
return out
"""
)
