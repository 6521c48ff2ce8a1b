"""The server-side half of the Redis budget (a Lua script) and what both scripts share.

The breaker's script is :data:`engine.store.redis.lua_breaker.BREAKER`.

Each script runs atomically on the server, so every transition and every
reservation is a compare-and-set with no race between processes. Both start
by checking the store's *epoch* key (see :mod:`engine.store.redis.link`): the reply
``EPOCH`` tells the client the server lost its data since it last looked.

A reply is one bulk string (see :func:`split`): ``OK``, the fields, then the
events, so parsing it costs one read. Numbers that are not small integers
travel as ``%.17g``, which round-trips a double exactly, so server arithmetic
gives the same floats as the in-process :class:`~engine.breaker.CircuitBreaker`
and :class:`~engine.budget.BudgetLedger` (Lua numbers are doubles too).
"""

from __future__ import annotations

__all__ = ["COMMON", "LEDGER", "split"]


def split(reply: bytes, fields: int) -> tuple[list[bytes], list[list[bytes]]]:
    """A script's reply as its ``fields`` head values and its events (lists of values)."""
    parts = [b"" if p == b"-" else p for p in reply.split(b" ")]
    return parts[:fields], [[b"" if x == b"-" else x for x in p[1:].split(b",")] for p in parts[fields:]]

