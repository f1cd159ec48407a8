-- Per-call cost of client:kick_user() in the client process, against bench/instant_server.js.
--
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' \
--     lua5.4 bench/call_overhead.lua http://127.0.0.1:PORT [calls] [warmup]   (defaults: 20000, 2000)
--
-- CPU time is os.clock() (clock(3): user + system CPU of this whole process, all threads), divided
-- by the number of calls; the user/system split comes from /proc/self/stat (10 ms ticks). Wall time
-- uses socket.gettime() when LuaSocket is installed, else /proc/uptime (10 ms resolution). Every call
-- must succeed; the first failure aborts the run.
local rtcadmin = require "rtcadmin"

local endpoint = arg[1]
local calls = tonumber(arg[2]) or 20000
local warmup = tonumber(arg[3]) or 2000
if not endpoint then
  io.stderr:write("usage: lua5.4 bench/call_overhead.lua http://127.0.0.1:PORT [calls] [warmup]\n")
  os.exit(2)
end

local wall_clock, wall_clock_name
do
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and socket.gettime then
    wall_clock, wall_clock_name = socket.gettime, "socket.gettime"
  else
    wall_clock_name = "/proc/uptime"
    wall_clock = function()
      local f = assert(io.open("/proc/uptime", "r"))
      local up = f:read("n")
      f:close()
      return up
    end
  end
end

-- utime and stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
local function proc_times()
  local f = io.open("/proc/self/stat", "r")
  if not f then return nil end
  local stat = f:read("a")
  f:close()
  local fields = {}
  for w in stat:gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = w end
  -- after "pid (comm) " the first field is the state (field 3), so field n is fields[n - 2]
  return tonumber(fields[12]), tonumber(fields[13])
end

local APP, ROOM, USER = "661e2ebb5ffd4b0e8d3f6b1d", "room1", "user1"

-- Two clients, measured one after the other:
--   nolimit  limiter = "none": signing, JSON, libcurl and response handling only
--   paced    the default process limiter, with KickUser raised to 100000/s so it never has to wait
--            (the default 60/s would make every call sleep ~16.7 ms): adds the pacing bookkeeping
local variants = {
  { name = "nolimit", opts = { limiter = "none" } },
  { name = "paced", opts = { limiter = "process", qps = { KickUser = 100000 } } },
}

local function measure(v)
  local opts = {
    endpoint = endpoint,
    access_key = "AKLTrtcadminBenchKey01",
    secret_key = "YmVuY2htYXJrLXNlY3JldC1rZXk=",
    timeout = 10,
  }
  for k, val in pairs(v.opts) do opts[k] = val end
  local client = rtcadmin.client(opts)
  local function run(n)
    for i = 1, n do
      local res, err = client:kick_user(APP, ROOM, USER)
      if not res then
        io.stderr:write(string.format("call_overhead.lua: %s call %d failed: %s\n", v.name, i, tostring(err)))
        os.exit(1)
      end
    end
  end
  run(warmup)
  collectgarbage()
  local u0, s0 = proc_times()
  local w0 = wall_clock()
  local c0 = os.clock()
  run(calls)
  local cpu = os.clock() - c0
  local wall = wall_clock() - w0
  local u1, s1 = proc_times()
  local info = client:info()
  client:close()
  local p = "lua_" .. v.name .. "_"
  print(string.format("%scpu_us_per_call %.2f", p, cpu / calls * 1e6))
  if u0 and u1 then
    -- ticks are 1/100 s on Linux (USER_HZ), so 1e4 us per tick
    print(string.format("%suser_us_per_call %.2f", p, (u1 - u0) * 1e4 / calls))
    print(string.format("%ssys_us_per_call %.2f", p, (s1 - s0) * 1e4 / calls))
  end
  print(string.format("%swall_us_per_call %.2f", p, wall / calls * 1e6))
  print(string.format("%sclient_requests %d", p, info.requests))
  print(string.format("%sclient_connections %d", p, info.connections))
end

print(string.format("lua_version %s", _VERSION))
print(string.format("rtcadmin_version %s", rtcadmin._VERSION))
print(string.format("calls %d", calls))
print(string.format("warmup %d", warmup))
print(string.format("lua_wall_clock %s", wall_clock_name))
for _, v in ipairs(variants) do measure(v) end
