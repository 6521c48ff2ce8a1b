"""The server-side half of the Redis circuit breaker: a Lua script.

A port of :class:`engine.breaker.CircuitBreaker` (same transitions, same
arithmetic) run atomically per operation, with the state in a hash and the
rolling window in a list (count windows) or a bucket hash (time windows).
"""

from __future__ import annotations

from engine.store.redis.lua import COMMON

__all__ = ["BREAKER"]

#: KEYS: epoch, breaker hash, breaker window (a list for count, a hash for time windows).
#: ARGV: epoch, op, now, window kind, size, window_s, buckets, minimum calls (effective),
#: probes needed, failure_rate, slow_call_rate, open_for_s, backoff, max_open_for_s,
#: half_open_permits, half_open_max_wait_s, model name, then the op's own arguments:
#: acquire | sync | release TICKET | result TICKET FAILED(1/0/-1) SLOW(1/0)
#: | ok N (N ordinary successes, neither failed nor slow, batched by the client; 0: as sync)
#: | force TARGET | restore STATE OPEN_UNTIL OPEN_FOR CONSECUTIVE | adopt (restore if closed)
#:
#: Every loop is bounded by the policy's sizes (permits, buckets), whatever is stored. A stored
#: field that does not parse, is out of the range any valid policy can produce, or contradicts the
#: others is corrupt: the breaker is reset (closed, empty window) and a ``corrupt`` event names it;
#: a corrupt window value resets the window. An open breaker is never open for longer than its
#: open_for from now, a probe never waits longer than half_open_max_wait_s from now (a client whose
#: clock was stepped back cannot lengthen them).
BREAKER = COMMON + r"""
local H, W = KEYS[2], KEYS[3]
local op, now = ARGV[2], tonumber(ARGV[3])
local kind, size, wsec, nb = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local minc, needed = tonumber(ARGV[8]), tonumber(ARGV[9])
local frate, srate = tonumber(ARGV[10]), tonumber(ARGV[11])
local ofs, backoff, maxof = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local P, maxwait = tonumber(ARGV[15]), tonumber(ARGV[16])
local MAX_PERMITS, MAX_OPEN = 1000, 86400  -- the largest half_open_permits and open duration a policy allows
local STATES = {closed = true, open = true, half_open = true, forced_open = true, disabled = true,
                metrics_only = true}
local wfp = kind .. ':' .. ARGV[5] .. ':' .. ARGV[6] .. ':' .. ARGV[7]
local s = {}
local raw = read('HGETALL', H)
for i = 1, #raw, 2 do s[raw[i]] = raw[i + 1] end
local wbad, wlost = false, false  -- a corrupt window value, a window of the wrong type: reset at the end
local wtyped = s.wfp ~= wfp  -- the window's type is checked before its first use
if wtyped then redis.call('DEL', W) end
local function wcheck()
  if wtyped then return end
  wtyped = true
  local before = #BAD
  if kind == 'count' then typed(W, 'list') else typed(W, 'hash') end
  if #BAD > before then wlost = true end
end
local nbad = #BAD
local function n(key, dflt, lo, hi, int)
  local r = s[key]
  if r == nil then return dflt end
  local v = valid(r, lo, hi, int)
  if v == nil then bad(H, key, r); return dflt end
  return v
end
local st = s.st or 'closed'
if not STATES[st] then bad(H, 'st', st); st = 'closed' end
local ou, of, co = n('ou', INF, 0, T_MAX), n('of', 0, 0, MAX_OPEN), n('co', 0, 0, BIG, true)
local sq, ep = n('sq', 0, 0, 2 ^ 40, true), n('ep', 0, 0, BIG, true)
local pm = n('pm', P, 1, MAX_PERMITS, true)
local us, fl = n('us', 0, 0, pm, true), n('fl', 0, 0, pm, true)
local pc = n('pc', 0, 0, MAX_PERMITS, true)
local pf, ps = n('pf', 0, 0, pc, true), n('ps', 0, 0, pc, true)
local nd = n('nd', INF, 0, T_MAX)
local wc, wx, ws = n('wc', 0, 0, BIG, true), n('wx', 0, 0, BIG, true), n('ws', 0, 0, BIG, true)
local we = n('we', nil, -BIG, BIG, true)
if s.wfp == wfp and (wx > wc or ws > wc or (kind == 'count' and wc > size)) then
  bad(H, 'wc', s.wc or '')
end
local tk, dl = {}, {}
local busy = 0
for i = 1, pm do
  tk[i], dl[i] = n('t' .. i, 0, 0, 2 ^ 52, true), n('d' .. i, INF, 0, T_MAX)
  if tk[i] ~= 0 then busy = busy + 1 end
end
if busy ~= fl then bad(H, 'fl', s.fl or '')
elseif fl > us then bad(H, 'us', s.us or '') end
if st == 'open' and s.ou == nil then bad(H, 'ou', '') end
if #BAD > nbad then  -- corrupt: start afresh, closed with an empty window
  redis.call('DEL', H, W)
  s = {}
  st, ou, of, co, sq, ep, pm = 'closed', INF, 0, 0, 0, 0, P
  us, fl, pc, pf, ps, nd = 0, 0, 0, 0, 0, INF
  wc, wx, ws, we = 0, 0, 0, nil
  tk, dl = {}, {}
  for i = 1, pm do tk[i], dl[i] = 0, INF end
end
local evs, dirty, ticket = {}, false, 0
local width = wsec / nb
local longest = of
if longest <= 0 then longest = maxof end  -- a restored state without its open_for
if st == 'open' and ou - now > longest then
  -- open for longer than open_for from now: this client's clock is behind the one that opened it
  ou, dirty = now + longest, true
end
if st == 'half_open' and nd - now > maxwait then  -- likewise for the probes' deadlines
  nd = INF
  for i = 1, pm do
    if tk[i] ~= 0 then
      if dl[i] - now > maxwait then dl[i] = now + maxwait end
      if dl[i] < nd then nd = dl[i] end
    end
  end
  dirty = true
end

local function wreset()
  redis.call('DEL', W)
  wc, wx, ws, we, dirty, wtyped = 0, 0, 0, nil, true, true
end
if s.wfp ~= wfp then wreset() end
local function count_of(v)
  if not v then return 0 end
  local x = valid(v, 0, BIG, true)
  if x == nil then wbad = true; return 0 end
  return x
end
local function advance(t)
  local ep_ = math.floor(t / width)
  if we == nil then we, dirty = ep_, true return ep_ end
  if ep_ > we then
    if ep_ - we >= nb then
      if wc > 0 then wreset() end
    else
      wcheck()
      local f = {}
      for h = we + 1, ep_ do local o = h - nb; f[#f + 1] = 'c' .. o; f[#f + 1] = 'f' .. o; f[#f + 1] = 's' .. o end
      local v = hmget(W, f)
      for i = 1, #v, 3 do
        wc, wx, ws = wc - count_of(v[i]), wx - count_of(v[i + 1]), ws - count_of(v[i + 2])
      end
      chunked('HDEL', W, f)
      if wc < 0 or wx < 0 or ws < 0 or wx > wc or ws > wc then wbad = true end
    end
    we, dirty = ep_, true
  end
  return ep_
end
local function counts(t)
  if kind == 'time' then advance(t) end
  return wc, wx, ws
end
local function wrecord(t, failed, slow)
  dirty = true
  wcheck()
  if kind == 'count' then
    if wc >= size then
      local old = valid(redis.call('LPOP', W) or '0', 0, 3, true)
      if old == nil then wbad = true; old = 0 end
      wx, ws = wx - old % 2, ws - math.floor(old / 2)
      if wx < 0 or ws < 0 then wbad = true end
    else
      wc = wc + 1
    end
    redis.call('RPUSH', W, (failed and 1 or 0) + (slow and 2 or 0))
  else
    local ep_ = advance(t)
    if ep_ <= we - nb then return end
    local keys = {'c' .. ep_}
    if failed then keys[#keys + 1] = 'f' .. ep_ end
    if slow then keys[#keys + 1] = 's' .. ep_ end
    for _, key in ipairs(keys) do
      local r = redis.pcall('HINCRBY', W, key, 1)
      if type(r) == 'table' then wbad = true end  -- not an integer
    end
    wc = wc + 1
  end
  if failed then wx = wx + 1 end
  if slow then ws = ws + 1 end
end
local function wrecord_ok(t, k)  -- k successes at once (a count window keeps at most its size)
  dirty = true
  wcheck()
  if kind == 'count' then
    if k >= size then wreset(); k = size end
    local over = wc + k - size
    if over > 0 then
      local old = redis.call('LRANGE', W, 0, over - 1)
      redis.call('LTRIM', W, over, -1)
      for i = 1, #old do
        local x = valid(old[i], 0, 3, true)
        if x == nil then wbad = true; x = 0 end
        wx, ws = wx - x % 2, ws - math.floor(x / 2)
      end
      if wx < 0 or ws < 0 then wbad = true end
      wc = wc - over
    end
    local zeros = {}
    for i = 1, k do zeros[i] = 0 end
    chunked('RPUSH', W, zeros)
  else
    local ep_ = advance(t)
    if ep_ <= we - nb then return end
    local r = redis.pcall('HINCRBY', W, 'c' .. ep_, k)
    if type(r) == 'table' then wbad = true end
  end
  wc = wc + k
end
local function clear_episode()
  for i = 1, pm do tk[i], dl[i] = 0, INF end
  us, fl, pc, pf, ps, nd, dirty = 0, 0, 0, 0, 0, INF, true
end
if pm ~= P then
  sq = math.floor((sq + 1) * pm / P) + 1
  local f = {}
  for i = 1, pm do f[#f + 1] = 't' .. i; f[#f + 1] = 'd' .. i end
  chunked('HDEL', H, f)
  pm = P
  clear_episode()
end
local function opened(reason, fr, sr, c, f, sl)
  evs[#evs + 1] = {'opened', reason, f17(fr), f17(sr), c, f, sl, co, f17(ou)}
end
local function open(reason, fr, sr, c, f, sl)
  co = co + 1
  local grown = ofs
  if co > 1 then grown = of * backoff end
  of = math.min(grown, maxof)
  ou, st = now + of, 'open'
  clear_episode()
  opened(reason, fr, sr, c, f, sl)
end
local function half_open()  -- as Resilience4j: every transition but into open starts a fresh window
  st, ou, ep = 'half_open', INF, ep + 1
  wreset()
  clear_episode()
  evs[#evs + 1] = {'half', pm}
end
local function admit()
  if us >= pm then return 0 end
  local slot = 1
  while slot <= pm and tk[slot] ~= 0 do slot = slot + 1 end
  if slot > pm then return 0 end
  local t = 2 + sq * pm + slot - 1
  sq = sq + 1
  local dd = now + maxwait
  tk[slot], dl[slot] = t, dd
  if dd < nd then nd = dd end
  us, fl, dirty = us + 1, fl + 1, true
  return t
end
local function probe_slot(t)
  if t < 2 or st ~= 'half_open' then return -1 end
  local slot = (t - 2) % pm + 1
  if tk[slot] == t then return slot end
  return -1
end
local function free_slot(slot)
  tk[slot], dl[slot], fl, dirty = 0, INF, fl - 1, true
end
local function count_probe(failed, slow, reason)
  pc = pc + 1
  if failed then pf = pf + 1 end
  if slow then ps = ps + 1 end
  dirty = true
  if pc < needed then return false end
  local fr, sr = 100.0 * pf / pc, 100.0 * ps / pc
  if fr >= frate or sr >= srate then
    open(reason, fr, sr, pc, pf, ps)
  else
    st, co = 'closed', 0
    wreset()
    clear_episode()
    evs[#evs + 1] = {'closed', 'probes_succeeded', f17(fr), f17(sr)}
  end
  return true
end
local function expire()
  local earliest = INF
  for i = 1, pm do
    if tk[i] ~= 0 then
      if now > dl[i] then
        free_slot(i)
        if count_probe(true, false, 'probe_expired') then return end
      elseif dl[i] < earliest then
        earliest = dl[i]
      end
    end
  end
  nd = earliest
end
local function tick()
  if st == 'open' and now >= ou then half_open() end
  if st == 'half_open' and now > nd then expire() end
end
local function check_trip()
  local c, f, sl = counts(now)
  if c < minc then return end
  local fr, sr = 100.0 * f / c, 100.0 * sl / c
  if fr >= frate then open('failure_rate', fr, sr, c, f, sl)
  elseif sr >= srate then open('slow_call_rate', fr, sr, c, f, sl) end
end
local function restore(state, until_, of_, co_)
  co, of = valid(co_, 0, BIG, true) or 0, valid(of_, 0, MAX_OPEN) or 0
  clear_episode()
  if state == 'open' or state == 'half_open' then
    st, ou = 'open', valid(until_, 0, T_MAX) or now
  elseif STATES[state] then
    st, ou = state, INF
  end
end
local blocking = {open = true, half_open = true, forced_open = true}

if op == 'acquire' then
  if st == 'closed' or st == 'disabled' or st == 'metrics_only' then ticket = 1
  else
    tick()
    if st == 'half_open' then ticket = admit()
    elseif blocking[st] then ticket = 0
    else ticket = 1 end
  end
elseif op == 'sync' then
  tick()
elseif op == 'release' then
  local t = tonumber(ARGV[18])
  if t >= 2 then
    tick()
    local slot = probe_slot(t)
    if slot >= 0 then free_slot(slot); us = us - 1 end
  end
elseif op == 'result' then
  local t, fcode, slow = tonumber(ARGV[18]), ARGV[19], ARGV[20] == '1'
  local failed = nil
  if fcode == '1' then failed = true elseif fcode == '0' then failed = false end
  local state, done = st, false
  if state ~= 'closed' then
    tick()
    local slot = probe_slot(t)
    if slot >= 0 then
      free_slot(slot)
      if failed == nil then us = us - 1
      else
        wrecord(now, failed, slow)
        count_probe(failed, slow, 'half_open_failed')
      end
      done = true
    end
    state = st
    -- half-open metrics hold this episode's probes only (as the in-process breaker)
    if state == 'disabled' or state == 'half_open' then done = true end
  end
  if not done and failed ~= nil then
    wrecord(now, failed, slow)
    if state == 'closed' then check_trip() end
  end
elseif op == 'ok' then
  local k = valid(ARGV[18], 0, BIG, true) or 0
  if st ~= 'closed' then tick() end
  if k > 0 and st ~= 'disabled' and st ~= 'half_open' then  -- as 'result' for an ordinary call
    wrecord_ok(now, k)
    if st == 'closed' then check_trip() end
  end
elseif op == 'force' then
  local target, old = ARGV[18], st
  local c, f, sl = counts(now)
  local fr, sr = 0.0, 0.0
  if c > 0 then fr, sr = 100.0 * f / c, 100.0 * sl / c end
  wreset()
  clear_episode()
  co, ou, st = 0, INF, target
  if target == 'forced_open' then
    if old ~= 'forced_open' then evs[#evs + 1] = {'opened', 'forced', f17(fr), f17(sr), '', '', '', 0, 'inf'} end
  elseif blocking[old] then
    evs[#evs + 1] = {'closed', ARGV[19], f17(fr), f17(sr)}
  end
elseif op == 'restore' then
  restore(ARGV[18], ARGV[19], ARGV[20], ARGV[21])
elseif op == 'adopt' then
  if st == 'closed' then restore(ARGV[18], ARGV[19], ARGV[20], ARGV[21]) end
end

local c, f, sl = counts(now)
if wbad or wlost then  -- the counts cannot be trusted
  if wbad then bad(W, '', 'window') end
  wreset()
  c, f, sl = 0, 0, 0
end
if dirty or s.wfp ~= wfp or s.name ~= ARGV[17] then
  local set = {'st', st, 'of', f17(of), 'co', f17(co), 'sq', f17(sq), 'ep', f17(ep), 'pm', f17(pm),
               'us', f17(us), 'fl', f17(fl), 'pc', f17(pc), 'pf', f17(pf), 'ps', f17(ps),
               'wc', f17(wc), 'wx', f17(wx), 'ws', f17(ws), 'wfp', wfp, 'name', ARGV[17]}
  local del = {}
  local function put(key, v, none)
    if v == none then del[#del + 1] = key else set[#set + 1] = key; set[#set + 1] = f17(v) end
  end
  put('ou', ou, INF)
  put('nd', nd, INF)
  put('we', we, nil)
  for i = 1, pm do put('t' .. i, tk[i], 0); put('d' .. i, dl[i], INF) end
  redis.call('HSET', H, unpack(set))
  if #del > 0 then chunked('HDEL', H, del) end
end
local mind = ''
if st == 'half_open' and us >= pm then
  local m = INF
  for i = 1, pm do if tk[i] ~= 0 and dl[i] < m then m = dl[i] end end
  if m < INF then mind = f17(m) end
end
local until_ = ''
if st == 'open' then until_ = f17(ou) end
return reply({'OK', f17(ticket), st, until_, f17(of), co, us, fl, pm, mind, c, f, sl}, evs)
"""