COMMON = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'EPOCH' end
local INF = math.huge
local function f17(x) return string.format('%.17g', x) end
-- one bulk string, cheap to parse: 'OK' and the fields, then '|'-prefixed events; '-' is empty
local function reply(head, evs)
  local parts = {}
  for i = 1, #head do
    local v = tostring(head[i])
    if v == '' then v = '-' end
    parts[#parts + 1] = v
  end
  for _, ev in ipairs(evs) do
    local f = {}
    for i = 1, #ev do
      local v = tostring(ev[i])
      if v == '' then v = '-' end
      f[#f + 1] = v
    end
    parts[#parts + 1] = '|' .. table.concat(f, ',')
  end
  return table.concat(parts, ' ')
end
local function chunked(cmd, key, ids)
  for i = 1, #ids, 1000 do
    redis.call(cmd, key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end
"""

#: KEYS: epoch, budget meta hash, this client's ack key.
#: ARGV: epoch, op, now, rolling, start|width, end|bucket, token limit (0: none),
#: cost limit (0: none), warn_at, exhaust_at, ttl, seq (0: none), rid, tokens, cost,
#: quiet (1: no warning, 2: no exhausted, 4: no reset event), grace_s, name, period label.
#: ops: peek, eval, reserve (checked), hold (admitted by the client), settle.
LEDGER = COMMON + r"""
local op, now = ARGV[2], tonumber(ARGV[3])
local rolling = ARGV[4] == '1'
local tl, cl = tonumber(ARGV[7]), tonumber(ARGV[8])
local warn_at, exh_at, ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local seq, rid = tonumber(ARGV[12]), ARGV[13]
local tokens, cost = tonumber(ARGV[14]), tonumber(ARGV[15])
local quiet, grace = tonumber(ARGV[16]), tonumber(ARGV[17])
local base = KEYS[2]
local evs = {}
local function frac(t, c)
  local a, b = 0, 0
  if tl > 0 then a = t / tl end
  if cl > 0 then b = c / cl end
  if a >= b then return a end
  return b
end
local dup = false
if seq > 0 then
  if seq <= tonumber(redis.call('GET', KEYS[3]) or '0') then dup = true
  else redis.call('SET', KEYS[3], ARGV[12], 'EX', 86400) end
end
local D, pstart, pend, width, k, current
if rolling then
  width, k, current = tonumber(ARGV[5]), tonumber(ARGV[6]), true
  D = base .. ':roll'
else
  pstart, pend = ARGV[5], tonumber(ARGV[6])
  local cur = redis.call('HGET', base, 'cur')
  current = true
  if (not cur) or tonumber(pstart) > tonumber(cur) then
    if cur then
      local old = base .. ':' .. cur
      if redis.call('HGET', old, 't') == '1' and quiet % 8 < 4 then evs[#evs + 1] = {'reset', pstart} end
      redis.call('DEL', old .. ':r', old .. ':x')
    end
    redis.call('HSET', base, 'cur', pstart, 'name', ARGV[18], 'period', ARGV[19], 'tl', ARGV[7], 'cl', ARGV[8])
  elseif tonumber(pstart) < tonumber(cur) then
    current = false
  end
  D = base .. ':' .. pstart
end
local R, X, B = D .. ':r', D .. ':x', D .. ':k'
local d = {}
local raw = redis.call('HGETALL', D)
for i = 1, #raw, 2 do d[raw[i]] = raw[i + 1] end
local tok, cst = tonumber(d.tok or '0'), tonumber(d.cost or '0')
local rt, rc = tonumber(d.rt or '0'), tonumber(d.rc or '0')
local w, e, touched = d.w == '1', d.e == '1', d.t == '1'
local dirty = false
if rolling then
  local cur = tonumber(d.bucket or '')
  if cur == nil or k > cur then
    if cur ~= nil then
      local gone = {}
      for i = cur - 60, math.min(cur, k - 61) do
        gone[#gone + 1] = 't' .. i; gone[#gone + 1] = 'c' .. i
      end
      if #gone > 0 then redis.call('HDEL', B, unpack(gone)) end
    end
    local f = {}
    for i = k - 60, k do f[#f + 1] = 't' .. i; f[#f + 1] = 'c' .. i end
    local v = redis.call('HMGET', B, unpack(f))
    tok, cst = 0, 0
    for i = 1, #v, 2 do tok = tok + tonumber(v[i] or '0'); cst = cst + tonumber(v[i + 1] or '0') end
    local sp = frac(tok, cst)
    local w2, e2 = w and sp >= warn_at, e and sp >= exh_at
    if (w2 ~= w or e2 ~= e) and quiet % 8 < 4 then evs[#evs + 1] = {'reset', f17((k - 60) * width)} end
    w, e, dirty = w2, e2, true
    d.bucket = k
    redis.call('HSET', base, 'name', ARGV[18], 'period', ARGV[19], 'tl', ARGV[7], 'cl', ARGV[8])
  else
    k = cur
  end
end
local function drop(ids)
  if #ids == 0 then return 0 end
  local n = 0
  for i = 1, #ids, 1000 do
    local part = {unpack(ids, i, math.min(i + 999, #ids))}
    local vals = redis.call('HMGET', R, unpack(part))
    for j = 1, #vals do
      if vals[j] then
        local a, b = string.match(vals[j], '^(%S+) (%S+)$')
        rt, rc, n = rt - tonumber(a), rc - tonumber(b), n + 1
      end
    end
  end
  chunked('HDEL', R, ids)
  chunked('ZREM', X, ids)
  if redis.call('HLEN', R) == 0 then rt, rc = 0, 0 end
  dirty = true
  return n
end
local dead = redis.call('ZRANGEBYSCORE', X, '-inf', now)
if #dead > 0 then drop(dead) end
local found = 0
if not dup then
  if op == 'hold' or (op == 'reserve' and frac(tok + rt, cst + rc) < exh_at) then
    redis.call('HSET', R, rid, ARGV[14] .. ' ' .. ARGV[15])
    redis.call('ZADD', X, now + ttl, rid)
    rt, rc, touched, found, dirty = rt + tokens, rc + cost, true, 1, true
  elseif op == 'settle' then
    if rid ~= '' then found = drop({rid}) end
    tok, cst, touched, dirty = tok + tokens, cst + cost, true, true
    if rolling then
      redis.call('HINCRBY', B, 't' .. k, tokens)
      redis.call('HSET', B, 'c' .. k, f17(tonumber(redis.call('HGET', B, 'c' .. k) or '0') + cost))
    end
  end
  if current and (op == 'settle' or op == 'eval') then
    local sp = frac(tok, cst)
    if sp >= warn_at and not w then
      w, dirty = true, true
      if quiet % 2 == 0 then evs[#evs + 1] = {'warn'} end
    end
    if sp >= exh_at and not e then
      e, dirty = true, true
      if quiet % 4 < 2 then evs[#evs + 1] = {'exh'} end
    end
  end
  if op == 'eval' then
    redis.call('HSET', base, 'name', ARGV[18], 'period', ARGV[19], 'tl', ARGV[7], 'cl', ARGV[8])
  end
end
if dirty then
  redis.call('HSET', D, 'tok', f17(tok), 'cost', f17(cst), 'rt', f17(rt), 'rc', f17(rc),
             'w', w and '1' or '0', 'e', e and '1' or '0', 't', touched and '1' or '0')
  if rolling then
    redis.call('HSET', D, 'bucket', f17(k))
  else
    local life = math.ceil(pend - now + grace)
    if life > 0 then
      for _, key in ipairs({D, R, X}) do redis.call('EXPIRE', key, life) end
    end
  end
end
local nres = redis.call('HLEN', R)
local nx = redis.call('ZRANGE', X, 0, 0, 'WITHSCORES')
local resets = ''
if rolling and frac(tok + rt, cst + rc) >= exh_at then
  local f = {}
  for i = k - 60, k do f[#f + 1] = 't' .. i; f[#f + 1] = 'c' .. i end
  local v = redis.call('HMGET', B, unpack(f))
  local t2, c2 = tok, cst
  for i = 0, 60 do
    t2, c2 = t2 - tonumber(v[2 * i + 1] or '0'), c2 - tonumber(v[2 * i + 2] or '0')
    if frac(t2 + rt, c2 + rc) < exh_at then resets = f17((k - 60 + i + 61) * width); break end
  end
end
return reply({'OK', f17(tok), f17(cst), f17(rt), f17(rc), w and 1 or 0, e and 1 or 0, touched and 1 or 0,
              nres, nx[2] or '', resets, found, dup and 1 or 0, rolling and f17(k) or pstart}, evs)
"""
