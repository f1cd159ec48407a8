-- rtcadmin.callback outside nginx: the signature of rtc-api.md section 5.3, envelope and event
-- decoding, and the helpers behind them (rtcadmin.sha256, rtcadmin.secure_equal).
local T = require "testlib"
local rtcadmin = require "rtcadmin"
local callback = require "rtcadmin.callback"
local cjson = require "cjson"

-- The worked example of rtc-api.md section 5.3.
local function example()
  return {
    EventType = "RecordStarted", EventData = '{"RoomId":"Room1","UserId":"User1"}',
    EventTime = "2024-01-01T00:00:00Z", EventId = "evt0001", AppId = "661e00000000543cf",
    Version = "2020-12-01", Nonce = "a1b2",
    Signature = "53f8a95bb1f97f446fd7ffed71841ff8fd773488d62c5cd55b438f2bc5e4117a",
  }
end
local SECRET = "MySecretKey"

T.case("the section 5.3 example vector verifies", function()
  T.eq(callback.signature(example(), SECRET), example().Signature, "signature")
  T.eq(callback.verify(example(), SECRET), true, "verify")
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
  T.eq(why, "field Nonce is missing or not a string", "reason")
  f = example()
  f.Signature = f.Signature:sub(1, 63)
  T.eq(callback.verify(f, SECRET), false, "short signature")
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

T.case("handler: a dedupe ttl is 0.001 s to a year; below 1 ms, NaN and infinity are refused", function()
  -- handler() needs only ngx.shared at creation: a stand-in is enough outside nginx.
  local saved = rawget(_G, "ngx")
  rawset(_G, "ngx", { shared = { events = {} } })
  local function make(ttl)
    local h = callback.handler { secret = SECRET, on_event = print, dict = "events", ttl = ttl }
    return h
  end
  local ok, err = pcall(function()
    local rule = T.literal("rtcadmin.callback.handler: ttl must be between 0.001 and 31536000 seconds, got ")
    for _, v in ipairs { { 0.0004, "0%.0004" }, { 0, "0" }, { -1, "%-1" }, { 0 / 0, "%-?nan" }, { math.huge, "inf" },
      { 31536001, "31536001" }, { "60", "60" } } do
      T.raises("^[^\n]*test_callback%.lua:%d+: " .. rule .. v[2] .. "$", make, v[1])
    end
    T.eq(type(make(0.001)), "function", "ttl 0.001")
    T.eq(type(make(nil)), "function", "the default ttl")
  end)
  rawset(_G, "ngx", saved)
  assert(ok, err)
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

T.run()
