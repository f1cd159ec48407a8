-- Randomized differential testing of rtcadmin.pattern_functions against the running interpreter's
-- own string.find / match / gmatch / gsub: random patterns from the pattern grammar plus random
-- mutations, random subjects from a small alphabet, and every argument form (init positions of
-- every kind, plain find, replacement strings, tables and functions, replacement limits). Results
-- must be identical, types included (math.type on 5.3+); errors identical up to the function name
-- in "bad argument #k to 'name'".
--
--   LUA_CPATH='build/?.so;;' lua5.4 tests/fuzz/pattern_diff.lua [cases=20000] [seed=os.time()]
--
-- Also a module (dofile): check(subject, pattern, repl, init, n) compares one input on every
-- function, run(cases, seed) generates and checks cases (both raise on the first difference), and
-- outcome(lib, name, ...) is what they compare.
local M = {}

local unpack = table.unpack or unpack -- luacheck: ignore 143 (5.1 global)
local math_type = math.type
local function pack(...) return { n = select("#", ...), ... } end

-- The stock matcher has no budget: a case ours needs more steps for is left out rather than
-- risking minutes in the stock one (the inputs are small, so few are).
M.probe_steps = 200000

local function describe(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "number" and math_type then return tostring(v) .. "(" .. math_type(v) .. ")" end
  return tostring(v)
end

-- "bad argument #3 to 'find' (...)" and "... to '?' (...)" are the same error.
local function normalize_error(e)
  e = tostring(e)
  return (e:gsub("^bad argument #(%d+) to '[^']*'", "bad argument #%1"))
end

-- A call's outcome as one comparable string: ok and every result with its type, or the error.
local function outcome(ok, ...)
  if not ok then return "error: " .. normalize_error((...)) end
  local parts = { "ok" }
  for i = 1, select("#", ...) do parts[#parts + 1] = describe((select(i, ...))) end
  return table.concat(parts, ", ")
end

local function gmatch_all(gmatch, s, p, init)
  local out = {}
  local iter = gmatch(s, p, init)
  for _ = 1, 1000 do
    local r = pack(iter())
    if r[1] == nil then break end
    local row = {}
    for i = 1, r.n do row[i] = describe(r[i]) end
    out[#out + 1] = "{" .. table.concat(row, ", ") .. "}"
  end
  out[#out + 1] = describe(iter()) -- called again after the end
  return table.concat(out, " ")
end

-- The outcome of lib[name](...) as a comparable string; for gmatch, of collecting every match and
-- calling the iterator once more.
function M.outcome(lib, name, ...)
  if name == "gmatch" then return outcome(pcall(gmatch_all, lib.gmatch, ...)) end
  return outcome(pcall(lib[name], ...))
end
M.describe = describe

-- The operations compared, each as function(lib, s, p, repl, init, n) -> results.
local OPS = {
  { "find", function(lib, s, p, _, init) return lib.find(s, p, init) end },
  { "find plain", function(lib, s, p, _, init) return lib.find(s, p, init, true) end },
  { "match", function(lib, s, p, _, init) return lib.match(s, p, init) end },
  { "gmatch", function(lib, s, p, _, init) return gmatch_all(lib.gmatch, s, p, init) end },
  { "gsub", function(lib, s, p, repl, _, n) return lib.gsub(s, p, repl, n) end },
}

-- Budgeted functions with an allowance of `steps` (math.huge: unlimited): the functions and the
-- budget table; the callback raises.
local EXHAUSTED = {}
local function budgeted(steps)
  local budget = { steps }
  local P = require("rtcadmin").pattern_functions(budget, function() error(EXHAUSTED, 0) end)
  return P, budget
end

local probe_P, probe_budget = budgeted(M.probe_steps)
local free_P = budgeted(math.huge)
M.skipped, M.checked = 0, 0

-- Compares one input on every operation; raises with the input on a difference. Returns false
-- when the input was too complex to run the stock matcher on.
function M.check(subject, pattern, repl, init, n)
  local skipped = false
  for _, op in ipairs(OPS) do
    local name, run = op[1], op[2]
    probe_budget[1] = M.probe_steps
    local r = pack(pcall(run, probe_P, subject, pattern, repl, init, n))
    if not r[1] and r[2] == EXHAUSTED then
      skipped = true
    else
      local want = outcome(pcall(run, string, subject, pattern, repl, init, n))
      local got = outcome(unpack(r, 1, r.n))
      local free = outcome(pcall(run, free_P, subject, pattern, repl, init, n))
      if got ~= want or free ~= want then
        error(string.format("%s differs for subject %s, pattern %s, repl %s, init %s, n %s:\n  stock:    %s\n"
          .. "  budgeted: %s\n  unlimited: %s", name, describe(subject), describe(pattern), describe(repl),
          describe(init), describe(n), want, got, free), 0)
      end
    end
  end
  if skipped then M.skipped = M.skipped + 1 else M.checked = M.checked + 1 end
  return not skipped
end

-- Generators --------------------------------------------------------------------------------------

local random = math.random
local function pick(list) return list[random(#list)] end

local SUBJECT_BYTES = { "a", "b", "a", "b", "c", "A", "B", "1", "2", " ", " ", "\t", "\n", "(", ")", "[", "]",
  "%", "-", ".", "^", "$", "\0", "x", "y", "\200", "'" }
-- Half of the subjects are made mostly of the pattern's own bytes, so that more of them match.
local function subject(p)
  local n = random(0, random(2) == 1 and 12 or 40)
  local t = {}
  local own = #p > 0 and random(2) == 1
  for i = 1, n do
    if own and random(3) > 1 then
      local k = random(#p)
      t[i] = p:sub(k, k)
    else
      t[i] = pick(SUBJECT_BYTES)
    end
  end
  return table.concat(t)
end

local CLASSES = { "a", "c", "d", "g", "l", "p", "s", "u", "w", "x", "z", "A", "C", "D", "G", "L", "P", "S", "U",
  "W", "X", "Z", "q", "%", ".", "]", "[", "-", "^", "$", "(", ")", "\0" }
local LITERALS = { "a", "b", "c", "A", "1", " ", "x", "]", "\0", "'", "\200" }

local function set()
  local t = { "[" }
  if random(3) == 1 then t[#t + 1] = "^" end
  for _ = 1, random(0, 4) do
    local k = random(6)
    if k == 1 then t[#t + 1] = "%" .. pick(CLASSES)
    elseif k == 2 then t[#t + 1] = pick(LITERALS) .. "-" .. pick(LITERALS)
    elseif k == 3 then t[#t + 1] = pick({ "]", "-", "^", "%]", "[" })
    else t[#t + 1] = pick(LITERALS) end
  end
  if random(12) > 1 then t[#t + 1] = "]" end
  return table.concat(t)
end

local function single()
  local k = random(10)
  if k <= 3 then return pick(LITERALS)
  elseif k == 4 then return "."
  elseif k <= 7 then return "%" .. pick(CLASSES)
  else return set() end
end

local function items(depth, most)
  local t = {}
  for _ = 1, random(1, random(most)) do
    local k = random(20)
    if k <= 10 then
      t[#t + 1] = single() .. (random(2) == 1 and pick({ "*", "+", "-", "?" }) or "")
    elseif k <= 12 and depth < 3 then
      t[#t + 1] = "(" .. items(depth + 1, 3) .. ")"
    elseif k == 13 then t[#t + 1] = "()"
    elseif k == 14 then t[#t + 1] = "%" .. random(0, 3)
    elseif k == 15 then t[#t + 1] = "%b" .. pick({ "()", "ab", "''", "[]", "a" , "" })
    elseif k == 16 then t[#t + 1] = "%f" .. (random(6) > 1 and set() or pick({ "a", "" }))
    elseif k == 17 then t[#t + 1] = pick({ "(", ")", "%", "[", "$", "^" })
    else t[#t + 1] = pick(LITERALS) end
  end
  return table.concat(t)
end

local SPECIALS = { "^", "$", "*", "+", "?", ".", "(", ")", "[", "]", "%", "-", "\0", "a" }
local function mutate(p)
  for _ = 1, random(0, 2) do
    local i = random(0, #p)
    local k = random(4)
    if k == 1 then p = p:sub(1, i) .. pick(SPECIALS) .. p:sub(i + 1)
    elseif k == 2 then p = p:sub(1, i - 1) .. p:sub(i + 1)
    elseif k == 3 then p = p:sub(1, i)
    else p = p:sub(1, i - 1) .. pick(SPECIALS) .. p:sub(i + 1) end
  end
  return p
end

local function pattern()
  local p = items(0, 5)
  if random(4) == 1 then p = "^" .. p end
  if random(4) == 1 then p = p .. "$" end
  if random(3) == 1 then p = mutate(p) end
  if #p > 32 then p = p:sub(1, 32) end
  return p
end

local INITS = { 1, 2, 3, 5, -1, -2, -3, 0, 10, 41, 100, -100, 1.5, 2.0, "2", " 3 ", true, "x", {} }
-- LuaJIT's own find gives other results for positions at the ends of 32 bits and beyond once a call
-- is compiled into a trace than when interpreted: those are left to test_pattern.lua, which
-- compares them with the compiler off.
if not rawget(_G, "jit") then
  for _, v in ipairs { 2 ^ 31 - 1, -2 ^ 31, 2 ^ 31, 2 ^ 31 + 2, 2 ^ 32 + 3, 2 ^ 53, -2 ^ 53, 2 ^ 63, 1 / 0, -1 / 0,
    0 / 0 } do
    INITS[#INITS + 1] = v
  end
end
local function init()
  local k = random(10)
  if k <= 4 then return nil end
  if k <= 8 then return random(-6, 14) end
  return pick(INITS)
end

local REPLS = { "%0", "%1", "<%1|%2>", "%%", "x", "", "%", "%x", "%3", "[%0]", "a%%b", "%9", 7, 2.5,
  { a = "A", b = false, ["1"] = "one", [2] = "two", [" "] = 1.5, x = {} },
  setmetatable({}, { __index = function(_, k) return type(k) == "string" and k:upper() or nil end }),
  function(...) return select("#", ...) end,
  function(a) return a end,
  function() return nil end,
  function() return false end,
  function(_, b) return b end,
  function() return {} end,
  true }
local function repl() return pick(REPLS) end

local NS = { 0, 1, 2, 3, -1, 2.5, 2 ^ 31, 2 ^ 32 + 1, "1", "x" }
local function count() if random(3) == 1 then return pick(NS) end end

-- Runs `cases` random cases from `seed`; returns checked, skipped.
function M.run(cases, seed)
  math.randomseed(seed)
  M.skipped, M.checked = 0, 0
  for _ = 1, cases do
    local p = pattern()
    M.check(subject(p), p, repl(), init(), count())
  end
  return M.checked, M.skipped
end

if arg and arg[0] and arg[0]:find("pattern_diff%.lua$") then
  local cases = tonumber(arg[1]) or 20000
  local seed = tonumber(arg[2]) or os.time()
  local t0 = os.clock()
  local checked, skipped = M.run(cases, seed)
  print(string.format("%s: %d cases from seed %d: %d compared, %d too complex for the stock matcher, %.1f s",
    _VERSION .. (rawget(_G, "jit") and (" " .. jit.version) or ""), cases, seed, checked, skipped, os.clock() - t0))
end

return M
