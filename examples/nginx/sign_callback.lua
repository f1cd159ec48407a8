-- Writes a signed RTC event callback body, as RTC would post it, happening now: for trying a receiver
-- (the example in this directory, or your own) without RTC.
--
--   luajit examples/nginx/sign_callback.lua EVENT_TYPE APP_ID ROOM_ID USER_ID [FIELD=VALUE...]
--
-- (after `make luajit`; lua5.4 runs it after `make`).
-- EventData is {"RoomId": ROOM_ID, "UserId": USER_ID} plus the FIELD=VALUE pairs (strings). The
-- secret comes from RTCADMIN_CALLBACK_SECRET. The format and the signature: docs/callbacks.md.
-- From a checkout it uses the checkout's Lua files and build (build/ for Lua 5.4, build/lua-luajit
-- for LuaJIT); installed, the ones on the standard Lua paths.
local script = arg and arg[0] or ""
local root = script:match("^(.*)/examples/nginx/[^/]+$") or (script:match("^examples/nginx/[^/]+$") and ".")
if root then
  package.path = root .. "/lua/?.lua;" .. package.path
  package.cpath = root .. (rawget(_G, "jit") and "/build/lua-luajit" or "/build") .. "/?.so;" .. package.cpath
end
local rtcadmin = require "rtcadmin"
local callback = require "rtcadmin.callback"

local event_type, app_id, room_id, user_id = arg[1], arg[2], arg[3], arg[4]
local secret = os.getenv("RTCADMIN_CALLBACK_SECRET")
if not (event_type and app_id and room_id and user_id) or not secret or secret == "" then
  io.stderr:write("usage: RTCADMIN_CALLBACK_SECRET=... luajit examples/nginx/sign_callback.lua EVENT_TYPE APP_ID " ..
    "ROOM_ID USER_ID [FIELD=VALUE...]\n")
  os.exit(2)
end

local data = { RoomId = room_id, UserId = user_id }
for i = 5, #arg do
  local k, v = arg[i]:match("^([^=]+)=(.*)$")
  if not k then
    io.stderr:write("sign_callback.lua: expected FIELD=VALUE, got ", arg[i], "\n")
    os.exit(2)
  end
  data[k] = v
end

-- An EventId and a 4-character Nonce that differ from run to run (RTC's are random too).
local seed = tonumber(rtcadmin.sha256(tostring({}) .. os.time() .. os.clock()):sub(1, 8), 16)
math.randomseed(seed)
local function random_hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

local fields = {
  EventType = event_type, EventData = rtcadmin.json_encode(data), EventTime = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  EventId = random_hex(32), AppId = app_id, Version = "2020-12-01", Nonce = random_hex(4),
}
fields.Signature = assert(callback.signature(fields, secret))
io.write(rtcadmin.json_encode(fields), "\n")
