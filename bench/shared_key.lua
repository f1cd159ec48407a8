-- Benchmark 4: four independent processes share one access key through the host limiter.
-- Reports the aggregate rate the emulator saw in every 1 s window (max over sliding windows,
-- mean over the whole run).
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;' lua5.4 bench/shared_key.lua
local T = require "testlib"

local PER_PROCESS = tonumber(arg[1]) or 150
local emu = T.emulator()
local dir = T.tmpdir()
local code = T.kicker(emu, string.format("{backend = 'host', dir = %q}", dir), PER_PROCESS)
for i, out in ipairs(T.spawn({ code, code, code, code }).wait()) do io.write("process ", i, ": ", out) end
T.rmdir(dir)

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
