-- rtcadmin.json_encode and json_array: the one writer of JSON output (audit records, --json lines,
-- HTTP answers). Checked by decoding what it writes with lua-cjson.
local T = require "testlib"
local cjson = require "cjson"
local rtcadmin = require "rtcadmin"
local enc, array = rtcadmin.json_encode, rtcadmin.json_array

T.case("empty lists are [] when marked; objects have sorted keys; values round-trip", function()
  T.eq(enc({ users = array(), none = {} }), '{"none":{},"users":[]}', "marked empty table is []")
  T.eq(enc(array({ "a", "b" })), '["a","b"]', "a marked list")
  T.eq(enc({ 3, 2, 1 }), "[3,2,1]", "a sequence is an array unmarked")
  T.eq(enc({ b = 1, a = { c = true, d = false } }), '{"a":{"c":true,"d":false},"b":1}', "sorted keys")
  local t = array()
  T.eq(array(t), t, "json_array returns its table")
  local v = { s = 'q"\\\n\t\1', n = 1.5, i = -7, big = 2 ^ 53, list = { 1, { x = "y" } } }
  T.same(cjson.decode(enc(v)), v, "round trip")
  T.eq(enc({ 1764064847.6, 0.1, 1 / 3 }), "[1764064847.6,0.1,0.3333333333333333]", "shortest digits that read back")
end)

T.case("output never fails on numbers or bytes: NaN and infinities are null, bad UTF-8 is U+FFFD", function()
  T.eq(enc({ a = 0 / 0, b = math.huge, c = -math.huge }), '{"a":null,"b":null,"c":null}', "non-finite numbers")
  T.eq(enc("ok \226\130\172 \255 end\195"), '"ok \226\130\172 \\ufffd end\\ufffd"', "invalid bytes replaced")
  T.eq(enc({ [("\255")] = 1 }), '{"\\ufffd":1}', "in keys too")
  T.eq(enc(cjson.null), "null", "lua-cjson's null")
end)

T.case("what JSON cannot hold raises a clear error", function()
  T.raises("rtcadmin.json_encode: a function cannot be written as JSON %(in key \"f\"%)", enc, { f = print })
  T.raises("sparse array", enc, { [1] = 1, [3] = 3 })
  T.raises("table keys must be all strings", enc, { [1] = 1, x = 2 })
  local c = {}
  c.c = c
  T.raises("nested deeper than 32 %(or a cycle%) %(in key \"c\"%)$", enc, c)
  T.raises("table expected", array, 5)
end)

T.run()
