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

__all__ = ["COMMON", "LEDGER", "POLICY", "SLOT_GUARD", "split"]

#: Put before every script of a ``redis+cluster://`` store: a read of ``{prefix}:epoch:absent``, a key
#: that never exists. While the slot migrates, a script's read of a key the node lacks (a new period, a
#: key already moved) fails the script at that command and keeps the writes made before it; this read
#: fails every script before its first write instead (see :mod:`engine.store.redis.cluster`).
SLOT_GUARD = "redis.call('EXISTS', KEYS[1] .. ':absent')\n"


def split(reply: bytes, fields: int) -> tuple[list[bytes], list[list[bytes]]]:
    """A script's reply as its ``fields`` head values and its events (lists of values)."""
    parts = [b"" if p == b"-" else p for p in reply.split(b" ")]
    return parts[:fields], [[b"" if x == b"-" else x for x in p[1:].split(b",")] for p in parts[fields:]]

COMMON = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'EPOCH' end
local INF = math.huge
local BIG = 2 ^ 50  -- counters and sequence numbers stay far below 2^53 (exact in a double)
local T_MAX = 1e11  -- wall-clock seconds (year 5138): a larger time is corrupt
local function f17(x) return string.format('%.17g', x) end
-- a stored number if it parses, is finite and lies in [lo, hi] (an integer if int), else nil
local function valid(raw, lo, hi, int)
  local v = tonumber(raw)
  if v == nil or v ~= v or v < lo or v > hi then return nil end
  if int and v ~= math.floor(v) then return nil end
  return v
end
local function hex(x)
  local function byte(c) return string.format('%02x', string.byte(c)) end
  return (string.gsub(tostring(x), '.', byte))
