-- rtcadmin.pack / rtcadmin.unpack (src/pack.c): plain Lua data round-trips exactly (number subtypes
-- included), and reading never trusts its input: every truncation, every bit flip, forged payloads
-- with a correct checksum and random bytes give nil and a message, never an error or a crash.
local T = require "testlib"
local rtcadmin = require "rtcadmin"
local pack, unpack = rtcadmin.pack, rtcadmin.unpack

local math_type = math.type or function(x) return type(x) == "number" and "float" or nil end -- luacheck: ignore 143
local HAS_INTEGERS = math.type ~= nil

-- Deep equality that tells integers from floats (5.3+), and NaN equal to NaN.
local function same(a, b, path)
  path = path or "value"
  if type(a) ~= type(b) then error(string.format("%s: %s vs %s", path, type(a), type(b)), 0) end
  if type(a) == "number" then
    if a ~= a and b ~= b then return end
    if a ~= b or math_type(a) ~= math_type(b) then
      error(string.format("%s: %s (%s) vs %s (%s)", path, tostring(a), tostring(math_type(a)), tostring(b),
        tostring(math_type(b))), 0)
    end
    if a == 0 and 1 / a ~= 1 / b then error(path .. ": the sign of zero", 0) end
    return
  end
  if type(a) ~= "table" then
    if a ~= b then error(string.format("%s: %s vs %s", path, tostring(a), tostring(b)), 0) end
    return
  end
  for k, v in pairs(a) do same(v, b[k], path .. "." .. tostring(k)) end
  for k in pairs(b) do if a[k] == nil then error(path .. "." .. tostring(k) .. ": missing", 0) end end
end

-- CRC-32 (IEEE, reflected, as zlib) with arithmetic only, so it runs on every Lua: the reference the
-- packed trailer is checked against.
local function xor32(a, b)
  local r, bit = 0, 1
  for _ = 1, 32 do
    if a % 2 ~= b % 2 then r = r + bit end
    a, b, bit = (a - a % 2) / 2, (b - b % 2) / 2, bit * 2
  end
  return r
end
local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c % 2 == 1 then c = xor32(0xEDB88320, (c - 1) / 2) else c = c / 2 end
  end
  CRC_TABLE[i] = c
end
local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    local idx = xor32(crc % 256, s:byte(i))
    crc = xor32(CRC_TABLE[idx], (crc - crc % 256) / 256)
  end
  return xor32(crc, 0xFFFFFFFF)
end
local function le(n, bytes)
  local out = {}
  for i = 1, bytes do
    out[i] = string.char(n % 256)
    n = (n - n % 256) / 256
  end
  return table.concat(out)
