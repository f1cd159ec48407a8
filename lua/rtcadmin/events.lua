-- Events as the policy engine takes them: what makes one invalid (each reason names the field and
-- is only ever worked out for an event that is refused), and the clock of the records made about
-- them. See docs/policy.md ("Events").
local sandbox = require "rtcadmin.sandbox"

local events = {}

local type, tostring = type, tostring
local string_format, string_find, string_sub = string.format, string.find, string.sub

local core
do
  local ok, m = pcall(require, "rtcadmin")
  core = ok and type(m) == "table" and m.LIMITS and m or nil
end

-- The wall clock to the microsecond, from the C module when it is there (os.time without it).
local wall_clock = core and core.time or os.time
events.wall_clock = wall_clock

-- What the API takes (the ID rules, the ban and mute ranges): the C module's, which checks every
-- call against them (rtcadmin.valid_id, rtcadmin.LIMITS; src/actions.c). The Lua files alone (the
-- sandbox's check without the C module) have only this copy, which test_policy holds to the C
-- module's.
events.lua_only_api = {
  LIMITS = { ban = { min = 10, max = 604800, zero = false }, mute = { min = 60, max = 259200, zero = true },
             id_max = 128 },
  valid_id = function(s)
    return type(s) == "string" and #s >= 1 and #s <= 128 and not string.find(s, "[^A-Za-z0-9@._-]")
  end,
  valid_app_id = function(s)
    return type(s) == "string" and #s >= 1 and #s <= 128 and not string.find(s, "[^\33-\126]")
  end,
}
events.api = core or events.lua_only_api
local ID_LEN_MAX = events.api.LIMITS.id_max

-- Event fields: `ts` in seconds since 1970 within [0, TS_MAX) (a value in [TS_MS_LO, TS_MS_HI) is
-- taken for milliseconds and refused with that hint); an `id` a string of 1..ID_MAX bytes or a
-- whole number; event types (and field names counted by distinct) 1..TYPE_MAX bytes.
events.TS_MAX, events.ID_MAX, events.TYPE_MAX = 1e10, 256, 64
local TS_MAX, ID_MAX, TS_MS_LO, TS_MS_HI = events.TS_MAX, events.ID_MAX, 1e11, 1e14

local valid_id, valid_app = events.api.valid_id, events.api.valid_app_id

-- A value from an event for a message: a string quoted (cut at 40 bytes, bytes outside printable
-- ASCII as \ddd), anything else with its type.
local function shown(v)
  if type(v) == "string" then
    local cut = #v > 40 and string_sub(v, 1, 40) .. "..." or v
    return '"' .. cut:gsub('["\\]', "\\%0"):gsub("[^ -~]", function(c) return "\\" .. string.byte(c) end) .. '"'
  end
  if type(v) == "number" or type(v) == "boolean" then return type(v) .. " " .. tostring(v) end
  return "a " .. type(v)
end

-- What is wrong with field `f` of an event (one of type, app_id, room_id, user_id), nil if nothing:
-- the reasons engine:process gives for an invalid event, only ever computed on that path.
local ID_CHARS = "A-Z a-z 0-9 @ . _ -"
local function field_problem(ev, f)
  local v = ev[f]
  if v == nil then
    local near = sandbox.nearest(f, ev)
    return "missing " .. f .. (near and (" (the event has '" .. near .. "')") or "")
  end
  if type(v) ~= "string" then return f .. " must be a string, got " .. shown(v) end
  if f == "type" then return nil end -- (a type no rule watches is ignored, whatever it is)
  if #v == 0 then return f .. " is empty" end
  if #v > ID_LEN_MAX then return string_format("%s is %d bytes long: at most %d", f, #v, ID_LEN_MAX) end
  local bad = f == "app_id" and string_find(v, "[^\33-\126]") or f ~= "app_id" and string_find(v, "[^A-Za-z0-9@._-]")
  if bad then
    return string_format("%s %s has a character outside %s (%s at byte %d)", f, shown(v),
      f == "app_id" and "printable ASCII without spaces" or ID_CHARS, shown(string_sub(v, bad, bad)), bad)
  end
end

-- Why an event's type, app_id, room_id and user_id cannot be taken (the first that is wrong).
local function ids_problem(ev)
  return field_problem(ev, "type") or field_problem(ev, "app_id") or field_problem(ev, "room_id")
    or field_problem(ev, "user_id") or "invalid event"
end

-- What is wrong with an event's ts (nil when nothing is).
local function ts_problem(ts)
  if type(ts) ~= "number" or ts ~= ts then return "event ts must be a number (seconds since 1970)" end
  if ts >= TS_MS_LO and ts < TS_MS_HI then
    return string_format("event ts %.0f looks like milliseconds: expected seconds since 1970 (divide by 1000)", ts)
  end
  if ts < 0 or ts >= TS_MAX then
    return string_format("event ts %.10g is out of range: expected seconds since 1970, 0 <= ts < %.0f", ts, TS_MAX)
  end
end

-- What is wrong with an event's id (nil when nothing is).
local function id_problem(id)
  local t = type(id)
  if t == "string" then
    if #id == 0 or #id > ID_MAX then return string_format("event id must be 1-%d bytes, got %d", ID_MAX, #id) end
    return nil
  end
  if t == "number" then
    if id % 1 ~= 0 then return "event id must be a whole number (or a string), got " .. tostring(id) end
    return nil
  end
  return "event id must be a string or a whole number, got a " .. t
end

events.valid_id, events.valid_app = valid_id, valid_app
events.ids_problem, events.ts_problem, events.id_problem = ids_problem, ts_problem, id_problem
events.field_problem = field_problem

-- ISO 8601 UTC with milliseconds.
function events.iso_time(t)
  local whole = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. string_format(".%03dZ", math.floor((t - whole) * 1000))
end

return events
