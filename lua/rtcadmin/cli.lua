-- The `rtcadmin` command line: one-off moderation calls, and the policy engine over event streams.
-- bin/rtcadmin only sets the module paths and calls main(arg). See docs/cli.md.
-- Events are decoded with a private lua-cjson instance; everything written as JSON goes through
-- Cmd:json (rtcadmin.json_encode).
local cjson = require("cjson").new()

local cli = {}

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RULES, EXIT_STRICT = 0, 1, 2, 3, 4
cli.EXIT = { ok = EXIT_OK, failed = EXIT_FAILED, usage = EXIT_USAGE, rules = EXIT_RULES, strict = EXIT_STRICT }

local USAGE = [[
usage: rtcadmin [options] COMMAND [ARGS]
       rtcadmin help [COMMAND]

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
  check   RULES...                          load and lint rules files (together, as replay and run do)

Fleet (events through Redis Streams; docs/fleet.md):
  ingest  --to redis://HOST:PORT[/DB] [EVENTS|-]     append JSON Lines events to the fleet's log
  run     RULES... --from redis://HOST:PORT[/DB] [--consumer NAME]   an engine of the fleet

Options:
  --endpoint URL   API endpoint (default: RTCADMIN_ENDPOINT, else https://rtc.volcengineapi.com)
  --json           one JSON object per line on stdout, and nothing else there
  --dry-run        decide and record, send nothing (run)
  --audit FILE     append the audit log (JSON Lines) to FILE (replay, run)
  --drain SECONDS  at the end of the input, keep retrying failed actions this long (run; default 30)
  --state FILE     keep the engine's state in FILE: restored at the start, saved every --state-every
                   seconds (default 1), on SIGTERM/SIGINT and at the end of the input (run)
  --metrics FILE   write Prometheus metrics to FILE every --metrics-every seconds (default 5) and at
                   the end (run; node_exporter's textfile collector reads it)
  --strict         exit 4 when input lines were invalid or rules raised errors (replay, run)
  --help           help for a command: rtcadmin COMMAND --help, or rtcadmin help COMMAND

Exit status: 0 done; 1 an action or call failed (or is still waiting for a retry); 2 usage;
3 a rules file does not load; 4 (--strict) invalid input lines or rule errors.
]]

local durations -- the API's duration ranges (defined below, with the moderation commands)

local HELP = {
  ingest = [=[
usage: rtcadmin ingest --to redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] [EVENTS|-] [--shards N] [--json] [--strict]
Appends the events (JSON Lines from a file, or stdin) to the fleet's log in Redis: each to its room's
shard stream, in pipelined batches. Lines that are not events the engines can take are reported
(line number and reason) and not sent. --shards N: the number of shards for a new deployment (16
by default; an existing one keeps its own, and a different N is an error). --strict: exit 4 when
lines were skipped. Exit 1 when Redis cannot be reached or refuses the connection.]=],
  kick = [[
usage: rtcadmin kick APP ROOM USER... [--endpoint URL] [--json]
Kicks each USER out of ROOM (KickUser). They may rejoin at once; use ban to keep them out.]],
  ban = [[
usage: rtcadmin ban APP ROOM USER... --duration SECONDS [--endpoint URL] [--json]
       rtcadmin ban --everywhere APP USER... --duration SECONDS
Removes each USER from ROOM and bans them from it for SECONDS, whole seconds from BAN_MIN to BAN_MAX
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
whole seconds from MUTE_MIN to MUTE_MAX, or 0 (the default): until unmuted.]],
  unmute = [[
usage: rtcadmin unmute APP ROOM USER... [--audio] [--video] [--endpoint URL] [--json]
Lifts stream bans (UnbanUserStream): --audio and/or --video (neither: both).]],
  online = [[
usage: rtcadmin online APP ROOM [--endpoint URL] [--json]
Lists the users online in ROOM (GetRoomOnlineUsers).]],
  replay = [[
usage: rtcadmin replay RULES... EVENTS [--json] [--audit FILE] [--strict]
Runs the rules over the recorded events (JSON Lines) without sending anything, and prints every
decision (a table, or one JSON object per decision with --json) and a summary (with --json, the
last object: {"kind":"summary",...}). RULES are Lua files or directories (their *.lua files, in name
order); the last argument is EVENTS. --strict: exit 4 when lines were invalid or rules raised errors.]],
  run = [[
usage: rtcadmin run RULES... [EVENTS|-] [--dry-run] [--json] [--audit FILE] [--endpoint URL] [--drain SECONDS]
                    [--strict] [--state FILE] [--state-every SECONDS] [--metrics FILE] [--metrics-every SECONDS]
Runs the rules over events from a JSON Lines file, or stdin (EVENTS "-" or absent; e.g. piped from a
queue consumer), and acts on the decisions through the API, paced and retried. Each row (or JSON
object) is printed when its action is done. Failed actions are retried later; at the end of input
it waits up to --drain seconds (default 30) for retries. --strict: exit 4 when lines were invalid or
rules raised errors (1, an action failed, comes first).
--state FILE: the engine's memory (counters, cooldowns, offences, recent event ids, decisions not yet
sent) is restored from FILE when it exists and saved to it every --state-every seconds (default 1)
while it changes, on SIGTERM or SIGINT (which then stop the run without the drain) and at the end of
the input; always whole (written beside it and renamed). A FILE that cannot be restored stops the
run (exit 1) and is left as it is.
--metrics FILE: the run's counters (API calls, events, decisions, rule errors) in Prometheus' text
format, written to FILE every --metrics-every seconds (default 5), also while the input is quiet,
and at the end; always whole (written beside it and renamed), for node_exporter's textfile
collector (docs/metrics.md). SIGTERM or SIGINT then stop the run as with --state.

       rtcadmin run RULES... --from redis://HOST[:PORT][/DB] [--consumer NAME] [--idle SECONDS]
                    [--dry-run] [--json] [--audit FILE] [--endpoint URL] [--state-every SECONDS] [--keep-log]
                    [--metrics FILE] [--metrics-every SECONDS]
An engine of the fleet (docs/fleet.md): reads the shards it holds a lease on from Redis, decides,
acts, and checkpoints each shard's state to Redis every --state-every seconds (default 2), which
acknowledges the entries it covers. Engines split the shards between them; a shard taken over is
restored from its checkpoint, and the fleet's send journal keeps actions from being sent twice. On
SIGTERM or SIGINT it finishes the batch, checkpoints, releases its shards and exits 0.
--consumer: this engine's name (default HOST-PID). --idle: exit after this many seconds without an
event. --keep-log: do not trim the streams below what the checkpoints cover.]],
  check = [[
usage: rtcadmin check RULES... [--json]
Loads the rules files together, in the sandbox, as replay and run do, and reports syntax errors, bad
rule definitions, rule names defined twice and warnings with file:line. Exit status 3 when a file
does not load.]],
}

