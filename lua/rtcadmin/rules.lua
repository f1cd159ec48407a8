-- Rules files: the DSL a file sees (rule, allow, kick, ban, mute, escalate, durations) and loading
-- one into a fresh sandbox, with every mistake reported at its file:line. The engine
-- (rtcadmin.policy) adds what a file defines. See docs/policy.md ("Rule files").
local sandbox = require "rtcadmin.sandbox"
local events = require "rtcadmin.events"

local rules = {}

local type, pairs, ipairs, tostring, setmetatable = type, pairs, ipairs, tostring, setmetatable
local string_format, string_find, string_sub = string.format, string.find, string.sub

-- API limits (docs/api.md, rtcadmin.LIMITS): the BanRoomUser and BanUserStream ForbiddenInterval ranges.
local LIMITS = events.api.LIMITS
rules.BAN_MIN, rules.BAN_MAX = LIMITS.ban.min, LIMITS.ban.max
rules.MUTE_MIN, rules.MUTE_MAX = LIMITS.mute.min, LIMITS.mute.max
local EVENT_TYPE_MAX = events.TYPE_MAX

-- The rule DSL, as seen from a rules file.

-- The line of field `key` in the table constructor of a rule that starts at line `from` of
-- `source`: the first `key =` from there (nil when there is none, e.g. a key that is no name). The
-- table a constructor makes keeps no lines, so the text is searched; only for error messages.
local function field_line(source, from, key)
  if type(source) ~= "string" or type(key) ~= "string" or not key:find("^[%a_][%w_]*$") then return nil end
  local pos, line = 1, 1
  while line < from do
    local nl = string_find(source, "\n", pos, true)
    if not nl then return nil end
    pos, line = nl + 1, line + 1
  end
  local at = string_find(source, "%f[%w_]" .. key .. "%s*=[^=]", pos)
  if not at then return nil end
  local _, breaks = string.gsub(string_sub(source, pos, at), "\n", "")
  return from + breaks
end

