//! The governor's Lua scripts. Each runs atomically in Redis, takes its
//! time from Redis `TIME` (worker clocks do not matter) and names every key
//! it touches in `KEYS`, all under one hash tag, so it runs on a Redis
//! Cluster too. Times are microseconds unless a name says otherwise.

/// Admits one send, or says how long until it may go.
///
/// The buckets are GCRA: one theoretical arrival time (TAT) per key. A
/// non-paid send is charged to the global bucket, the shared one (all but
/// the interactive lane: the interactive reserve is what it leaves) and
/// the chat's; a paid send to the paid bucket and the chat's, while the
/// day's Stars last. A wait within the threshold reserves the slot; a
/// longer one reserves nothing and returns when to come back: handed-back
/// sends for one chat come back one chat interval apart, and those held up
/// by the lane's rate one rate interval apart, so a thousand deferred
/// messages do not all return in the same millisecond only to be deferred
/// again (each return is a delivery, and deliveries are limited).
///
/// Returns `{admitted (1/0), wait, paid (1/0)}`.
pub(super) const ADMIT: &str = r"
-- KEYS: 1 bot freeze, 2 chat freeze, 3 global, 4 shared, 5 chat, 6 paid,
--       7 chat queue, 8 free lanes' queue, 9 Stars spent ('<day>:<tenths>'),
--       10 rates, 11 paid lane's queue
-- ARGV: 1 global interval, 2 global tau, 3 shared interval (0: none), 4 shared tau,
--       5 chat interval, 6 chat tau, 7 threshold, 8 lane name, 9 paid interval
--       (0: not paid), 10 paid tau, 11 Stars budget (tenths), 12 pause when spent
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local day = math.floor(sec / 86400)
local day_end = (day + 1) * 86400
local paid = tonumber(ARGV[9]) > 0
local spent = 0
if paid then
  local d, n = string.match(redis.call('GET', KEYS[9]) or '', '^(%d+):(%d+)$')
  if tonumber(d) == day then spent = tonumber(n) end
  if spent >= tonumber(ARGV[11]) then
    if ARGV[12] == '1' then return {0, day_end * 1000000 - now, 0} end
    paid = false
  end
end
local interactive = ARGV[8] == 'interactive'
local lane_buckets, lane_queue
if paid then
  lane_buckets, lane_queue = {{KEYS[6], 9, 10}}, KEYS[11]
else
  lane_buckets, lane_queue = {{KEYS[3], 1, 2}}, KEYS[8]
  if tonumber(ARGV[3]) > 0 then table.insert(lane_buckets, {KEYS[4], 3, 4}) end
end
-- Returns are spaced by the slowest of the lane's buckets.
local lane_interval = 0
for _, b in ipairs(lane_buckets) do lane_interval = math.max(lane_interval, tonumber(ARGV[b[2]])) end
local function waits(buckets, frozen_key)
  local wait = redis.call('PTTL', frozen_key) * 1000
  if wait < 0 then wait = 0 end
  for _, b in ipairs(buckets) do
    local tat = tonumber(redis.call('GET', b[1]) or '0')
    if tat < now then tat = now end
    b[4] = tat
    local w = tat - tonumber(ARGV[b[3]]) - now
    if w > wait then wait = w end
  end
  return wait
end
local chat_buckets = {{KEYS[5], 5, 6}}
local lane_wait = waits(lane_buckets, KEYS[1])
local chat_wait = waits(chat_buckets, KEYS[2])
local wait = math.max(lane_wait, chat_wait)
local threshold = tonumber(ARGV[7])
local function push(key, value)
  redis.call('SET', key, string.format('%d', value), 'PX', math.floor((value - now) / 1000) + 1000)
end
if wait > threshold then
  local back = now + wait
  -- A reply is never queued behind handed-back broadcasts.
  if interactive then return {0, wait, 0} end
  if lane_wait > threshold then
    local lane_back = math.max(now + lane_wait, tonumber(redis.call('GET', lane_queue) or '0'))
    push(lane_queue, lane_back + lane_interval)
    back = math.max(back, lane_back)
  end
  back = math.max(back, tonumber(redis.call('GET', KEYS[7]) or '0'))
  push(KEYS[7], back + tonumber(ARGV[5]))
  return {0, back - now, 0}
end
-- The message leaves after the longest wait: every bucket is charged from then.
local send = now + wait
for _, buckets in ipairs({lane_buckets, chat_buckets}) do
  for _, b in ipairs(buckets) do
    push(b[1], math.max(b[4], send) + tonumber(ARGV[b[2]]))
  end
end
if paid then
  redis.call('SET', KEYS[9], day .. ':' .. (spent + 1), 'PXAT', (day_end + 3600) * 1000)
