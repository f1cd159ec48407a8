-- Text from a request, made safe for a log line. nginx's error log is one record a line, and the
-- example writes its audit records (`rtcadmin audit {...}`) to the same log: a value a client sent
-- must not end the line, start a new one, or fill the log. Every log call of the nginx layer that
-- includes request-derived text passes it through quote().
local M = {}

-- Bytes of a string shown before it is cut (RTC ids are at most 128 characters).
M.MAX = 128

local NAMED = { ['"'] = '\\"', ["\\"] = "\\\\" }
local function escape(c) return NAMED[c] or string.format("\\x%02X", c:byte()) end

-- value -> printable ASCII for a log line. A string comes back in double quotes with `"` as `\"`,
-- `\` as `\\` and every other byte outside 0x20-0x7E as `\xNN` (control characters, DEL, and UTF-8 too,
-- one escape a byte), so it reads back unambiguously; a string longer than `max` bytes (default M.MAX)
-- is cut there and followed by `...(N bytes)`, its whole length. nil, numbers and booleans come back
-- as tostring gives them, other values as their type in angle brackets (`<table>`).
function M.quote(value, max)
  local t = type(value)
  if t ~= "string" then
    if t == "nil" or t == "number" or t == "boolean" then return tostring(value) end
    return "<" .. t .. ">"
  end
  max = max or M.MAX
  local n = #value
  local shown = n > max and value:sub(1, max) or value
  local out = '"' .. shown:gsub('[%z\1-\31"\\\127-\255]', escape) .. '"'
  if n > max then out = out .. "...(" .. n .. " bytes)" end
  return out
end

return M
