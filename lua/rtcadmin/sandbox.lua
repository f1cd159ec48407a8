-- The sandbox for moderators' rule files: what rule code can reach, and the budgets it runs under.
--
-- A rules file is compiled as text only ("t": no bytecode) into a fresh environment holding the
-- DSL, safe copies of string/table/math/utf8 (read-only once the file has loaded) and a few base
-- functions. Nothing in it reaches the file system, processes, the network, the debug library,
-- load/require, metatables or the host's globals. Rule code is stopped after an instruction budget
-- and refused heap growth beyond a memory budget (rtcadmin.heap_budgeter, enforced in the
-- allocator, because a single `s .. s` or string.rep can allocate gigabytes between two checks).
-- The instruction budget is counted by checks that compile() weaves into the source (every
-- function body, loop body and goto) rather than by a debug hook: a hook slows every instruction on
-- Lua 5.4 and keeps LuaJIT from compiling rule code. Work that runs in C is charged to the same
-- budget: patterns go through rtcadmin's own matcher, which counts its steps, and library functions
-- with a count, a range or a long string charge for it before they start. A CPU-time ceiling,
-- checked every CHUNK steps, catches what no step sees (operators on long strings). See
-- docs/policy.md.
local sandbox = {}

local heap_budgeter, pattern_functions, view_index
do
  local ok, core = pcall(require, "rtcadmin")
  if ok and type(core) == "table" then
    heap_budgeter, pattern_functions, view_index = core.heap_budgeter, core.pattern_functions, core.view_index
  end
end

local debug_getinfo = debug.getinfo
local string_format, string_rep, string_find, table_concat = string.format, string.rep, string.find, table.concat
local string_sub, string_gsub, string_byte = string.sub, string.gsub, string.byte
local collectgarbage, type, tostring, error, xpcall, select = collectgarbage, type, tostring, error, xpcall, select
local tonumber, next, pairs, ipairs, rawlen, setmetatable = tonumber, next, pairs, ipairs, rawlen, setmetatable
local math_floor, math_min, math_max, math_huge, os_clock = math.floor, math.min, math.max, math.huge, os.clock
local table_unpack = table.unpack or unpack -- luacheck: ignore 113 (5.1)
-- Lua 5.1 and LuaJIT: a table's length ignores __len, so nested read-only views are userdata there.
local newproxy = rawget(_G, "newproxy")

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
  instructions = 1000000,       -- steps (function calls, loop iterations, gotos, C work) per call into rule code
  memory = 16 * 1024 * 1024,    -- bytes the Lua heap may grow during one call into rule code
  string_max = 1024 * 1024,     -- longest string string.rep / table.concat may build in a rule
  time = 0.25,                  -- CPU seconds per call into rule code (a backstop; steps come first)
}

-- What library work in C costs, in steps: one per element a function goes through (a repetition
-- of string.rep, a slot table.move copies, a value table.unpack pushes, ...) and one per
-- BYTES_PER_STEP bytes it reads or writes. The pattern matcher counts its own steps.
local BYTES_PER_STEP = 64
sandbox.BYTES_PER_STEP = BYTES_PER_STEP

-- Budget errors are tables, so rule code cannot forge or mistake them for its own errors.
local BUDGET = {}

-- The budget of the call into rule code under way: one for the process, since a rules file's
-- functions are compiled once and called by whichever runner evaluates them, and calls into rule
-- code never nest. [1] counts the steps down to the next slow check (woven into rule code: kept
-- to one decrement and one comparison); [2] is what remains after that. Outside a runner's
-- protected call [1] is infinite: rule code called by anything else is not counted. `fresh` is
-- the value of [2] right after a reset (its first slow check starts the clock), `started` when
-- that was, `time` the CPU seconds allowed from then.
local budget = { math_huge, 0, max = math_huge, memory = 0, ceiling = math_huge, fresh = -1, started = 0,
                 time = math_huge }
-- The slow check runs every CHUNK steps: it looks at the clock and (without
-- rtcadmin.heap_budgeter, the Lua files alone) at the heap.
local CHUNK = 1024

local function exceeded(what)
  budget[1] = math_huge
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

