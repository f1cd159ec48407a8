-- A recorded multi-room raid for the fleet suites and the benchmark (tests/lua/test_fleet.lua,
-- bench/fleet_bench.lua): deterministic JSON Lines, every room's events in time order, the users of
-- each room its own (per-app offence counts do not cross rooms, so a room's decisions depend on
-- its own events only: see docs/fleet.md).
--   local raid = require "fleet_raid"
--   local rooms = raid.rooms(60, app)  -- {room_id = {line, ...}, ...} and the ordered room list
local cjson = require "cjson"

local M = {}

local BASE = 1764064800

-- One room's events: a join wave, chat floods (twice for some: the ladder), loud audio, reports,
-- and ordinary chat in between. About 90 events.
local function room_events(app, room, r, out)
  local t, n = BASE + r * 7, 0
  local function ev(typ, user, extra)
    n = n + 1
    local e = { id = room .. "-" .. n, ts = t, type = typ, app_id = app, room_id = room, user_id = user }
    for k, v in pairs(extra or {}) do e[k] = v end
    out[#out + 1] = cjson.encode(e)
  end
  local function u(k) return room .. "_u" .. k end
  ev("join", "alice", { role = "host" })
  for k = 1, 20 do
    t = t + 0.3
    ev("join", u(k))
  end
  for round = 1, 2 do
    for k = 1, 3 + (r % 3) do
      for m = 1, 7 do
        t = t + 0.1
        ev("chat", u(k), { text = "spam " .. m })
      end
    end
    t = t + 40 + round
  end
  for k = 6, 8 do
    for _ = 1, 3 do
      t = t + 1
      ev("stream", u(k), { kind = "audio", loud = true })
    end
  end
  for k = 9, 12 do
    t = t + 2
    ev("report", u(13), { reporter = u(k) })
  end
  for k = 14, 20 do
    t = t + 3
    ev("chat", u(k), { text = "hello" })
  end
  return out
end

-- `count` rooms of `app`: lines by room and the room ids in order.
function M.rooms(count, app)
  local by, order = {}, {}
  for r = 1, count do
    local room = string.format("room%03d", r)
    order[r] = room
    by[room] = room_events(app, room, r, {})
  end
  return by, order
end

-- All lines of the given rooms, each room's in order (rooms one after another).
function M.lines(by, rooms)
  local out = {}
  for _, room in ipairs(rooms) do
    for _, l in ipairs(by[room]) do out[#out + 1] = l end
  end
  return out
end

return M
