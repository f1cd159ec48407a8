-- Differential fuzzing of the budgeted pattern functions (src/pattern.c, src/pattern_match.c)
-- against Lua 5.4's own string.find / match / gmatch / gsub. The input is split into a pattern (up
-- to 32 bytes), a subject (up to 64), a replacement string (up to 16), an init position, the kind
-- of replacement and a replacement limit. tests/fuzz/pattern_diff.lua runs every function both
-- ways (the budgeted ones with a large and with an unlimited budget) and raises on any difference
-- in results, their types or errors. Inputs are kept small because the stock matcher has no
-- budget; one that takes the budgeted matcher over 20 000 steps is not run on the stock one (the
-- fuzzer learns to make such inputs, which would otherwise take most of its time).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local D = dofile(here .. "/pattern_diff.lua")
D.probe_steps = 20000

-- A length byte (taken modulo max + 1) and that many bytes: the field and the position after it.
local function field(data, pos, max)
  local n = (data:byte(pos) or 0) % (max + 1)
  return data:sub(pos + 1, pos + n), pos + 1 + n
end

local SPECIAL_INITS = { 0.5, 2.0, "3", 2 ^ 31, 2 ^ 53, 1 / 0, 0 / 0, true }
local function init_of(b)
  if not b or b == 255 then return nil end
  if b >= 248 then return SPECIAL_INITS[b - 247] end
  return b - 124 -- -124 .. 123: every position of the subject, from either end, and past them
end

local TABLE = { a = "A", b = false, ["1"] = "one", [2] = "two", [" "] = 1.5 }
local FUNCTIONS = {
  function(...) return select("#", ...) end,
  function(a) return a end,
  function() return false end,
  function(_, b) return b end,
}
local LIMITS = { 0, 1, 2, -1, 2.5, 2 ^ 32 + 1, "1" }

return function(_, data)
  local pattern, subject, replacement, pos
  pattern, pos = field(data, 1, 32)
  subject, pos = field(data, pos, 64)
  replacement, pos = field(data, pos, 16)
  local init = init_of(data:byte(pos))
  local kind = data:byte(pos + 1) or 0
  local repl = replacement
  if kind % 8 == 4 then repl = TABLE
  elseif kind % 8 == 5 then repl = FUNCTIONS[kind // 8 % #FUNCTIONS + 1]
  elseif kind % 8 == 6 then repl = #replacement end
  local n = LIMITS[kind // 32 % 8]
  D.check(subject, pattern, repl, init, n)
end