end
-- Sends per lane per second, the last 16 seconds: field '<lane>:<sec % 16>'
-- holds '<sec>:<count>'.
local field = ARGV[8] .. ':' .. (sec % 16)
local n = 1
local cur = redis.call('HGET', KEYS[10], field)
if cur then
  local s, c = string.match(cur, '^(%d+):(%d+)$')
  if tonumber(s) == sec then n = tonumber(c) + 1 end
end
redis.call('HSET', KEYS[10], field, sec .. ':' .. n)
redis.call('PEXPIRE', KEYS[10], 20000)
return {1, wait, paid and 1 or 0}
";

/// How many sends of a paced lane (bulk, paid) the lane's buckets would
/// admit now (nothing is reserved), or how long until one.
///
/// Returns `{count, wait}`.
pub(super) const BUDGET: &str = r"
-- KEYS: 1 bot freeze, 2 global, 3 shared, 4 paid, 5 Stars spent ('<day>:<tenths>')
-- ARGV: 1 global interval, 2 global tau, 3 shared interval, 4 shared tau,
--       5 paid interval (0: not the paid lane), 6 paid tau, 7 most,
--       8 Stars budget (tenths), 9 pause when spent
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local frozen = redis.call('PTTL', KEYS[1])
if frozen > 0 then return {0, frozen * 1000} end
local buckets = {{KEYS[2], 1, 2}, {KEYS[3], 3, 4}}
local n, wait = tonumber(ARGV[7]), 0
if tonumber(ARGV[5]) > 0 then
  local day = math.floor(sec / 86400)
  local d, spent = string.match(redis.call('GET', KEYS[5]) or '', '^(%d+):(%d+)$')
  spent = (tonumber(d) == day) and tonumber(spent) or 0
  local left = tonumber(ARGV[8]) - spent
  if left > 0 then
    buckets = {{KEYS[4], 5, 6}}
    -- No more paid messages than the Stars left pay for.
    if left < n then n = left end
  elseif ARGV[9] == '1' then
    return {0, (day + 1) * 86400 * 1000000 - now}
  end
end
for _, b in ipairs(buckets) do
  local interval, tau = tonumber(ARGV[b[2]]), tonumber(ARGV[b[3]])
  local tat = tonumber(redis.call('GET', b[1]) or '0')
  if tat < now then tat = now end
  local room = math.floor((now + tau - tat) / interval) + 1
  if room < n then n = room end
  if tat - tau - now > wait then wait = tat - tau - now end
end
if n < 1 then return {0, wait} end
return {n, 0}
";

/// A 429: freezes the chat (and the bot, when several chats were refused
/// within a second) for `retry_after`, and lists the frozen key with its
/// end in a sorted set for `producer governor` and the metrics.
///
/// Returns 1 when the whole bot is frozen.
pub(super) const FREEZE: &str = r"
-- KEYS: 1 chat freeze, 2 bot freeze, 3 recent 429s (chats scored by time),
--       4 frozen (by end), 5 shortest retry_after of the recent 429s
-- ARGV: 1 retry_after ms (capped), 2 chat id, 3 chats that freeze the bot
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
redis.call('SET', KEYS[1], '1', 'PX', ms)
redis.call('ZADD', KEYS[4], now + ms, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 1000)
redis.call('PEXPIRE', KEYS[3], 2000)
local shortest = tonumber(redis.call('GET', KEYS[5]) or '0')
if shortest == 0 or ms < shortest then
  shortest = ms
  redis.call('SET', KEYS[5], ms, 'PX', 1000)
end
local bot = 0
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  -- Several chats refused at once: the bot is frozen for the shortest of
  -- their waits (a per-chat 429 among them must not freeze all for long).
  local left = redis.call('PTTL', KEYS[2])
  if left < shortest then
    redis.call('SET', KEYS[2], '1', 'PX', shortest)
    redis.call('ZADD', KEYS[4], now + shortest, 'bot')
  end
  bot = 1
end
local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[4], math.floor(tonumber(last[2])) + 1000) end
return bot
";

/// What `producer governor` and the worker's gauges show.
///
/// Returns `{now ms, global TAT, frozen [member, end ms]..., frozen count,
/// Stars spent (tenths), rates fields...}`.
pub(super) const STATUS: &str = r"
-- KEYS: 1 frozen, 2 global, 3 Stars spent today, 4 rates
-- ARGV: 1 most frozen keys listed
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local frozen = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
return {now, redis.call('GET', KEYS[2]) or '0', frozen, redis.call('ZCARD', KEYS[1]),
  redis.call('GET', KEYS[3]) or '0', redis.call('HGETALL', KEYS[4])}
";