-- Builds the DSL for one file; `file` collects what it defines.
local function make_dsl(file)
  local chunk = "@" .. file.name
  -- The line of the rules file that called the DSL (the innermost frame of the file's code).
  local function caller_line()
    local level = 2
    while true do
      local info = debug.getinfo(level, "Sl")
      if not info then return nil end
      if info.source == chunk and info.currentline > 0 then return info.currentline end
      level = level + 1
    end
  end
  -- An error "file:line: msg" at `line`, or at the line that called the DSL.
  local function fail(msg, line)
    line = line or caller_line()
    error(line and (file.name .. ":" .. line .. ": " .. msg) or (file.name .. ": " .. msg), 0)
  end
  local function warn(msg)
    local line = caller_line()
    file.warnings[#file.warnings + 1] = line and (file.name .. ":" .. line .. ": " .. msg) or (file.name .. ": " .. msg)
  end
  local function check_seconds(what, v, line)
    if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge then
      fail(string_format("%s: expected seconds (a number >= 0), got %s", what, tostring(v)), line)
    end
    return v
  end
  local function capped(what, seconds, min, max, allow_zero)
    check_seconds(what, seconds)
    if seconds == 0 and allow_zero then return 0 end
    if seconds < min then
      fail(string_format("%s: %.10g s is below the API minimum of %d s", what, seconds, min))
    end
    if seconds > max then
      warn(string_format("%s: %.10g s capped at the API maximum of %d s", what, seconds, max))
      return max
    end
    return math.ceil(seconds)
  end

  local dsl = {}
  function dsl.seconds(n) return check_seconds("seconds", n) end
  function dsl.minutes(n) return check_seconds("minutes", n) * 60 end
  function dsl.hours(n) return check_seconds("hours", n) * 3600 end
  function dsl.days(n) return check_seconds("days", n) * 86400 end

  dsl.kick = { kind = "kick" }
  function dsl.ban(seconds)
    return { kind = "ban", duration = capped("ban", seconds, rules.BAN_MIN, rules.BAN_MAX) }
  end
  function dsl.ban_everywhere(seconds)
    return { kind = "ban_everywhere", duration = capped("ban_everywhere", seconds, rules.BAN_MIN, rules.BAN_MAX) }
  end
  function dsl.mute(seconds, streams)
    seconds = capped("mute", seconds or 0, rules.MUTE_MIN, rules.MUTE_MAX, true)
    local audio, video
    if streams ~= nil then
      if type(streams) ~= "table" then fail("mute: expected {audio = bool, video = bool}") end
      for k, v in pairs(streams) do
        if (k ~= "audio" and k ~= "video") or type(v) ~= "boolean" then
          fail("mute: unknown stream option '" .. tostring(k) .. "' (audio, video: booleans)")
        end
      end
      audio, video = streams.audio, streams.video
    end
    if audio == nil and video == nil then audio, video = true, true end
    return { kind = "mute", duration = seconds, audio = audio == true, video = video == true }
  end
  function dsl.escalate(steps)
    if type(steps) ~= "table" or #steps == 0 then fail("escalate: expected a list of actions") end
    return { kind = "escalate", steps = steps }
  end

  function dsl.allow(spec)
    if not file.loading then fail("allow: only while the rules file loads") end
    if type(spec) ~= "table" then fail("allow: expected a table {roles=, users=, patterns=}") end
    for k, v in pairs(spec) do
      if k ~= "roles" and k ~= "users" and k ~= "patterns" then
        fail("allow: unknown field '" .. tostring(k) .. "'")
      end
      if type(v) ~= "table" then fail("allow: '" .. k .. "' must be a list of strings") end
      for _, s in ipairs(v) do
        if type(s) ~= "string" then fail("allow: '" .. k .. "' must be a list of strings") end
        if k == "patterns" and not pcall(string_find, "", s) then
          fail("allow: bad pattern " .. string_format("%q", s))
        end
        file.allow[k][#file.allow[k] + 1] = s
      end
    end
  end

  -- How to write each DSL function as an action, for `action = ban` (the function, not called).
  local ACTION_FORMS = {
    ban = "ban(seconds), e.g. ban(600) or ban(minutes(10))",
    ban_everywhere = "ban_everywhere(seconds), e.g. ban_everywhere(hours(1))",
    mute = "mute(seconds) or mute(seconds, { audio = true }), e.g. mute(minutes(5))",
    escalate = "escalate { kick, ban(minutes(10)), ban(hours(24)) }",
  }
  local function_name = {}
  for k, v in pairs(dsl) do if type(v) == "function" then function_name[v] = k end end
  local ACTIONS = "kick, ban(seconds), ban_everywhere(seconds), mute(seconds) or escalate { ... }"

  local rule_fields = { on = true, when = true, action = true, cooldown = true, dry_run = true, description = true }
  -- `a` as an action, or fail(what is wrong) (`where`: "action", "escalate step 2", ...).
  local function normalize_action(a, top, where, fail_at)
    if type(a) == "function" then
      local fname = function_name[a]
      if ACTION_FORMS[fname] then
        fail_at(string_format("%s is the %s function, not an action: write %s",
          where == "action" and ("action = " .. fname) or where, fname, ACTION_FORMS[fname]))
      end
      fail_at(string_format("%s must be %s, got %s", where, ACTIONS,
        fname and ("the function " .. fname) or "a function"))
    end
    if type(a) ~= "table" then
      fail_at(string_format("%s must be %s, got %s", where, ACTIONS,
        type(a) == "string" and string_format("the string %q", a) or tostring(a)))
    end
    local k = a.kind
    if k == "escalate" then
      if type(a.steps) ~= "table" or #a.steps == 0 then fail_at("escalate: expected a list of actions") end
      if not top then fail_at(where .. ": steps cannot escalate") end
      local steps = {}
      for i, st in ipairs(a.steps) do steps[i] = normalize_action(st, false, "escalate step " .. i, fail_at) end
      return { kind = "escalate", steps = steps }
    elseif k == "kick" then return { kind = "kick", duration = 0 }
    elseif k == "ban" or k == "ban_everywhere" then
      return { kind = k, duration = capped(k, a.duration, rules.BAN_MIN, rules.BAN_MAX) }
    elseif k == "mute" then
      return { kind = "mute", duration = capped("mute", a.duration, rules.MUTE_MIN, rules.MUTE_MAX, true),
               audio = a.audio == true, video = a.video == true }
    end
    fail_at(string_format("%s must be %s (a table without an action kind)", where, ACTIONS))
  end

  function dsl.rule(name)
    if not file.loading then fail("rule: only while the rules file loads") end
    if type(name) ~= "string" or name == "" or #name > 64 then fail("rule: expected a name (1-64 characters)") end
    local line = caller_line()
    return function(spec)
      local label = "rule '" .. name .. "': "
      -- An error about field `key`, at its line when the source shows it (else the rule's).
      local function field_fail(key, msg)
        fail(label .. msg, field_line(file.source, line or 1, key) or line)
      end
      if type(spec) ~= "table" then fail(label .. "expected a table", line) end
      for k in pairs(spec) do
        if not rule_fields[k] then
          field_fail(k, "unknown field '" .. tostring(k) .. "'" .. sandbox.did_you_mean(k, rule_fields))
        end
      end
      local on = spec.on
      if type(on) == "string" then on = { on } end
      if type(on) ~= "table" or #on == 0 then field_fail("on", "'on' must be an event type or a list") end
      local types = {}
      for i, t in ipairs(on) do
        if type(t) ~= "string" or t == "" or #t > EVENT_TYPE_MAX then field_fail("on", "bad event type") end
        types[i] = t
      end
      if spec.when ~= nil and type(spec.when) ~= "function" then
        field_fail("when", "'when' must be a function(ev, ctx)")
      end
      if spec.action == nil then fail(label .. "'action' is required: " .. ACTIONS, line) end
      local cooldown = spec.cooldown
      if cooldown ~= nil then
        check_seconds(label .. "cooldown", cooldown, field_line(file.source, line or 1, "cooldown") or line)
      end
      if spec.dry_run ~= nil and type(spec.dry_run) ~= "boolean" then
        field_fail("dry_run", "'dry_run' must be a boolean")
      end
      local action = normalize_action(spec.action, true, "action",
        function(msg) field_fail("action", msg) end)
      file.rules[#file.rules + 1] = {
        name = name, on = types, when = spec.when, action = action,
        cooldown = cooldown, dry_run = spec.dry_run == true, description = spec.description,
        at = file.name .. ":" .. (line or 0), file = file.name,
      }
    end
  end
  return dsl
end

-- The errors of a load: a list of "file:line: message" strings whose tostring is the messages, one
-- a line (so `assert(engine:load(path))` and a REPL show them).
local Errors = { __name = "rtcadmin.policy.errors" }
function Errors.__tostring(list) return table.concat(list, "\n") end
local function errors(list) return setmetatable(list, Errors) end
rules.errors = errors

-- A chunk name as the file's name: "@path" and "=name" (Lua's forms) are "path" and "name".
local function file_name(name)
  if name == nil then return "rules" end
  return (string.gsub(tostring(name), "^[@=]", ""))
end

-- Loads one rules file into a fresh sandbox. Returns {rules, allow, warnings} or nil, errors.
-- `name` is the file's name in messages and in rule_at ("@path" and "=name" are taken as "path"
-- and "name").
function rules.load_source(source, name, limits)
  name = file_name(name)
  local file = { name = name, rules = {}, allow = { roles = {}, users = {}, patterns = {} }, warnings = {},
                 loading = true, source = source }
  local env = sandbox.env(make_dsl(file), limits)
  local fn, err = sandbox.compile(source, name, env)
  if not fn then return nil, errors { err } end
  local runner = sandbox.runner(limits)
  local ok, e = runner.call(fn)
  file.loading, file.source = false, nil
  sandbox.freeze(env)
  if not ok then
    -- Memory errors carry no position (Lua raises them without a message handler).
    if not e:find("^[^\n]-:%d+:") then e = name .. ": " .. e .. " while the file loaded" end
    return nil, errors { e }
  end
  local seen = {}
  for _, r in ipairs(file.rules) do
    if seen[r.name] then
      return nil, errors { r.at .. ": rule '" .. r.name .. "' defined twice (first at " .. seen[r.name] .. ")" }
    end
    seen[r.name] = r.at
  end
  return file
end

function rules.load_file(path, limits)
  local f, err = io.open(path, "rb")
  if not f then return nil, errors { tostring(err) } end
  local source = f:read("*a")
  f:close()
  return rules.load_source(source, path, limits)
end

return rules
