-- The sandbox for moderators' rule files: what rule code can reach, and the budgets it runs under.
--
-- A rules file is compiled as text only ("t": no bytecode) into a fresh environment holding the
-- DSL, safe copies of string/table/math/utf8 and a few base functions. Nothing in it reaches the
-- file system, processes, the network, the debug library, load/require, metatables or the host's
-- globals. Rule code is stopped after an instruction budget and refused heap growth beyond a memory
-- budget (rtcadmin.heap_budgeter, enforced in the allocator, because a single `s .. s` or string.rep
-- can allocate gigabytes between two checks). The instruction budget is counted by checks that
-- compile() weaves into the source (every function body, loop body and goto) rather than by a debug
-- hook: a hook slows every instruction on Lua 5.4 and keeps LuaJIT from compiling rule code. See
-- docs/policy.md.
local sandbox = {}

local heap_budgeter
do
  local ok, core = pcall(require, "rtcadmin")
  if ok and type(core) == "table" then heap_budgeter = core.heap_budgeter end
end

local debug_getinfo = debug.getinfo
local string_format, string_rep, string_find, table_concat = string.format, string.rep, string.find, table.concat
local collectgarbage, type, tostring, error, xpcall, select = collectgarbage, type, tostring, error, xpcall, select

-- Lua 5.1 (not LuaJIT) has neither xpcall with arguments nor load with an environment.
local PLAIN_51 = _VERSION == "Lua 5.1" and not rawget(_G, "jit")
local call_with = xpcall
if PLAIN_51 then
  call_with = function(fn, handler, a, b) return xpcall(function() return fn(a, b) end, handler) end
end
local function load_text(source, chunkname, env)
  if PLAIN_51 then
    local fn, err = loadstring(source, chunkname) -- luacheck: ignore 113 (5.1 global)
    if fn then setfenv(fn, env) end -- luacheck: ignore 113 (5.1 global)
    return fn, err
  end
  return load(source, chunkname, "t", env)
end
sandbox.DEFAULTS = {
  instructions = 1000000,       -- steps (function calls, loop iterations, gotos) per call into rule code
  memory = 16 * 1024 * 1024,    -- bytes the Lua heap may grow during one call into rule code
  string_max = 1024 * 1024,     -- longest string string.rep / table.concat may build in a rule
}

-- Budget errors are tables, so rule code cannot forge or mistake them for its own errors.
local BUDGET = {}

-- The budget of the call into rule code under way: one for the process, since a rules file's
-- functions are compiled once and called by whichever runner evaluates them, and calls into rule
-- code never nest. [1] counts the steps down to the next slow check (woven into rule code: kept
-- to one decrement and one comparison); [2] is what remains after that. Outside a runner's
-- protected call [1] is infinite: rule code called by anything else is not counted.
local budget = { math.huge, 0, max = math.huge, memory = 0, ceiling = math.huge }
-- Without rtcadmin.heap_budgeter (the Lua files alone), the slow check also looks at the heap,
-- every CHUNK steps.
local CHUNK = heap_budgeter and math.huge or 1024

local function exceeded(what)
  budget[1] = math.huge
  BUDGET.what = what
  error(BUDGET, 3)
end

local function check_heap()
  if collectgarbage("count") > budget.ceiling then
    collectgarbage()
    if collectgarbage("count") > budget.ceiling then
      exceeded(string_format("memory budget exceeded (%d bytes)", budget.memory))
    end
  end
end

-- The slow check, when the countdown has run out: the budget is spent, or (without
-- rtcadmin.heap_budgeter) it is time to look at the heap and count down the next chunk.
local function step()
  local left = budget[2]
  if left <= 0 then
    exceeded(string_format("instruction budget exceeded (%d steps: calls, loop iterations, gotos)", budget.max))
  end
  if not heap_budgeter then check_heap() end
  local n = math.min(CHUNK, left)
  budget[1], budget[2] = n - 1, left - n
end

