-- rtcadmin.callback outside nginx: the signature (docs/callbacks.md), envelope and event decoding,
-- and the helpers behind them (rtcadmin.sha256, rtcadmin.secure_equal); the quoting of request text
-- for log lines (rtcadmin.logtext).
local T = require "testlib"
local rtcadmin = require "rtcadmin"
local callback = require "rtcadmin.callback"
local quote = require("rtcadmin.logtext").quote
local cjson = require "cjson"

-- A synthetic example of the documented algorithm (values sorted, concatenated with the secret,
-- SHA-256), computed independently of this module when the format was researched.
local function example()
  return {
    EventType = "RecordStarted", EventData = '{"RoomId":"Room1","UserId":"User1"}',
    EventTime = "2024-01-01T00:00:00Z", EventId = "evt0001", AppId = "661e00000000543cf",
    Version = "2020-12-01", Nonce = "a1b2",
    Signature = "53f8a95bb1f97f446fd7ffed71841ff8fd773488d62c5cd55b438f2bc5e4117a",
  }
end
local SECRET = "MySecretKey"

T.case("the synthetic example vector verifies", function()
  T.eq(callback.signature(example(), SECRET), example().Signature, "signature")
  T.eq(callback.verify(example(), SECRET), true, "verify")
end)

T.case("the worked example of docs/callbacks.md: its body, sorted values, concatenation and signature", function()
  local doc = assert(T.read_file(T.source_dir .. "/docs/callbacks.md"))
  local section = assert(doc:match("\n### A worked example\n(.-)\n## "), "the section")
  local secret = assert(section:match("callback secret `([^`]+)`"), "the secret")
  local fields = cjson.decode((assert(section:match("```json\n(.-)```"), "the body")))
  local payload = assert(section:match("```text\n(.-)\n```"), "the concatenation")
  local values = {}
  for v in section:gmatch("\n| %d | `([^\n]-)` | ") do values[#values + 1] = v end
  T.eq(#values, 8, "the sorted values")
  local want = { secret }
  for _, k in ipairs(callback.SIGNED) do want[#want + 1] = fields[k] end
  table.sort(want)
  T.same(values, want, "sorted as the table shows")
  T.eq(table.concat(values), payload, "the concatenation shown")
  T.eq(rtcadmin.sha256(payload), fields.Signature, "its SHA-256 is the body's Signature")
  T.eq(callback.signature(fields, secret), fields.Signature, "signature")
  T.eq(callback.verify(fields, secret), true, "verify")
  T.match(section, "give `" .. fields.Signature .. "`", "the hex in the text")
  fields.Noce, fields.Nonce = fields.Nonce, nil
  T.eq(callback.verify(fields, secret), true, "the same body with Noce")
  local ev = assert(callback.event(fields))
  T.eq(ev.type, "UserJoinRoom", "type")
  T.eq(ev.user_id, "raid_01", "user")
end)

T.case("RTC's event types map to rule types: the default table and one read from a string", function()
  T.same(callback.EVENT_TYPES, { UserJoinRoom = "join", InvisibleUserJoinRoom = "join", UserLeaveRoom = "leave",
    InvisibleUserLeaveRoom = "leave" }, "the default mapping")
  T.same(callback.parse_event_types("UserJoinRoom=join, RoomDestroy = end"),
    { UserJoinRoom = "join", RoomDestroy = "end" }, "read from a string, spaces allowed")
  T.same(callback.parse_event_types(""), {}, "an empty string maps nothing")
  T.raises("'UserJoinRoom' is not EventType=type", callback.parse_event_types, "UserJoinRoom")
  T.raises("expects a string", callback.parse_event_types, nil)
end)

T.case("values are sorted bytewise, not by field name", function()
  local f = example()
  local values = { SECRET }
  for _, k in ipairs(callback.SIGNED) do values[#values + 1] = f[k] end
  -- the order the spec lists: Version, EventTime, AppId, SecretKey, EventType, Nonce, EventId, EventData
  local expected = f.Version .. f.EventTime .. f.AppId .. SECRET .. f.EventType .. f.Nonce .. f.EventId .. f.EventData
  T.eq(rtcadmin.sha256(expected), f.Signature, "sha256 of the documented order")
  T.eq(rtcadmin.sha256(table.concat(values)) == f.Signature, false, "field order does not verify")
end)

T.case("an upper-case hex signature is accepted", function()
  local f = example()
  f.Signature = f.Signature:upper()
  T.eq(callback.verify(f, SECRET), true, "verify")
end)

T.case("any changed field, a wrong secret or a missing field fails verification", function()
  for _, k in ipairs(callback.SIGNED) do
    local f = example()
    f[k] = f[k] .. "x"
    local ok, why = callback.verify(f, SECRET)
    T.eq(ok, false, "changed " .. k)
    T.eq(why, "signature does not match", "reason for " .. k)
  end
  T.eq(callback.verify(example(), "MySecretKey2"), false, "wrong secret")
  local f = example()
  f.Nonce = nil
  local ok, why = callback.verify(f, SECRET)
  T.eq(ok, false, "missing Nonce")
  T.eq(why, "field Nonce (or Noce) is missing or not a string", "reason")
  f = example()
  f.Signature = f.Signature:sub(1, 63)
  T.eq(callback.verify(f, SECRET), false, "short signature")
end)

T.case("the nonce as Noce (the 2023 docs' name) signs and verifies like Nonce", function()
  local f = example()
  f.Noce, f.Nonce = f.Nonce, nil
  T.eq(callback.signature(f, SECRET), example().Signature, "the synthetic vector with Noce")
  T.eq(callback.verify(f, SECRET), true, "verify")
  T.eq(callback.nonce(f), "a1b2", "nonce")
  local wrong = f.Signature:sub(1, 63) .. (f.Signature:sub(64) == "a" and "b" or "a")
  f.Signature = wrong
  local ok, why = callback.verify(f, SECRET)
  T.eq(ok, false, "a wrong signature with Noce")
  T.eq(why, "signature does not match", "reason")
  f = example()
  f.Noce, f.Nonce = "a1b3", nil
  T.eq(callback.verify(f, SECRET), false, "a changed Noce")
  local body = example()
  body.Noce, body.Nonce = body.Nonce, nil
  local fields = assert(callback.decode(cjson.encode(body)))
  T.eq(callback.verify(fields, SECRET), true, "a decoded body with Noce verifies")
  T.same(callback.parse(cjson.encode(body)), callback.parse(cjson.encode(example())), "the same event")
end)

T.case("a body with both Nonce and Noce is refused, whatever their values", function()
  for _, noce in ipairs { "a1b2", "zzzz" } do
    local f = example()
    f.Noce = noce
    local fields, why = callback.decode(cjson.encode(f))
    T.eq(fields, nil, "decode with Noce " .. noce)
    T.eq(why, "both Nonce and Noce are present", "reason")
    local ok
    ok, why = callback.verify(f, SECRET)
    T.eq(ok, false, "verify with Noce " .. noce)
    T.eq(why, "both Nonce and Noce are present", "reason")
    local sig
    sig, why = callback.signature(f, SECRET)
    T.eq(sig, nil, "signature")
    T.eq(why, "both Nonce and Noce are present", "reason")
  end
  local f = example()
  f.Nonce, f.Noce = nil, 1234
  T.eq(select(2, callback.decode(cjson.encode(f))), "field Nonce (or Noce) is missing or not a string", "numeric Noce")
  f.Nonce, f.Noce = cjson.null, "a1b2"
  T.eq(select(2, callback.decode(cjson.encode(f))), "both Nonce and Noce are present", "Nonce null beside Noce")
end)

T.case("a missing or empty secret is a programming error", function()
  T.raises("callback secret must be a non%-empty string", callback.verify, example(), "")
  T.raises("callback secret must be a non%-empty string", callback.verify, example(), nil)
end)

T.case("parse decodes the envelope and EventData into a policy event", function()
  local ev = assert(callback.parse(cjson.encode(example())))
  T.same(ev, {
    type = "RecordStarted", app_id = "661e00000000543cf", room_id = "Room1", user_id = "User1",
    id = "evt0001", ts = 1704067200, time = "2024-01-01T00:00:00Z", version = "2020-12-01",
    data = { RoomId = "Room1", UserId = "User1" },
  }, "event")
end)

T.case("malformed bodies are refused with a reason", function()
  local cases = {
    { "not json", "body is not a JSON object" },
    { "[1, 2]", "field EventType is missing or not a string" },
    { '{"EventType": 1}', "field EventType is missing or not a string" },
  }
  for _, c in ipairs(cases) do
    local ev, why = callback.parse(c[1])
    T.eq(ev, nil, c[1])
    T.eq(why, c[2], "reason for " .. c[1])
  end
  local f = example()
  f.EventData = "{broken"
  local ev, why = callback.parse(cjson.encode(f))
  T.eq(ev, nil, "EventData not JSON")
  T.eq(why, "EventData is not a JSON object", "reason")
  f = example()
  f.EventTime = "yesterday"
  ev, why = callback.parse(cjson.encode(f))
  T.eq(ev, nil, "bad time")
  T.eq(why, "EventTime is not an ISO-8601 time", "reason")
end)

T.case("ISO-8601 times become Unix seconds without the local time zone", function()
  T.eq(callback.parse_time("1970-01-01T00:00:00Z"), 0, "epoch")
  T.eq(callback.parse_time("1970-07-01T00:00:00Z"), 15638400, "doc example")
  T.eq(callback.parse_time("2000-02-29T12:00:00Z"), 951825600, "leap day")
  T.eq(callback.parse_time("2024-01-01T08:00:00+08:00"), 1704067200, "offset")
  T.eq(callback.parse_time("2024-01-01T00:00:00.250Z"), 1704067200.25, "fraction")
  T.eq(callback.parse_time("2024-01-01"), nil, "date only")
end)

T.case("EventTime window: at most max_age old and max_skew ahead, edges included", function()
  local now = callback.parse_time("2026-06-01T12:00:00Z")
  local function fresh(time) return callback.fresh(assert(callback.parse_time(time)), now, 300, 60) end
  T.eq(fresh("2026-06-01T12:00:00Z"), true, "now")
  T.eq(fresh("2026-06-01T11:55:00Z"), true, "exactly max_age old")
  T.eq(fresh("2026-06-01T12:01:00Z"), true, "exactly max_skew ahead")
  T.eq(fresh("2026-06-01T20:00:00+08:00"), true, "the same instant in another zone")
  local ok, why = fresh("2026-06-01T11:54:59.900Z")
  T.eq(ok, false, "0.1 s past max_age")
  T.eq(why, "EventTime is 300.1 s old (max_age 300)", "reason")
  ok, why = fresh("2026-06-01T12:01:00.500Z")
  T.eq(ok, false, "0.5 s past max_skew")
  T.eq(why, "EventTime is 60.5 s ahead (max_skew 60)", "reason")
  ok, why = fresh("2024-01-01T00:00:00Z")
  T.eq(ok, false, "months old")
  T.match(why, "^EventTime is %d+%.%d s old %(max_age 300%)$", "reason")
  T.eq(fresh("2027-06-01T12:00:00Z"), false, "a year ahead")
  T.eq(callback.fresh(now - 10, now, 5, 0), false, "a smaller max_age")
  T.eq(callback.fresh(now + 1, now, 300, 0), false, "max_skew 0: nothing ahead")
  -- An EventTime that does not parse never reaches the window: the event is malformed (400).
  for _, bad in ipairs { "yesterday", "2026-06-01", "2026-06-01T12:00:00 UTC", "", "1780315200" } do
    T.eq(callback.parse_time(bad), nil, "unparsable " .. bad)
    local f = example()
    f.EventTime = bad
    local ev, reason = callback.event(f)
    T.eq(ev, nil, "event with EventTime " .. bad)
    T.eq(reason, "EventTime is not an ISO-8601 time", "reason")
  end
end)

T.case("handler options: max_age, max_skew and ttl checked before anything else", function()
  local function handler(extra)
    local opts = { secret = SECRET, on_event = function() end, dict = "events" }
    for k, v in pairs(extra) do opts[k] = v end
    return callback.handler(opts)
  end
  T.raises("ttl %(300%) must be at least max_age %+ max_skew %(360%)", handler, { ttl = 300 })
  T.raises("ttl %(60%) must be at least max_age %+ max_skew %(120%)", handler,
    { max_age = 60, max_skew = 60, ttl = 60 })
  T.raises("ttl %(1000%) must be at least max_age %+ max_skew %(3600%)", handler, { max_age = 3600, max_skew = 0,
    ttl = 1000 })
  for _, bad in ipairs { 0, -1, 0 / 0, math.huge, "300" } do
    T.raises("max_age must be a number from 1 to 31536000 %(seconds%)", handler, { max_age = bad })
  end
  for _, bad in ipairs { -1, 0 / 0, math.huge, true } do
    T.raises("max_skew must be a number from 0 to 31536000 %(seconds%)", handler, { max_skew = bad })
  end
  T.raises("ttl must be a number from 1 to 31536000 %(seconds%)", handler, { ttl = "86400" })
  T.raises("ttl must be a number from 1 to 31536000 %(seconds%)", handler, { ttl = 31536001 })
  -- Past the option checks, a handler needs nginx: outside it, that is where it stops.
  local err = T.raises(".", handler, { max_age = 60, max_skew = 0, ttl = 60 })
  T.no_match(err, "must be", "valid options pass: " .. err)
  T.same(callback.STATUSES, { "accepted", "duplicate", "bad_signature", "stale", "malformed", "error" }, "statuses")
end)

T.case("sha256 and secure_equal", function()
  T.eq(rtcadmin.sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty")
  T.eq(rtcadmin.sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "abc")
  T.eq(rtcadmin.secure_equal("abc", "abc"), true, "equal")
  T.eq(rtcadmin.secure_equal("abc", "abd"), false, "differs")
  T.eq(rtcadmin.secure_equal("abc", "ab"), false, "length")
  T.eq(rtcadmin.secure_equal("a\0b", "a\0c"), false, "after a NUL")
  T.raises("bad argument", rtcadmin.secure_equal, "a", nil)
end)

-- Reads quote's output back: the string it quoted, or nil when it is not quote's form.
local function unquote(q)
  local inner, suffix = q:match('^"(.*)"(.*)$')
  if not inner or (suffix ~= "" and not suffix:match("^%.%.%.%(%d+ bytes%)$")) then return nil end
  local out, i = {}, 1
  while i <= #inner do
    local c = inner:sub(i, i)
    if c == "\\" then
      local n = inner:sub(i + 1, i + 1)
      if n == "x" then
        out[#out + 1] = string.char(tonumber(inner:sub(i + 2, i + 3), 16))
        i = i + 4
      else
        if n ~= "\\" and n ~= '"' then return nil end
        out[#out + 1] = n
        i = i + 2
      end
    else
      if c == '"' then return nil end -- an unescaped quote would end the string early
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out), suffix
end

T.case("quote: every byte outside printable ASCII escaped, the original recoverable", function()
  local all = {}
  for b = 0, 255 do all[#all + 1] = string.char(b) end
  all = table.concat(all)
  local q = quote(all, 256)
  T.ok(not q:find("[^\32-\126]"), "only printable ASCII in " .. q)
  T.eq(unquote(q), all, "read back")
  T.eq(quote("evt\n1\r\t\0\127"), '"evt\\x0A1\\x0D\\x09\\x00\\x7F"', "control characters and DEL")
  T.eq(quote('say "hi" \\x41'), '"say \\"hi\\" \\\\x41"', "quotes and backslashes")
  T.eq(quote("\228\189\160"), '"\\xE4\\xBD\\xA0"', "UTF-8, a byte at a time")
  T.eq(quote(""), '""', "empty")
  T.eq(quote("evt-0001"), '"evt-0001"', "a plain id as it is")
  T.eq(quote(nil), "nil", "nil")
  T.eq(quote(42), "42", "number")
  T.eq(quote(false), "false", "boolean")
  T.eq(quote({}), "<table>", "table")
  T.eq(quote(setmetatable({}, { __tostring = function() return "\nforged" end })), "<table>", "__tostring not used")
end)

T.case("quote: long input cut after 128 bytes (or max), with its whole length", function()
  local long = ("a"):rep(127) .. "\n" .. ("b"):rep(1000)
  local q = quote(long)
  T.eq(q, '"' .. ("a"):rep(127) .. '\\x0A"...(1128 bytes)', "cut at 128")
  local back, suffix = unquote(q)
  T.eq(back, long:sub(1, 128), "the first 128 bytes")
  T.eq(suffix, "...(1128 bytes)", "suffix")
  T.eq(quote(("c"):rep(128)), '"' .. ("c"):rep(128) .. '"', "exactly 128: whole")
  T.eq(quote("abcdef", 3), '"abc"...(6 bytes)', "max")
  T.ok(#quote(("\n"):rep(100000)) <= 2 + 4 * 128 + #"...(100000 bytes)", "bounded")
end)

T.case("quote: a forged log line with a fake audit record stays inside its own line", function()
  local forged = 'evt-1\n2026/01/01 00:00:00 [notice] 1#1: *1 rtcadmin audit {"action":"ban","user_id":"victim"}'
  local line = "rtcadmin.callback: rejected event " .. quote(forged) .. ": signature does not match"
  T.ok(not line:find("[\r\n]"), "one line")
  T.eq(line, 'rtcadmin.callback: rejected event "evt-1\\x0A2026/01/01 00:00:00 [notice] 1#1: *1 rtcadmin audit ' ..
    '{\\"action\\":\\"ban\\",\\"user_id\\":\\"victim\\"}": signature does not match', "the escaped form")
  T.eq(unquote(quote(forged)), forged, "read back")
end)

T.run()
