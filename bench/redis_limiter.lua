-- Benchmark 5: the Redis limiter backend on loopback, against the in-memory and host backends in
-- the same run.
--  (a) time per limiter decision (client:reserve) in one process: what the Redis round trip adds
--      to every call;
--  (b) decisions per second one redis-server sustains, with 1, 2 and 4 processes reserving on one key.
-- Starts its own redis-server (testlib's T.redis); needs no emulator: reserve() sends nothing.
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;' \
--     lua5.4 bench/redis_limiter.lua [calls=20000] [runs=5]
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local CALLS = tonumber(arg[1]) or 20000
local RUNS = tonumber(arg[2]) or 5
local redis = T.redis()
local dir = T.tmpdir()

local now = T.wall_now

-- qps at its ceiling (100000/s): reserve() decides without the schedule ever making it wait.
local limiters = {
  process = "process",
  host = { backend = "host", dir = dir },
  redis = { backend = "redis", url = redis.url, dir = dir },
}

local function per_call_us(name)
  local c = rtcadmin.client { access_key = T.AK, secret_key = T.SK, endpoint = "http://127.0.0.1:9",
    qps = { Bench = 100000 }, limiter = limiters[name] }
  for _ = 1, math.floor(CALLS / 10) do c:reserve("Bench") end -- warm-up: connection, script cache
  local best = math.huge
  for _ = 1, RUNS do
    local t0 = now()
    for _ = 1, CALLS do c:reserve("Bench") end
    local us = (now() - t0) / CALLS * 1e6
    if us < best then best = us end
  end
  c:close()
  return best
end

print(string.format("(a) time per reserve(), best of %d runs of %d calls", RUNS, CALLS))
local base = per_call_us("process")
for _, name in ipairs { "process", "host", "redis" } do
  local us = name == "process" and base or per_call_us(name)
  print(string.format("  %-8s %8.2f us/call   (+%.2f us over process)", name, us, us - base))
end

print("(b) decisions/s by one redis-server, processes reserving on one key")
for _, procs in ipairs { 1, 2, 4 } do
  local code = string.format([[
    local c = require("rtcadmin").client{access_key = %q, secret_key = %q, endpoint = "http://127.0.0.1:9",
      qps = {Bench = 100000}, limiter = {backend = "redis", url = %q, dir = %q}}
    for _ = 1, %d do c:reserve("Bench") end
    print(c:info().limiter_status.errors)
  ]], T.AK, T.SK, redis.url, dir, CALLS)
  local codes = {}
  for i = 1, procs do codes[i] = code end
  redis.cli("CONFIG RESETSTAT")
  local t0 = now()
  local outs = T.spawn(codes).wait()
  local elapsed = now() - t0
  local calls, usec = redis.cli("INFO commandstats")
    :match("cmdstat_evalsha:calls=(%d+),usec=%d+,usec_per_call=([%d.]+)")
  for i, out in ipairs(outs) do assert(out == "0\n", "process " .. i .. ": " .. out) end
  print(string.format("  %d process(es): %d decisions in %.2f s = %.0f/s (Redis counted %d EVALSHA, %.2f us each "
    .. "inside Redis)", procs, procs * CALLS, elapsed, procs * CALLS / elapsed, tonumber(calls), tonumber(usec)))
end

redis.stop()
T.rmdir(dir)
