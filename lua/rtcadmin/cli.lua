-- The `rtcadmin` command line: one-off moderation calls, and the policy engine over event streams.
-- bin/rtcadmin only sets the module paths and calls main(arg). See docs/cli.md.
-- A private encoder: a number JSON cannot hold (inf, NaN) is written as null, never raises.
local cjson = require("cjson").new()
cjson.encode_invalid_numbers("null")

local cli = {}

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RULES = 0, 1, 2, 3
cli.EXIT = { ok = EXIT_OK, failed = EXIT_FAILED, usage = EXIT_USAGE, rules = EXIT_RULES }

local USAGE = [[
usage: rtcadmin [options] COMMAND [ARGS]

Moderation calls (credentials from VOLC_ACCESSKEY/VOLC_SECRETKEY or ~/.volc/config):
  kick    APP ROOM USER...                  remove users from a room (they may rejoin)
  ban     APP ROOM USER... --duration S     remove and ban users from a room (--everywhere: APP USER...)
  unban   APP ROOM USER...                  lift room bans (--everywhere: APP USER...)
  mute    APP ROOM USER... [--audio] [--video] [--duration S]
  unmute  APP ROOM USER... [--audio] [--video]
  online  APP ROOM                          list the users in a room

Policy (rules files: Lua files or directories of them; events: JSON Lines):
  replay  RULES... EVENTS                   dry-run: print the decisions the rules make
  run     RULES... [EVENTS|-]               live: act on the decisions (stdin when EVENTS is - or absent)
  check   RULES...                          load and lint rules files

Options:
  --endpoint URL   API endpoint (default: RTCADMIN_ENDPOINT, else https://rtc.volcengineapi.com)
  --dry-run        decide and record, send nothing (run)
  --json           one JSON object per line on stdout
  --audit FILE     append the audit log (JSON Lines) to FILE (replay, run)
  --help           help for a command: rtcadmin COMMAND --help

Exit status: 0 done; 1 an action or call failed (or is still waiting for a retry); 2 usage;
3 a rules file does not load.
]]

local HELP = {
  kick = [[
usage: rtcadmin kick APP ROOM USER... [--endpoint URL] [--json]
Kicks each USER out of ROOM (KickUser). They may rejoin at once; use ban to keep them out.]],
  ban = [[
usage: rtcadmin ban APP ROOM USER... --duration SECONDS [--endpoint URL] [--json]
       rtcadmin ban --everywhere APP USER... --duration SECONDS
Removes each USER from ROOM and bans them from it for SECONDS, whole seconds from 10 to 604800
(BanRoomUser). --everywhere bans them from every room of the app. A user who is banned already
has the ban set to SECONDS from now (UpdateBanRoomUserRule): the API does not say when a ban
ends, so this extends a shorter ban and also shortens a longer one.]],
  unban = [[
usage: rtcadmin unban APP ROOM USER... [--endpoint URL] [--json]
       rtcadmin unban --everywhere APP USER...
Lifts the bans (UpdateBanRoomUserRule with interval 0).]],
  mute = [[
usage: rtcadmin mute APP ROOM USER... [--audio] [--video] [--duration SECONDS] [--endpoint URL] [--json]
Bans the users' streams (BanUserStream): --audio and/or --video (neither: both), for SECONDS,
whole seconds from 60 to 259200, or 0 (the default): until unmuted.]],
  unmute = [[
usage: rtcadmin unmute APP ROOM USER... [--audio] [--video] [--endpoint URL] [--json]
Lifts stream bans (UnbanUserStream): --audio and/or --video (neither: both).]],
  online = [[
usage: rtcadmin online APP ROOM [--endpoint URL] [--json]
Lists the users online in ROOM (GetRoomOnlineUsers).]],
  replay = [[
usage: rtcadmin replay RULES... EVENTS [--json] [--audit FILE]
Runs the rules over the recorded events (JSON Lines) without sending anything, and prints every
decision (a table, or one JSON object per decision with --json) and a summary. RULES are Lua files
or directories (their *.lua files, in name order); the last argument that is neither is EVENTS.]],
  run = [[
usage: rtcadmin run RULES... [EVENTS|-] [--dry-run] [--json] [--audit FILE] [--endpoint URL] [--drain SECONDS]
Runs the rules over events from a JSON Lines file, or stdin (EVENTS "-" or absent; e.g. piped from a
queue consumer), and acts on the decisions through the API, paced and retried. Failed actions are
retried later; at the end of input it waits up to --drain seconds (default 30) for retries.]],
  check = [[
usage: rtcadmin check RULES... [--json]
Loads each rules file in the sandbox and reports syntax errors, bad rule definitions and warnings
with file:line. Exit status 3 when a file does not load.]],
}

-- Options: name -> takes a value?
local OPTIONS = {
  endpoint = true, audit = true, duration = true, drain = true,
  ["dry-run"] = false, json = false, help = false, everywhere = false, audio = false, video = false,
}

local function parse(argv)
  local opts, pos = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" then a = "--help" end
    local name, value = a:match("^%-%-([%w-]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w-]+)$") end
    if name then
      if OPTIONS[name] == nil then return nil, "unknown option --" .. name end
      if OPTIONS[name] then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then return nil, "--" .. name .. " needs a value" end
        end
        opts[name] = value
      else
        if value ~= nil then return nil, "--" .. name .. " takes no value" end
        opts[name] = true
      end
    elseif a == "--" then
      for j = i + 1, #argv do pos[#pos + 1] = argv[j] end
      break
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return opts, pos
end

-- Output goes through `out` and `err` so tests and embedders can capture it.
local Cmd = {}
Cmd.__index = Cmd

function Cmd:say(...) self.out:write(...) self.out:write("\n") end
function Cmd:warn(...) self.err:write(...) self.err:write("\n") end
function Cmd:json(t) self.out:write(cjson.encode(t), "\n") end

function Cmd:usage_error(msg, command)
  self:warn("rtcadmin: ", msg)
  self:warn(command and HELP[command] or "run 'rtcadmin --help' for usage")
  return EXIT_USAGE
end

local function is_tty(fh)
  if fh ~= io.stderr then return false end
  local ok = os.execute("test -t 2")
  return ok == true or ok == 0
end

function Cmd:client()
  local rtcadmin = require "rtcadmin"
  local o = {}
  if self.opts.endpoint then o.endpoint = self.opts.endpoint end
  local ok, c = pcall(rtcadmin.client, o)
  if not ok then return nil, tostring(c) end
  return c
end

local function number_opt(self, name, command)
  local v = self.opts[name]
  if v == nil then return nil end
  local n = tonumber(v)
  if not n then return nil, self:usage_error("--" .. name .. " must be a number", command) end
  return n
end

-- A one-line progress bar on stderr, only on a terminal.
function Cmd:progress_fn(total)
  if total < 2 or self.err ~= io.stderr or not is_tty(self.err) then return nil end
  local err = self.err
  return function(done)
    local width = 30
    local filled = math.floor(width * done / total)
    err:write(string.format("\r[%s%s] %d/%d", ("#"):rep(filled), ("."):rep(width - filled), done, total))
    if done == total then err:write("\n") end
    err:flush()
  end
end

local function err_fields(e)
  return { code = e.code, message = e.message, http_status = e.http_status, request_id = e.request_id,
           retryable = e.retryable }
end

-- kick / ban / unban / mute / unmute: one call per user, as a paced batch.
local MODERATION = {
  kick = { verb = "kicked", room = true },
  ban = { verb = "banned", room = true, everywhere = true, duration = "required" },
  unban = { verb = "unbanned", room = true, everywhere = true },
  mute = { verb = "muted", room = true, streams = true, duration = "optional" },
  unmute = { verb = "unmuted", room = true, streams = true },
}

-- The durations the API takes (whole seconds): BanRoomUser 10..604800; BanUserStream 60..259200,
-- or 0 for "until unmuted". (The C module also takes 0 for a ban, which bans nobody: refused here.)
local DURATIONS = { ban = { 10, 604800 }, mute = { 60, 259200, zero = "until unmuted" } }

function Cmd:moderate(command)
  local spec = MODERATION[command]
  local pos, opts = self.pos, self.opts
  local everywhere = opts.everywhere and spec.everywhere
  if opts.everywhere and not spec.everywhere then return self:usage_error("--everywhere is for ban/unban", command) end
  if (opts.audio or opts.video) and not spec.streams then
    return self:usage_error("--audio/--video are for mute/unmute", command)
  end
  local need = everywhere and 2 or 3
  if #pos < need then
    return self:usage_error("expected " .. (everywhere and "APP USER..." or "APP ROOM USER..."), command)
  end
  local duration, bad = number_opt(self, "duration", command)
  if bad then return bad end
  if duration and not spec.duration then
    return self:usage_error("--duration is not an option of " .. command, command)
  end
  if spec.duration == "required" and not duration then
    return self:usage_error("--duration SECONDS is required", command)
  end
  local range = DURATIONS[command]
  if duration and not (duration % 1 == 0 and ((duration >= range[1] and duration <= range[2])
                                              or (duration == 0 and range.zero))) then
    return self:usage_error(string.format("--duration must be whole seconds from %d to %d%s, got %s", range[1],
      range[2], range.zero and (" (or 0: " .. range.zero .. ")") or "", self.opts.duration), command)
  end
  local app, room = pos[1], (not everywhere) and pos[2] or nil
  local users = {}
  for i = need, #pos do users[#users + 1] = pos[i] end

  local calls = {}
  for i, u in ipairs(users) do
    if command == "kick" then
      calls[i] = { "kick_user", app, room, u }
    elseif command == "ban" then
      calls[i] = { "ban_user", { app_id = app, room_id = room, user_id = u, duration = duration } }
    elseif command == "unban" then
      calls[i] = { "unban_user", { app_id = app, room_id = room, user_id = u } }
    else
      local args = { app_id = app, room_id = room, user_id = u }
      if opts.audio then args.audio = true end
      if opts.video then args.video = true end
      if command == "mute" then args.duration = duration end
      calls[i] = { command .. "_user", args }
    end
  end
  local client, cerr = self:client()
  if not client then self:warn("rtcadmin: ", cerr) return EXIT_FAILED end
  -- Bad IDs raise before anything is sent: a usage error. A ban whose user is banned already is
  -- extended in a second batch (rtcadmin.bans).
  local ok, results = pcall(require("rtcadmin.bans").batch, client, calls, { progress = self:progress_fn(#calls) })
  client:close()
  if not ok then return self:usage_error(tostring(results):gsub("^[^:]*:%d+: ", ""), command) end
  local failed = 0
  local where = room and (" in " .. room) or " everywhere"
  for i, r in ipairs(results) do
    local ext = r.extend and r.extend.meta.request_id
    if self.opts.json then
      local o = { command = command, app_id = app, room_id = room, user_id = users[i], ok = r.ok, duration = duration,
                  ban = r.ban }
      if r.ok then o.request_id, o.extend_request_id = r.meta.request_id, ext else o.error = err_fields(r.err) end
      self:json(o)
    elseif r.ok and r.ban == "extended" then
      self:say(string.format("extended the ban of %s%s to %d s from now (already banned; request %s)", users[i], where,
        duration, ext))
    elseif r.ok and command == "ban" then
      self:say(string.format("banned %s%s for %d s (request %s)", users[i], where, duration, r.meta.request_id))
    elseif r.ok then
      self:say(string.format("%s %s%s (request %s)", spec.verb, users[i], where, r.meta.request_id))
    elseif r.ban == "extend" then
      self:warn(string.format("FAILED %s: banned already, and the ban was not extended: %s", users[i],
        tostring(r.err)))
    else
      self:warn(string.format("FAILED %s: %s", users[i], tostring(r.err)))
    end
    if not r.ok then failed = failed + 1 end
  end
  return failed == 0 and EXIT_OK or EXIT_FAILED
end

function Cmd:online()
  if #self.pos ~= 2 then return self:usage_error("expected APP ROOM", "online") end
  local client, cerr = self:client()
  if not client then self:warn("rtcadmin: ", cerr) return EXIT_FAILED end
  local ok, room, err = pcall(client.online_users, client, self.pos[1], self.pos[2])
  client:close()
  if not ok then return self:usage_error(tostring(room):gsub("^[^:]*:%d+: ", ""), "online") end
  if not room then self:warn("rtcadmin: ", tostring(err)) return EXIT_FAILED end
  if self.opts.json then
    self:json({ app_id = self.pos[1], room_id = self.pos[2], exists = room.RoomExists == true,
                total = room.TotalUser or 0, users = room.VisibleUserList or {} })
  else
    local users = room.VisibleUserList or {}
    self:say(string.format("%s/%s: %d online%s%s", self.pos[1], self.pos[2], room.TotalUser or 0,
      #users > 0 and ": " or "", table.concat(users, " ")))
  end
  return EXIT_OK
end

---------------------------------------------------------------------------------------------------
-- Policy commands.

local function is_dir(path)
  local f = io.open(path .. "/.", "r")
  if f then f:close() return true end
  return false
end

local function list_lua(dir)
  local p = io.popen("ls -1 -- '" .. dir:gsub("'", [['\'']]) .. "' 2>/dev/null")
  local files = {}
  for name in p:lines() do
    if name:match("%.lua$") then files[#files + 1] = dir .. "/" .. name end
  end
  p:close()
  table.sort(files)
  return files
end

-- Splits positional arguments into rules files (*.lua, directories) and the rest.
local function split_rules(pos)
  local rules, rest = {}, {}
  for _, a in ipairs(pos) do
    if a ~= "-" and is_dir(a) then
      for _, f in ipairs(list_lua(a)) do rules[#rules + 1] = f end
    elseif a:match("%.lua$") then
      rules[#rules + 1] = a
    else
      rest[#rest + 1] = a
    end
  end
  return rules, rest
end

function Cmd:load_rules(engine, files, command)
  if #files == 0 then return nil, self:usage_error("no rules files given", command) end
  local ok = true
  for _, f in ipairs(files) do
    local loaded, errs = engine:load(f)
    if not loaded then
      ok = false
      for _, e in ipairs(errs) do self:warn("rtcadmin: ", e) end
    end
  end
  for _, w in ipairs(engine.warnings) do self:warn("warning: ", w) end
  if not ok then return nil, EXIT_RULES end
  return true
end

-- JSON Lines reader: yields (line number, event table) or (line number, nil, error).
local function events_from(fh)
  local n = 0
  return function()
    while true do
      local line = fh:read("*l")
      if not line then return nil end
      n = n + 1
      if line:find("%S") then
        local ok, ev = pcall(cjson.decode, line)
        if not ok then return n, nil, "not JSON: " .. tostring(ev):gsub("^.-: ", "") end
        if type(ev) ~= "table" or ev[1] ~= nil then return n, nil, "not a JSON object" end
        for k, v in pairs(ev) do if v == cjson.null then ev[k] = nil end end
        return n, ev
      end
    end
  end
end

local function clock(ts)
  if type(ts) ~= "number" or not (ts >= 0 and ts < 1e10) then return "-" end
  return os.date("!%H:%M:%S", math.floor(ts))
end

local function evidence_text(d)
  local parts = {}
  for _, e in ipairs(d.evidence or {}) do
    if e.query == "count" then
      parts[#parts + 1] = string.format("%s %s/%gs%s=%d", e.query, e.type, e.window,
        e.scope == "room" and " room" or "", e.value)
    elseif e.query == "distinct" then
      parts[#parts + 1] = string.format("distinct %s.%s/%gs=%d", e.type, e.field, e.window, e.value)
    else
      parts[#parts + 1] = string.format("offences=%d", e.value)
    end
  end
  return table.concat(parts, ", ")
end

local function action_text(d)
  local a = d.action
  if a == "kick" then return "kick" end
  if a == "mute" then
    local s = (d.audio and d.video) and "" or (d.audio and " audio" or " video")
    return "mute" .. s .. (d.duration > 0 and (" " .. d.duration .. "s") or "")
  end
  return a .. " " .. d.duration .. "s"
end

local TABLE_FMT = "%-8s %-14s %-16s %-12s %-22s %-10s %s"

function Cmd:decision_header()
  self:say(string.format(TABLE_FMT, "time", "rule", "action", "room", "user", "outcome", "evidence"))
end

function Cmd:decision_row(d)
  if self.opts.json then return self:json(d) end
  local outcome = d.outcome
  if outcome == "retry" or outcome == "failed" then
    outcome = outcome .. " (" .. tostring(d.error and d.error.code) .. ")"
  end
  self:say(string.format(TABLE_FMT, clock(d.event_ts), d.rule, action_text(d), d.room_id, d.user_id, outcome,
    evidence_text(d)))
end

function Cmd:summary(engine, extra)
  local st = engine:stats()
  local lines = {}
  lines[#lines + 1] = string.format("%d events, %d decisions (%d dry-run), %d duplicates, %d allow-listed, %d invalid, "
    .. "%d rule errors", st.events, st.decisions, st.dry_run, st.duplicates, st.allowed, st.invalid, st.rule_errors)
  local by = {}
  for _, r in ipairs(engine.rules) do
    if st.by_rule[r.name] > 0 then by[#by + 1] = string.format("%s %d", r.name, st.by_rule[r.name]) end
  end
  if #by > 0 then lines[#lines + 1] = "by rule: " .. table.concat(by, ", ") end
  local acts = {}
  for k, v in pairs(st.by_action) do acts[#acts + 1] = string.format("%s %d", k, v) end
  table.sort(acts)
  if #acts > 0 then lines[#lines + 1] = "by action: " .. table.concat(acts, ", ") end
  if extra then lines[#lines + 1] = extra end
  -- With --json stdout carries only decisions; the summary goes to stderr.
  for _, l in ipairs(lines) do if self.opts.json then self:warn(l) else self:say(l) end end
end

function Cmd:policy_engine(live)
  local policy = require "rtcadmin.policy"
  local o = {
    dry_run = not live or self.opts["dry-run"] == true,
    audit = self.opts.audit,
    on_error = function(rec) self:warn("rule error: ", rec.error) end,
  }
  if not o.dry_run then
    local client, cerr = self:client()
    if not client then return nil, cerr end
    o.client = client
  end
  local ok, engine = pcall(policy.new, o)
  if not ok then return nil, tostring(engine) end
  return engine
end

function Cmd.open_events(_, path)
  if path == nil or path == "-" then return io.stdin end
  local fh, err = io.open(path, "r")
  if not fh then return nil, err end
  return fh
end

function Cmd:feed(engine, fh, after_line)
  local bad = 0
  for n, ev, err in events_from(fh) do
    if ev then
      -- The engine refuses what is wrong with an event; anything it raises is reported with the
      -- line, and the input goes on.
      local ok, made, why = pcall(engine.process, engine, ev)
      if not ok then err = "engine error: " .. tostring(made)
      elseif not made then err = why end
    end
    if err then
      bad = bad + 1
      if bad <= 10 then self:warn(string.format("%s:%d: skipped: %s", self.events_name, n, err)) end
      if not ev then engine:note_invalid() end
    end
    if after_line then after_line(n) end
  end
end

-- The common start of replay and run: engine, rules, events. Returns engine, fh or nil, exit status.
function Cmd:start_policy(command, live, events)
  local files, rest = split_rules(self.pos)
  if (live and #rest > 1) or (not live and #rest ~= 1) then
    return nil, self:usage_error(live and "expected RULES... [EVENTS|-]" or "expected RULES... EVENTS", command)
  end
  local engine, eerr = self:policy_engine(live)
  if not engine then self:warn("rtcadmin: ", eerr) return nil, EXIT_FAILED end
  local loaded, code = self:load_rules(engine, files, command)
  if not loaded then return nil, code end
  local path = rest[1] or events
  local fh, ferr = self:open_events(path)
  if not fh then self:warn("rtcadmin: ", ferr) return nil, EXIT_USAGE end
  self.events_name = path == "-" and "stdin" or path
  if not self.opts.json then self:decision_header() end
  return engine, fh
end

function Cmd:replay()
  local engine, fh = self:start_policy("replay", false)
  if not engine then return fh end
  engine.on_decision = function(d) self:decision_row(d) end
  self:feed(engine, fh)
  if fh ~= io.stdin then fh:close() end
  self:summary(engine)
  return EXIT_OK
end

local function sleep(seconds)
  if seconds > 0 then require("rtcadmin").sleep(seconds) end
end

function Cmd:run()
  local drain, bad = number_opt(self, "drain", "run")
  if bad then return bad end
  drain = drain or 30
  local engine, fh = self:start_policy("run", true, "-")
  if not engine then return fh end
  local dry = engine.dry_run
  -- Decisions print when they are done: at once in dry-run, after the API answered otherwise.
  if dry then engine.on_decision = function(d) self:decision_row(d) end
  else engine.on_result = function(d) self:decision_row(d) end end
  -- From stdin act after every line (events arrive live); from a file, in batches of 256 lines.
  local every = fh == io.stdin and 1 or 256
  local function act()
    if #engine.queue > 0 or (engine:next_retry_in() or 1) == 0 then
      engine:flush({ progress = self:progress_fn(#engine.queue) })
    end
  end
  self:feed(engine, fh, function(n) if n % every == 0 then act() end end)
  if fh ~= io.stdin then fh:close() end
  if not dry then
    engine:flush({ progress = self:progress_fn(#engine.queue) })
    local deadline = os.time() + drain
    while #engine:pending() > 0 and os.time() < deadline do
      sleep(math.min(engine:next_retry_in() or 1, deadline - os.time()))
      engine:flush()
    end
  end
  local st = engine:stats()
  local waiting = #engine:pending()
  local extra
  if not dry then
    extra = string.format("actions: %d succeeded, %d failed, %d still waiting for a retry%s", st.succeeded, st.failed,
      waiting, self.opts.audit and (" (audit: " .. self.opts.audit .. ")") or "")
  end
  self:summary(engine, extra)
  if engine.client then engine.client:close() end
  return (st.failed > 0 or waiting > 0) and EXIT_FAILED or EXIT_OK
end

function Cmd:check()
  local files, rest = split_rules(self.pos)
  if #rest > 0 then return self:usage_error("not a rules file or directory: " .. rest[1], "check") end
  if #files == 0 then return self:usage_error("expected RULES...", "check") end
  local policy = require "rtcadmin.policy"
  local status = EXIT_OK
  for _, f in ipairs(files) do
    local file, errs = policy.load_file(f)
    if self.opts.json then
      self:json({ file = f, ok = file ~= nil, errors = errs or {}, warnings = file and file.warnings or {},
                  rules = file and #file.rules or 0 })
    elseif file then
      local names = {}
      for _, r in ipairs(file.rules) do names[#names + 1] = r.name end
      local allows = #file.allow.roles + #file.allow.users + #file.allow.patterns
      self:say(string.format("%s: ok, %d rules%s%s%s", f, #file.rules, #names > 0 and ": " or "",
        table.concat(names, ", "), allows > 0 and string.format(" (%d allow-list entries)", allows) or ""))
      for _, w in ipairs(file.warnings) do self:say("warning: " .. w) end
    else
      for _, e in ipairs(errs) do self:warn("error: " .. e) end
    end
    if not file then status = EXIT_RULES end
  end
  return status
end

local COMMANDS = {
  kick = Cmd.moderate, ban = Cmd.moderate, unban = Cmd.moderate, mute = Cmd.moderate, unmute = Cmd.moderate,
  online = Cmd.online, replay = Cmd.replay, run = Cmd.run, check = Cmd.check,
}

-- main(argv, {out=, err=}) -> exit status
function cli.main(argv, io_)
  io_ = io_ or {}
  local self = setmetatable({ out = io_.out or io.stdout, err = io_.err or io.stderr }, Cmd)
  local opts, pos = parse(argv or {})
  if not opts then return self:usage_error(pos) end
  self.opts = opts
  local command = table.remove(pos, 1)
  self.pos = pos
  if command == nil or command == "help" then
    if command == "help" and pos[1] and HELP[pos[1]] then self:say(HELP[pos[1]]) return EXIT_OK end
    (opts.help and self.out or self.err):write(USAGE)
    return opts.help and EXIT_OK or EXIT_USAGE
  end
  local fn = COMMANDS[command]
  if not fn then return self:usage_error("unknown command '" .. command .. "'") end
  if opts.help then self:say(HELP[command]) return EXIT_OK end
  return fn(self, command)
end

return cli
