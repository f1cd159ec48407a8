-- Benchmark 4: four independent processes share one access key through the host limiter.
-- Reports the aggregate rate the emulator saw in every 1 s window (max over sliding windows,
-- mean over the whole run).
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;' lua5.4 bench/shared_key.lua
local T = require "testlib"

local PER_PROCESS = tonumber(arg[1]) or 150
local emu = T.emulator()
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. T.shell_quote(dir)))

local code = string.format([[
  local c = require("rtcadmin").client{access_key = %q, secret_key = %q, endpoint = %q,
                                       limiter = {backend = "host", dir = %q}}
  local users = {}
  for i = 1, %d do users[i] = "p" .. i end
  local _, s = c:kick_users(%q, "room1", users)
  print(s.succeeded, s.failed)
]], T.AK, T.SK, emu.url, dir, PER_PROCESS, T.APP)
local lua = arg[-1] or "lua5.4"
local procs = {}
for i = 1, 4 do procs[i] = assert(io.popen(T.shell_quote(lua) .. " -e " .. T.shell_quote(code))) end
for i = 1, 4 do io.write("process ", i, ": ", procs[i]:read("a")) procs[i]:close() end
os.execute("rm -rf " .. T.shell_quote(dir))

local reqs, t, throttled = emu.control("GET", "/_emulator/requests?action=KickUser").requests, {}, 0
for _, r in ipairs(reqs) do
  t[#t + 1] = r.t
  if r.status ~= 200 then throttled = throttled + 1 end
end
table.sort(t)
local max = T.max_in_any_second(reqs)
local span = t[#t] - t[1]
print(string.format("%d requests over %.2f s: max %d in any 1 s window, mean %.1f/s, %d throttled",
  #t, span, max, (#t - 1) / span, throttled))
emu.stop()
