-- JSON body building (src/json.c) through client:call's POST body. The input is a tiny program that
-- builds a Lua value: strings (valid UTF-8 or not, with NULs), integers, floats, booleans, nested
-- tables and arrays. When the encoder accepts the value, lua-cjson must decode the body back to an
-- equal value; when it refuses, the message must be one of the documented argument errors.
local cjson = require "cjson.safe"
local preparers = debug.getregistry()["rtcadmin.preparers"]

local function build(data)
  local pos = 1
  local function byte()
    local b = data:byte(pos) or 0
    pos = pos + 1
    return b
  end
  local function value(depth)
    local op = byte() % 9
    if op == 0 then return true
    elseif op == 1 then return false
    elseif op == 2 then
      local n = byte() % 24
      local s = data:sub(pos, pos + n - 1)
      pos = pos + n
      return s
    elseif op == 3 then return (byte() - 128) * 16777216 + byte() * 65536 + byte()
    elseif op == 4 then return (byte() - 128) / (byte() + 1)
    elseif op == 5 then return string.unpack("<d", (data:sub(pos, pos + 7) .. ("\0"):rep(8)):sub(1, 8))
    elseif depth < 40 and (op == 6 or op == 7) then
      local t, n = {}, byte() % 6
      for i = 1, n do
        if op == 6 then t[i] = value(depth + 1)
        else
          local k = value(depth + 1)
          if type(k) == "string" or (type(k) == "number" and k == k) then t[k] = value(depth + 1) end
        end
      end
      return t
    end
    return ("x"):rep(op)
  end
  local t = {}
  while pos <= #data do
    local k = value(0)
    if type(k) == "string" then t[k] = value(0) end
  end
  return t
end

local function equal(a, b)
  if type(a) == "number" and type(b) == "number" then
    return a == b or math.abs(a - b) <= 1e-9 * math.max(math.abs(a), math.abs(b))
  end
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local EXPECTED = { "cannot be sent as JSON", "not valid UTF%-8", "sparse array", "table keys must be",
  "nested deeper", "contains a NUL", "NaN and infinity" }

return function(client, data)
  local params = build(data)
  local ok, prepared = pcall(preparers.call, client, "DismissRoom", "2020-12-01", params)
  if not ok then
    for _, p in ipairs(EXPECTED) do if tostring(prepared):find(p) then return end end
    error("INVARIANT: unexpected refusal: " .. tostring(prepared))
  end
  local decoded, err = cjson.decode(prepared.body)
  if decoded == nil then error("INVARIANT: the body is not JSON (" .. tostring(err) .. "): " .. prepared.body) end
  -- An empty table is written as {}; lua-cjson reads {} back as an empty table too.
  if not equal(decoded, params) then error("INVARIANT: the body does not decode to the params: " .. prepared.body) end
end