-- Gives the countdown the next `chunk` steps, or raises when the budget is spent: the steps, or
-- the CPU time since the first refill after the last reset.
local function refill(chunk)
  local left = budget[2]
  if left <= 0 then
    exceeded(string_format("instruction budget exceeded (%d steps: calls, loop iterations, gotos, library work)",
      budget.max))
  end
  local now = os_clock()
  if left == budget.fresh then
    budget.started = now
  elseif now - budget.started > budget.time then
    exceeded(string_format("time budget exceeded (%g s of CPU)", budget.time))
  end
  if not heap_budgeter then check_heap() end
  local n = math_min(chunk, left)
  budget[1] = n - 1
  budget[2] = left - n
end

-- The slow check, when the countdown has run out. (No tail calls: Lua 5.1 would leave a
-- "(tail call)" frame between the budget error and the rule code it names.)
local function step() refill(CHUNK) end

-- The matcher's: it runs many steps between two calls of this, so it takes larger chunks.
local function pattern_step() refill(64 * CHUNK) end

-- Charges `n` steps of library work in C before it starts (the whole of it, so a count that is
-- over budget raises before any work is done).
local function charge(n)
  local c = budget[1] - n
  if c >= 0 then budget[1] = c return end
  if budget[1] == math_huge then return end -- outside a runner's call
  if budget[2] == budget.fresh then budget.started = os_clock() end -- the first slow check, as in refill
  -- Take what the countdown lacks from [2] (one step is the slow check's, as with the woven
  -- one); NaN (a range of NaN) takes all.
  local left = budget[2] + c + 1
  if left ~= left or left < 0 then left = 0 end
  budget[2] = left
  budget[1] = -1
  step()
end
sandbox.charge = charge

local function bytes(n) if n > 0 then charge(math_floor(n / BYTES_PER_STEP)) end end

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

