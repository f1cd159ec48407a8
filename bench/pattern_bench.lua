-- The budgeted pattern functions (rtcadmin.pattern_functions) against the interpreter's own, on
-- the patterns moderation rules use, over chat texts: short messages (40-90 bytes) and about 1 KB.
--
--   LUA_CPATH='build/?.so;;' lua5.4 bench/pattern_bench.lua [rounds=7] [seconds=0.1] [only=<text in a case name>]
--
-- Each case runs stock and budgeted in turn, `rounds` times, each run about `seconds` of CPU; the
-- table gives the median rates and the median of the per-round ratios (budgeted time / stock time).
-- The budget is finite (counted and written back, as in the sandbox) and never runs out. Before
-- timing, every case's results are checked to be the same both ways; a difference exits non-zero.
local rtcadmin = require "rtcadmin"

local ROUNDS = tonumber(arg[1]) or 7
local SECONDS = tonumber(arg[2]) or 0.1
local ONLY = arg[3]

local budget = { 1e15 }
local B = rtcadmin.pattern_functions(budget, function() error("budget exhausted") end)
local S = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }

local SHORT = {
  "hey everyone, who's up for a game later?",
  "FREE nitro!!! click https://disc0rd-gift.example/claim now",
  "lol that was close",
  "   gg wp   ",
  "my email is someone.name@example.com if you want the replay",
  "spam spam SPAM buy now at www.cheap-stuff.example",
  "is the stream lagging for anyone else or just me",
  "order 4815 shipped, tracking 162342",
  "!kick raider_09 for flooding",
  "free stuff here: http://bit.example/x  free free free",
  "can someone share the link to the rules doc",
  "ok   so   the   plan   is   this",
}
local LONG = {}
do
  local words = {}
  for _, m in ipairs(SHORT) do words[#words + 1] = m end
  for i = 1, 6 do
    local t, k = {}, 0
    while #table.concat(t, " ") < 1000 do
      k = k + 1
      t[#t + 1] = words[(i * 5 + k * 7) % #words + 1]
    end
    LONG[i] = table.concat(t, " ")
  end
end

-- Each case: name, and the body of a function of the text `s` doing what a rule condition would
-- with the library `lib`. It is compiled once per library, so that LuaJIT's traces for one never
-- run with the other.
local CASES = {
  { 'find "https?://"', 'return lib.find(s, "https?://")' },
  { 'find "%f[%w]free%f[%W]"', 'return lib.find(s, "%f[%w]free%f[%W]")' },
  { 'match "^%s*(.-)%s*$"', 'return lib.match(s, "^%s*(.-)%s*$")' },
  { 'find "[%w%.%-_]+@[%w%.%-_]+"', 'return lib.find(s, "[%w%.%-_]+@[%w%.%-_]+")' },
  { 'match "(%d+)%s*$"', 'return lib.match(s, "(%d+)%s*$")' },
  { 'find "[Ss][Pp][Aa][Mm]"', 'return lib.find(s, "[Ss][Pp][Aa][Mm]")' },
  { 'match "^!(%a+)%s+(%S+)"', 'return lib.match(s, "^!(%a+)%s+(%S+)")' },
  { 'find "free", plain', 'return lib.find(s, "free", 1, true)' },
  { 'gsub "%s+" -> " "', 'return lib.gsub(s, "%s+", " ")' },
  { 'gmatch "%a+" (count words)', 'local n = 0 for _ in lib.gmatch(s, "%a+") do n = n + 1 end return n' },
}

-- A case compiled for one library: run(s) does the case once; time(texts, reps) runs it over the
-- texts `reps` times and returns the CPU seconds (its own loop, so LuaJIT traces it separately).
local load_text = loadstring or load -- luacheck: ignore 113 (5.1 global)
local function compile(lib, body)
  return assert(load_text("local lib, clock = ...\n"
    .. "local function run(s) " .. body .. " end\n"
    .. "local function time(texts, reps)\n"
    .. "  local t0 = clock()\n"
    .. "  for _ = 1, reps do for i = 1, #texts do run(texts[i]) end end\n"
    .. "  return clock() - t0\n"
    .. "end\n"
    .. "return { run = run, time = time }"))(lib, os.clock)
end

-- Everything a case returns over the texts, as one string.
local function results(case, texts)
  local out = {}
  for _, s in ipairs(texts) do
    local r = { case.run(s) }
    for i = 1, #r do r[i] = tostring(r[i]) end
    out[#out + 1] = table.concat(r, "|")
  end
  return table.concat(out, "\n")
end

local function median(list)
  table.sort(list)
  return list[math.floor((#list + 1) / 2)]
end

print(string.format("%s, %d rounds of about %.2f s", _VERSION .. (rawget(_G, "jit") and (" " .. jit.version) or ""),
  ROUNDS, SECONDS))
print(string.format("| %-32s | %-5s | %12s | %12s | %5s |", "case", "text", "stock calls/s", "budgeted", "ratio"))
print("| --- | --- | ---: | ---: | ---: |")
local ratios = {}
for _, case in ipairs(CASES) do
  local name = case[1]
  for _, set in ipairs(ONLY and not name:find(ONLY, 1, true) and {} or { { "short", SHORT }, { "1 KB", LONG } }) do
    local label, texts = set[1], set[2]
    local stock_case, budgeted_case = compile(S, case[2]), compile(B, case[2])
    if results(stock_case, texts) ~= results(budgeted_case, texts) then
      io.stderr:write("different results for " .. name .. " over the " .. label .. " texts\n")
      os.exit(1)
    end
    -- As many repetitions as take about SECONDS with the stock functions.
    local reps = 1
    while stock_case.time(texts, reps) < SECONDS / 4 do reps = reps * 2 end
    reps = math.max(1, math.floor(reps * SECONDS / math.max(stock_case.time(texts, reps), 1e-6)))
    local stock, budgeted, ratio = {}, {}, {}
    for r = 1, ROUNDS do
      local ts = stock_case.time(texts, reps)
      local tb = budgeted_case.time(texts, reps)
      stock[r], budgeted[r], ratio[r] = reps * #texts / ts, reps * #texts / tb, tb / ts
    end
    local q = median(ratio)
    ratios[#ratios + 1] = q
    print(string.format("| %-32s | %-5s | %12.0f | %12.0f | %5.2f |", name, label, median(stock), median(budgeted), q))
  end
end
local largest = 0
for _, q in ipairs(ratios) do largest = math.max(largest, q) end
print(string.format("median ratio %.2f, largest %.2f", median(ratios), largest))
