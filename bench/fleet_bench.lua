-- Benchmark 9: the fleet over Redis Streams on loopback (docs/fleet.md).
--  (a) end-to-end events per second through the log: one `rtcadmin ingest` producer appending a
--      recorded multi-room raid, and 1 or 3 `rtcadmin run --from --dry-run` engines deciding it,
--      timed from the producer's start to the last entry read (decided) and to the last acknowledged
--      (in a checkpoint);
--  (b) Redis CPU per event: INFO commandstats (usec, summed over every command) and INFO cpu
--      (used_cpu_user + used_cpu_sys of the server) over the run, divided by the events;
--  (c) takeover after kill -9: two engines, one killed; then events for the dead engine's shards
--      are appended and timed until acknowledged by the survivor (lease expiry, claim, decision).
-- Starts its own redis-server (testlib's T.redis); the engines decide in dry-run (no API calls).
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;' \
--     lua5.4 bench/fleet_bench.lua [rooms=1100] [lease=3]
local T = require "testlib"
local rtcadmin = require "rtcadmin"
local fleetlib = require "fleetlib"

local ROOMS = tonumber(arg[1]) or 1100
local LEASE = arg[2] or "3"
local LUA = arg[-1] or "lua5.4"
local APP = T.APP
local q = T.shell_quote
local dir = T.tmpdir()
local redis = T.redis()
local conn = assert(rtcadmin.redis(redis.url))
local RULES = T.source_dir .. "/examples/rules"

local function env()
  return "RTCADMIN_BUILD=" .. q(T.module_dir()) .. " RTCADMIN_FLEET_LEASE=" .. LEASE .. " "
end
local F = fleetlib.fleet(conn, env, LUA, dir)

local by_room, rooms = fleetlib.rooms(ROOMS, APP)
local lines = fleetlib.lines(by_room, rooms)
local EVENTS = #lines
local file = T.write_file(dir .. "/events.jsonl", table.concat(lines, "\n") .. "\n")

local function stat(section, pattern)
  local text = conn:call("INFO", section)
  return text:match(pattern)
end

local function commandstats_usec()
  local total = 0
  for usec in conn:call("INFO", "commandstats"):gmatch("usec=(%d+)") do total = total + tonumber(usec) end
  return total
end

local function cpu_seconds()
  return tonumber(stat("cpu", "used_cpu_user:([%d%.]+)")) + tonumber(stat("cpu", "used_cpu_sys:([%d%.]+)"))
end

-- Waits until every entry was read by an engine (each batch of entries is decided before the next
-- read: the time of the last decision, within one batch) and until every entry is acknowledged (its
-- decisions in a checkpoint, written every --state-every seconds); returns when each was seen.
local function drained(total, seconds)
  local t0, read = T.now(), nil
  while T.now() - t0 < seconds do
    if F.entries() == total then
      local pending, behind = F.backlog()
      if behind == 0 then read = read or T.now() end
      if read and pending == 0 then return read, T.now() end
    end
    T.sleep(0.01)
  end
  error("not drained within " .. seconds .. " s")
end

local function end_to_end(n)
  assert(conn:call("FLUSHALL"))
  local names, procs = {}, {}
  for i = 1, n do
    names[i] = "bench" .. i
    procs[i] = F.start("run " .. q(RULES) .. " --from " .. q(redis.url) .. " --consumer " .. names[i]
      .. " --dry-run --json")
  end
  F.wait_split(names, 30)
  assert(conn:call("CONFIG", "RESETSTAT"))
  local cpu0 = cpu_seconds()
  local t0 = T.now()
  local producer = F.start("ingest --to " .. q(redis.url) .. " " .. q(file))
  assert(producer.wait(600) == 0, producer.err())
  local t_ingest = T.now()
  local t1, t_acked = drained(EVENTS, 600)
  local usec, cpu = commandstats_usec(), cpu_seconds() - cpu0
  for _, p in ipairs(procs) do p.signal("TERM") end
  for _, p in ipairs(procs) do assert(p.wait(30) == 0, p.err()) end
  print(string.format("%d engine(s): %d events decided in %.2f s end to end = %.0f events/s (producer done after "
    .. "%.2f s, all acknowledged after %.2f s); Redis: %.2f us/event in commands (commandstats), %.2f us/event of "
    .. "server CPU", n, EVENTS, t1 - t0, EVENTS / (t1 - t0), t_ingest - t0, t_acked - t0, usec / EVENTS,
    cpu * 1e6 / EVENTS))
end

local function takeover()
  assert(conn:call("FLUSHALL"))
  local a = F.start("run " .. q(RULES) .. " --from " .. q(redis.url) .. " --consumer ta --dry-run --json")
  local b = F.start("run " .. q(RULES) .. " --from " .. q(redis.url) .. " --consumer tb --dry-run --json")
  local _, split = F.wait_split({ "ta", "tb" }, 30)
  -- Rooms on ta's shards.
  local mine = {}
  for _, room in ipairs(rooms) do
    if split[rtcadmin.shard(APP, room, 16)] == "ta" then mine[#mine + 1] = room end
    if #mine == 20 then break end
  end
  local f = T.write_file(dir .. "/takeover.jsonl", table.concat(fleetlib.lines(by_room, mine), "\n") .. "\n")
  a.signal("KILL")
  local killed = T.now()
  local producer = F.start("ingest --to " .. q(redis.url) .. " " .. q(f))
  local took = F.wait_split({ "tb" }, 30) -- (polled from right after the kill)
  assert(producer.wait(60) == 0, producer.err())
  local n = #fleetlib.lines(by_room, mine)
  local done, acked = drained(n, 60)
  b.signal("TERM")
  assert(b.wait(30) == 0, b.err())
  print(string.format("takeover after kill -9 (lease %s s): every shard owned by the survivor %.2f s after the kill; "
    .. "%d events for the dead engine's shards decided %.2f s and acknowledged %.2f s after the kill", LEASE,
    took, n, done - killed, acked - killed))
end

print(string.format("%d events, %d rooms, 16 shards, %s, rules %s", EVENTS, ROOMS, LUA, RULES))
end_to_end(1)
end_to_end(3)
takeover()
conn:close()
redis.stop()
T.rmdir(dir)
