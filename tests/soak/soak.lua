-- Soak: 100k calls against the emulator in one process — single calls (POST and GET), service errors,
-- bulk calls, and a new client every 1000 calls. After a 10k-call warm-up the resident set may grow by
-- less than 1 MiB and the open file descriptors must not change (the issue's thresholds). Samples are
-- taken between clients, when no connection is open, so the descriptor count is exact.
--   LUA_PATH='tests/lua/?.lua;;' LUA_CPATH='build/?.so;;' lua5.4 tests/soak/soak.lua [CALLS]
local T = require "testlib"

local CALLS = tonumber(arg[1]) or 100000
local WARMUP = CALLS // 10
local MAX_GROWTH_KB = 1024

local function rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local kb = f:read("a"):match("VmRSS:%s+(%d+) kB")
  f:close()
  return tonumber(kb)
end

local function open_fds()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  local p = assert(io.popen("ls /proc/" .. pid .. "/fd"))
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

local emu = T.emulator("--no-qps")
local batch_users = {}
for i = 1, 50 do batch_users[i] = "b" .. i end

local calls, client, samples = 0, nil, {}
local function step()
  if not client then client = T.client(emu, { limiter = "none", retries = 0 }) end
  local k = calls % 20
  if k == 0 then
    local results, summary = client:kick_users(T.APP, "room1", batch_users)
    assert(#results == 50 and summary.succeeded == 50, "batch")
    calls = calls + 50
    return
  elseif k < 3 then
    assert(client:online_users(T.APP, "room1"), "online_users")
  elseif k == 3 then
    local r, err = client:kick_user("000000000000000000000000", "room1", "x")
    assert(r == nil and err.code == "InvalidParameter.NotExistAppId", "expected a service error")
    assert(tostring(err))
  else
    assert(client:kick_user(T.APP, "room1", "u" .. calls % 997))
  end
  calls = calls + 1
end

-- Runs calls until `target`, closing the client after each thousand (and at the end).
local function run_until(target)
  local next_close = (calls // 1000 + 1) * 1000
  while calls < target do
    step()
    if calls >= next_close or calls >= target then
      client:close()
      client = nil
      next_close = (calls // 1000 + 1) * 1000
    end
  end
end

local function sample()
  collectgarbage("collect")
  samples[#samples + 1] = { calls = calls, rss = rss_kb(), fds = open_fds(), lua_kb = collectgarbage("count") }
  local s = samples[#samples]
  print(("%7d calls  rss %6d kB  fds %3d  lua heap %6.0f kB"):format(s.calls, s.rss, s.fds, s.lua_kb))
end

local t0 = T.now()
run_until(WARMUP)
sample()
local base = samples[1]
for i = 2, 10 do
  run_until(WARMUP + (CALLS - WARMUP) * (i - 1) // 9)
  sample()
end
local elapsed = T.now() - t0
emu.stop()

local last = samples[#samples]
local growth = last.rss - base.rss
print(("%d calls in %.1f s (%.0f/s); RSS %d -> %d kB (%+d kB after warm-up); fds %d -> %d"):format(calls, elapsed,
  calls / elapsed, base.rss, last.rss, growth, base.fds, last.fds))
local ok = true
if growth >= MAX_GROWTH_KB then
  print(("FAIL: RSS grew by %d kB after warm-up (limit %d kB)"):format(growth, MAX_GROWTH_KB))
  ok = false
end
for _, s in ipairs(samples) do
  if s.fds ~= base.fds then
    print(("FAIL: %d open fds after %d calls, %d after warm-up"):format(s.fds, s.calls, base.fds))
    ok = false
  end
end
print(ok and "soak: ok" or "soak: FAILED")
os.exit(ok and 0 or 1, true)