end
-- A payload framed as pack frames it (header, length, checksum): what is inside is the reader's
-- problem alone.
local function frame(payload, version, flags)
  local body = "RTCP" .. string.char(version or 1, flags or (HAS_INTEGERS and 1 or 0)) .. le(#payload, 8) .. payload
  return body .. le(crc32(body), 4)
end

local seed = 20240517
local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end

T.case("the checksum is the standard CRC-32 of header and payload", function()
  T.eq(crc32("123456789"), 0xCBF43926, "the reference CRC")
  for _, v in ipairs({ 1, "x", { 1, 2, { a = "b" } }, ("long"):rep(100) }) do
    local s = pack(v)
    T.eq(s:sub(1, 4), "RTCP", "magic")
    T.eq(s:byte(5), 1, "version")
    local n = 0
    for i = 14, 7, -1 do n = n * 256 + s:byte(i) end
    T.eq(n, #s - 18, "the length is the payload's")
    T.eq(frame(s:sub(15, -5)), s, "trailer = CRC-32 of all before it")
  end
end)

T.case("plain data round-trips exactly", function()
  local values = {
    0, 1, 127, 128, -1, -128, 255, 65536, 2 ^ 31, -2 ^ 31, 2 ^ 53, -2 ^ 53, 0.5, -0.25, 1e300, -1e-300,
    math.huge, -math.huge, 1 / 3, 1764064800.25, true, false, "", "a", ("x"):rep(63), ("y"):rep(64),
    ("z"):rep(100000), "\0\1\255 bytes \0", {}, { {} }, { 1, 2, 3 }, { 1, nil, 3 }, { [1] = 1, [3] = 3 },
    { a = 1, b = { c = { d = "e" } } }, { [true] = 1, [false] = 0, [1.5] = "f", [-3] = "n", [0] = "z" },
    { 1, 2, x = "mixed", [10] = 10 },
  }
  if HAS_INTEGERS then
    values[#values + 1] = math.maxinteger
    values[#values + 1] = math.mininteger
    values[#values + 1] = 3.0 -- a whole float stays a float
    values[#values + 1] = { 1, 1.0, math.tointeger(2 ^ 62), -0.0 }
  end
  local big = {}
  for i = 1, 1000 do big[i] = { id = "u" .. i, n = i, f = i + 0.5 } end
  values[#values + 1] = big
  local many = {}
  for i = 1, 300 do many["k" .. i] = i end -- more than 127 pairs: a longer count
  values[#values + 1] = many
  for i, v in ipairs(values) do
    local got, err = unpack(pack(v))
    T.eq(err, nil, "value " .. i)
    same(got, v, "value " .. i)
  end
  T.eq(select("#", unpack(pack(nil))), 1, "nil packs")
  local nan = unpack(pack(0 / 0))
  T.ok(nan ~= nan, "NaN")
  same(unpack(pack({ 0 / 0 }))[1] ~= unpack(pack({ 0 / 0 }))[1], true, "NaN in a table")
  if not HAS_INTEGERS then
    -- 5.1 / LuaJIT: whole numbers up to 2^53 as integers (compact), -0 keeps its sign as a float.
    T.ok(#pack(2 ^ 40) < #pack(0.5), "whole numbers are varints")
    T.eq(1 / unpack(pack(-0.0)), -math.huge, "-0")
  end
end)

T.case("a table reached twice is written twice; cycles, functions and depth are errors", function()
  local shared = { 1 }
  local got = unpack(pack({ shared, shared }))
  same(got, { { 1 }, { 1 } }, "both copies")
  T.ok(got[1] ~= got[2], "two tables when read")
  local c = {}
  c.self = { c }
  T.raises("rtcadmin.pack: a table contains itself %(cycles cannot be packed%)", pack, c)
  T.raises("rtcadmin.pack: cannot pack a function %(plain data only%)", pack, { f = print })
  T.raises("cannot pack a userdata", pack, { io.stdout })
  local deep = {}
  for _ = 1, 99 do deep = { deep } end
  same(unpack(pack(deep)), deep, "99 levels")
  T.raises("rtcadmin.pack: tables nested deeper than 100 levels", pack, { deep })
  T.raises("bad argument #1", pack)
  T.raises("bad argument #1 to .- %(string expected", unpack, 5)
  T.raises("bad argument #1", unpack, nil)
  T.eq(getmetatable(unpack(pack(setmetatable({}, { __index = {} })))), nil, "metatables are not written")
end)

T.case("every truncation and every single bit flip is refused with a message", function()
  local s = pack({ id = "ev-1", n = { 1, 2, 3.5 }, s = ("x"):rep(70), t = true })
  for n = 0, #s - 1 do
    local v, err = unpack(s:sub(1, n))
    T.eq(v, nil, "prefix " .. n)
    T.match(err, n < 4 and "^rtcadmin.unpack: not packed data" or "^rtcadmin.unpack: ", "prefix " .. n)
  end
  for i = 1, #s do
    for b = 0, 7 do
      local byte = s:byte(i)
      local flipped = (byte % 2 ^ (b + 1) >= 2 ^ b) and byte - 2 ^ b or byte + 2 ^ b
      local v, err = unpack(s:sub(1, i - 1) .. string.char(flipped) .. s:sub(i + 1))
      T.eq(v, nil, "bit " .. b .. " of byte " .. i)
      T.ok(type(err) == "string" and err:find("^rtcadmin.unpack: "), "a message for byte " .. i)
    end
  end
  local _, err = unpack(s .. "x")
  T.match(err, "wrong length", "a byte more")
  _, err = unpack(s:sub(1, -2))
  T.match(err, "truncated", "a byte less")
end)

T.case("forged payloads with a correct checksum: every length, count and tag is checked", function()
  local function refused(payload, pattern, what, version, flags)
    local v, err = unpack(frame(payload, version, flags))
    T.eq(v, nil, what)
    T.match(err, pattern, what)
  end
  refused("\128", "format version 2, this rtcadmin reads version 1", "another version", 2)
  refused("\128", "unknown flags 128", "unknown flags", 1, 0x80)
  refused("", "truncated value", "no value")
  refused("\8", "unknown tag at byte 14", "tag 8")
  refused("\7\1", "unknown tag", "the back references of an earlier draft")
  refused("\128\128", "trailing bytes after the value", "two values")
  refused("\5\10abc", "truncated string", "a string longer than the data")
  refused("\5\255\255\255\255\255\255\255\255\255\255\1", "number out of range", "a length past 64 bits")
  refused("\5\255\255\255\255\255\255\255\255\127", "truncated string", "a huge length")
  refused("\3\255", "truncated number", "a varint cut short")
  refused("\4\0\0\0", "truncated number", "a float cut short")
  refused("\6\255\255\255\255\15\0", "table larger than the data", "four billion elements announced")
  refused("\6\0\255\255\255\255\15", "table larger than the data", "four billion pairs announced")
  refused("\6\3\0\128\128", "table larger than the data", "three elements, two there")
  -- Nested tables share what is left: the inner one cannot claim the bytes the outer one needs.
  refused("\6\2\0\6\3\0\128\128\128", "table larger than the data", "an inner table eating the outer's elements")
  refused("\6\0\1\0\128", "nil or NaN table key", "a nil key")
  refused("\6\0\1\4\0\0\0\0\0\0\248\127\128", "nil or NaN table key", "a NaN key")
  local nest = ("\6\1\0"):rep(101) .. "\128"
  refused(nest, "tables nested too deep", "101 levels")
  local ok = unpack(frame(("\6\1\0"):rep(100) .. "\128"))
  T.eq(type(ok), "table", "100 levels are fine")
  local v = unpack(frame("\6\2\1\128\0\65a\2"))
  same(v, { 0, a = true }, "a hole read as nil, then a pair")
end)

T.case("random data: never an error, never a crash; random values round-trip", function()
  for i = 1, 3000 do
    local n = rand(64) - 1
    local bytes = {}
    for k = 1, n do bytes[k] = string.char(rand(256) - 1) end
    local payload = table.concat(bytes)
    local ok, v, err = pcall(unpack, frame(payload))
    T.ok(ok, "no error raised for random payload " .. i)
    T.ok(v ~= nil or err ~= nil or payload:byte(1) == 0, "a value or a message")
    ok = pcall(unpack, payload)
    T.ok(ok, "unframed random bytes " .. i)
  end
  local function random_value(depth)
    local k = rand(depth > 3 and 6 or 8)
    if k == 1 then return rand(2) == 1 end
    if k == 2 then return rand(1000) - 500 end
    if k == 3 then return (rand(100000) - 50000) / 7 end
    if k == 4 or k == 5 then
      local len = rand(3) == 1 and rand(200) or rand(10)
      local b = {}
      for j = 1, len do b[j] = string.char(rand(256) - 1) end
      return table.concat(b)
    end
    if k == 6 then return 2 ^ rand(60) end
    local t = {}
    for j = 1, rand(6) do t[j] = random_value(depth + 1) end
    for _ = 1, rand(4) do t["k" .. rand(100)] = random_value(depth + 1) end
    return t
  end
  for i = 1, 300 do
    local v = random_value(0)
    same(unpack(pack(v)), v, "random value " .. i)
  end
end)

T.run()
