-- The RTC event callback receiver (the format: docs/callbacks.md): signature check, envelope and
-- EventData decoding into a policy event, and an nginx content handler that refuses events outside a
-- time window, dedupes by EventId, answers at once, hands the event on from a timer and counts outcomes.
local rtcadmin = require "rtcadmin"
local cjson = require "cjson.safe"
local quote = require("rtcadmin.logtext").quote

local M = {}

-- The envelope fields whose received values are signed (with the secret), and the rest. "Nonce"
-- stands for the nonce under either of its documented names (see M.nonce).
M.SIGNED = { "EventType", "EventData", "EventTime", "EventId", "AppId", "Version", "Nonce" }
local ENVELOPE = { "EventType", "EventData", "EventTime", "EventId", "AppId", "Version", "Nonce", "Signature" }

-- The nonce: the vendor's 2024 docs call the field `Nonce`, the 2023 ones (and BytePlus) `Noce`
-- (docs/callbacks.md). Either is accepted; a body with both is refused, as it is not known which one
-- was signed.
function M.nonce(fields)
  local v = fields.Nonce
  if v == nil then
    v = fields.Noce
  elseif fields.Noce ~= nil then
    return nil, "both Nonce and Noce are present"
  end
  if type(v) ~= "string" then return nil, "field Nonce (or Noce) is missing or not a string" end
  return v
end

-- An envelope field's value (a string), or nil, reason. The reasons never quote the input.
local function field(fields, k)
  if k == "Nonce" then return M.nonce(fields) end
  local v = fields[k]
  if type(v) ~= "string" then return nil, "field " .. k .. " is missing or not a string" end
  return v
end

