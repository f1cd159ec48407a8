-- The callback receiver with `queue` (docs/fleet.md) in a real nginx (LuaJIT build): a callback is
-- answered 200 only once its XADD succeeded; with Redis down it is answered 503 and logged, and
-- nothing is in the log that was not answered 200; an engine (`rtcadmin run --from`) decides every
-- callback answered 200.
local T = require "testlib"
local cjson = require "cjson"
local callback = require "rtcadmin.callback"
local rtcadmin = require "rtcadmin"

local APP = T.APP
local CB_SECRET = "CallbackSecret-43"
local PASSWORD = "FleetNginxPw"
local redis = T.redis(PASSWORD)
local URL = "redis://:" .. PASSWORD .. "@127.0.0.1:" .. redis.port
local dir = T.tmpdir()
local q = T.shell_quote
local LUA = arg and arg[-1] or "luajit"

local ng = T.nginx {
  workers = 2,
  lua_files = { ["fleetapp.lua"] = string.format([[
local M = {}
M.callback = require("rtcadmin.callback").handler {
  secret = %q, dict = "rtcadmin_events", queue = %q, queue_options = { timeout = 0.5 },
}
return M
]], CB_SECRET, URL) },
  http = [[
  lua_shared_dict rtcadmin_events 1m;
  init_by_lua_block { require "fleetapp" }
  server {
    listen 127.0.0.1:PORT;
    location = /callback { content_by_lua_block { require("fleetapp").callback() } }
  }
]],
}

local n_events = 0
local function event_fields(room, user)
  n_events = n_events + 1
  local fields = {
    EventType = "UserJoinRoom", EventData = cjson.encode { RoomId = room, UserId = user },
    EventTime = os.date("!%Y-%m-%dT%H:%M:%SZ"), EventId = "fleet-evt-" .. os.time() .. "-" .. n_events,
    AppId = APP, Version = "2020-12-01", Nonce = "n0n3",
  }
  fields.Signature = callback.signature(fields, CB_SECRET)
  return fields
end

local function post(fields)
  return T.http("POST", ng.url .. "/callback", cjson.encode(fields), { "Content-Type: application/json" })
end

local conn = assert(rtcadmin.redis(URL))

-- Every event in the log: EventId -> the event as stored.
local function logged()
  local out = {}
  for i = 0, 15 do
    for _, en in ipairs(conn:call("XRANGE", "rtcadmin:fleet:s:" .. i, "-", "+") or {}) do
      local ev = cjson.decode(en[2][2])
      T.eq(rtcadmin.shard(ev.app_id, ev.room_id, 16), i, "in its room's shard")
      out[ev.id] = ev
    end
  end
  return out
end

local answered = {} -- EventId -> room|user of every callback answered 200

T.case("queue: 200 only once the event is in its shard's stream", function()
  for i = 1, 30 do
    local f = event_fields("room" .. (i % 5), "user" .. i)
    local status, body = post(f)
    T.eq(status, 200, tostring(body))
    answered[f.EventId] = "room" .. (i % 5) .. "|user" .. i
  end
  local got = logged()
  for id, who in pairs(answered) do
    T.ok(got[id], "event " .. id .. " is in the log")
    T.eq(got[id].room_id .. "|" .. got[id].user_id, who)
    T.eq(got[id].type, "join", "RTC's UserJoinRoom is a join (callback.EVENT_TYPES)")
    T.eq(got[id].rtc_type, "UserJoinRoom")
    T.eq(got[id].app_id, APP)
  end
  T.eq(conn:call("GET", "rtcadmin:fleet:shards"), "16")
end)

T.case("queue: Redis down -> 503 and a log line, nothing stored; back -> the same delivery is taken", function()
  local before = logged()
  redis.kill()
  local failed = {}
  for i = 1, 5 do
    local f = event_fields("room9", "late" .. i)
    local status = post(f)
    T.eq(status, 503, "Redis down")
    failed[#failed + 1] = f
  end
  T.match(ng.log(), "cannot store event \"fleet%-evt%-[%d%-]+\": \"Redis at 127%.0%.0%.1:%d+/0: cannot connect")
  T.no_match(ng.log(), PASSWORD)
  redis.start() -- (no persistence in this suite: an empty Redis)
  conn:close()
  conn = assert(rtcadmin.redis(URL))
  T.same(logged(), {}, "nothing answered 503 reached the log")
  -- RTC delivers again: the same EventIds are now taken.
  for _, f in ipairs(failed) do
    T.eq((post(f)), 200, "redelivered")
    answered[f.EventId] = "room9|" .. cjson.decode(f.EventData).UserId
  end
  local got = logged()
  for _, f in ipairs(failed) do T.ok(got[f.EventId], "redelivery stored") end
  -- The events of the first case went with the old Redis; send them again for the engine case.
  for id in pairs(before) do answered[id] = nil end
  for i = 1, 10 do
    local f = event_fields("room" .. (i % 3), "again" .. i)
    T.eq((post(f)), 200)
    answered[f.EventId] = "room" .. (i % 3) .. "|again" .. i
  end
end)

T.case("an engine decides every callback answered 200, and acknowledges it", function()
  local rules = T.write_file(dir .. "/joins.lua",
    'rule "no-joins" { on = "join", when = function() return true end, action = kick }\n')
  local p = assert(io.popen("RTCADMIN_BUILD=" .. q(T.module_dir()) .. " " .. T.plain_env .. q(LUA) .. " "
    .. q(T.source_dir .. "/bin/rtcadmin") .. " run " .. q(rules) .. " --from " .. q(URL)
    .. " --dry-run --json --idle 2 2>" .. q(dir .. "/engine.err") .. "; echo __exit=$?"))
  local out = p:read("*a")
  p:close()
  T.match(out, "__exit=0", T.read_file(dir .. "/engine.err"))
  local decided, n = {}, 0
  for line in out:gmatch("[^\n]+") do
    local ok, d = pcall(cjson.decode, line)
    if ok and type(d) == "table" and d.kind == "decision" then
      decided[d.event_id] = d.room_id .. "|" .. d.user_id
      n = n + 1
    end
  end
  T.same(decided, answered)
  local want = 0
  for _ in pairs(answered) do want = want + 1 end
  T.eq(n, want, "one decision per callback")
  for i = 0, 15 do
    local pending = conn:call("XPENDING", "rtcadmin:fleet:s:" .. i, "engines")
    T.eq(pending[1], 0, "nothing pending on shard " .. i)
  end
end)

T.run(function()
  ng.stop()
  conn:close()
  redis.stop()
  T.rmdir(dir)
end)
