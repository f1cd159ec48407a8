-- The GCRA step that the "redis" limiter backend runs inside Redis, in one place for every client
-- of it (the C backend in src/limiter_redis.c, and cosocket clients in OpenResty).
--
-- KEYS[1]  the schedule: <prefix><access key fingerprint>:<Action>
-- ARGV[1]  the interval between sends, in microseconds (a positive integer)
-- ARGV[2]  optional: microseconds from now before which the slot must not be (a caller coming back
--          from its fallback still has slots booked there)
-- Returns  microseconds from the Redis server's "now" to the reserved send slot (0: send at once).
--
-- The schedule is the theoretical arrival time (TAT) in microseconds on the Redis server's clock
-- (TIME), so the callers' clocks never meet. The reply is a duration: the caller adds it to its own
-- clock when the reply arrives. The key expires one second after its TAT has passed; from then on a
-- missing key and a stale one mean the same thing (the next slot is "now").
local M = {}

M.script = [[
if redis.replicate_commands then redis.replicate_commands() end -- Redis < 5: writes after TIME
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
if not interval or interval < 1 or interval ~= math.floor(interval) then
  return redis.error_reply('rtcadmin gcra: interval must be a positive integer of microseconds')
end
local not_before = now + (tonumber(ARGV[2]) or 0)
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local start = tat > not_before and tat or not_before
local next_tat = start + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return start - now
]]

return M