-- Byte order whatever the C locale says (Lua's string < follows strcoll).
local function bytewise_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local MAX_TTL = 31536000 -- a year, in seconds: how long the callback handler may remember an EventId

local function check_secret(fname, secret)
  if type(secret) ~= "string" or secret == "" then
    error("rtcadmin.callback." .. fname .. ": the callback secret must be a non-empty string", 3)
  end
end

-- The expected Signature: SHA-256 hex of the sorted values (the secret among them), concatenated.
function M.signature(fields, secret)
  check_secret("signature", secret)
  if type(fields) ~= "table" then error("rtcadmin.callback.signature: fields must be a table", 2) end
  local values = { secret }
  for _, k in ipairs(M.SIGNED) do
    local v, err = field(fields, k)
    if not v then return nil, err end
    values[#values + 1] = v
  end
  table.sort(values, bytewise_less)
  return rtcadmin.sha256(table.concat(values))
end

-- Whether fields.Signature is right for these fields and this secret (constant-time compare).
function M.verify(fields, secret)
  check_secret("verify", secret)
  if type(fields) ~= "table" then error("rtcadmin.callback.verify: fields must be a table", 2) end
  local expected, err = M.signature(fields, secret)
  if not expected then return false, err end
  local got = fields.Signature
  if type(got) ~= "string" then return false, "field Signature is missing or not a string" end
  if not rtcadmin.secure_equal(expected, got:lower()) then return false, "signature does not match" end
  return true
end

-- The callback body -> its envelope fields (the eight are strings; the nonce under Nonce or Noce), or
-- nil, reason.
function M.decode(body)
  if type(body) ~= "string" then return nil, "no body" end
  local doc = cjson.decode(body)
  if type(doc) ~= "table" then return nil, "body is not a JSON object" end
  for _, k in ipairs(ENVELOPE) do
    local _, err = field(doc, k)
    if err then return nil, err end
  end
  return doc
end

-- Days since 1970-01-01 of a proleptic Gregorian date (civil calendar, no time zone involved).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- ISO-8601 "2024-01-01T00:00:00Z" (fraction and offset allowed) -> Unix seconds, or nil.
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  local frac, zone = rest:match("^(%.%d+)(.*)$")
  if not frac then frac, zone = "", rest end
  local offset = 0
  if zone ~= "Z" and zone ~= "z" and zone ~= "" then
    local sign, oh, om = zone:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600 +
    tonumber(mi) * 60 + tonumber(sec) - offset
  return t + (frac ~= "" and tonumber("0" .. frac) or 0)
end

-- Envelope fields -> policy event {type, app_id, room_id, user_id, ts, id, time, version, data}, or
-- nil, reason. room_id and user_id come from EventData's RoomId and UserId when it has them.
function M.event(fields)
  local data = cjson.decode(fields.EventData)
  if type(data) ~= "table" then return nil, "EventData is not a JSON object" end
  local ts = M.parse_time(fields.EventTime)
  if not ts then return nil, "EventTime is not an ISO-8601 time" end
  return {
    type = fields.EventType, app_id = fields.AppId, id = fields.EventId, ts = ts, time = fields.EventTime,
    version = fields.Version, room_id = data.RoomId, user_id = data.UserId, data = data,
  }
end

-- RTC's EventType -> the event type rules watch, as the handler maps it by default (docs/callbacks.md
-- lists RTC's types): a user joining or leaving a room is a join or a leave whether others see the
-- user or not. Other types keep their EventType.
M.EVENT_TYPES = {
  UserJoinRoom = "join", InvisibleUserJoinRoom = "join",
  UserLeaveRoom = "leave", InvisibleUserLeaveRoom = "leave",
}

-- "From=to,From2=to2" -> {From = "to", ...} ("" maps nothing): the form an environment variable
-- gives a mapping in (the nginx example's RTCADMIN_EVENT_TYPES).
function M.parse_event_types(spec)
  if type(spec) ~= "string" then error("rtcadmin.callback.parse_event_types: expects a string", 2) end
  local map = {}
  for item in spec:gmatch("[^,]+") do
    local from, to = item:match("^%s*([^=%s]+)%s*=%s*([^=%s]+)%s*$")
    if not from then
      error("rtcadmin.callback.parse_event_types: '" .. item .. "' is not EventType=type", 2)
    end
    map[from] = to
  end
  return map
end

-- The callback body -> policy event, or nil, reason (no signature check: see verify).
function M.parse(body)
  local fields, err = M.decode(body)
  if not fields then return nil, err end
  return M.event(fields)
end

-- Whether an event time (Unix seconds) lies in the window [now - max_age, now + max_skew], edges
-- included: true, or false, reason.
function M.fresh(ts, now, max_age, max_skew)
  local age = now - ts
  if age > max_age then return false, string.format("EventTime is %.1f s old (max_age %g)", age, max_age) end
  if -age > max_skew then return false, string.format("EventTime is %.1f s ahead (max_skew %g)", -age, max_skew) end
  return true
end

-- What the handler counts, one per request it answers (the names a metrics exporter uses as status).
M.STATUSES = { "accepted", "duplicate", "bad_signature", "stale", "malformed", "error" }
-- Counter keys in the shared dict; the dedupe keys are "rtcadmin.callback:" .. EventId, so no EventId
-- can name a counter.
local COUNTER = "rtcadmin.callback#"

-- The handler's counters in a lua_shared_dict (its name, or the dict): {accepted = n, ...}, every
-- name of M.STATUSES present.
function M.stats(dict)
  if type(dict) == "string" and ngx then dict = ngx.shared[dict] end
  if type(dict) ~= "table" then error("rtcadmin.callback.stats: dict must name a lua_shared_dict", 2) end
  local out = {}
  for _, status in ipairs(M.STATUSES) do out[status] = dict:get(COUNTER .. status) or 0 end
  return out
end

local function number_option(opts, name, default, min)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or not (v >= min and v <= MAX_TTL) then
    error(string.format("rtcadmin.callback.handler: %s must be a number from %g to %d (seconds)", name, min,
      MAX_TTL), 3)
  end
  return v
end

-- An nginx content handler: POST only. In order: 405 for another method and 413 for a body over
-- max_body, 400 for a malformed body, 401 for a bad signature, 400 for an EventData or EventTime that
-- does not decode, 403 for an EventTime more than `max_age` seconds old or `max_skew` seconds ahead
-- of this host's clock, 200 for a duplicate EventId (seen within `ttl` seconds by any worker, through
-- lua_shared_dict `dict`), otherwise 200 at once and on_event(ev) from a zero-delay timer (it may
-- sleep and call the API; RTC wants its answer within 5 s), or, with `store`, 200 once store(ev) has
-- kept it (503 when it cannot). ev.type is mapped through `event_types` (default M.EVENT_TYPES;
-- false keeps RTC's names); ev.rtc_type is always RTC's EventType. A handoff that cannot be scheduled
-- answers 500, so RTC retries. Every answer is counted in `dict` (M.stats). Request text reaches
-- the log only through quote (rtcadmin.logtext).
function M.handler(opts)
  if type(opts) ~= "table" then error("rtcadmin.callback.handler: expects a table {secret, on_event, dict}", 2) end
  check_secret("handler", opts.secret)
  if opts.queue ~= nil then
    -- The fleet's log (docs/fleet.md): answered 200 once Redis has the event (rtcadmin.fleet).
    if opts.store ~= nil or opts.on_event ~= nil then
      error("rtcadmin.callback.handler: give one of queue, store and on_event", 2)
    end
    if type(opts.queue) ~= "string" then error("rtcadmin.callback.handler: queue must be a redis:// URL", 2) end
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    copy.store = require("rtcadmin.fleet").queue_store(opts.queue, opts.queue_options)
    copy.queue, copy.queue_options = nil, nil
    opts = copy
  end
  if (opts.on_event == nil) == (opts.store == nil) then
    error("rtcadmin.callback.handler: give on_event (a function run from a timer) or store (a function that keeps "
      .. "the event before the answer), not both", 2)
  end
  if opts.on_event ~= nil and type(opts.on_event) ~= "function" then
    error("rtcadmin.callback.handler: on_event must be a function", 2)
  end
  if opts.store ~= nil and type(opts.store) ~= "function" then
    error("rtcadmin.callback.handler: store must be a function", 2)
  end
  local event_types = opts.event_types
  if event_types == nil then event_types = M.EVENT_TYPES end
  if event_types == false then event_types = {} end
  if type(event_types) ~= "table" then
    error("rtcadmin.callback.handler: event_types must be a table {EventType = type} or false", 2)
  end
  for from, to in pairs(event_types) do
    if type(from) ~= "string" or type(to) ~= "string" then
      error("rtcadmin.callback.handler: event_types maps EventType strings to type strings", 2)
    end
  end
  local max_age = number_option(opts, "max_age", 300, 1)
  local max_skew = number_option(opts, "max_skew", 60, 0)
  -- A dedupe entry must outlive its event's window: an event accepted max_skew ahead of the clock
  -- stays fresh for max_age + max_skew seconds after it was accepted.
  local ttl = number_option(opts, "ttl", max_age + max_skew, 1)
  if ttl < max_age + max_skew then
    error(string.format("rtcadmin.callback.handler: ttl (%g) must be at least max_age + max_skew (%g), or a " ..
      "replayed event could be accepted again", ttl, max_age + max_skew), 2)
  end
  local ngx = ngx
  local dict = ngx.shared[opts.dict or ""]
  if not dict then error("rtcadmin.callback.handler: dict must name a lua_shared_dict", 2) end
  local secret, on_event, store = opts.secret, opts.on_event, opts.store
  local max_body = opts.max_body or 65536

  -- Answers, counting the request under `outcome` (one of M.STATUSES).
  local function reply(outcome, status, message)
    dict:incr(COUNTER .. outcome, 1, 0)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(rtcadmin.json_encode { ok = status == 200, message = message })
    return ngx.exit(status)
  end

  local function deliver(premature, ev)
    if premature then return end
    local ok, err = pcall(on_event, ev)
    if not ok then
      ngx.log(ngx.ERR, "rtcadmin.callback: on_event failed for event ", quote(ev.id), ": ", quote(tostring(err), 512))
    end
  end

  return function()
    if ngx.req.get_method() ~= "POST" then return reply("malformed", 405, "POST only") end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body and ngx.req.get_body_file() then return reply("malformed", 413, "body over client_body_buffer_size") end
    if body and #body > max_body then return reply("malformed", 413, "body too large") end
    local fields, err = M.decode(body)
    if not fields then
      ngx.log(ngx.WARN, "rtcadmin.callback: malformed callback: ", err)
      return reply("malformed", 400, err)
    end
    local ok
    ok, err = M.verify(fields, secret)
    if not ok then
      ngx.log(ngx.WARN, "rtcadmin.callback: rejected event ", quote(fields.EventId), ": ", err)
      return reply("bad_signature", 401, "bad signature")
    end
    local ev
    ev, err = M.event(fields)
    if not ev then
      ngx.log(ngx.WARN, "rtcadmin.callback: malformed event ", quote(fields.EventId), ": ", err)
      return reply("malformed", 400, err)
    end
    ev.rtc_type = ev.type
    ev.type = event_types[ev.type] or ev.type
    ok, err = M.fresh(ev.ts, ngx.now(), max_age, max_skew)
    if not ok then
      ngx.log(ngx.WARN, "rtcadmin.callback: stale event ", quote(ev.id), " EventTime ", quote(ev.time), ": ", err)
      return reply("stale", 403, "EventTime outside the accepted window")
    end
    local key = "rtcadmin.callback:" .. ev.id
    local added, derr = dict:add(key, true, ttl)
    if not added then
      if derr == "exists" then
        ngx.log(ngx.INFO, "rtcadmin.callback: duplicate delivery of event ", quote(ev.id))
        return reply("duplicate", 200, "duplicate")
      end
      ngx.log(ngx.ERR, "rtcadmin.callback: dedupe store failed: ", derr)
      return reply("error", 500, "dedupe store failed")
    end
    if store then
      -- Kept where no worker's crash or exit can lose it before the answer; else RTC delivers again.
      local stored, serr = store(ev)
      if not stored then
        dict:delete(key)
        ngx.log(ngx.ERR, "rtcadmin.callback: cannot store event ", quote(ev.id), ": ", quote(tostring(serr), 256))
        return reply("error", 503, "cannot store the event")
      end
    else
      local scheduled, terr = ngx.timer.at(0, deliver, ev)
      if not scheduled then
        dict:delete(key)
        ngx.log(ngx.ERR, "rtcadmin.callback: cannot hand off event ", quote(ev.id), ": ", terr)
        return reply("error", 500, "busy")
      end
    end
    ngx.log(ngx.INFO, "rtcadmin.callback: accepted event ", quote(ev.id), " ", quote(ev.type))
    return reply("accepted", 200, "accepted")
  end
end

return M
