-- rtcadmin.pattern_functions: Lua's find, match, gmatch and gsub on a step budget. Every case
-- runs the budgeted function and the running interpreter's own with the same arguments and wants
-- the same results (types included) or the same error; the version differences are also spelt
-- out. Then the budget protocol, and randomized differential testing (tests/fuzz/pattern_diff.lua).
local T = require "testlib"
local rtcadmin = require "rtcadmin"
local D = dofile(T.source_dir .. "/tests/fuzz/pattern_diff.lua")

local JIT = rawget(_G, "jit") ~= nil
local V = tonumber(_VERSION:match("%d+%.%d+"))
local unpack = T.unpack

-- Functions with an unlimited budget, for the comparisons.
local P = rtcadmin.pattern_functions({ math.huge }, function() error("unlimited budget exhausted") end)

local function args_text(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = D.describe((select(i, ...))) end
  return table.concat(t, ", ")
end

-- lib[name](...) gives the same outcome for the budgeted functions as for the stock ones.
local function same(name, ...)
  T.eq(D.outcome(P, name, ...), D.outcome(string, name, ...), name .. "(" .. args_text(...) .. ")")
end

-- Every pattern on every subject through every function: find (also plain and from position 2),
-- match, gmatch and gsub with each replacement.
local function same_everywhere(patterns, subjects, replacements)
  for _, p in ipairs(patterns) do
    for _, s in ipairs(subjects) do
      same("find", s, p)
      same("find", s, p, 2)
      same("find", s, p, 1, true)
      same("match", s, p)
      same("match", s, p, 2)
      same("gmatch", s, p)
      for _, r in ipairs(replacements) do same("gsub", s, p, r) end
    end
  end
end

-- Every byte, for the classes.
local ALL = {}
for i = 0, 255 do ALL[#ALL + 1] = string.char(i) end
ALL = table.concat(ALL)

T.case("character classes and their complements, over every byte", function()
  for _, c in ipairs { "a", "c", "d", "g", "l", "p", "s", "u", "w", "x", "z", "q", "%", ".", "(" } do
    for _, cl in ipairs { "%" .. c, "%" .. c:upper(), "[%" .. c .. "]", "[^%" .. c .. "]", "%" .. c .. "+" } do
      same("gsub", ALL, cl, "")
      same("find", ALL, cl)
      same("find", ALL, cl, 100)
    end
  end
  same("gsub", ALL, ".", "x")
  same("find", ALL, ".", 256)
  same("find", ALL, ".", 257)
end)

T.case("escapes of special characters", function()
  local subject = "a%b.c]d[e(f)g-h^i$j*k+l?m"
  for c in ("%.][()-^$*+?"):gmatch(".") do
    same("find", subject, "%" .. c)
    same("gsub", subject, "%" .. c, "_")
    same("find", subject, "[%" .. c .. "]")
  end
end)

T.case("sets: ranges, complements, classes inside, and the edge cases of ']' and '-'", function()
  local sets = { "[abc]", "[^abc]", "[a-f]", "[^a-f]", "[%a_]", "[%d%s]+", "[]]", "[^]]", "[]a]", "[a-]", "[-a]",
    "[a-c-e]", "[a-%%]", "[%]]", "[%a-z]", "[z-a]", "[%%-]", "[\0-\31]", "[^%z]", "[%^]", "[^^]", "[a^]",
    "[.]", "[%.%-_]", "[%w%.%-_]+@[%w%.%-_]+", "[", "[a", "[^", "[]", "[%", "[%]", "[a-%]", "x[", "x[a" }
  local captured = {}
  for i, set in ipairs(sets) do captured[i] = "(" .. set .. ")" end
  local subjects = { "abc]def-^.%_ 12\0\31zZ", "mail: a.b-c_d@ex-ample.org!", "]]]", "", "^-^" }
  same_everywhere(sets, subjects, { "<%0>" })
  same_everywhere(captured, subjects, { "<%1>" })
end)

T.case("repetitions: greedy, lazy, optional, one or more", function()
  same_everywhere({ "a*", "a+", "a-", "a?", "a-b", "a*b", "a+b", "a?b", ".-b", ".*b", "(a*)(a-)", "^(a-)(a*)$",
    "x-$", "%s*(.-)%s*$", "^%s*(.-)%s*$", "(%d+)%s*$", "%a+%d*", "[ab]-[bc]+", "a**", "a*+", "+a", "*", "-", "?" },
    { "", "aaa", "aaab", "baaa", "  trim me  ", "xxx", "ab12 cd3 ", "a*+" }, { "[%0]" })
end)

T.case("anchors: '^' only at the start (not in gmatch), '$' only at the end", function()
  same_everywhere({ "^a", "a$", "^$", "$", "^", "a$b", "a^b", "^^a", "$$", "^a$", "^(a)", "(a)$", "%$", "^%^" },
    { "", "a", "aa", "a$b", "a^b", "^a", "$", "^^a" }, { "-" })
end)

T.case("captures, position captures, back-references and their errors", function()
  same_everywhere({ "(a)(b)", "((a)(b))", "()", "()a()", "(a)()(b)", "(a*(.)%w(%s*))", "(h)(e)(l)(l)(o)", "(a",
    "a)", ").", ".)", "(()", "%1", "(a)%1", "(a)%2", "(a%1)", "()%1", "(a()%2)", "%0", "(.)%1", "(%a+) %1",
    "(a)(b)%2%1", ("()"):rep(32), ("()"):rep(33), ("(a)"):rep(32), ("(."):rep(33), "%9", "(a)%9" },
    { "a", "aa", "ab", "abba", "hello hello", "baab", ("a"):rep(40) }, { "<%1>", "%0" })
end)

T.case("%b and %f", function()
  same_everywhere({ "%b()", "%b''", "%b[]", "%bab", "%b", "%ba", "%b()*", "x%b()", "%f[%w]%w+", "%f[%W]",
    "%f[%a]%a+%f[%A]", "%f[%z]", "%f[%Z]", "%f[\0]", "%f", "%fa", "%f[a", "x%f[a", "%f[%w]free%f[%W]", "%f[^%s]" },
    { "", "x(a(b)c)y", "(x", "x'a'b'", "THE (quick) fox", "free freedom free!", "[[]]", "ab" }, { "{%0}" })
end)

T.case("NUL bytes in patterns and subjects", function()
  same_everywhere({ "a\0.", "\0", "[\0]", "%z", ".\0", "(.)\0(.)", "a\0b", "[^\0]+", "\0*", "%f[\0]", "a\0[" },
    { "a\0b", "\0\0", "abc", "a\0.", "" }, { "x" })
end)

T.case("limits: 32 captures, and the depth limit of 200 choice points", function()
  same("find", "a", ("()"):rep(32))
  same("find", "a", ("()"):rep(33))
  same("find", ("a"):rep(300), ("("):rep(100) .. (")"):rep(100))
  same("find", ("a"):rep(300), ("a?"):rep(199))
  same("find", ("a"):rep(300), ("a-"):rep(150) .. "$")
  if V >= 5.2 then -- the stock 5.2+ limit is the same
    same("find", ("a"):rep(300), ("a?"):rep(200))
    same("find", ("a"):rep(300), ("(a?)"):rep(30) .. ("a?"):rep(170))
  end
  -- Everywhere, and where the stock 5.1 and LuaJIT matchers would recurse until the C stack overflows:
  T.raises("pattern too complex", P.find, ("a"):rep(300), ("a?"):rep(200))
  T.raises("pattern too complex", P.find, ("a"):rep(100000), ("a?"):rep(100000))
  T.raises("pattern too complex", P.gsub, ("a"):rep(1000), ("a-"):rep(1000), "")
end)

T.case("find, match and gmatch arguments: init of every kind, plain, numbers for strings", function()
  -- LuaJIT's own find treats a position beyond 32 bits one way when interpreted and another once
  -- compiled into a trace: the interpreter's way is the one to compare with.
  if JIT then jit.off() end
  local inits = { 1, 2, 3, 4, 5, 6, 10, 0, -1, -3, -4, -10, 1.5, 2.0, "2", " 3 ", "0x2", "x", true, {}, 2 ^ 31 - 1,
    2 ^ 31, 2 ^ 31 + 2, 2 ^ 32 + 3, -2 ^ 31, -2 ^ 31 - 1, -2 ^ 32 + 2, 2 ^ 53, 2 ^ 63, -2 ^ 63, 1 / 0, -1 / 0, 0 / 0 }
  for _, init in ipairs(inits) do
    for _, p in ipairs { "b", "", "()", "^b", "b*", "x" } do
      same("find", "abcab", p, init)
      same("find", "abcab", p, init, true)
      same("match", "abcab", p, init)
      same("gmatch", "abcab", p, init)
    end
  end
  for _, plain in ipairs { true, 1, 0, "", false } do same("find", "a.c", ".", 1, plain) end
  same("find", "a.c", ".", nil, nil)
  same("find", 12345, 34)
  same("match", 12345, "(%d)(%d)")
  same("gsub", 12345, 3, 9)
  same("find", "a", 1.5)
  for _, bad in ipairs { {}, true, print } do
    same("find", bad, "a")
    same("find", "a", bad)
    same("match", bad, "a")
    same("gmatch", "a", bad)
  end
  same("find")
  same("find", "a")
  same("gmatch")
  same("gmatch", "a")
  if JIT then jit.on() end
end)

T.case("gsub: replacement strings, tables, functions, the limit, argument errors", function()
  local repls = { "%0", "%1", "%2", "<%1|%2>", "%%", "%", "a%", "%x", "%\0", "%9", "", "x", 7, 2.5, -0.0,
    { a = "A", b = false, ["1"] = 1, c = {} }, { [1] = "one", [3] = "three" },
    setmetatable({}, { __index = function(_, k) return type(k) == "string" and k:upper() or nil end }),
    function(...) return select("#", ...) end, function(a) return a end, function() end,
    function() return false end, function() return {} end, function() return "r", "ignored" end,
    function(a, b) return (b or a) .. "!" end, true, nil }
  for i = 1, #repls + 1 do -- the last one is nil: "no value" for arguments
    local repl = repls[i]
    for _, p in ipairs { "%w+", "(%w)(%w)", "()b", "(b)()", "", "x*", "^a", "(a)(b", "%w*" } do
      same("gsub", "abc ab", p, repl)
    end
  end
  for _, n in ipairs { 0, 1, 2, -1, 2.5, "2", "x", {}, 2 ^ 31, 2 ^ 32 + 1, -2 ^ 32 + 1, 0 / 0, 1 / 0 } do
    same("gsub", "abc", "%w", "x", n)
    same("gsub", "abc", "", "-", n)
    same("gsub", "abc", "%w", nil, n) -- which argument is reported first
  end
  same("gsub", "abc")
  same("gsub", "abc", "b")
  same("gsub", "hello world", "o", { o = "0" })
  same("gsub", "$name is $age", "%$(%w+)", { name = "ann", age = 7 })
end)

T.case("empty matches next to a match in gsub and gmatch", function()
  for _, p in ipairs { "%w*", "b*", "", "x*", "()", "a-", ".-", "%f[%w]" } do
    for _, s in ipairs { "abc", "a bc", "", "bb", "abba" } do
      same("gsub", s, p, "-")
      same("gsub", s, p, "-", 2)
      same("gmatch", s, p)
    end
  end
end)

T.case("errors name the calling line as the stock ones do", function()
  local load_text = rawget(_G, "loadstring") or load
  -- Each call comes from line 3 of the chunk "caller", not as a tail call.
  local make = assert(load_text("local lib, name = ...\nreturn function(...)\n  local r = { lib[name](...) }\n"
    .. "  if name == 'gmatch' then for _ in r[1] do end end\n  return r\nend", "=caller"))
  local function outcome(lib, name, ...)
    local ok, err = pcall(make(lib, name), ...)
    return ok and "no error" or tostring(err):gsub("to '[^']*'", "to 'f'")
  end
  local errors = {
    { "find", "a", "%" }, { "find", "a", "x", {} }, { "find", nil, "a" }, { "find", "a", "[a", 1, false },
    { "match", "a", "(a" }, { "match", "a", ".)" }, { "gmatch", "a", "(a" }, { "gmatch", "a", "%b" },
    { "gmatch", {}, "a" }, { "gsub", "abc", "%w", { a = {} } }, { "gsub", "abc", "b", "%9" }, { "gsub", "abc", "b" },
    { "gsub", "abc", "(", "%1" }, { "gsub", "abc", "%f", "x" },
  }
  for _, e in ipairs(errors) do
    local want, what = outcome(string, unpack(e)), e[1] .. "(" .. args_text(unpack(e, 2)) .. ")"
    T.match(want, "^caller:[34]: ", what .. ": the stock error has the caller's position")
    T.eq(outcome(P, unpack(e)), want, what)
  end
end)

-- What the comparisons above follow per version, spelt out.
T.case("version differences, spelt out", function()
  local new_empty = V >= 5.3 -- 5.3.3 and later (5.3.6 here)
  T.same({ P.gsub("abc", "%w*", "x") }, new_empty and { "x", 1 } or { "xx", 2 }, "gsub after a match")
  local words = {}
  for w in P.gmatch("abc", "b*") do words[#words + 1] = w end
  T.same(words, new_empty and { "", "b", "" } or { "", "b", "", "" }, "gmatch after a match")
  T.same({ P.find("abc", "", 10) }, V == 5.1 and { 4, 3 } or {}, "find past the end")
  T.same({ P.find("a\0b", "a\0.") }, V >= 5.2 and { 1, 3 } or JIT and { 1, 1 } or {}, "NUL in a pattern")
  T.same({ P.find("  xg", "%g") }, (V >= 5.2 or JIT) and { 3, 3 } or { 4, 4 }, "%g")
  if V >= 5.2 then
    T.raises("^invalid use of '%%' in replacement string$", P.gsub, "abc", "b", "%x")
    T.raises("^malformed pattern %(missing arguments to '%%b'%)$", P.find, "a", "%b")
    T.raises("^invalid capture index %%1$", P.find, "a", "%1")
  else
    T.same({ P.gsub("abc", "b", "%x") }, { "axc", 1 }, "%x in a replacement")
    T.raises("^unbalanced pattern$", P.find, "a", "%b")
    T.raises("^invalid capture index$", P.find, "a", "%1")
  end
  T.same({ P.gsub("abc", "%w", "x", -1) }, V == 5.2 and { "xxx", 3 } or { "abc", 0 }, "gsub's negative limit")
  if V >= 5.3 then
    T.raises("number has no integer representation", P.find, "abc", "b", 1.5)
    if V >= 5.4 then
      words = {}
      for w in P.gmatch("abab", "a", 2) do words[#words + 1] = w end
      T.eq(#words, 1, "gmatch's init")
      T.eq(math.type(P.find("abc", "b")), "integer", "positions are integers")
    end
  else
    T.same({ P.find("abc", "b", 1.5) }, { 2, 2 }, "a fractional init is truncated")
  end
  T.same({ P.find("abcdef", "b", 2 ^ 32 + 3) }, JIT and { 2, 2 } or {}, "an init beyond 32 bits")
end)

-- The budget protocol --------------------------------------------------------------------------------

local PATHOLOGICAL = "(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*x$"
local EXHAUSTED = setmetatable({}, { __tostring = function() return "exhausted" end })

-- Functions on a budget of `steps`; on_exhausted counts its calls and raises (or runs `on`).
local function metered(steps, on)
  local budget = { steps }
  local calls = 0
  local F = rtcadmin.pattern_functions(budget, function()
    calls = calls + 1
    if on then return on(budget, calls) end
    error(EXHAUSTED, 0)
  end)
  return F, budget, function() return calls end
end

-- Steps a call takes: run on a large budget, what it used.
local function steps_of(name, ...)
  local F, budget = metered(1e12)
  F[name](...)
  return 1e12 - budget[1]
end

T.case("a pathological pattern stops at the budget: on_exhausted called, budget[1] left at -1", function()
  local F, budget, calls = metered(100000)
  local t0 = os.clock()
  local ok, err = pcall(F.find, ("a "):rep(3000), PATHOLOGICAL)
  T.eq(ok, false, "stopped")
  T.eq(err, EXHAUSTED, "by on_exhausted's error")
  T.eq(calls(), 1, "on_exhausted called once")
  T.eq(budget[1], -1, "budget[1]")
  T.ok(os.clock() - t0 < 2, "stopped in well under 2 s")
  local others = {
    match = function(s, p) return F.match(s, p) end,
    gmatch = function(s, p) return F.gmatch(s, p)() end,
    gsub = function(s, p) return F.gsub(s, p, "") end,
  }
  for name, run in pairs(others) do
    budget[1] = 5000
    ok, err = pcall(run, ("a "):rep(3000), PATHOLOGICAL)
    T.eq(ok, false, name .. " stopped")
    T.eq(err, EXHAUSTED, name .. ": by on_exhausted's error")
    T.eq(budget[1], -1, name .. ": budget[1]")
  end
end)

T.case("ordinary patterns take a plausible number of steps", function()
  local text = ("Hello there, visit https://example.com for FREE stuff!! mail me: a.b@ex.org  "):rep(13)
  T.ok(#text > 1000, "a 1 KB text")
  local cases = {
    { "find", text, "https?://" }, { "find", text, "%f[%w]free%f[%W]" }, { "match", text, "^%s*(.-)%s*$" },
    { "find", text, "[%w%.%-_]+@[%w%.%-_]+" }, { "match", text, "(%d+)%s*$" }, { "find", text, "[Ss][Pp][Aa][Mm]" },
    { "gsub", text, "%s+", " " }, { "find", text, "FREE", 1, true }, { "find", text, "zzz", 1, true },
  }
  for _, c in ipairs(cases) do
    local n = steps_of(unpack(c))
    T.ok(n >= 1 and n <= 6 * #text, c[1] .. " " .. c[3] .. ": " .. n .. " steps for " .. #text .. " bytes")
  end
  T.ok(steps_of("find", text, "zzz", 1, true) <= #text / 8, "a plain find: about one step per 16 bytes")
  T.ok(steps_of("match", "key=value", "(%w+)=(%w+)") <= 40, "a short match: a few dozen steps")
  -- Work grows with the subject: twice the text, about twice the steps.
  local one, two = steps_of("gsub", text, "%s+", " "), steps_of("gsub", text .. text, "%s+", " ")
  T.ok(two >= 1.8 * one and two <= 2.2 * one, "gsub steps " .. one .. " then " .. two)
end)

T.case("an unlimited budget: math.huge or 2^53 and more, never written", function()
  for _, steps in ipairs { math.huge, 2 ^ 53, 2 ^ 60 } do
    local F, budget, calls = metered(steps)
    T.same({ F.find(("ab"):rep(1000), "(b)a$") }, { string.find(("ab"):rep(1000), "(b)a$") }, "find")
    T.eq(F.gsub(("a "):rep(100), "%s+", "_"), (("a "):rep(100):gsub("%s+", "_")), "gsub")
    T.eq(budget[1], steps, "budget[1] untouched")
    T.eq(calls(), 0, "on_exhausted never called")
  end
  local F, budget = metered(2 ^ 53 - 1)
  F.find("abc", "c")
  T.ok(budget[1] < 2 ^ 53 - 1, "just under 2^53 is counted")
end)

T.case("budget[1] counts down across calls, also integer or float, fractional or negative", function()
  local F, budget, calls = metered(1000)
  F.find("hello world", "o w")
  local after_one = budget[1]
  T.ok(after_one < 1000 and after_one > 950, "one call takes a few steps: " .. after_one)
  if math.type then T.eq(math.type(budget[1]), "integer", "written as an integer") end
  F.find("hello world", "o w")
  T.eq(1000 - budget[1], 2 * (1000 - after_one), "the same call takes the same steps again")
  budget[1] = 100.9
  F.find("hello world", "o w")
  T.eq(budget[1], 100 - (1000 - after_one), "a fractional allowance counts whole steps")
  budget[1] = -5
  T.raises("exhausted", F.find, "hello world", "o w")
  T.eq(calls(), 1, "a negative allowance: on_exhausted at the first step")
  budget[1] = "100"
  T.raises("budget%[1%] must be a number, got string", F.find, "a", "a")
  budget[1] = nil
  T.raises("budget%[1%] must be a number, got nil", F.gsub, "a", "a", "b")
  T.raises("rtcadmin.pattern_functions: budget must be a table, got no value", rtcadmin.pattern_functions)
  T.raises("on_exhausted must be a function, got table", rtcadmin.pattern_functions, {}, {})
end)

T.case("on_exhausted that refills and returns: the match finishes with the stock results", function()
  local subject, pat = ("a "):rep(3) .. "y", PATHOLOGICAL -- no match, after about 70 000 steps
  local F, budget, calls = metered(10, function(b) b[1] = 997 end)
  T.same({ F.find(subject, pat) }, { string.find(subject, pat) }, "find")
  T.ok(calls() > 50, "refilled many times: " .. calls())
  T.ok(budget[1] >= 0 and budget[1] <= 997, "what the last refill left: " .. budget[1])
  -- The allowance and the refills pay exactly the steps taken. A refill to r pays r + 1 steps: the
  -- one that found the allowance spent and r more (as the sandbox's step() sets n - 1 for n steps).
  T.eq(10 + 998 * calls() - budget[1], steps_of("find", subject, pat), "steps paid")
  local text = ("spam  and   eggs "):rep(60)
  budget[1] = 0
  T.same({ F.gsub(text, "(%a+)(%s+)", "%2%1") }, { string.gsub(text, "(%a+)(%s+)", "%2%1") }, "gsub")
  local words = {}
  for w in F.gmatch(text, "%a+") do words[#words + 1] = w end
  T.eq(#words, 180, "gmatch")
end)

T.case("on_exhausted that returns without refilling is called once per step, like the woven check", function()
  local F, budget, calls = metered(0, function() end)
  T.same({ F.match("key=value", "(%w+)=(%w+)") }, { "key", "value" }, "the match completes")
  T.eq(calls(), steps_of("match", "key=value", "(%w+)=(%w+)"), "one call per step")
  T.eq(budget[1], 0, "nothing left")
end)

T.case("the sandbox's protocol: budget[2] refills budget[1] until it runs out, then step() raises", function()
  local budget = { 100, 900 }
  local function step()
    local left = budget[2]
    if left <= 0 then error("instruction budget exceeded", 0) end
    budget[1], budget[2] = left - 1, 0
  end
  local F = rtcadmin.pattern_functions(budget, step)
  local ok, err = pcall(F.find, ("a "):rep(3000), PATHOLOGICAL)
  T.eq(ok, false, "stopped")
  T.eq(err, "instruction budget exceeded", "by step()")
  T.eq(budget[2], 0, "all of budget[2] used")
end)

T.case("Lua code run by gsub and gmatch shares the budget: counts combine", function()
  local function spend(b, n) b[1] = b[1] - n end
  local F, budget = metered(100000)
  local plain = function(w) return w end
  F.gsub("one two three four", "%a+", plain)
  local matcher_steps = 100000 - budget[1]
  budget[1] = 100000
  local G = rtcadmin.pattern_functions(budget, function() error(EXHAUSTED, 0) end)
  G.gsub("one two three four", "%a+", function(w) spend(budget, 10) return w end)
  T.eq(100000 - budget[1], matcher_steps + 40, "the function's 4 x 10 steps and the matcher's")
  -- A table's __index is Lua code too.
  budget[1] = 100000
  G.gsub("one two three four", "%a+", setmetatable({}, { __index = function() spend(budget, 10) end }))
  T.eq(100000 - budget[1], matcher_steps + 40, "__index's steps and the matcher's")
  -- A replacement function that spends the budget stops gsub through on_exhausted.
  budget[1] = 100
  T.raises("exhausted", G.gsub, ("word "):rep(100), "%a+", function(w) spend(budget, 10) return w end)
end)

T.case("gmatch iterators outlive their creating call and charge the budget current at each call", function()
  local F, budget, calls = metered(1000)
  local function words(s) return F.gmatch(s, "%a+") end
  local it = words("alpha beta gamma delta")
  T.eq(it(), "alpha", "first")
  local before = budget[1]
  T.eq(it(), "beta", "second")
  T.ok(budget[1] < before, "the second call charged the budget")
  budget[1] = 0
  T.raises("exhausted", it)
  T.eq(calls(), 1, "an exhausted budget stops the iterator")
  budget[1] = 1000
  T.eq(it(), "gamma", "it goes on once the budget is refilled")
  collectgarbage()
  T.eq(it(), "delta", "after a collection")
  T.eq(it(), nil, "then the end")
  T.eq(it(), nil, "and stays there")
end)

T.case("errors raised by the matcher write the budget back first", function()
  local F, budget = metered(1000)
  T.raises("missing ']'", F.find, ("a"):rep(100) .. "b", "a*[")
  T.ok(budget[1] < 1000 and budget[1] >= 0, "steps before the error counted: " .. budget[1])
  budget[1] = 1000
  T.raises("invalid replacement value %(a table%)", F.gsub, "abc", "%w", function() return {} end)
  T.ok(budget[1] < 1000 and budget[1] >= 0, "gsub's steps counted: " .. budget[1])
end)

T.case("randomized differential testing: 20 000 cases", function()
  local checked, skipped = D.run(20000, 20240611)
  T.ok(checked >= 19000, checked .. " compared, " .. skipped .. " too complex to run the stock matcher on")
end)

T.run()
