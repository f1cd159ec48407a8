-- Benchmark 3: 600 kicks against the emulator with 150 ms latency and strict 60/s enforcement.
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;' lua5.4 bench/bulk_kick.lua
local T = require "testlib"
local cjson = require "cjson"

local N, SEQUENTIAL = tonumber(arg[1]) or 600, tonumber(arg[2]) or 60
local emu = T.emulator("--latency-ms 150")
local client = T.client(emu)

local users = {}
for i = 1, N do users[i] = "raider" .. i end
local _, summary = client:kick_users(T.APP, "room1", users)
local throttled = 0
for _, r in ipairs(emu.control("GET", "/_emulator/requests?action=KickUser").requests) do
  if r.code ~= cjson.null then throttled = throttled + 1 end
end
local ideal = N / 60
print(string.format("bulk: %d kicks in %.2f s (ideal %.2f s, %+.1f%%), %d ok, %d failed, %d throttled",
  N, summary.elapsed, ideal, (summary.elapsed / ideal - 1) * 100, summary.succeeded, summary.failed, throttled))

local has_socket, socket = pcall(require, "socket") -- lua-socket, for a sub-second clock
local now = has_socket and socket.gettime or os.time
local t0 = now()
for i = 1, SEQUENTIAL do assert(client:kick_user(T.APP, "room1", "seq" .. i)) end
local seq = now() - t0
print(string.format("sequential: %d kicks one at a time in %.2f s (%.0f ms each; %d would take %.0f s)",
  SEQUENTIAL, seq, seq / SEQUENTIAL * 1000, N, seq / SEQUENTIAL * N))
client:close()
emu.stop()
