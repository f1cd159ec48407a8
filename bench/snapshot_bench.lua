-- Snapshot and restore of a policy engine holding many users' state: engine:snapshot() and
-- engine:restore(s) into a fresh engine with the same rules, the best of `reps` runs each, and the
-- snapshot's size. The engine runs examples/rules (raid defence: room-wide join counts, chat
-- counters, distinct reporters, escalation, cooldowns) in dry-run over `users` users in 50 rooms,
-- about five events each (joins, chat bursts, reports, loud streams) over 200 s of event time,
-- so every user has a record with counters and most have offences and cooldowns. From the
-- repository root:
--
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;;' lua5.4 bench/snapshot_bench.lua [users=100000] [reps=5]
--   LUA_CPATH='build/lua-luajit/?.so;;' LUA_PATH='lua/?.lua;;' luajit bench/snapshot_bench.lua
local policy = require "rtcadmin.policy"

local USERS = tonumber(arg[1]) or 100000
local REPS = tonumber(arg[2]) or 5
local clock = os.clock

local function engine()
  local e = policy.new { dry_run = true, now = function() return 1764064800 end }
  for _, f in ipairs({ "examples/rules/00-allow.lua", "examples/rules/raid.lua" }) do assert(e:load(f)) end
  return e
end

local seed = 4242
local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end

local e = engine()
local APP, T0 = "661e2ebb5ffd4b0e8d3f6b1d", 1764064800
local batch, n = {}, 0
local function emit(ev)
  n = n + 1
  ev.id, ev.app_id = "ev-" .. n, APP
  batch[#batch + 1] = ev
  if #batch == 1000 then e:process_batch(batch); batch = {} end
end
-- Users arrive over 200 s; each joins, some chat in bursts, some report others, some stream loudly.
for u = 1, USERS do
  local ts = T0 + u * 200 / USERS
  local room, user = "room" .. (u % 50), "user" .. u
  emit { type = "join", ts = ts, room_id = room, user_id = user }
  for k = 1, rand(6) do emit { type = "chat", ts = ts + k * 0.5, room_id = room, user_id = user } end
  if rand(4) == 1 then
    emit { type = "report", ts = ts + 1, room_id = room, user_id = "user" .. math.max(1, u - rand(20)),
           reporter = user }
  end
  if rand(8) == 1 then
    emit { type = "stream", ts = ts + 2, room_id = room, user_id = user, kind = "audio", loud = true }
  end
end
e:process_batch(batch)
local st = e:stats()

local best_snap, best_restore, s = math.huge, math.huge, nil
for _ = 1, REPS do
  collectgarbage()
  local t = clock()
  s = e:snapshot()
  best_snap = math.min(best_snap, clock() - t)
  local fresh = engine()
  collectgarbage()
  t = clock()
  assert(fresh:restore(s))
  best_restore = math.min(best_restore, clock() - t)
  assert(fresh:stats().keys == st.keys)
end
collectgarbage()
print(string.format("%s: %d users, %d events, %d records, %d decisions, %d distinct offenders",
  rawget(_G, "jit") and jit.version or _VERSION, USERS, st.events, st.keys, st.decisions,
  (function() local c = 0 for _ in pairs(e.offenders[APP].map) do c = c + 1 end return c end)()))
print(string.format("snapshot_ms %.1f", best_snap * 1000))
print(string.format("restore_ms %.1f", best_restore * 1000))
print(string.format("snapshot_bytes %d (%.1f per record)", #s, #s / st.keys))