---------------------------------------------------------------------------------------------------
-- Read-only views. Conditions get the event through one (a write is the rule's error); a table
-- inside the event is seen through a view of its own, made when first read. On Lua 5.1 and
-- LuaJIT those are userdata (a table's # ignores __len there); the sandbox's type, pairs, ipairs,
-- next, rawlen and table functions take views as the tables they show.

local READ_ONLY = "the event is read-only: a condition cannot set fields (%s)"
local target = setmetatable({}, { __mode = "k" }) -- view of a table inside an event -> that table
local view_of = setmetatable({}, { __mode = "k" }) -- table -> its view
local holders = setmetatable({}, { __mode = "k" }) -- event view -> {the event its conditions see}

-- A key for a message: quoted, and cut short (it may come from an event).
local function key_text(k)
  if type(k) == "string" then
    -- The host's string functions: this runs while rule code's string methods are the sandbox's.
    local cut = #k > 40 and string_sub(k, 1, 40) .. "..." or k
    return "'" .. string_gsub(cut, "[%c\\']", function(c) return string_format("\\%03d", string_byte(c)) end) .. "'"
  end
  return tostring(k)
end

local function refuse_write(_, k) error(string_format(READ_ONLY, key_text(k)), 2) end

local readonly
local function shown(v)
  if type(v) == "table" then return readonly(v) end
  return v
end

-- A view's __index: holder[1][k], as a view when that is a table (in C with the module: it runs
-- for every field a condition reads).
local index_of = view_index and function(holder) return view_index(holder, readonly) end or function(holder)
  return function(_, k) return shown(holder[1][k]) end
end

-- The view of table t (one per table while both live).
function readonly(t)
  local v = view_of[t]
  if v then return v end
  local mt
  if newproxy then
    v = newproxy(true)
    mt = getmetatable(v)
  else
    mt = {}
    v = setmetatable({}, mt)
  end
  mt.__index = index_of({ t })
  mt.__newindex = refuse_write
  mt.__len = function() return #t end
  mt.__pairs = function() return function(_, k) local nk, nv = next(t, k) return nk, shown(nv) end, v, nil end
  mt.__metatable = false
  target[v], view_of[t] = t, v
  return v
end

-- The table a view shows (nil for anything else).
local function target_of(v)
  local t = target[v]
  if t ~= nil then return t end
  local h = holders[v]
  return h and h[1]
end

-- The table a value shows: itself, or a view's table.
local function raw(v) return target_of(v) or v end

-- A view whose table is whatever holder[1] holds: the engine puts each event there before its
-- conditions run (one table write per event).
function sandbox.event_view()
  local holder = {}
  local view = setmetatable({}, {
    __index = index_of(holder),
    __newindex = refuse_write,
    __len = function() return #holder[1] end,
    __pairs = function(self)
      local t = holder[1]
      return function(_, k) local nk, nv = next(t, k) return nk, shown(nv) end, self, nil
    end,
    __metatable = false,
  })
  holders[view] = holder
  return view, holder
end

local function view_next(v, k)
  local nk, nv = next(target_of(v), k)
  return nk, shown(nv)
end

local function safe_next(t, k)
  if target_of(t) then return view_next(t, k) end
  return next(t, k)
end

local function safe_pairs(t)
  if target_of(t) then return view_next, t, nil end
  return pairs(t)
end

local function view_inext(v, i)
  i = i + 1
  local x = target_of(v)[i]
  if x ~= nil then return i, shown(x) end
end

local function safe_ipairs(t)
  if target_of(t) then return view_inext, t, 0 end
  return ipairs(t)
end

local function safe_type(v)
  local t = type(v)
  if t == "userdata" and target[v] then return "table" end
  return t
end

local function safe_rawlen(v) return rawlen(raw(v)) end

---------------------------------------------------------------------------------------------------
-- Library copies for rule code, with C work charged to the budget.

-- The number of elements from i to j (Lua's rules for a range: empty when j < i).
local function span(i, j)
  i, j = tonumber(i), tonumber(j)
  if not i or not j or j < i then return 0 end
  return j - i + 1
end

-- A string argument's length as the C library sees it (numbers are converted), or 0.
local function len_of(v)
  local t = type(v)
  if t == "string" then return #v end
  if t == "number" then return #tostring(v) end
  return 0
end

local function bytes_of_args(...)
  local n = 0
  for i = 1, select("#", ...) do n = n + len_of((select(i, ...))) end
  return n
end

-- Safe library copies. `string.dump` is left out (bytecode), `math.randomseed` too (host state);
-- pcall/xpcall are left out because they could catch a budget error and carry on; setmetatable and
-- getmetatable because __gc/__close code would run outside the budget and the string metatable is
-- the host's; coroutine because suspended rule code would outlive the call that budgets it.
local function safe_libs(limits)
  local max = limits.string_max
  local s = copy(string, { "len" })
  -- Patterns: rtcadmin's matcher, which counts its steps (the stock one runs unbounded in C).
  local pf = pattern_functions and pattern_functions(budget, pattern_step) or string
  s.find, s.match, s.gmatch, s.gsub = pf.find, pf.match, pf.gmatch, pf.gsub
  for _, name in ipairs({ "lower", "upper", "reverse" }) do
    local f = string[name]
    s[name] = function(str, ...) bytes(len_of(str)) return f(str, ...) end
  end
  local string_char = string.char
  function s.byte(str, i, j)
    local n = len_of(str)
    i = tonumber(i) or 1
    if i < 0 then i = n + i + 1 end
    j = tonumber(j) or i
    if j < 0 then j = n + j + 1 end
    charge(span(math_max(i, 1), math_min(j, n)))
    return string_byte(str, i, j)
  end
  function s.sub(str, ...) bytes(len_of(str)) return string_sub(str, ...) end
  function s.char(...) charge(select("#", ...)) return string_char(...) end
  function s.format(fmt, ...)
    bytes(len_of(fmt) + bytes_of_args(...))
    charge(select("#", ...))
    return string_format(fmt, ...)
  end
  if string.pack then
    for _, name in ipairs({ "pack", "packsize", "unpack" }) do
      local f = string[name]
      s[name] = function(fmt, ...) bytes(len_of(fmt) + bytes_of_args(...)) return f(fmt, ...) end
    end
  end
  function s.rep(str, n, sep)
    local count = tonumber(n) -- the C function takes numeric strings too
    if count and count > 0 and (type(str) == "string" or type(str) == "number") then
      local len = (len_of(str) + len_of(sep)) * count
      if len > max then
        error(string_format("string.rep: result of %.0f bytes exceeds the sandbox's %d", len, max), 2)
      end
      bytes(count + len) -- repetitions are cheap: charged like bytes (rep("", 1e15) still costs)
    end
    return string_rep(str, n, sep)
  end

  local t = {}
  local table_insert, table_remove, table_sort, table_move = table.insert, table.remove, table.sort, table.move
  function t.insert(list, ...)
    if select("#", ...) >= 2 and type(list) == "table" then charge(span((...), #list)) end
    return table_insert(list, ...)
  end
  function t.remove(list, pos)
    if type(list) == "table" then charge(span(pos or #list, #list)) end
    return table_remove(list, pos)
  end
  function t.sort(list, comp)
    local n = type(list) == "table" and #list or 0
    if n > 1 then charge(n * math.ceil(math.log(n) / math.log(2))) end -- comparisons, about
    return table_sort(list, comp)
  end
  function t.unpack(list, i, j)
    local shows = target_of(list)
    local l = shows or list
    i, j = i or 1, j or (type(l) == "table" and #l or 0)
    charge(span(i, j))
    if not shows then return table_unpack(list, i, j) end
    local out, n = {}, 0 -- a view's tables come out as views
    for k = i, j do n = n + 1; out[n] = shown(l[k]) end
    return table_unpack(out, 1, n)
  end
  if table_move then
    function t.move(a1, f, e, to, a2)
      charge(span(f, e))
      return table_move(a1, f, e, to, a2)
    end
  end
  function t.concat(list, sep, i, j)
    list = raw(list)
    if type(list) == "table" then
      i, j = i or 1, j or #list
      charge(span(i, j))
      local total, seplen = 0, len_of(sep)
      for k = tonumber(i) or 1, tonumber(j) or 0 do
        total = total + len_of(list[k]) + seplen
        if total > max then error(string_format("table.concat: result exceeds the sandbox's %d bytes", max), 2) end
      end
      bytes(total)
    end
    return table_concat(list, sep, i, j)
  end

  local m = copy(math, { "abs", "ceil", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger", "min",
    "mininteger", "modf", "pi", "random", "sqrt", "tointeger", "type", "ult", "sin", "cos", "tan", "asin", "acos",
    "atan" })
  local u
  if utf8 then
    u = copy(utf8, { "char", "charpattern", "codes" })
    for _, name in ipairs({ "codepoint", "len", "offset" }) do
      local f = utf8[name]
      u[name] = function(str, ...) charge(len_of(str)) return f(str, ...) end
    end
    u.char = function(...) charge(select("#", ...)) return utf8.char(...) end
  end
  return s, t, m, u
end

local function safe_tonumber(v, base)
  bytes(len_of(v))
  return tonumber(v, base)
end

-- Makes table t read-only in place (its contents move to a table behind __index), so whatever
-- holds t keeps holding it.
local function seal(t)
  local inner = {}
  for k, v in pairs(t) do inner[k] = v end
  for k in pairs(inner) do t[k] = nil end
  return setmetatable(t, {
    __index = inner,
    __newindex = function(_, k)
      error("cannot set " .. key_text(k) .. ": library tables are read-only once the rules file has loaded", 2)
    end,
    __pairs = function() return next, inner, nil end,
    __metatable = false,
  })
end

-- The tables each environment came with (sealed by freeze), and each environment's metatable.
local provided = setmetatable({}, { __mode = "k" })
local env_meta = setmetatable({}, { __mode = "k" })

-- Damerau-Levenshtein distance of two short strings (a swap of two neighbours is one edit), for
-- suggestions in error messages.
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 1, lb do d[0][j] = j end
  for i = 1, la do
    local ai = string_byte(a, i)
    for j = 1, lb do
      local bj = string_byte(b, j)
      local v = math_min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ai == bj and 0 or 1))
      if i > 1 and j > 1 and ai == string_byte(b, j - 1) and string_byte(a, i - 1) == bj then
        v = math_min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

-- The name among `names` (strings: a list, or the keys of a table) closest to `word`, when it is
-- close enough to be a misspelling of it (at most 2 edits, fewer than half its letters); else nil.
function sandbox.nearest(word, names)
  if type(word) ~= "string" or #word > 64 then return nil end
  local best, best_d = nil, math_min(2, math_floor(#word / 2))
  local function try(n)
    if type(n) == "string" and n ~= word and math.abs(#n - #word) <= best_d then
      local dn = distance(word, n)
      if dn <= best_d and (dn < best_d or best == nil or n < best) then best, best_d = n, dn end
    end
  end
  if rawget(names, 1) ~= nil then
    for _, n in ipairs(names) do try(n) end
  else
    for n in pairs(names) do try(n) end
  end
  return best
end

-- " (did you mean 'x'?)" when `word` looks like a misspelling of one of `names`, else "".
function sandbox.did_you_mean(word, names)
  local near = sandbox.nearest(word, names)
  return near and (" (did you mean '" .. near .. "'?)") or ""
end

-- Reading a name the environment does not have: an error at the reading line, at load time and in
-- conditions alike (a misspelt `kik` would otherwise be nil, and `action = kik` a puzzle). Names a
-- Lua may lack (utf8 before 5.3) read as nil, so a file can test for them.
local MAYBE_ABSENT = { utf8 = true }
local function unknown_name(env, k)
  if MAYBE_ABSENT[k] then return nil end
  error("unknown name " .. key_text(k) .. sandbox.did_you_mean(k, env), 2)
end

-- A fresh environment for one rules file: the safe libraries plus `dsl` (a table of names). It is
-- strict: reading a global it does not hold raises `unknown name 'x'`.
function sandbox.env(dsl, limits)
  limits = limits_of(limits)
  local s, t, m, u = safe_libs(limits)
  local env = {
    string = s, table = t, math = m, utf8 = u,
    assert = assert, error = error, ipairs = safe_ipairs, next = safe_next, pairs = safe_pairs, select = select,
    tonumber = safe_tonumber, tostring = tostring, type = newproxy and safe_type or type, rawequal = rawequal,
    rawlen = safe_rawlen,
  }
  for k, v in pairs(dsl or {}) do env[k] = v end
  local tables = {}
  for _, v in pairs(env) do if type(v) == "table" then tables[#tables + 1] = v end end
  provided[env] = tables
  local mt = { __index = unknown_name, __metatable = false }
  env_meta[env] = mt
  return setmetatable(env, mt)
end

-- Sets `env` read-only: rule code runs many times and must not keep state in globals or in the
-- tables the environment came with (libraries, DSL values), which are sealed in place. Tables the
-- file made itself are its own (see docs/policy.md).
function sandbox.freeze(env)
  for _, v in pairs(provided[env] or {}) do seal(v) end
  local mt = env_meta[env]
  if not mt then
    mt = { __metatable = false }
    setmetatable(env, mt)
  end
  mt.__newindex = function(_, k)
    error("cannot set global " .. key_text(k) .. ": rule code is stateless once its file has loaded", 2)
  end
  return env
end

-- A runner: runner.call(fn, a, b) calls rule code under the budgets and returns true, result or
-- false, message (the message names file:line).
function sandbox.runner(limits)
  limits = limits_of(limits)
  local max_steps = math.max(1, math.floor(limits.instructions))
  local memory, time = limits.memory, limits.time
  local string_meta = getmetatable("")
  local host_index = string_meta.__index
  local safe_string = safe_libs(limits)

  -- Where rule code was when it failed: the innermost Lua frame above the sandbox's own
  -- functions, when it is rule code (after a tail call it may be the engine's: then no position).
  local function handler(e)
    budget[1] = math.huge
    if e == BUDGET then
      local level = 2
      while true do
        local info = debug_getinfo(level, "Sl")
        if not info then break end
        if info.what ~= "C" and info.what ~= "tail" and not string_find(info.source, "rtcadmin[/\\]sandbox%.lua$") then
          if info.currentline and info.currentline > 0 and string_sub(info.source, 1, 1) == "@"
            and not string_find(info.source, "rtcadmin[/\\][%w_]+%.lua$") then
            return info.short_src .. ":" .. info.currentline .. ": " .. BUDGET.what
          end
          break
        end
        level = level + 1
      end
      return BUDGET.what
    end
    -- An error raised for rule code at a level that lands in the engine (a tail call from the
    -- condition left no frame of its own) carries no position rather than the engine's.
    if type(e) == "string" then
      local at, src = string.match(e, "^(([^\n:]*):%d+: )")
      if at and string_find(src, "rtcadmin[/\\][%w_]+%.lua$") then e = string_sub(e, #at + 1) end
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
  -- runner.fresh_steps()` before each gives it the whole instruction budget (and time budget: the
  -- clock starts at the first slow check after that), and arm() / disarm() around them a memory
  -- budget. Nothing else may run between enter and leave but engine code (no
  -- callbacks): the string metatable is the sandbox's meanwhile.
  function runner.protect(fn, a, b)
    budget[1], budget[2], budget.max, budget.memory = first_steps, rest_steps, max_steps, memory
    budget.fresh, budget.time = rest_steps, time
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
