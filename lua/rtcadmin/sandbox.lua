-- The sandbox for moderators' rule files: what rule code can reach, and the budgets it runs under.
--
-- A rules file is compiled as text only ("t": no bytecode) into a fresh environment holding the
-- DSL, safe copies of string/table/math/utf8 and a few base functions. Nothing in it reaches the
-- file system, processes, the network, the debug library, load/require, metatables or the host's
-- globals. Every call into rule code goes through a runner that stops it after an instruction
-- budget (a count hook) and refuses heap growth beyond a memory budget (rtcadmin.heap_budget,
-- enforced in the allocator, because a single `s .. s` or string.rep can allocate gigabytes
-- between two hook calls). See docs/policy.md.
local sandbox = {}

local heap_budget
do
  local ok, core = pcall(require, "rtcadmin")
  if ok and type(core) == "table" then heap_budget = core.heap_budget end
end

local debug_sethook, debug_gethook, debug_getinfo = debug.sethook, debug.gethook, debug.getinfo
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
-- LuaJIT runs no hooks in compiled code: rule code stays in the interpreter, where they run.
local jit_off = rawget(_G, "jit") and jit.off or function() end -- luacheck: ignore 113 (LuaJIT global)

sandbox.DEFAULTS = {
  instructions = 1000000,       -- VM instructions per call into rule code (checked every `hook_every`)
  memory = 16 * 1024 * 1024,    -- bytes the Lua heap may grow during one call into rule code
  hook_every = 1000,            -- instructions between two budget checks
  string_max = 1024 * 1024,     -- longest string string.rep / table.concat may build in a rule
}

-- Budget errors are tables, so rule code cannot forge or mistake them for its own errors.
local BUDGET = {}

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
-- the host's; coroutine because the count hook is per coroutine.
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

-- A runner: runner.call(fn, where, ...) calls rule code under the budgets and returns
-- true, results... or false, message (the message names file:line).
function sandbox.runner(limits)
  limits = limits_of(limits)
  local every = limits.hook_every
  local max_ticks = math.max(1, math.ceil(limits.instructions / every))
  local memory = limits.memory
  local string_meta = getmetatable("")
  local host_index = string_meta.__index
  local safe_string = safe_libs(limits)

  local mem_ceiling, active = 0, false
  local saved_hook, saved_mask, saved_count

  -- The count hook is installed only while rule code may run (runner.enter .. runner.leave, one
  -- event's conditions): with any count hook set, Lua 5.4 sends every instruction through its hook
  -- check, which would halve the engine's own speed. Between conditions it counts nothing.
  local runner = {}
  local function hook()
    if not active then return end
    local ticks = runner.ticks + 1
    runner.ticks = ticks
    if ticks > max_ticks then
      active = false
      BUDGET.what = string_format("instruction budget exceeded (%d instructions)", max_ticks * every)
      error(BUDGET, 2)
    end
    if not heap_budget and collectgarbage("count") > mem_ceiling then
      collectgarbage()
      if collectgarbage("count") > mem_ceiling then
        active = false
        BUDGET.what = string_format("memory budget exceeded (%d bytes)", memory)
        error(BUDGET, 2)
      end
    end
  end

  -- Where rule code was when it failed: the innermost frame from a rules file.
  local function handler(e)
    active = false
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
      local src = e:match("^([^\n:]*):%d+: ")
      if src and src:find("rtcadmin[/\\][%w_]+%.lua$") then e = e:sub(#e:match("^[^\n:]*:%d+: ") + 1) end
    end
    return e
  end


  -- Installs the hook and the sandbox's string methods for a run of runner.eval calls.
  function runner.enter()
    saved_hook, saved_mask, saved_count = debug_gethook()
    string_meta.__index = safe_string
    debug_sethook(hook, "", every)
  end

  function runner.leave()
    active = false
    if saved_hook then debug_sethook(saved_hook, saved_mask, saved_count) else debug_sethook() end
    string_meta.__index = host_index
  end

  local function finish(ok, res)
    active = false
    if heap_budget then heap_budget(0) end
    if not ok then
      if type(res) == "string" and string_find(res, "^not enough memory") then -- 5.3 adds words
        return false, string_format("memory budget exceeded (%d bytes)", memory)
      end
      return false, type(res) == "string" and res or tostring(res)
    end
    return true, res
  end

  -- runner.eval(fn, a, b) -> true, result | false, "file:line: message". Between enter and leave;
  -- each call has the whole instruction and memory budget. `fn` may be engine code that calls
  -- several rule functions in turn: setting `runner.ticks = 0` before each gives it the whole
  -- instruction budget (the memory budget is the call's). Nothing else may run between enter and
  -- leave but engine code (no callbacks): the string metatable is the sandbox's meanwhile.
  runner.ticks = 0
  function runner.eval(fn, a, b)
    runner.ticks = 0
    if heap_budget then heap_budget(memory) else mem_ceiling = collectgarbage("count") + memory / 1024 end
    active = true
    return finish(call_with(fn, handler, a, b))
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

-- Compiles `source` (text only) as `chunkname` into `env`. Returns the function or nil, "file:line: msg".
function sandbox.compile(source, chunkname, env)
  if type(source) ~= "string" then return nil, chunkname .. ": not a text file" end
  if source:sub(1, 1) == "\27" then return nil, chunkname .. ": precompiled chunks are refused" end
  local fn, err = load_text(source, "@" .. chunkname, env)
  if not fn then return nil, err end
  jit_off(fn, true) -- and every function defined in it
  return fn
end

-- "file:line" where a Lua function was defined.
function sandbox.where(fn)
  local info = debug_getinfo(fn, "S")
  return info.short_src .. ":" .. (info.linedefined or 0)
end

return sandbox
