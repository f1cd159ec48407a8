-- The rule sandbox: escape attempts, each contained (no effect outside the rule) and reported as
-- that rule's error with file:line; runaway loops, recursion and allocation stopped by the budgets.
local T = require "testlib"
local policy = require "rtcadmin.policy"
local rtcadmin = require "rtcadmin"

local dir = T.tmpdir()
local sentinel = dir .. "/escaped"
local rules_file = T.numbered_files(dir, "%s/attempt%02d.lua")

-- Loads one rule "attempt" whose condition is `body` (a function body using ev, ctx), fires one
-- event at it (with `fields` added) and then a second event at a plain rule. Returns the reported
-- errors and decisions.
local function attempt(body, limits, fields)
  local errors, decisions = {}, {}
  local e = policy.new { dry_run = true, limits = limits,
    on_error = function(r) errors[#errors + 1] = r.error end,
    on_decision = function(d) decisions[#decisions + 1] = d.rule end }
  local path = rules_file("rule \"attempt\" { on = \"x\", action = kick, when = function(ev, ctx)\n"
    .. body .. "\nend }\nrule \"after\" { on = \"y\", action = kick }\n")
  assert(e:load(path))
  local ev = { type = "x", app_id = T.APP, room_id = "room1", user_id = "u1", ts = 1 }
  for k, v in pairs(fields or {}) do ev[k] = v end
  e:process(ev)
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
  { "os.execute", "os.execute('touch " .. sentinel .. "')", "unknown name 'os'" },
  { "io.open", "io.open('" .. sentinel .. "', 'w'):write('x')", "unknown name 'io'" },
  { "io.popen", "io.popen('touch " .. sentinel .. "')", "unknown name 'io'" },
  { "require", "require('os').execute('touch " .. sentinel .. "')",
    "unknown name 'require'" },
  { "load", "load('pwned = 1')()", "unknown name 'load'" },
  { "loadstring", "loadstring('pwned = 1')()", "unknown name 'loadstring'" },
  { "dofile", "dofile('/etc/passwd')", "unknown name 'dofile'" },
  { "loadfile", "loadfile('/etc/passwd')", "unknown name 'loadfile'" },
  { "debug", "debug.sethook()", "unknown name 'debug'" },
  { "_G", "_G.pwned = 1", "unknown name '_G'" },
  { "_ENV global write", "pwned = 1", "cannot set global 'pwned'" },
  { "getmetatable string", "getmetatable('').__index.rep = nil", "unknown name 'getmetatable'" },
  { "string method reaches the host", "return ('').dump(function() end)",
    "field 'dump'" },
  { "string method table write", "local s = ''; s.rep = nil", "a string value" },
  { "rawget/rawset", "rawset(_ENV, 'pwned', 1)", "unknown name 'rawset'" },
  { "setmetatable __gc", "setmetatable({}, { __gc = function() while true do end end })",
    "unknown name 'setmetatable'" },
  { "collectgarbage", "collectgarbage('stop')", "unknown name 'collectgarbage'" },
  { "coroutine", "coroutine.wrap(function() while true do end end)()", "unknown name 'coroutine'" },
  { "pcall to swallow the budget", "pcall(function() while true do end end)", "unknown name 'pcall'" },
  { "package", "package.loaded.os.execute('touch " .. sentinel .. "')", "unknown name 'package'" },
  { "ctx internals", "return ctx.engine.client", "field 'engine'" },
  { "ctx write", "ctx.count = function() return 1e9 end", "ctx is read%-only" },
  { "ctx metatable", "return getmetatable(ctx)", "unknown name 'getmetatable'" },
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

T.case("a rule changing its own string table while it loads affects only itself", function()
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
  -- Every Lua module of the engine, so each is loaded again over the sandbox without the C module.
  local names, saved = { "rtcadmin", "rtcadmin.sandbox", "rtcadmin.policy", "rtcadmin.rules", "rtcadmin.events",
                         "rtcadmin.store", "rtcadmin.outbox" }, {}
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

---------------------------------------------------------------------------------------------------
-- Work in C: every loop a library function runs is charged to the instruction budget before it
-- starts, and patterns run in rtcadmin's own matcher, which counts its steps.

local HOSTILE_TEXT = ("a "):rep(3000)
local BACKTRACKING = "(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*x$"

local C_WORK = {
  { "string.rep of an empty string 1e15 times", "return string.rep('', 1e15)" },
  { "string.rep with a numeric string count", "return ('x'):rep('3000000')", "exceeds the sandbox's" },
  { "table.unpack over 1e7 values", "return table.unpack({}, 1, 1e7)" },
  { "table.concat over 1e15 slots", "return table.concat({}, '', 1, 1e15)" },
  { "string.byte over a long range, in a loop", "local s = ('x'):rep(7000) for i = 1, 1e6 do s:byte(1, -1) end" },
  { "string.upper of a long string, in a loop", "local s = ('x'):rep(1000000) for i = 1, 1e6 do s:upper() end" },
  { "table.insert at the front of a long list, in a loop",
    "local t = {} for i = 1, 100000 do t[i] = i end for i = 1, 1e6 do table.insert(t, 1, i) end" },
  { "table.sort of a long list, in a loop",
    "local t = {} for i = 1, 100000 do t[i] = -i end for i = 1, 1e6 do table.sort(t) end" },
  { "string.format of a long string, in a loop",
    "local s = ('x'):rep(1000000) for i = 1, 1e6 do string.format('%s', s) end" },
  { "tonumber of a long string, in a loop", "local s = (' '):rep(1000000) for i = 1, 1e6 do tonumber(s) end" },
}
if table.move then -- Lua 5.3 on, LuaJIT
  table.insert(C_WORK, 3, { "table.move over 1e15 slots", "return table.move({}, 1, 1e15, 2)" })
end
for _, name in ipairs({ "find", "match", "gmatch", "gsub" }) do
  local call = name == "gmatch" and "for _ in %s do end" or "return %s"
  local args = name == "gsub" and "BT, ''" or "BT"
  C_WORK[#C_WORK + 1] = { "a backtracking pattern in string." .. name .. " over hostile chat text",
    "local BT = '" .. BACKTRACKING .. "' " .. call:format("string." .. name .. "(ev.text, " .. args .. ")") }
  C_WORK[#C_WORK + 1] = { "a backtracking pattern in the method ev.text:" .. name,
    "local BT = '" .. BACKTRACKING .. "' " .. call:format("ev.text:" .. name .. "(" .. args .. ")") }
end

for _, c in ipairs(C_WORK) do
  T.case("C work: " .. c[1] .. " is stopped by the budget with file:line", function()
    local t0 = T.now()
    local errors, decisions, path = attempt(c[2], nil, { text = HOSTILE_TEXT })
    local took = T.now() - t0
    T.eq(#errors, 1, "one error reported")
    T.match(errors[1], "^" .. T.literal(path) .. ":[12]: ", "file:line") -- 1 after a tail call
    -- (The time budget may come first on a slow, checking build.)
    T.match(errors[1], c[3] or "budget exceeded", "message")
    T.same(decisions, { "after" }, "the engine carried on")
    T.ok(took < 10, "stopped in " .. took .. " s (the stock functions run for minutes or more)")
    host_intact(c[1])
  end)
end

T.case("C work at a rules file's top level is budgeted too: load and check refuse the file", function()
  for _, body in ipairs({ table.move and "table.move({}, 1, 1e15, 2)" or "table.concat({}, '', 1, 1e15)",
                          "string.rep('', 1e15)", "('" .. ("a "):rep(3000) .. "'):find('" .. BACKTRACKING .. "')" }) do
    local path = rules_file("local x = 1\n" .. body .. "\n")
    local t0 = T.now()
    local file, errs = policy.load_file(path)
    T.eq(file, nil, "refused: " .. body:sub(1, 30))
    T.match(errs[1], "^" .. T.literal(path) .. ":2: instruction budget exceeded", "file:line")
    T.ok(T.now() - t0 < 10, "stopped in time")
  end
end)

T.case("patterns and library functions give the stock results within the budget", function()
  local errors, decisions = attempt("local REP_SEP = '" .. ("x"):rep(3, ",") .. "'" .. [[
    local t = ev.text
    assert(t:find("b c", 1, true) == 3 and select(2, t:find("(%w+)$")) == 5)
    assert(t:match("^(%a+)") == "a" and select(2, string.match(t, "(%a)%s(%a)$")) == "c")
    local words = {} for w in t:gmatch("%a+") do words[#words + 1] = w end
    assert(#words == 3 and words[3] == "c")
    assert(t:gsub("%s+", "_") == "a_b_c" and select(2, t:gsub("%a", "%0%0")) == 3)
    assert(("ab"):rep("2") == "abab" and ("x"):rep(3, ",") == REP_SEP)
    assert(not table.move or table.concat(table.move({ 1, 2, 3 }, 1, 3, 2), ",") == "1,1,2,3")
    assert(select("#", table.unpack({ 1, 2, 3 })) == 3 and tonumber("  12  ") == 12)
    local l = { 3, 1, 2 } table.sort(l) table.insert(l, 1, 0) assert(table.remove(l, 1) == 0 and l[3] == 3)
    assert(string.format("%5.1f|%s", 1.25, "z") == "  1.2|z" or string.format("%5.1f|%s", 1.25, "z") == "  1.3|z")
    return true]], nil, { text = "a b c" })
  T.same(errors, {}, "no errors")
  T.same(decisions, { "attempt", "after" }, "both decided")
end)

T.case("a CPU-time ceiling stops work no step sees (comparing long strings in a loop)", function()
  local t0 = T.now()
  local errors = attempt("local a, b = ('x'):rep(1000000) .. 'a', ('x'):rep(1000000) .. 'b'\n"
    .. "local n = 0 for i = 1, 1e6 do local odd = i % 2 == 1\n"
    .. "if (odd and a or b) < (odd and b or a) then n = n + 1 end end return n > 0",
    { instructions = 1e9, memory = 64 * 1024 * 1024, time = 0.2 })
  T.eq(#errors, 1, "stopped")
  T.match(errors[1], "time budget exceeded %(0%.2 s of CPU%)", "by the time budget")
  T.ok(T.now() - t0 < 10, "in time")
end)

---------------------------------------------------------------------------------------------------
-- The event is read-only for conditions, and so are a rules file's library tables once it has loaded.

T.case("a condition cannot change the event: writes are its error, later rules see the event as it was", function()
  local errors, seen = {}, {}
  local e = policy.new { dry_run = true, on_error = function(r) errors[#errors + 1] = r.error end,
    on_decision = function(d) seen[#seen + 1] = d.rule end }
  local path = rules_file(table.concat({
    'rule "w1" { on = "x", action = kick, when = function(ev) ev.id = tostring end }',
    'rule "w2" { on = "x", action = kick, when = function(ev) ev.user_id = "victim" end }',
    'rule "w3" { on = "x", action = kick, when = function(ev) ev.data.n = 1 end }',
    'rule "w4" { on = "x", action = kick, when = function(ev) ev.data.list[1] = "x" end }',
    'rule "w5" { on = "x", action = kick, when = function(ev) local c = {} c.c = c ev.cycle = c end }',
    'rule "reader" { on = "x", action = kick, when = function(ev)',
    '  assert(ev.user_id == "u1" and ev.id == "e1" and ev.data.n == nil and ev.data.list[1] == "a")',
    '  assert(type(ev.data) == "table" and #ev.data.list == 2 and ev.data.list[2] == "b")',
    '  local keys = {} for k in pairs(ev) do keys[#keys + 1] = k end',
    '  local items = {} for i, v in ipairs(ev.data.list) do items[i] = v end',
    '  assert(#keys == 7 and items[2] == "b" and next(ev.data) ~= nil)',
    '  return true end }' }, "\n"))
  assert(e:load(path))
  local ev = { type = "x", app_id = T.APP, room_id = "room1", user_id = "u1", ts = 1, id = "e1",
               data = { list = { "a", "b" } } }
  T.eq(e:process(ev), 1, "the reader decided")
  T.eq(#errors, 5, "every write is its rule's error")
  for i = 1, 5 do
    T.match(errors[i], "^" .. T.literal(path) .. ":" .. i .. ": the event is read%-only", "file:line " .. i)
  end
  T.match(errors[1], "'id'", "names the field")
  T.same(seen, { "reader" }, "decided on the event as it was")
  T.eq(ev.id, "e1", "the caller's event unchanged")
  T.eq(ev.data.n, nil, "and its tables")
  T.eq(ev.data.list[1], "a", "and theirs")
end)

T.case("library tables are read-only while rules run (a file may add helpers while it loads)", function()
  local errors, decisions = attempt("string.n = (string.n or 0) + 1 return true")
  T.eq(#errors, 1, "the write is refused")
  T.match(errors[1], ":2: cannot set 'n': library tables are read%-only", "with file:line")
  T.same(decisions, { "after" }, "the engine carried on")
  for _, body in ipairs({ "math.pi = 3", "table.pack = nil", "kick.kind = 'ban'", "local s = string s.x = {}" }) do
    local errs = attempt(body .. " return true")
    T.eq(#errs, 1, body .. ": refused")
    T.match(errs[1], "library tables are read%-only", body)
  end
  local e = policy.new { dry_run = true }
  assert(e:load(rules_file('function string.starts(s, p) return s:sub(1, #p) == p end\n'
    .. 'rule "r" { on = "x", action = kick, when = function(ev) return string.starts(ev.user_id, "u") end }')))
  T.eq(e:process({ type = "x", app_id = T.APP, room_id = "room1", user_id = "u1", ts = 1 }), 1,
    "a helper added at load time works")
  T.eq(rawget(string, "starts"), nil, "the host's string table is untouched")
end)

---------------------------------------------------------------------------------------------------
-- Counted kinds are bounded, so memory is bounded by max_keys whatever the events contain.

T.case("counters made from event text stop at max_counters with a rule error naming the cap", function()
  local errors = {}
  local e = policy.new { dry_run = true, max_counters = 16,
    on_error = function(r) errors[#errors + 1] = r.error end }
  local path = rules_file('rule "by-text" { on = "chat", action = kick,\n'
    .. '  when = function(ev, ctx) return ctx:count("chat:" .. ev.text, 60) > 100 end }\n'
    .. 'rule "fields" { on = "chat", action = kick,\n'
    .. '  when = function(ev, ctx) return ctx:distinct("chat", ev.text, 60) > 100 end }\n')
  assert(e:load(path))
  for i = 1, 40 do
    e:process({ type = "chat", app_id = T.APP, room_id = "room1", user_id = "u" .. i, ts = i, text = "t" .. i })
  end
  T.eq(e.ncounters, 16, "16 counters, no more")
  T.ok(#errors >= 10, "the queries past the cap are rule errors")
  T.match(errors[#errors], "^" .. T.literal(path) .. ":[24]: ctx:%a+: the engine counts 16 kinds of events already "
    .. "%(policy option max_counters%)", "naming the cap, at the query's line")
end)

T.case("memory stays bounded when events carry 200 000 distinct texts", function()
  local e = policy.new { dry_run = true, max_keys = 1000 }
  assert(e:load_source('rule "by-text" { on = "chat", action = kick,\n'
    .. '  when = function(ev, ctx) return ctx:count("chat:" .. ev.text, 60) > 100 end }', "bytext.lua"))
  local function feed(from, to, users)
    for i = from, to do
      e:process({ type = "chat", app_id = T.APP, room_id = "room1", user_id = "u" .. (i % users), ts = 1 + i / 1000,
                  text = ("spam %d "):format(i) })
    end
  end
  feed(1, 2000, 50)
  collectgarbage() collectgarbage()
  local base = collectgarbage("count")
  feed(2001, 200000, 50)
  collectgarbage() collectgarbage()
  local after = collectgarbage("count")
  T.ok(after - base < 2048, ("200k distinct texts grew the heap by %.0f KiB (< 2 MiB)"):format(after - base))
  feed(200001, 200200, 1000000) -- 200 new users
  collectgarbage() collectgarbage()
  local per_user = (collectgarbage("count") - after) * 1024 / 200
  T.ok(per_user < 4096, ("a new user costs %.0f bytes (< 4 KiB)"):format(per_user))
end)

---------------------------------------------------------------------------------------------------
-- Hostile numbers in events: invalid events with a reason, never a crash; the next event is decided.

T.case("hostile numbers in ts and id are invalid events with a reason; the next event is decided", function()
  local e = policy.new { dry_run = true }
  assert(e:load_source('rule "r" { on = "x", action = kick, cooldown = 0 }', "r.lua"))
  local function ev(fields)
    local t = { type = "x", app_id = T.APP, room_id = "room1", user_id = "u", ts = 5 }
    for k, v in pairs(fields) do t[k] = v end
    return t
  end
  local cases = {
    { { ts = 1e308 }, "out of range" }, { { ts = math.huge }, "out of range" }, { { ts = -math.huge }, "out of range" },
    { { ts = -1 }, "out of range" }, { { ts = 1700000000000 }, "looks like milliseconds.*divide by 1000" },
    { { ts = 0 / 0 }, "must be a number" }, { { id = math.huge }, "whole number" },
    { { id = -math.huge }, "whole number" },
    { { id = 0 / 0 }, "whole number" }, { { id = 1.5 }, "whole number" }, { { id = "" }, "1%-256 bytes" },
    { { id = ("i"):rep(257) }, "1%-256 bytes" },
  }
  for _, c in ipairs(cases) do
    local n, why = e:process(ev(c[1]))
    local k, v = next(c[1])
    T.eq(n, nil, k .. " = " .. tostring(v) .. " refused")
    T.match(why, c[2], k .. " = " .. tostring(v))
    T.eq(e:process(ev({ id = tostring(_) .. "ok" })), 1, "the next event is decided")
  end
  T.eq(e:stats().invalid, #cases, "all counted")
  local made, invalid = e:process_batch({ ev { ts = math.huge }, ev { id = 0 / 0 }, ev { ts = 6 }, ev { id = 1e999 } })
  T.eq(made, 1, "a batch goes on past them")
  T.eq(invalid, 3, "and counts them")
  -- Distinct values that cannot be table keys, or are huge, are no crash either.
  assert(e:load_source('rule "d" { on = "rep", action = kick, when = function(ev, ctx)\n'
    .. ' return ctx:distinct("rep", "by", 60) >= 2 end }', "d.lua"))
  T.eq(e:process(ev { type = "rep", by = 0 / 0 }), 0, "NaN value: counted as nothing")
  T.eq(e:process(ev { type = "rep", by = ("v"):rep(1000000) }), 0, "a 1 MB value")
  T.eq(e:process(ev { type = "rep", by = "other" }), 1, "and the next distinct value fires")
end)

T.run(function() os.execute("rm -rf " .. T.shell_quote(dir)) end)
