-- The rule sandbox: escape attempts, each contained (no effect outside the rule) and reported as
-- that rule's error with file:line; runaway loops, recursion and allocation stopped by the budgets.
local T = require "testlib"
local policy = require "rtcadmin.policy"
local rtcadmin = require "rtcadmin"

local dir = T.tmpdir()
local sentinel = dir .. "/escaped"
local rules_file = T.numbered_files(dir, "%s/attempt%02d.lua")

-- Loads one rule "attempt" whose condition is `body` (a function body using ev, ctx), fires one
-- event at it and then a second event at a plain rule. Returns the reported errors and decisions.
local function attempt(body, limits)
  local errors, decisions = {}, {}
  local e = policy.new { dry_run = true, limits = limits,
    on_error = function(r) errors[#errors + 1] = r.error end,
    on_decision = function(d) decisions[#decisions + 1] = d.rule end }
  local path = rules_file("rule \"attempt\" { on = \"x\", action = kick, when = function(ev, ctx)\n"
    .. body .. "\nend }\nrule \"after\" { on = \"y\", action = kick }\n")
  assert(e:load(path))
  e:process({ type = "x", app_id = T.APP, room_id = "room1", user_id = "u1", ts = 1 })
  e:process({ type = "y", app_id = T.APP, room_id = "room1", user_id = "u2", ts = 2 })
  return errors, decisions, path
end

-- After every attempt, the host is intact.
local function host_intact(what)
  T.eq(io.open(sentinel, "r"), nil, what .. ": no file was written")
  T.eq(getmetatable("").__index, string, what .. ": string metatable restored")
  T.eq(type(string.rep), "function", what .. ": host string library intact")
  T.eq(type(os.execute), "function", what .. ": host os library intact")
  T.eq(rawget(_G, "pwned"), nil, what .. ": host globals untouched")
  T.eq(debug.gethook(), nil, what .. ": no hook left behind")
end

local ESCAPES = {
  { "os.execute", "os.execute('touch " .. sentinel .. "')", "global 'os'" },
  { "io.open", "io.open('" .. sentinel .. "', 'w'):write('x')", "global 'io'" },
  { "io.popen", "io.popen('touch " .. sentinel .. "')", "global 'io'" },
  { "require", "require('os').execute('touch " .. sentinel .. "')",
    "global 'require'" },
  { "load", "load('pwned = 1')()", "global 'load'" },
  { "loadstring", "loadstring('pwned = 1')()", "global 'loadstring'" },
  { "dofile", "dofile('/etc/passwd')", "global 'dofile'" },
  { "loadfile", "loadfile('/etc/passwd')", "global 'loadfile'" },
  { "debug", "debug.sethook()", "global 'debug'" },
  { "_G", "_G.pwned = 1", "global '_G'" },
  { "_ENV global write", "pwned = 1", "cannot set global 'pwned'" },
  { "getmetatable string", "getmetatable('').__index.rep = nil", "global 'getmetatable'" },
  { "string method reaches the host", "return ('').dump(function() end)",
    "field 'dump'" },
  { "string method table write", "local s = ''; s.rep = nil", "a string value" },
  { "rawget/rawset", "rawset(_ENV, 'pwned', 1)", "global 'rawset'" },
  { "setmetatable __gc", "setmetatable({}, { __gc = function() while true do end end })", "global 'setmetatable'" },
  { "collectgarbage", "collectgarbage('stop')", "global 'collectgarbage'" },
  { "coroutine", "coroutine.wrap(function() while true do end end)()", "global 'coroutine'" },
  { "pcall to swallow the budget", "pcall(function() while true do end end)", "global 'pcall'" },
  { "package", "package.loaded.os.execute('touch " .. sentinel .. "')", "global 'package'" },
  { "ctx internals", "return ctx.engine.client", "field 'engine'" },
  { "ctx write", "ctx.count = function() return 1e9 end", "ctx is read%-only" },
  { "ctx metatable", "return getmetatable(ctx)", "global 'getmetatable'" },
  { "string.rep bomb", "return string.rep('x', 1e10)", "string.rep: result of 10000000000 bytes exceeds" },
  { "string method rep bomb", "return ('x'):rep(1e10)", "string.rep: result of 10000000000 bytes exceeds" },
  { "table.concat bomb", "local t = {} for i = 1, 100 do t[i] = string.rep('x', 65536) end return table.concat(t)",
    "table.concat: result exceeds" },
}

for _, c in ipairs(ESCAPES) do
  T.case("escape: " .. c[1] .. " is contained and reported with file:line", function()
    local errors, decisions, path = attempt(c[2])
    T.eq(#errors, 1, "one error reported")
    T.match(errors[1], "^" .. T.literal(path) .. ":[12]: ", "file:line") -- 1 after a tail call
    T.match(errors[1], c[3], "message")
    T.same(decisions, { "after" }, "the attempt decided nothing; the engine carried on")
    host_intact(c[1])
  end)
end

local RUNAWAY = {
  { "infinite loop", "while true do end", "instruction budget exceeded" },
  { "infinite loop in a callback from C", "string.gsub('abc', '.', function() while true do end end)",
    "instruction budget exceeded" },
  { "infinite loop in a sort comparator", "local t = {3, 2, 1} table.sort(t, function() while true do end end)",
    "instruction budget exceeded" },
  { "infinite recursion", "local function f(x) return f(x + 1) + 1 end return f(1)", "exceeded|stack overflow" },
  { "string doubling", "local s = 'x' while true do s = s .. s end", "memory budget exceeded" },
  { "table growth", "local t = {} while true do t[#t + 1] = { 1, 2, 3 } end", "budget exceeded" },
  { "string growth by method calls", "local s = 'xxxxxxxx' while true do s = s:rep(2) end",
    "exceeds the sandbox's|memory budget exceeded" },
  { "repeat loop", "repeat local x = 1 until false", "instruction budget exceeded" },
  { "loop written after look-alikes in strings and comments",
    "local a, b = 'do', \"repeat \\\" function()\" --[==[ ]] do ]==] local c = [[ do ]] .. 1e+5\n"
      .. "local d = '--[[' while a do end", "instruction budget exceeded" },
  { "tail-call loop", "local function f(n) return f(n + 1) end return f(1)", "instruction budget exceeded" },
}
if _VERSION ~= "Lua 5.1" or rawget(_G, "jit") then
  RUNAWAY[#RUNAWAY + 1] = { "goto loop", "::top:: local x = 1 goto top", "instruction budget exceeded" }
  RUNAWAY[#RUNAWAY + 1] = { "loop after a \\z string and a hex float",
    "local d = 'x\\z\n  do' .. 0x1p-2 .. \"--\" while d do end", "instruction budget exceeded" }
end

for _, c in ipairs(RUNAWAY) do
  T.case("runaway: " .. c[1] .. " is stopped and reported with file:line", function()
    local before = collectgarbage("count")
    local errors, decisions, path = attempt(c[2], { instructions = 2000000, memory = 8 * 1024 * 1024 })
    T.eq(#errors, 1, "one error reported")
    T.match(errors[1], "^" .. T.literal(path) .. ":%d+: ", "file:line")
    local alternatives = {}
    for alt in c[3]:gmatch("[^|]+") do alternatives[#alternatives + 1] = alt end
    local found = false
    for _, alt in ipairs(alternatives) do if errors[1]:find(alt) then found = true end end
    T.ok(found, errors[1] .. " names the budget")
    T.same(decisions, { "after" }, "the engine carried on")
    host_intact(c[1])
    collectgarbage()
    T.ok(collectgarbage("count") - before < 4096, "the rule's garbage was released")
    -- The ceiling is lifted again: the host may allocate freely.
    T.eq(#string.rep("y", 32 * 1024 * 1024), 32 * 1024 * 1024, "host allocation after the attempt")
  end)
end

T.case("a rules file that loops or allocates at load time is refused with file:line", function()
  local e = policy.new { dry_run = true, limits = { instructions = 100000, memory = 4 * 1024 * 1024 } }
  local ok, errs = e:load(rules_file("local x = 0\nwhile true do x = x + 1 end\n"))
  T.eq(ok, nil, "loop refused")
  T.match(errs[1], "attempt%d+%.lua:2: instruction budget exceeded", "file:line")
  ok, errs = e:load(rules_file("local s = 'x'\n\nwhile true do s = s .. s end\n"))
  T.eq(ok, nil, "memory bomb refused")
  T.match(errs[1], "attempt%d+%.lua: memory budget exceeded %(4194304 bytes%) while the file loaded", "file")
  T.eq(#e.rules, 0, "nothing applied")
  host_intact("load")
end)

T.case("rule code cannot name the budget check; line numbers are the file's own", function()
  local e = policy.new { dry_run = true }
  for _, c in ipairs({
    { "local x = 1\nlocal __rtc_step = function() end\n", ":2: the name '__rtc_step' is reserved" },
    { "local s = [[\n\n]] -- three lines\nfunction f()\n  error('boom')\nend f()\n", ":5: boom" },
    { "local s = 'unfinished\n", ":1: unfinished string" }, -- Lua's own message
  }) do
    local ok, errs = e:load(rules_file(c[1]))
    T.eq(ok, nil, "refused: " .. c[2])
    T.match(errs[1], "attempt%d+%.lua" .. T.literal(c[2]), "file:line")
  end
end)

T.case("precompiled chunks are refused", function()
  local e = policy.new { dry_run = true }
  local path = dir .. "/binary.lua"
  T.write_file(path, string.dump(function() return 1 end))
  local ok, errs = e:load(path)
  T.eq(ok, nil, "refused")
  T.match(errs[1], "precompiled chunks are refused", "reason")
end)

T.case("a rule changing its own string table affects only itself", function()
  local e = policy.new { dry_run = true }
  assert(e:load(rules_file('string.upper = nil\nrule "r" { on = "x", action = kick }')))
  T.eq(("a"):upper(), "A", "host string.upper")
  T.eq(string.upper("b"), "B", "host string.upper")
end)

T.case("the sandbox offers the safe libraries rules need", function()
  local errors, decisions = attempt([[
    assert(string.format("%d-%s", 1, "a") == "1-a")
    assert(("Hello"):lower() == "hello" and ("abc"):find("b") == 2)
    assert(table.concat({ "a", "b" }, ",") == "a,b")
    assert(math.max(1, 2) == 2 and math.floor(1.5) == 1)
    assert(utf8 == nil or utf8.len("é") == 1) -- utf8 from Lua 5.3 on
    assert(select("#", 1, 2) == 2 and tostring(1) == "1" and tonumber("2") == 2)
    return true]])
  T.same(errors, {}, "no errors")
  T.same(decisions, { "attempt", "after" }, "both decided")
end)

T.case("callbacks and the audit writer run outside the sandbox, after the event's conditions", function()
  local seen = {}
  local e = policy.new { dry_run = true,
    audit = function(r) seen[#seen + 1] = #("x"):rep(4 * 1024 * 1024) .. " " .. r.kind end,
    on_decision = function(d)
      local count = 0
      for _ = 1, 3000000 do count = count + 1 end -- beyond a rule's instruction budget
      seen[#seen + 1] = d.rule .. " " .. count .. " " .. tostring(debug.gethook())
    end }
  assert(e:load(rules_file('rule "a" { on = "x", action = kick }\nrule "b" { on = "x", action = ban(60) }')))
  T.eq(e:process({ type = "x", app_id = T.APP, room_id = "room1", user_id = "u", ts = 1 }), 2, "both decided")
  T.same(seen, { "4194304 decision", "a 3000000 nil", "4194304 decision", "b 3000000 nil" }, "callbacks ran freely")
end)

T.case("the heap ceiling is per call and is lifted afterwards", function()
  collectgarbage() -- the ceiling is the heap's size now plus the budget: garbage collected later is room too
  local used = rtcadmin.heap_budget(0)
  T.ok(used > 0, "accounting works")
  rtcadmin.heap_budget(1024 * 1024)
  -- A string no other test made: Lua 5.1 interns every string, so a repeat would not allocate.
  local ok, err = pcall(string.rep, "q", 4 * 1024 * 1024 + 7)
  rtcadmin.heap_budget(0)
  T.eq(ok, false, "refused under a 1 MiB ceiling")
  T.match(err, "^not enough memory", "as a memory error") -- 5.3: "... for buffer allocation"
  T.eq(#string.rep("x", 4 * 1024 * 1024), 4 * 1024 * 1024, "allowed without a ceiling")
  T.raises("expected bytes >= 0", rtcadmin.heap_budget, -1)
end)

T.case("heap_budgeter(bytes) gives the same ceiling as two functions: arm and lift", function()
  local arm, lift = rtcadmin.heap_budgeter(1024 * 1024)
  collectgarbage()
  arm()
  local ok, err = pcall(string.rep, "w", 4 * 1024 * 1024 + 11)
  lift()
  T.eq(ok, false, "refused while armed")
  T.match(err, "^not enough memory", "as a memory error")
  T.eq(#string.rep("y", 4 * 1024 * 1024 + 13), 4 * 1024 * 1024 + 13, "allowed once lifted")
  arm()
  local small = string.rep("z", 64 * 1024 + 17)
  lift()
  T.eq(#small, 64 * 1024 + 17, "growth within the budget is allowed")
  T.raises("expected bytes > 0", rtcadmin.heap_budgeter, 0)
  T.raises("number expected", rtcadmin.heap_budgeter, "lots")
end)

T.case("without rtcadmin.heap_budget (the Lua files alone) the budgets still stop loops and heap growth", function()
  local names, saved = { "rtcadmin", "rtcadmin.sandbox", "rtcadmin.policy" }, {}
  for _, m in ipairs(names) do saved[m] = package.loaded[m]; package.loaded[m] = nil end
  package.preload.rtcadmin = function() error("the C module is not installed here") end
  local ok, lua_only = pcall(require, "rtcadmin.policy")
  package.preload.rtcadmin = nil
  for _, m in ipairs(names) do package.loaded[m] = saved[m] end
  assert(ok, lua_only)
  T.ok(lua_only ~= policy, "a second copy of the engine, loaded without the C module")
  local errors, decisions = {}, {}
  local e = lua_only.new { dry_run = true, limits = { instructions = 1000000, memory = 4 * 1024 * 1024 },
    on_error = function(r) errors[#errors + 1] = r.error end,
    on_decision = function(d) decisions[#decisions + 1] = d.rule end }
  assert(e:load(rules_file(table.concat({
    'rule "loop" { on = "x", action = kick, when = function() while true do end end }',
    'rule "grow" { on = "x", action = kick, when = function()',
    '  local t = {} for i = 1, 1e9 do t[i] = string.rep("g", 1000) .. i end end }',
    'rule "after" { on = "x", action = kick }' }, "\n"))))
  T.eq(e:process({ type = "x", app_id = T.APP, room_id = "room1", user_id = "u1", ts = 1 }), 1, "the last rule decided")
  T.eq(#errors, 2, "two rule errors")
  T.match(errors[1], "attempt%d+%.lua:1: instruction budget exceeded", "the loop, with file:line")
  T.match(errors[2], "attempt%d+%.lua:3: memory budget exceeded %(4194304 bytes%)", "the heap growth, with file:line")
  T.same(decisions, { "after" }, "the engine carried on")
  host_intact("Lua files alone")
end)

T.run(function() os.execute("rm -rf " .. T.shell_quote(dir)) end)