-- A command's help, with the API's duration ranges (BAN_MIN and so on) filled in.
local function help_text(topic)
  local text = HELP[topic]
  if not text or not text:find("_M[AI][XN]") then return text end
  local d = durations()
  local v = { BAN_MIN = d.ban[1], BAN_MAX = d.ban[2], MUTE_MIN = d.mute[1], MUTE_MAX = d.mute[2] }
  return (text:gsub("%u+_M[AI][XN]", function(k) return v[k] and tostring(v[k]) end))
end

-- Options: name -> takes a value?
local OPTIONS = {
  endpoint = true, audit = true, duration = true, drain = true, state = true, ["state-every"] = true,
  ["dry-run"] = false, json = false, help = false, everywhere = false, audio = false, video = false,
  strict = false, to = true, from = true, consumer = true, idle = true, shards = true, ["keep-log"] = false,
  metrics = true, ["metrics-every"] = true,
}

-- The commands an option is for (absent: every command). An option given to a command that does
-- not use it is a usage error, never silently ignored (kick --dry-run would kick).
local function set(...)
  local s = {}
  for _, v in ipairs({ ... }) do s[v] = true end
  return s
end
local MODERATION_COMMANDS = set("kick", "ban", "unban", "mute", "unmute")
local OPTION_COMMANDS = {
  endpoint = set("kick", "ban", "unban", "mute", "unmute", "online", "run"),
  ["dry-run"] = set("run", "replay"), audit = set("run", "replay"), strict = set("run", "replay", "ingest"),
  to = set("ingest"), from = set("run"), consumer = set("run"), idle = set("run"), shards = set("ingest"),
  ["keep-log"] = set("run"),
  drain = set("run"), state = set("run"), ["state-every"] = set("run"), metrics = set("run"),
  ["metrics-every"] = set("run"),
  duration = MODERATION_COMMANDS, everywhere = MODERATION_COMMANDS, audio = MODERATION_COMMANDS,
  video = MODERATION_COMMANDS,
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

-- A message raised inside rtcadmin, without the position in rtcadmin's own code that Lua or the C
-- module put in front of it (the user's files keep theirs: rules errors point at the rules).
local function plain(msg)
  msg = tostring(msg)
  local before
  repeat
    before = msg
    msg = msg:gsub("^[^%s:]*rtcadmin/[%w_]+%.lua:%d+: ", ""):gsub("^[^%s:]*bin/rtcadmin:%d+: ", "")
  until msg == before
  return msg
end
cli.plain_message = plain

-- Output goes through `out` and `err` so tests and embedders can capture it. Every record is
-- flushed when written: a row appears when its action is done, also when stdout is a pipe.
local Cmd = {}
Cmd.__index = Cmd

local function flush(fh) if fh.flush then fh:flush() end end

function Cmd:say(...)
  self.out:write(...)
  self.out:write("\n")
  flush(self.out)
end
function Cmd:warn(...) self.err:write(...) self.err:write("\n") end
-- The one writer of JSON output: lists marked with rtcadmin.json_array are [] when empty.
function Cmd:json(t)
  self.out:write(require("rtcadmin").json_encode(t), "\n")
  flush(self.out)
end
local function array(t) return require("rtcadmin").json_array(t or {}) end

-- A usage error: the message, then the command's help (or, `brief`, where to find it).
function Cmd:usage_error(msg, command, brief)
  self:warn("rtcadmin: ", msg)
  if brief then
    self:warn("run 'rtcadmin ", command and (command .. " ") or "", "--help' for usage")
  else
    self:warn(command and help_text(command) or "run 'rtcadmin --help' for usage")
  end
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
  if not ok then return nil, (plain(c):gsub("^rtcadmin%.client: ", "")) end
  return c
end

-- A bad --endpoint (or RTCADMIN_ENDPOINT) is a usage error, found before anything else happens: a
-- client made with placeholder keys (never used, nothing is sent) checks it exactly as the real one.
function Cmd:check_endpoint(command)
  local rtcadmin = require "rtcadmin"
  local ok, c = pcall(rtcadmin.client, { endpoint = self.opts.endpoint, access_key = "-", secret_key = "-" })
  if ok then c:close() return nil end
  local msg = plain(c):gsub("^rtcadmin%.client: ", "")
  local which, value = "--endpoint", self.opts.endpoint
  local why = msg:match("^option 'endpoint':? ?(.*)$")
  if not why then
    which, value = "RTCADMIN_ENDPOINT", os.getenv("RTCADMIN_ENDPOINT") or ""
    why = msg:match("^RTCADMIN_ENDPOINT:? ?(.*)$")
    if not why then return nil end -- not about the endpoint: the real client reports it
  end
  why = why:gsub(", got \".*\"$", "")
  return self:usage_error(string.format("bad %s %q: %s", which, value, why), command, true)
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

-- The durations the API takes (whole seconds, rtcadmin.LIMITS): BanRoomUser's and BanUserStream's
-- ranges, and 0 for "until unmuted". (The C module also takes 0 for a ban, which bans nobody:
-- refused here.)
local DURATIONS
durations = function()
  if not DURATIONS then
    local limits = require("rtcadmin").LIMITS
    DURATIONS = { ban = { limits.ban.min, limits.ban.max },
                  mute = { limits.mute.min, limits.mute.max, zero = limits.mute.zero and "until unmuted" or nil } }
  end
  return DURATIONS
end

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
  local range = durations()[command]
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
  if not ok then return self:usage_error(plain(room), "online") end
  if not room then self:warn("rtcadmin: ", tostring(err)) return EXIT_FAILED end
  local users = {}
  for i, u in ipairs(room.VisibleUserList or {}) do users[i] = u end
  if self.opts.json then
    self:json({ app_id = self.pos[1], room_id = self.pos[2], exists = room.RoomExists == true,
                total = room.TotalUser or 0, users = array(users) })
  else
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
    if name:match("%.lua$") then files[#files + 1] = dir:gsub("/+$", "") .. "/" .. name end
  end
  p:close()
  table.sort(files)
  return files
end

-- What is wrong when io.open(path) failed with `err`: "no such file: PATH" or "cannot read PATH: ...".
local function open_problem(path, err)
  local why = tostring(err):match(": ([^:]*)$") or tostring(err)
  if why:find("No such file", 1, true) then return "no such file: " .. path end
  return "cannot read " .. path .. ": " .. why
end

local function readable(path)
  local f, err = io.open(path, "rb")
  if f then f:close() return true end
  return nil, open_problem(path, err)
end

-- Splits positional arguments into rules files (*.lua files and directories of them) and, when
-- `events` is set, the EVENTS argument: the last one, "-" or a file that is neither (not opened
-- here: it may be a FIFO). Returns the files and the events argument, or nil and what is wrong.
local function split_args(pos, events)
  local files, ev = {}, nil
  for i, a in ipairs(pos) do
    if a ~= "-" and is_dir(a) then
      local found = list_lua(a)
      if #found == 0 then return nil, "no rules files (*.lua) in directory " .. a end
      for _, f in ipairs(found) do files[#files + 1] = f end
    elseif a:match("%.lua$") then
      local ok, why = readable(a)
      if not ok then return nil, why end
      files[#files + 1] = a
    elseif events and i == #pos then
      ev = a
    else
      local ok, why = readable(a)
      if a ~= "-" and not ok then return nil, why end
      return nil, "not a rules file or directory: " .. a .. (events and " (EVENTS is the last argument)" or "")
    end
  end
  return files, ev
end

-- JSON Lines reader over read_line() (the next line, nil at the end): yields (line number, event
-- table) or (line number, nil, error).
local function events_from(read_line)
  local n = 0
  return function()
    while true do
      local line = read_line()
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
  local a = tostring(d.action)
  if a == "kick" then return "kick" end
  local duration = tonumber(d.duration) or 0
  if a == "mute" then
    local s = (d.audio and d.video) and "" or (d.audio and " audio" or " video")
    return "mute" .. s .. (duration > 0 and (" " .. duration .. "s") or "")
  end
  return a .. " " .. duration .. "s"
end

-- "CODE (HTTP n): message [request ID]" for an action's error.
local function error_text(e)
  local s = tostring(e.code or "Error")
  if (tonumber(e.http_status) or 0) > 0 then s = s .. " (HTTP " .. e.http_status .. ")" end
  if e.message and e.message ~= "" then s = s .. ": " .. tostring(e.message) end
  if e.request_id then s = s .. " [request " .. tostring(e.request_id) .. "]" end
  return s
end

-- Table cells: a fixed width in characters (UTF-8 aware). A longer value is cut with "…" (IDs in
-- the middle, where the end that tells them apart survives); the full values are in --json and the
-- audit log. Control characters become spaces.
local function text_width(s) return #s - select(2, s:gsub("[\128-\191]", "")) end

local function utf8_head(s, n)
  local i, count = 1, 0
  while i <= #s and count < n do
    i = i + 1
    while i <= #s and s:byte(i) >= 128 and s:byte(i) < 192 do i = i + 1 end
    count = count + 1
  end
  return s:sub(1, i - 1)
end

local function utf8_tail(s, n)
  local i, count = #s + 1, 0
  while i > 1 and count < n do
    i = i - 1
    while i > 1 and s:byte(i) >= 128 and s:byte(i) < 192 do i = i - 1 end
    count = count + 1
  end
  return s:sub(i)
end

local function cell(s, width, middle)
  s = tostring(s):gsub("%c", " ")
  local n = text_width(s)
  if n > width then
    if middle then
      local head = math.ceil((width - 1) / 2)
      s = utf8_head(s, head) .. "…" .. utf8_tail(s, width - 1 - head)
    else
      s = utf8_head(s, width - 1) .. "…"
    end
    n = width
  end
  return s .. (" "):rep(width - n)
end

local COLUMNS = {
  { "time", 8 }, { "rule", 14, max = 32 }, { "action", 16, max = 24 }, { "room", 12, middle = true },
  { "user", 22, middle = true }, { "outcome", 10 },
}

-- Column widths for this run: wide enough for every rule name and action the rules can take (up to
-- a maximum), and for the longest outcome ("failed 8/8").
function Cmd:table_widths(engine)
  local w = {}
  for i, c in ipairs(COLUMNS) do w[i] = c[2] end
  local function widen(i, s) w[i] = math.max(w[i], math.min(COLUMNS[i].max or w[i], text_width(s))) end
  for _, r in ipairs(engine.rules) do
    widen(2, tostring(r.name))
    local act = type(r.action) == "table" and r.action or {}
    for _, a in ipairs(act.steps or { act }) do
      if type(a) == "table" and a.kind then
        widen(3, action_text({ action = a.kind, duration = a.duration, audio = a.audio, video = a.video }))
      end
    end
  end
  local m = engine.cfg.max_attempts
  w[6] = math.max(w[6], #("failed " .. m .. "/" .. m))
  self.widths = w
end

function Cmd:table_row(values, last)
  local parts = {}
  for i, c in ipairs(COLUMNS) do parts[i] = cell(values[i], self.widths[i], c.middle) end
  parts[#parts + 1] = (tostring(last):gsub("%c", " "))
  self:say((table.concat(parts, " "):gsub("%s+$", "")))
end

function Cmd:decision_header()
  local names = {}
  for i, c in ipairs(COLUMNS) do names[i] = c[1] end
  self:table_row(names, "evidence")
end

function Cmd:decision_row(d)
  if self.opts.json then return self:json(d) end
  local outcome, max = tostring(d.outcome), self.engine.cfg.max_attempts
  local last = evidence_text(d)
  if outcome == "retry" or outcome == "failed" then
    if outcome == "retry" or d.attempts > 1 then outcome = string.format("%s %d/%d", outcome, d.attempts, max) end
    if d.error then last = (last ~= "" and (last .. "; ") or "") .. "error: " .. error_text(d.error) end
  elseif (outcome == "already" or outcome == "extended") and d.ban_until then
    last = (last ~= "" and (last .. "; ") or "") .. "banned until " .. d.ban_until
  end
  self:table_row({ clock(d.event_ts), d.rule, action_text(d), d.room_id, d.user_id, outcome }, last)
end

-- Transport failures: the endpoint was not reached at all.
local UNREACHABLE = {
  ConnectionFailed = "connection refused or host unreachable", DNSFailure = "host name not found",
  Timeout = "no answer in time", ConnectionReset = "connection closed or reset",
  TLSError = "TLS handshake or certificate check failed", ProtocolError = "not an HTTP answer",
  TransportError = "transport error",
}

-- The longest a failed action can still be retried: the engine's remaining backoff, and after the
-- input has ended no longer than the drain time left.
function Cmd:retry_horizon(d)
  local cfg, t = self.engine.cfg, 0
  for a = d.attempts, cfg.max_attempts - 1 do t = t + math.min(cfg.retry_cap, cfg.retry_base * 2 ^ (a - 1)) end
  if self.drain_deadline then
    t = math.min(t, math.max(0, self.drain_deadline - os.time()))
  elseif self.input_done then
    t = math.min(t, self.drain)
  end
  return math.ceil(t)
end

-- Says once, at the first transport failure, that the endpoint cannot be reached (and again when
-- it can).
-- The outcomes of an action the service carried out (a ban may have been extended, or found to be
-- the engine's own longer one: see rtcadmin.bans).
local DONE = { ok = true, extended = true, already = true }

function Cmd:note_reachable(d)
  local e = d.error
  if DONE[d.outcome] then
    if self.unreachable then
      self.unreachable = false
      self:warn("rtcadmin: ", self.endpoint, " answers again")
    end
  elseif e and UNREACHABLE[e.code] and (tonumber(e.http_status) or 0) == 0 and not self.unreachable then
    self.unreachable = true
    local next_step
    if d.outcome == "retry" then
      next_step = string.format("retrying for up to %d s", self:retry_horizon(d))
    elseif e.retryable then
      next_step = string.format("gave up on this action after %d attempts", d.attempts)
    else
      next_step = "not retried"
    end
    self:warn(string.format("rtcadmin: cannot reach %s: %s (%s: %s); %s", self.endpoint, UNREACHABLE[e.code],
      e.code, tostring(e.message), next_step))
  end
end

-- The summary: plain lines (stdout), or with --json the last JSON object of the output.
function Cmd:summary(command, engine, status, live)
  local st = engine:stats()
  local waiting = #engine:pending()
  local strict_bad = st.invalid > 0 or st.rule_errors > 0
  if self.opts.json then
    local by_rule, by_action, errors_by_rule, files = {}, {}, {}, {}
    for _, r in ipairs(engine.rules) do by_rule[r.name] = st.by_rule[r.name] or 0 end
    for k, v in pairs(st.by_action) do by_action[k] = v end
    for k, v in pairs(st.errors_by_rule) do errors_by_rule[k] = v end
    for i, f in ipairs(engine.files) do files[i] = f end
    local o = {
      kind = "summary", command = command, events = st.events, decisions = st.decisions, dry_run = st.dry_run,
      duplicates = st.duplicates, allowed = st.allowed, invalid = st.invalid, rule_errors = st.rule_errors,
      by_rule = by_rule, by_action = by_action, rule_errors_by_rule = errors_by_rule,
      rules_files = array(files), strict = self.opts.strict == true, exit = status,
    }
    if live then
      o.actions = { succeeded = st.succeeded, failed = st.failed, waiting = waiting, bans_extended = st.bans_extended,
                    bans_already = st.bans_already }
    end
    if self.opts.audit then o.audit = self.opts.audit end
    return self:json(o)
  end
  self:say(string.format("%d events, %d decisions (%d dry-run), %d duplicates, %d allow-listed, %d invalid, "
    .. "%d rule errors", st.events, st.decisions, st.dry_run, st.duplicates, st.allowed, st.invalid, st.rule_errors))
  local by = {}
  for _, r in ipairs(engine.rules) do
    if st.by_rule[r.name] > 0 then by[#by + 1] = string.format("%s %d", r.name, st.by_rule[r.name]) end
  end
  if #by > 0 then self:say("by rule: " .. table.concat(by, ", ")) end
  local acts = {}
  for k, v in pairs(st.by_action) do acts[#acts + 1] = string.format("%s %d", k, v) end
  table.sort(acts)
  if #acts > 0 then self:say("by action: " .. table.concat(acts, ", ")) end
  if live then
    local bans_note = ""
    if st.bans_extended > 0 or st.bans_already > 0 then
      bans_note = string.format(" (bans: %d extended, %d already in place)", st.bans_extended, st.bans_already)
    end
    self:say(string.format("actions: %d succeeded%s, %d failed, %d still waiting for a retry%s", st.succeeded,
      bans_note, st.failed, waiting, self.opts.audit and (" (audit: " .. self.opts.audit .. ")") or ""))
  end
  if self.opts.strict and strict_bad then
    self:say(string.format("strict: %d invalid, %d rule errors%s", st.invalid, st.rule_errors,
      status == EXIT_STRICT and " (exit 4)" or ""))
  end
end

-- The exit status of replay and run once the input is done.
function Cmd:policy_status(engine, live)
  local st = engine:stats()
  if live and (st.failed > 0 or #engine:pending() > 0) then return EXIT_FAILED end
  if self.opts.strict and (st.invalid > 0 or st.rule_errors > 0) then return EXIT_STRICT end
  return EXIT_OK
end

-- `with`: {journal =, client =} for the fleet's engines (one client shared by them).
function Cmd:policy_engine(live, audit, with)
  local policy = require "rtcadmin.policy"
  with = with or {}
  local o = {
    dry_run = not live or self.opts["dry-run"] == true,
    audit = audit, journal = with.journal,
    on_error = function(rec)
      self:warn("rule error: ", rec.error)
      if self.opts.json then self:json(rec) end
    end,
  }
  if not o.dry_run then
    local client, cerr = with.client, nil
    if not client then client, cerr = self:client() end
    if not client then return nil, cerr end
    o.client = client
    self.endpoint = client:info().endpoint
  end
  local ok, engine = pcall(policy.new, o)
  if not ok then return nil, plain(engine) end
  return engine
end

function Cmd.open_events(_, path)
  if path == nil or path == "-" then return io.stdin end
  local fh, err = io.open(path, "r")
  if not fh then return nil, err end
  return fh
end

-- Lines skipped are reported on stderr with their number (the first 10) and, with --json, each as
-- {"kind":"invalid","line":N,"source":...,"reason":...} on stdout.
local SKIPS_SHOWN = 10

function Cmd:feed(engine, fh, after_line, read_line)
  local bad = 0
  for n, ev, err in events_from(read_line or function() return fh:read("*l") end) do
    if ev then
      -- The engine refuses what is wrong with an event; anything it raises is reported with the
      -- line, and the input goes on.
      local ok, made, why = pcall(engine.process, engine, ev)
      if not ok then err = "engine error: " .. plain(made)
      elseif not made then err = why end
    end
    if err then
      bad = bad + 1
      if bad <= SKIPS_SHOWN then
        self:warn(string.format("%s:%d: skipped: %s", self.events_name, n, err))
      elseif bad == SKIPS_SHOWN + 1 then
        self:warn(string.format("%s: more lines skipped; not shown, counted in the summary", self.events_name))
      end
      if self.opts.json then self:json({ kind = "invalid", source = self.events_name, line = n, reason = err }) end
      if not ev then engine:note_invalid() end
    end
    if after_line then after_line(n) end
  end
end

-- The common start of replay and run: arguments, events, audit log, engine, rules. Returns engine,
-- events handle, or nil, exit status.
function Cmd:start_policy(command, live)
  local files, path = split_args(self.pos, true)
  if not files then return nil, self:usage_error(path, command, true) end
  if not live and path == nil then return nil, self:usage_error("expected RULES... EVENTS", command) end
  path = path or "-"
  local fh, ferr = self:open_events(path)
  if not fh then return nil, self:usage_error(open_problem(path, ferr), command, true) end
  if #files == 0 then return nil, self:usage_error("no rules files given", command) end
  local audit
  if self.opts.audit then
    local aerr
    audit, aerr = io.open(self.opts.audit, "a")
    if not audit then return nil, self:usage_error("cannot open the audit log: " .. tostring(aerr), command, true) end
    self.audit_fh = audit
  end
  local engine, eerr = self:policy_engine(live, audit)
  if not engine then self:warn("rtcadmin: ", eerr) return nil, EXIT_FAILED end
  self.engine = engine
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
  self.events_name = path == "-" and "stdin" or path
  self.events_path = path
  self:table_widths(engine)
  if not self.opts.json then self:decision_header() end
  return engine, fh
end

function Cmd:finish_policy(command, engine, fh, live)
  if fh ~= io.stdin then fh:close() end
  local status = self:policy_status(engine, live)
  self:summary(command, engine, status, live)
  if engine.client then engine.client:close() end
  if self.audit_fh then self.audit_fh:close() end
  return status
end

function Cmd:replay()
  local engine, fh = self:start_policy("replay", false)
  if not engine then return fh end
  engine.on_decision = function(d) self:decision_row(d) end
  self:feed(engine, fh)
  return self:finish_policy("replay", engine, fh, false)
end

local function sleep(seconds)
  if seconds > 0 then require("rtcadmin").sleep(seconds) end
end

-- --state FILE: restores the engine from FILE when it is there. Returns true, or nil and the exit
-- status (the file is left as it is).
function Cmd:restore_state(engine, path)
  local f = io.open(path, "rb")
  if not f then
    local exists = os.rename(path, path)
    if exists then self:warn("rtcadmin: cannot read the state file ", path) return nil, EXIT_FAILED end
    return true
  end
  local s = f:read("*a")
  f:close()
  local ok, err = engine:restore(s)
  if not ok then
    local why = tostring(err):gsub("^rtcadmin%.policy: cannot restore: ", "")
    self:warn("rtcadmin: cannot restore the state in ", path, ": ", why,
      " (the file is left as it is: move it away to start afresh)")
    return nil, EXIT_FAILED
  end
  return true
end

-- --metrics FILE: a writer of the counters of sources() ({clients, engines}, see rtcadmin.metrics'
-- collect) every `every` seconds: tick() writes when due, write() now, due_in(). A failed write is
-- reported once (until one succeeds again).
function Cmd:metrics_writer(every, sources)
  local metrics = require "rtcadmin.metrics"
  local path, failing = self.opts.metrics, false
  local w = metrics.file_writer(path, every, function() return metrics.collect(sources()) end)
  local function checked(write)
    return function()
      local ok, err = write()
      if not ok and not failing then self:warn("rtcadmin: cannot write the metrics to ", path, ": ", tostring(err)) end
      failing = not ok
    end
  end
  return { tick = checked(w.tick), write = checked(w.write), due_in = w.due_in }
end

-- --metrics-every: seconds > 0 (default 5), only with --metrics. Returns it, or nil and the exit status.
function Cmd:metrics_every()
  local every, bad = number_opt(self, "metrics-every", "run")
  if bad then return nil, bad end
  if every ~= nil and not (every > 0 and every < math.huge) then
    return nil, self:usage_error("--metrics-every must be a number of seconds > 0", "run")
  end
  if every and not self.opts.metrics then
    return nil, self:usage_error("--metrics-every needs --metrics FILE", "run")
  end
  return every or 5
end

-- The periodic side of run: the state file (--state; `path` nil without it) and the metrics file
-- (--metrics; `ticker` nil without it). save() writes the state (atomically); read_line() reads the
-- input with a timeout, so that a state changed while the input is quiet is saved when it is due and
-- the metrics are written every few seconds; a signal (SIGTERM, SIGINT) ends the input. after_line()
-- notes the change and writes what is due.
function Cmd:state_keeper(engine, path, every, ticker)
  local core = require "rtcadmin"
  local last, dirty = core.time(), false
  local keeper = {}
  function keeper.save()
    if path then
      local ok, err = core.save_file(path, engine:snapshot())
      if not ok then self:warn("rtcadmin: cannot save the state: ", err) end
    end
    last, dirty = core.time(), false
  end
  function keeper.changed()
    dirty = path ~= nil
    if dirty and core.time() - last >= every then keeper.save() end
    if ticker then ticker.tick() end
  end
  local reader, rerr = core.lines(self.events_path)
  if not reader then return nil, rerr end
  function keeper.read_line()
    while true do
      if core.caught_signal() then self.signal = core.caught_signal() return nil end
      local wait = dirty and math.max(0, last + every - core.time()) or nil
      if ticker then wait = math.min(wait or math.huge, ticker.due_in()) end
      local line, why = reader:read(wait)
      if line then return line end
      if why == "timeout" then
        if dirty and core.time() - last >= every then keeper.save() end
        if ticker then ticker.tick() end
      elseif why ~= "signal" then
        if why then self:warn("rtcadmin: cannot read ", self.events_name, ": ", why) end
        return nil
      end
    end
  end
  function keeper.close() reader:close() end
  return keeper
end

-- Decisions print when they are done: at once in dry-run, after the API answered otherwise.
function Cmd:show_decisions(engine)
  if engine.dry_run then
    engine.on_decision = function(d) self:decision_row(d) end
  else
    engine.on_result = function(d)
      self:note_reachable(d)
      self:decision_row(d)
    end
  end
end

-- Waits for the engine's actions still waiting for a retry, flushing them when due, until none is
-- left or `deadline` (os.time()) has passed. opts: step (the longest sleep), stop() (a true value
-- ends the wait, and is returned), after() (called after each flush).
local function drain(engine, deadline, opts)
  opts = opts or {}
  while #engine:pending() > 0 and os.time() < deadline do
    local step = math.min(engine:next_retry_in() or 1, deadline - os.time())
    if opts.step then step = math.min(step, opts.step) end
    sleep(step)
    local stopped = opts.stop and opts.stop()
    if stopped then return stopped end
    engine:flush()
    if opts.after then opts.after() end
  end
end

function Cmd:run()
  if self.opts.from then
    if self.opts.state then
      return self:usage_error("--state goes without --from (fleet engines keep no state file)", "run", true)
    end
    return require("rtcadmin.fleet_cli").run(self, cli.internal)
  end
  for _, o in ipairs { "consumer", "idle", "keep-log" } do
    if self.opts[o] then return self:usage_error("--" .. o .. " goes with --from", "run", true) end
  end
  local drain_for, bad = number_opt(self, "drain", "run")
  if bad then return bad end
  self.drain = drain_for or 30
  local every
  every, bad = number_opt(self, "state-every", "run")
  if bad then return bad end
  if every ~= nil and not (every > 0 and every < math.huge) then
    return self:usage_error("--state-every must be a number of seconds > 0", "run")
  end
  if every and not self.opts.state then return self:usage_error("--state-every needs --state FILE", "run") end
  local metrics_every, mbad = self:metrics_every()
  if not metrics_every then return mbad end
  local engine, fh = self:start_policy("run", true)
  if not engine then return fh end
  local keeper, ticker
  if self.opts.state then
    local ok, status = self:restore_state(engine, self.opts.state)
    if not ok then
      if fh ~= io.stdin then fh:close() end
      if engine.client then engine.client:close() end
      if self.audit_fh then self.audit_fh:close() end
      return status
    end
  end
  if self.opts.metrics then
    ticker = self:metrics_writer(metrics_every, function()
      return { clients = { engine.client }, engines = { engine } }
    end)
    ticker.write()
  end
  if self.opts.state or ticker then
    if fh ~= io.stdin then fh:close() end
    local kerr
    keeper, kerr = self:state_keeper(engine, self.opts.state, every or 1, ticker)
    if not keeper then return self:usage_error("cannot read " .. tostring(kerr), "run", true) end
    require("rtcadmin").catch_signals()
    fh = io.stdin -- (read through the keeper; nothing to close here)
  end
  local dry = engine.dry_run
  self:show_decisions(engine)
  -- From stdin act after every line (events arrive live); from a file, in batches of 256 lines.
  local every_line = self.events_path == "-" and 1 or 256
  local function act()
    if engine:due() then engine:flush({ progress = self:progress_fn(#engine.queue) }) end
  end
  self:feed(engine, fh, function(n)
    if n % every_line == 0 then act() end
    if keeper then keeper.changed() end
  end, keeper and keeper.read_line)
  self.input_done = true
  if not dry and not self.signal then
    engine:flush({ progress = self:progress_fn(#engine.queue) })
    self.drain_deadline = os.time() + self.drain
    -- (in short steps while a signal can end the wait)
    self.signal = drain(engine, self.drain_deadline,
      keeper and { step = 0.2, stop = require("rtcadmin").caught_signal, after = keeper.changed }) or self.signal
  end
  if keeper then
    keeper.save()
    keeper.close()
    if ticker then ticker.write() end
    if self.signal then
      local saved = self.opts.state and ("; state saved to " .. self.opts.state) or ""
      self:warn("rtcadmin: ", self.signal, ": stopped", saved)
    end
  end
  return self:finish_policy("run", engine, fh, not dry)
end

-- Loads the files into one engine, as replay and run do, so that what does not load together (a
-- rule name defined in two files) is reported as it would be there.
function Cmd:check()
  local files, why = split_args(self.pos, false)
  if not files then return self:usage_error(why, "check", true) end
  if #files == 0 then return self:usage_error("expected RULES...", "check") end
  local engine = require("rtcadmin.policy").new({ dry_run = true })
  local status = EXIT_OK
  for _, f in ipairs(files) do
    local file, errs = engine:load(f)
    local names = {}
    for i, r in ipairs(file and file.rules or {}) do names[i] = r.name end
    if self.opts.json then
      local warnings = {}
      for i, w in ipairs(file and file.warnings or {}) do warnings[i] = w end
      self:json({ file = f, ok = file ~= nil, errors = array(errs), warnings = array(warnings), rules = #names,
                  names = array(names) })
    elseif file then
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
  ingest = function(self) return require("rtcadmin.fleet_cli").ingest(self, cli.internal) end,
}

-- What the fleet's commands (rtcadmin.fleet_cli) share with the others.
cli.internal = {
  events_from = events_from, split_args = split_args, open_problem = open_problem, number_opt = number_opt,
  plain = plain, array = array, drain = drain, SKIPS_SHOWN = SKIPS_SHOWN,
}

local function dispatch(self, argv)
  local opts, pos = parse(argv)
  if not opts then return self:usage_error(pos) end
  self.opts = opts
  local command = table.remove(pos, 1)
  self.pos = pos
  if command == "help" then
    local topic = pos[1]
    if topic == nil then self.out:write(USAGE) return EXIT_OK end
    if not HELP[topic] then return self:usage_error("unknown command '" .. topic .. "'") end
    self:say(help_text(topic))
    return EXIT_OK
  end
  if command == nil then
    (opts.help and self.out or self.err):write(USAGE)
    return opts.help and EXIT_OK or EXIT_USAGE
  end
  local fn = COMMANDS[command]
  if not fn then return self:usage_error("unknown command '" .. command .. "'") end
  if opts.help then self:say(help_text(command)) return EXIT_OK end
  for name in pairs(opts) do
    local only = OPTION_COMMANDS[name]
    if only and not only[command] then return self:usage_error("--" .. name .. " is not an option of " .. command,
      command) end
  end
  if OPTION_COMMANDS.endpoint[command] and not (command == "run" and opts["dry-run"]) then
    local status = self:check_endpoint(command)
    if status then return status end
  end
  return fn(self, command)
end

-- main(argv, {out=, err=}) -> exit status. An error raised inside is reported in one line and
-- exits 1: a module that cannot be loaded, or a bug.
function cli.main(argv, io_)
  io_ = io_ or {}
  local self = setmetatable({ out = io_.out or io.stdout, err = io_.err or io.stderr }, Cmd)
  local ok, status = pcall(dispatch, self, argv or {})
  if ok then return status end
  local msg = plain(status)
  local missing = msg:match("^module '([^']+)' not found")
  if missing then
    self:warn("rtcadmin: cannot load the Lua module '", missing, "'", missing == "rtcadmin"
      and " (in a source checkout, build it first: make)" or "")
  else
    self:warn("rtcadmin: internal error: ", msg)
  end
  return EXIT_FAILED
end

return cli