-- The names of the check's parts in rule code; refused in rule source, so rule code cannot
-- shadow, replace or reach them. CHECK is what is woven in: one statement, no line break.
-- ENTRY is the same check for the start of a body (function, loop, `do`): with the decremented
-- count in a local, two VM instructions fewer; not before a `goto`, where many would each take a
-- register.
local STEP, COUNT, LEFT = "__rtc_step", "__rtc_b", "__rtc_c"
local CHECK = COUNT .. "[1]=" .. COUNT .. "[1]-1 if " .. COUNT .. "[1]<0 then " .. STEP .. "() end"
local ENTRY = "local " .. LEFT .. "=" .. COUNT .. "[1]-1 " .. COUNT .. "[1]=" .. LEFT .. " if " .. LEFT
  .. "<0 then " .. STEP .. "() end"
local HAS_GOTO = _VERSION ~= "Lua 5.1" or rawget(_G, "jit") ~= nil

-- Returns `source` with a budget check at the start of every function body (after the parameter
-- list), loop body (after `do` and `repeat`; a plain `do` block gets one too) and before every
-- `goto`, or nil, "line N: message". Between two checks rule code runs only straight-line code of
-- its own source, so the checks bound the instructions it can execute. Nothing is inserted across
-- a line break, so line numbers stay as they are. The scan follows Lua's lexical rules for
-- comments, strings and long brackets, so no keyword inside them is taken for code.
local function weave(source)
  local out, n, i, len, line = {}, 0, 1, #source, 1
  local function emit(a, b) n = n + 1; out[n] = source:sub(a, b) end
  local function ins(text) n = n + 1; out[n] = text end
  local function lines(a, b)
    local _, k = source:sub(a, b):gsub("\n", "")
    line = line + k
  end
  -- A long bracket opening at i ("[", "=" * level, "["): returns the index past its closing one.
  local function long_bracket(at)
    local eq = source:match("^%[(=*)%[", at)
    if not eq then return nil end
    local close = "]" .. eq .. "]"
    local _, e = source:find(close, at + #eq + 2, true)
    if not e then return false end
    return e + 1
  end
  local after_function = false -- inside `function ... (` up to the parameter list's `)`
  ins("local " .. STEP .. ", " .. COUNT .. " = ...; ")
  while i <= len do
    local c = source:sub(i, i)
    if c == "\n" then
      emit(i, i); line = line + 1; i = i + 1
    elseif c:find("^%s") then
      local _, e = source:find("^[ \t\r\f\v]+", i)
      emit(i, e or i); i = (e or i) + 1
    elseif c == "-" and source:sub(i + 1, i + 1) == "-" then
      local stop = nil
      if source:sub(i + 2, i + 2) == "[" then stop = long_bracket(i + 2) end
      if stop == false then return nil, "line " .. line .. ": unfinished long comment" end
      if not stop then
        local e = source:find("\n", i, true)
        stop = e or len + 1
      end
      emit(i, stop - 1); lines(i, stop - 1); i = stop
    elseif c == "[" and source:find("^%[=*%[", i) then
      local stop = long_bracket(i)
      if not stop then return nil, "line " .. line .. ": unfinished long string" end
      emit(i, stop - 1); lines(i, stop - 1); i = stop
    elseif c == "'" or c == '"' then
      local j = i + 1
      while true do
        local d = source:sub(j, j)
        if d == "" or d == "\n" then return nil, "line " .. line .. ": unfinished string" end
        if d == "\\" then
          local nx = source:sub(j + 1, j + 1)
          if nx == "z" then -- \z skips the white space that follows, line breaks included
            j = j + 2
            while source:find("^%s", j) do j = j + 1 end
          elseif (nx == "\r" or nx == "\n") and source:sub(j + 2, j + 2):find("^[\r\n]")
            and source:sub(j + 2, j + 2) ~= nx then
            j = j + 3 -- an escaped \r\n or \n\r
          else
            j = j + 2
          end
        elseif d == c then
          break
        else
          j = j + 1
        end
      end
      emit(i, j); lines(i, j); i = j + 1
    elseif c:find("^[%a_]") then
      local _, e = source:find("^[%w_]+", i)
      local word = source:sub(i, e)
      if word:sub(1, 6) == "__rtc_" then
        return nil, "line " .. line .. ": the name '" .. word .. "' is reserved"
      end
      if word == "goto" and HAS_GOTO then ins(CHECK .. " ") end
      emit(i, e)
      if word == "do" or word == "repeat" then ins(" " .. ENTRY)
      elseif word == "function" then after_function = true end
      i = e + 1
    elseif c:find("^%d") or (c == "." and source:find("^%.%d", i)) then
      -- A numeral: digits, letters, dots, and a sign right after an exponent mark.
      local j = i
      while true do
        local _, e = source:find("^[%w_.]+", j)
        if not e then break end
        j = e + 1
        local mark = source:sub(e, e):lower()
        local hex = source:sub(i, i + 1):lower() == "0x"
        if ((mark == "e" and not hex) or (mark == "p" and hex)) and source:find("^[+-]", j) then
          j = j + 1
        else
          break
        end
      end
      emit(i, j - 1); i = j
    else
      emit(i, i)
      if c == ")" and after_function then
        after_function = false
        ins(" " .. ENTRY)
      end
      i = i + 1
    end
  end
  return table_concat(out)
end
sandbox.weave = weave

-- Limits with the defaults filled in.
local function limits_of(limits)
  local l = {}
  for k, v in pairs(sandbox.DEFAULTS) do l[k] = (limits and limits[k]) or v end
  return l
end
sandbox.limits = limits_of

local function copy(t, names)
  local c = {}
  for _, k in ipairs(names) do c[k] = t[k] end
  return c
end

-- Safe library copies. `string.dump` is left out (bytecode), `math.randomseed` too (host state);
-- pcall/xpcall are left out because they could catch a budget error and carry on; setmetatable and
-- getmetatable because __gc/__close code would run outside the budget and the string metatable is
-- the host's; coroutine because suspended rule code would outlive the call that budgets it.
local function safe_libs(limits)
  local max = limits.string_max
  local s = copy(string, { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match",
    "reverse", "sub", "upper", "pack", "packsize", "unpack" })
  function s.rep(str, n, sep)
    if type(n) == "number" and n > 0 then
      local len = (#tostring(str) + (sep ~= nil and #tostring(sep) or 0)) * n
      if len > max then
        error(string_format("string.rep: result of %.0f bytes exceeds the sandbox's %d", len, max), 2)
      end
    end
    return string_rep(str, n, sep)
  end
  local t = copy(table, { "insert", "remove", "sort", "unpack", "move" })
  function t.concat(list, sep, i, j)
    if type(list) == "table" then
      local total, seplen = 0, sep ~= nil and #tostring(sep) or 0
      for k = i or 1, j or #list do
        local v = list[k]
        total = total + (type(v) == "string" and #v or 24) + seplen
        if total > max then error(string_format("table.concat: result exceeds the sandbox's %d bytes", max), 2) end
      end
    end
    return table_concat(list, sep, i, j)
  end
  local m = copy(math, { "abs", "ceil", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger", "min",
    "mininteger", "modf", "pi", "random", "sqrt", "tointeger", "type", "ult", "sin", "cos", "tan", "asin", "acos",
    "atan" })
  local u = utf8 and copy(utf8, { "char", "charpattern", "codepoint", "codes", "len", "offset" }) or nil
  return s, t, m, u
end

-- A fresh environment for one rules file: the safe libraries plus `dsl` (a table of names).
function sandbox.env(dsl, limits)
  limits = limits_of(limits)
  local s, t, m, u = safe_libs(limits)
  local env = {
    string = s, table = t, math = m, utf8 = u,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
    tonumber = tonumber, tostring = tostring, type = type, rawequal = rawequal, rawlen = rawlen,
  }
  for k, v in pairs(dsl or {}) do env[k] = v end
  return env
end

-- Sets `env` read-only: rule code runs many times and must not keep state in globals.
function sandbox.freeze(env)
  return setmetatable(env, {
    __newindex = function(_, k)
      error("cannot set global '" .. tostring(k) .. "': rule code is stateless once its file has loaded", 2)
    end,
    __metatable = false,
  })
end

-- A runner: runner.call(fn, a, b) calls rule code under the budgets and returns true, result or
-- false, message (the message names file:line).
function sandbox.runner(limits)
  limits = limits_of(limits)
  local max_steps = math.max(1, math.floor(limits.instructions))
  local memory = limits.memory
  local string_meta = getmetatable("")
  local host_index = string_meta.__index
  local safe_string = safe_libs(limits)

  -- Where rule code was when it failed: the innermost frame from a rules file.
  local function handler(e)
    budget[1] = math.huge
    if e == BUDGET then
      local level = 2
      while true do
        local info = debug_getinfo(level, "Sl")
        if not info then break end
        if info.currentline and info.currentline > 0 and info.source:sub(1, 1) == "@"
          and not info.source:find("rtcadmin[/\\][%w_]+%.lua$") then
          return info.short_src .. ":" .. info.currentline .. ": " .. BUDGET.what
        end
        level = level + 1
      end
      return BUDGET.what
    end
    -- An error raised for rule code at a level that lands in the engine (a tail call from the
    -- condition left no frame of its own) carries no position rather than the engine's.
    if type(e) == "string" then
      local at, src = e:match("^(([^\n:]*):%d+: )")
      if at and src:find("rtcadmin[/\\][%w_]+%.lua$") then e = e:sub(#at + 1) end
    end
    return e
  end

  local runner = { budget = budget }

  -- Gives rule code the sandbox's string methods for a run of runner.eval calls.
  function runner.enter()
    string_meta.__index = safe_string
  end

  function runner.leave()
    budget[1] = math.huge
    string_meta.__index = host_index
  end

  -- The memory budget: from arm() until disarm() the heap may grow by at most `memory` bytes.
  -- With the C module both are C functions of no arguments (cheap enough to call per event).
  if heap_budgeter then
    runner.arm, runner.disarm = heap_budgeter(math.floor(memory))
  else
    function runner.arm() budget.ceiling = collectgarbage("count") + memory / 1024 end
    function runner.disarm() budget.ceiling = math.huge end
  end

  local function finish(ok, res)
    budget[1] = math.huge
    runner.disarm()
    if not ok then
      if type(res) == "string" and string_find(res, "^not enough memory") then -- 5.3 adds words
        return false, string_format("memory budget exceeded (%d bytes)", memory)
      end
      if res == "error in error handling" then -- LuaJIT: the handler had no stack left to run in
        return false, "stack overflow (recursion too deep)"
      end
      return false, type(res) == "string" and res or tostring(res)
    end
    return true, res
  end

  -- A fresh instruction budget: the values of budget[1] and budget[2] that give the rule code
  -- about to run all `instructions` steps.
  local first_steps = math.min(CHUNK, max_steps)
  local rest_steps = max_steps - first_steps
  function runner.fresh_steps() return first_steps, rest_steps end

  -- runner.protect(fn, a, b) -> true, result | false, "file:line: message". Between enter and
  -- leave; the call has the whole instruction budget and no memory budget. `fn` may be engine code
  -- that calls several rule functions in turn: setting `budget[1], budget[2] =
  -- runner.fresh_steps()` before each gives it the whole instruction budget, and arm() / disarm()
  -- around them a memory budget. Nothing else may run between enter and leave but engine code (no
  -- callbacks): the string metatable is the sandbox's meanwhile.
  function runner.protect(fn, a, b)
    budget[1], budget[2], budget.max, budget.memory = first_steps, rest_steps, max_steps, memory
    return finish(call_with(fn, handler, a, b))
  end

  -- runner.eval(fn, a, b): runner.protect with the memory budget armed for the whole call.
  function runner.eval(fn, a, b)
    runner.arm()
    return runner.protect(fn, a, b)
  end

  -- One call: enter, eval, leave.
  function runner.call(fn, a, b)
    runner.enter()
    local ok, res = runner.eval(fn, a, b)
    runner.leave()
    return ok, res
  end

  return runner
end

-- Compiles `source` (text only) as `chunkname` into `env`, with the budget checks woven in.
-- Returns the function (to be called once, through a runner, to run the file's main chunk) or
-- nil, "file:line: msg".
function sandbox.compile(source, chunkname, env)
  if type(source) ~= "string" then return nil, chunkname .. ": not a text file" end
  if source:sub(1, 1) == "\27" then return nil, chunkname .. ": precompiled chunks are refused" end
  local woven, werr = weave(source)
  if not woven then
    -- Lua's own message for a lexical error, when it has one.
    local _, err = load_text(source, "@" .. chunkname, env)
    return nil, err or (chunkname .. ":" .. werr:gsub("^line ", ""))
  end
  local fn, err = load_text(woven, "@" .. chunkname, env)
  if not fn then return nil, err end
  return function() return fn(step, budget) end
end

-- "file:line" where a Lua function was defined.
function sandbox.where(fn)
  local info = debug_getinfo(fn, "S")
  return info.short_src .. ":" .. (info.linedefined or 0)
end

return sandbox