end
-- what was found corrupt (and reset): key, field ('' for a key of the wrong type), the stored value
local BAD = {}
local function bad(key, field, raw)
  BAD[#BAD + 1] = {'corrupt', hex(key), hex(field), hex(string.sub(tostring(raw), 1, 48))}
end
-- a read of a key; if the key has another type than the script uses, it is corrupt: deleted (so no
-- later command on it fails) and read again (empty)
local function read(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    local t = redis.call('TYPE', key)['ok']
    redis.call('DEL', key)
    bad(key, '', 'type ' .. t)
    r = redis.call(cmd, key, ...)
  end
  return r
end
-- a key of another type than the script uses is corrupt: deleted (so no command on it fails)
local function typed(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    redis.call('DEL', key)
    bad(key, '', 'type ' .. t)
  end
end
-- one bulk string, cheap to parse: 'OK' and the fields, then '|'-prefixed events; '-' is empty
local function reply(head, evs)
  local parts = {}
  for i = 1, #head do
    local v = tostring(head[i])
    if v == '' then v = '-' end
    parts[#parts + 1] = v
  end
  for _, list in ipairs({BAD, evs}) do
    for _, ev in ipairs(list) do
      local f = {}
      for i = 1, #ev do
        local v = tostring(ev[i])
        if v == '' then v = '-' end
        f[#f + 1] = v
      end
      parts[#parts + 1] = '|' .. table.concat(f, ',')
    end
  end
  return table.concat(parts, ' ')
end
local function chunked(cmd, key, ids)
  for i = 1, #ids, 999 do
    redis.call(cmd, key, unpack(ids, i, math.min(i + 998, #ids)))
  end
end
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 999 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 998, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
"""

#: KEYS: epoch, budget meta hash, this client's ack key.
#: ARGV: epoch, op, now, rolling, start|width, end|bucket, token limit (0: none),
#: cost limit (0: none), warn_at, exhaust_at, ttl, seq (0: none), rid (settle: fields separated by
#: spaces), tokens, cost, quiet (1: no warning, 2: no exhausted, 4: no reset event, 8: a replayed
#: settlement, booked in the period it names even if that is an earlier one), grace_s, name, period label,
#: and for a lease: the tokens and cost wanted, the lease's TTL.
#: ops: peek, eval, reserve (checked), hold (admitted by the client), settle, lease.
#:
#: ``lease`` (see :mod:`engine.store.redis.lease`): the client's usage since its last report is
#: settled and taken off its slice (reservation ``rid``; once: ``seq``), then the slice is topped up to
#: what was wanted (or cut down to it: 0 gives it back) from the headroom, ``exhaust_at`` x limit minus
#: settled and reserved (other slices included), by at most half the headroom (rounded up), so slices
#: shrink as the budget runs out; once the budget is exhausted no slice is left. The reply's last two
#: fields are the slice's tokens and cost as it now is.
#:
#: A fixed budget's period never goes back: an operation naming a period before the latest one the
#: server has seen (a client whose clock was stepped back) works on the latest one, except a replayed
#: settlement. A stored value that does not parse or is out of range is reported (a ``corrupt``
#: event) and reset: usage to 0 (a rolling window's from its buckets), reservations recounted.
LEDGER = COMMON + r"""
local op, now = ARGV[2], tonumber(ARGV[3])
local rolling = ARGV[4] == '1'
local tl, cl = tonumber(ARGV[7]), tonumber(ARGV[8])
local warn_at, exh_at, ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local seq, rid = tonumber(ARGV[12]), ARGV[13]
local tokens, cost = tonumber(ARGV[14]), tonumber(ARGV[15])
local quiet, grace = tonumber(ARGV[16]), tonumber(ARGV[17])
local replay = quiet % 16 >= 8
local base = KEYS[2]
local evs = {}
local function frac(t, c)
  local a, b = 0, 0
  if tl > 0 then a = t / tl end
  if cl > 0 then b = c / cl end
  if a >= b then return a end
  return b
end
local function amount(raw, int)  -- tokens (an integer) or dollars (a float residue may dip below 0)
  if raw == nil or raw == false then return nil end
  if int then return valid(raw, 0, BIG, true) end
  return valid(raw, -1e-6, BIG)
end
local dup = false
if seq > 0 then
  typed(KEYS[3], 'string')
  local got, acked = redis.call('GET', KEYS[3]), 0
  if got then
    acked = valid(got, 0, BIG, true)
    if acked == nil then bad(KEYS[3], '', got); acked = 0 end
  end
  if seq <= acked then dup = true
  else redis.call('SET', KEYS[3], ARGV[12], 'EX', 86400) end
end
local D, pkey, pend, width, k, current
if rolling then
  width, k, current = tonumber(ARGV[5]), tonumber(ARGV[6]), true
  D = base .. ':roll'
else
  pkey, pend = ARGV[5], tonumber(ARGV[6])
  local pstart = tonumber(pkey)
  local m = read('HMGET', base, 'cur', 'end')
  local cur, cend = nil, nil
  if m[1] then
    cur = valid(m[1], -T_MAX, T_MAX)
    if cur == nil then bad(base, 'cur', m[1]) end
  end
  if m[2] then
    cend = valid(m[2], -T_MAX, T_MAX)
    if cend == nil then bad(base, 'end', m[2]) end
  end
  current = true
  if cur == nil or pstart > cur then
    if cur ~= nil then
      local old = base .. ':' .. m[1]
      if redis.pcall('HGET', old, 't') == '1' and quiet % 8 < 4 then evs[#evs + 1] = {'reset', pkey} end
      redis.call('DEL', old .. ':r', old .. ':x')
    end
    redis.call('HSET', base, 'cur', pkey, 'end', ARGV[6], 'name', ARGV[18], 'period', ARGV[19],
               'tl', ARGV[7], 'cl', ARGV[8])
  elseif pstart < cur then
    if replay and op == 'settle' then current = false  -- reconciled in the period it happened in
    else pkey, pend = m[1], cend or pend end  -- never back to an earlier period
  end
  D = base .. ':' .. pkey
end
if rolling then read('HLEN', base) end  -- (a rolling budget only writes its meta hash)
local R, X, B = D .. ':r', D .. ':x', D .. ':k'
read('HLEN', R)
local dead = read('ZRANGEBYSCORE', X, '-inf', now)
if rolling then read('HLEN', B) end
local d = {}
local raw = read('HGETALL', D)
for i = 1, #raw, 2 do d[raw[i]] = raw[i + 1] end
local dirty, rebuild, recount = false, false, false
local function stored(name, int)
  if d[name] == nil then return 0 end
  local v = amount(d[name], int)
  if v == nil then
    bad(D, name, d[name])
    dirty = true
    return nil
  end
  return v
end
local tok, cst = stored('tok', true), stored('cost', false)
if tok == nil or cst == nil then rebuild = true end
tok, cst = tok or 0, cst or 0
local rt, rc = stored('rt', true), stored('rc', false)
if rt == nil or rc == nil then recount = true end
rt, rc = rt or 0, rc or 0
local w, e, touched = d.w == '1', d.e == '1', d.t == '1'
-- a rolling window's buckets k - 60 .. k, corrupt ones dropped
local function buckets(at)
  local f = {}
  for i = at - 60, at do f[#f + 1] = 't' .. i; f[#f + 1] = 'c' .. i end
  local v = redis.call('HMGET', B, unpack(f))
  local out, gone = {}, {}
  for i = 1, #v do
    local x = 0
    if v[i] then
      x = amount(v[i], i % 2 == 1)
      if x == nil then bad(B, f[i], v[i]); gone[#gone + 1] = f[i]; x = 0 end
    end
    out[i] = x
  end
  if #gone > 0 then redis.call('HDEL', B, unpack(gone)) end
  return out
end
if rolling then
  local cur = nil
  if d.bucket ~= nil then
    cur = valid(d.bucket, -BIG, BIG, true)
    if cur == nil then bad(D, 'bucket', d.bucket) end
  end
  if cur == nil or k > cur or rebuild then
    if cur ~= nil and k > cur then
      local gone = {}
      for i = cur - 60, math.min(cur, k - 61) do  -- at most 61: the old window's buckets
        gone[#gone + 1] = 't' .. i; gone[#gone + 1] = 'c' .. i
      end
      if #gone > 0 then redis.call('HDEL', B, unpack(gone)) end
    end
    if cur ~= nil and k < cur then k = cur end
    local v = buckets(k)
    tok, cst = 0, 0
    for i = 1, #v, 2 do tok = tok + v[i]; cst = cst + v[i + 1] end
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
-- reservations: R maps an id to 'tokens cost', X holds their expiry times
local function recounted()
  rt, rc = 0, 0
  local all = redis.call('HGETALL', R)
  local gone = {}
  for i = 1, #all, 2 do
    local a, b = string.match(all[i + 1], '^(%S+) (%S+)$')
    a, b = amount(a, true), amount(b, false)
    if a == nil or b == nil then bad(R, all[i], all[i + 1]); gone[#gone + 1] = all[i]
    else rt, rc = rt + a, rc + b end
  end
  if #gone > 0 then chunked('HDEL', R, gone); chunked('ZREM', X, gone) end
  dirty = true
end
local function drop(ids)
  if #ids == 0 then return 0 end
  local n = 0
  local vals = hmget(R, ids)
  for j = 1, #vals do
    if vals[j] then
      local a, b = string.match(vals[j], '^(%S+) (%S+)$')
      a, b = amount(a, true), amount(b, false)
      if a == nil or b == nil then bad(R, ids[j], vals[j]); recount = true
      else rt, rc, n = rt - a, rc - b, n + 1 end
    end
  end
  chunked('HDEL', R, ids)
  chunked('ZREM', X, ids)
  if redis.call('HLEN', R) == 0 then rt, rc = 0, 0 end
  dirty = true
  return n
end
if #dead > 0 then drop(dead) end
if recount or rt < 0 or rc < -1e-6 then recounted() end
-- settled usage: the period's totals (and a rolling window's current bucket)
local function book()
  tok, cst, touched, dirty = tok + tokens, cst + cost, true, true
  if rolling then
    local v = redis.call('HMGET', B, 't' .. k, 'c' .. k)
    local bt, bc = amount(v[1], true), amount(v[2], false)
    if v[1] and bt == nil then bad(B, 't' .. k, v[1]) end
    if v[2] and bc == nil then bad(B, 'c' .. k, v[2]) end
    redis.call('HSET', B, 't' .. k, f17((bt or 0) + tokens), 'c' .. k, f17((bc or 0) + cost))
  end
end
local found = 0
if not dup then
  if op == 'hold' or (op == 'reserve' and frac(tok + rt, cst + rc) < exh_at) then
    redis.call('HSET', R, rid, ARGV[14] .. ' ' .. ARGV[15])
    redis.call('ZADD', X, now + ttl, rid)
    rt, rc, touched, found, dirty = rt + tokens, rc + cost, true, 1, true
  elseif op == 'settle' then
    if rid ~= '' then
      local ids = {}
      for id in string.gmatch(rid, '%S+') do ids[#ids + 1] = id end
      found = drop(ids)
      if recount then recounted() end
    end
    book()
  end
  if op == 'lease' then book() end  -- the usage reported with a lease
  if current and (op == 'settle' or op == 'eval' or op == 'lease') then
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
local gt, gc = '', ''
if op == 'lease' then  -- the slice: what it had, less the usage reported (unless a duplicate), topped up
  local a, b = 0, 0
  local held = redis.call('HGET', R, rid)
  if held then
    local x, y = string.match(held, '^(%S+) (%S+)$')
    x, y = amount(x, true), amount(y, false)
    if x == nil or y == nil then bad(R, rid, held); recount = true
    else a, b, rt, rc = x, y, rt - x, rc - y end
    redis.call('HDEL', R, rid)
    redis.call('ZREM', X, rid)
    if recount then recounted() end
  end
  if not dup then a, b = math.max(a - tokens, 0), math.max(b - cost, 0) end
  local wt, wc, lttl = tonumber(ARGV[20]), tonumber(ARGV[21]), tonumber(ARGV[22])
  if frac(tok, cst) >= exh_at then
    a, b = 0, 0  -- exhausted: no slice survives
  else
    if tl > 0 then
      local room = math.floor(tl * exh_at - tok - rt - a)
      if wt <= a then a = wt elseif room > 0 then a = a + math.min(wt - a, math.ceil(room / 2)) end
    end
    if cl > 0 then
      local room = cl * exh_at - cst - rc - b
      if wc <= b then b = wc elseif room > 0 then b = b + math.min(wc - b, room / 2) end
    end
  end
  if a > 0 or b > 0 then
    redis.call('HSET', R, rid, f17(a) .. ' ' .. f17(b))
    redis.call('ZADD', X, now + lttl, rid)
    rt, rc, touched = rt + a, rc + b, true
  end
  gt, gc, dirty = f17(a), f17(b), true
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
  local v = buckets(k)
  local t2, c2 = tok, cst
  for i = 0, 60 do
    t2, c2 = t2 - v[2 * i + 1], c2 - v[2 * i + 2]
    if frac(t2 + rt, c2 + rc) < exh_at then resets = f17((k - 60 + i + 61) * width); break end
  end
end
return reply({'OK', f17(tok), f17(cst), f17(rt), f17(rc), w and 1 or 0, e and 1 or 0, touched and 1 or 0,
              nres, nx[2] or '', resets, found, dup and 1 or 0, rolling and f17(k) or pkey, gt, gc}, evs)
"""

#: KEYS: epoch, the namespace's policy hash. ARGV: epoch, mode (claim: set if none is there; replace),
#: fingerprint, revision, by (host:pid), at (wall seconds).
#: Reply: OK, the fingerprint there before (or empty), then the hash as it is now: fingerprint, and
#: revision, by, at in hex.
POLICY = COMMON + r"""
typed(KEYS[2], 'hash')
local before = redis.call('HGET', KEYS[2], 'fp') or ''
if before == '' or ARGV[2] == 'replace' then
  redis.call('HSET', KEYS[2], 'fp', ARGV[3], 'revision', ARGV[4], 'by', ARGV[5], 'at', ARGV[6])
end
local h = redis.call('HMGET', KEYS[2], 'fp', 'revision', 'by', 'at')
return reply({'OK', before, h[1] or '', hex(h[2] or ''), hex(h[3] or ''), hex(h[4] or '')}, {})
"""
