-- bin/rtcadmin as a user runs it: a separate process against the emulator, checked through the
-- emulator's room state, the exit status and the output.
local T = require "testlib"
local cjson = require "cjson"

local emu = T.emulator()
local APP = T.APP
local dir = T.tmpdir()
local q = T.shell_quote
local LUA = arg and arg[-1] or "lua5.4"
local BIN = T.source_dir .. "/bin/rtcadmin"
local BUILD = T.module_dir()

-- The shell command that runs bin/rtcadmin with `args` (a string) against the emulator, stderr to `errf`;
-- `env` ("NAME=value ...") overrides the environment.
local function command(args, errf, env)
  return "VOLC_ACCESSKEY=" .. q(T.AK) .. " VOLC_SECRETKEY=" .. q(T.SK) .. " RTCADMIN_ENDPOINT=" .. q(emu.url)
    .. " RTCADMIN_BUILD=" .. q(BUILD) .. " " .. (env and (env .. " ") or "") .. q(LUA) .. " " .. q(BIN) .. " " .. args
    .. " 2>" .. q(errf)
end

-- Runs bin/rtcadmin with `args` (a string); returns exit status, stdout, stderr.
local function rtcadmin(args, stdin, env)
  local errf = dir .. "/stderr"
  local cmd = command(args, errf, env)
  if stdin then
    T.write_file(dir .. "/stdin", stdin)
    cmd = cmd .. " <" .. q(dir .. "/stdin")
  else
    cmd = cmd .. " </dev/null"
  end
  -- The exit status comes back through the shell (on Lua 5.1/LuaJIT close() does not return it).
  local p = assert(io.popen("(" .. cmd .. "); echo \"__exit=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code
  out = out:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
  local err = T.read_file(errf) or ""
  T.no_match(out .. err, T.SK, "output")
  T.no_match(out .. err, "rtcadmin/cli.lua:", "output") -- never a position in the CLI's own code
  return code, out, err
end

-- The lines of `s` (or its pieces matching `pattern`).
local function lines(s, pattern)
  local t = {}
  for l in s:gmatch(pattern or "[^\n]+") do t[#t + 1] = l end
  return t
end

local function event(typ, user, extra)
  local e = { type = typ, app_id = APP, room_id = "room1", user_id = user, ts = 1764064800 }
  for k, v in pairs(extra or {}) do e[k] = v end
  return cjson.encode(e)
end

T.case("--help, per-command help, usage errors exit 2", function()
  local code, out = rtcadmin("--help")
  T.eq(code, 0, "--help")
  T.match(out, "usage: rtcadmin %[options%] COMMAND", "usage")
  for _, c in ipairs({ "kick", "ban", "unban", "mute", "unmute", "online", "replay", "run", "check" }) do
    code, out = rtcadmin(c .. " --help")
    T.eq(code, 0, c .. " --help")
    T.match(out, "usage: rtcadmin " .. c, c .. " help")
  end
  local _, err
  code, _, err = rtcadmin("")
  T.eq(code, 2, "no command")
  T.match(err, "usage: rtcadmin", "usage on stderr")
  code, _, err = rtcadmin("frobnicate")
  T.eq(code, 2, "unknown command")
  T.match(err, "unknown command 'frobnicate'", "message")
  code, _, err = rtcadmin("kick --colour red " .. APP .. " room1 bob")
  T.eq(code, 2, "unknown option")
  T.match(err, "unknown option %-%-colour", "message")
  code, _, err = rtcadmin("ban " .. APP .. " room1 bob")
  T.eq(code, 2, "ban without --duration")
  T.match(err, "%-%-duration SECONDS is required", "message")
end)

T.case("kick, ban, unban, mute, unmute and online change the room as the API does", function()
  emu.reset()
  local code, out = rtcadmin("kick " .. APP .. " room1 alice bob")
  T.eq(code, 0, "kick")
  T.match(out, "kicked alice in room1 %(request %d+%x+%)", "line per user")
  T.match(out, "kicked bob in room1", "bob")
  local room = emu.room(APP, "room1")
  T.ok(not T.contains(room.users, "alice") and not T.contains(room.users, "bob"), "both gone")

  code = rtcadmin("ban " .. APP .. " room1 carol --duration 600")
  T.eq(code, 0, "ban")
  local joined = emu.join(APP, "room1", "carol")
  T.eq(joined.joined, false, "carol cannot rejoin")
  T.eq(joined.reason, "user banned", "because she is banned")
  code = rtcadmin("ban --everywhere " .. APP .. " erin --duration=3600")
  T.eq(code, 0, "ban --everywhere")
  T.ok(emu.state().apps[APP].user_bans.erin, "erin banned app-wide")
  code = rtcadmin("unban --everywhere " .. APP .. " erin")
  T.eq(code, 0, "unban --everywhere")
  T.eq(emu.state().apps[APP].user_bans.erin, nil, "erin's ban lifted")

  emu.join(APP, "room1", "dan")
  code = rtcadmin("mute " .. APP .. " room1 dan --audio --duration 600")
  T.eq(code, 0, "mute")
  local muted = emu.room(APP, "room1").muted.dan
  T.ok(muted and muted.audio and not muted.video, "dan's audio muted")
  code = rtcadmin("unmute " .. APP .. " room1 dan --audio")
  T.eq(code, 0, "unmute")
  T.eq(emu.room(APP, "room1").muted.dan, nil, "unmuted")

  code, out = rtcadmin("online " .. APP .. " room1 --json")
  T.eq(code, 0, "online")
  local doc = cjson.decode(out)
  T.same(doc.users, { "dan" }, "who is online")
  code, out = rtcadmin("online " .. APP .. " lobby")
  T.eq(code, 0, "online, table form")
  T.match(out, "lobby: 1 online: dave", "table form (the app-wide ban removed erin from the lobby too)")
end)

T.case("bad IDs are usage errors and nothing is sent; failures exit 1 with the error", function()
  emu.reset()
  local code, _, err = rtcadmin("kick " .. APP .. " room1 'bad user!'")
  T.eq(code, 2, "bad user id")
  T.match(err, "bad argument 'user_id'", "message")
  T.eq(emu.stats().requests, 0, "nothing sent")
  code, _, err = rtcadmin("mute " .. APP .. " room1 dan --duration 5")
  T.eq(code, 2, "mute duration out of range")
  T.match(err, "duration", "message")
  T.eq(emu.stats().requests, 0, "nothing sent")
  local out
  code, out, err = rtcadmin("kick nosuchapp room1 bob --json")
  T.eq(code, 1, "runtime failure")
  T.eq(err, "", "with --json the result is on stdout only")
  local doc = cjson.decode(lines(out)[1])
  T.eq(doc.ok, false, "json ok")
  T.eq(doc.error.code, "InvalidParameter.NotExistAppId", "json error")
  code, _, err = rtcadmin("kick nosuchapp room1 bob")
  T.eq(code, 1, "runtime failure, table form")
  T.match(err, "FAILED bob: KickUser failed: InvalidParameter.NotExistAppId", "table form")
end)

T.case("replay is a dry run: decisions as a table or JSON, a summary, nothing sent", function()
  emu.reset()
  local rules = T.source_dir .. "/examples/rules"
  local events = T.source_dir .. "/examples/events/raid.jsonl"
  local code, out, err = rtcadmin("replay " .. q(rules) .. " " .. q(events) .. " --json")
  T.eq(code, 0, "replay")
  local records = lines(out)
  T.eq(#records, 25, "24 decisions and the summary")
  local by = {}
  for i = 1, 24 do
    local d = cjson.decode(records[i])
    T.eq(d.kind, "decision", "a decision")
    for _, f in ipairs({ "rule", "action", "app_id", "room_id", "user_id", "duration" }) do
      T.ok(d[f] ~= nil, "decision has " .. f)
    end
    T.eq(d.dry_run, true, "dry run")
    by[d.rule] = (by[d.rule] or 0) + 1
  end
  T.same(by, { ["join-wave"] = 9, ["chat-flood"] = 10, ["loud-audio"] = 4, reported = 1 }, "by rule")
  local summary = cjson.decode(records[25])
  T.eq(summary.kind, "summary", "the summary is the last object")
  T.eq(summary.events, 143, "events")
  T.eq(summary.decisions, 24, "decisions")
  T.eq(summary.duplicates, 1, "duplicates")
  T.eq(summary.allowed, 12, "allow-listed")
  T.same(summary.by_rule, by, "by rule")
  T.same(summary.by_action, { ban = 11, kick = 9, mute = 4 }, "by action")
  T.eq(err, "", "nothing on stderr")
  T.eq(emu.stats().requests, 0, "nothing sent")
  code, out = rtcadmin("replay " .. q(rules) .. " " .. q(events))
  T.eq(code, 0, "replay, table form")
  T.match(lines(out)[1], "^time%s+rule%s+action", "table header")
  T.match(out, "reported%s+kick%s+room1%s+raid_13%s+dry_run%s+distinct report.reporter/300s=3", "a row")
  T.match(out, "by rule: join%-wave 9, chat%-flood 10, loud%-audio 4, reported 1", "summary")
end)

T.case("run acts on events from stdin, writes the audit log, and reports outcomes", function()
  emu.reset()
  local rules = T.write_file(dir .. "/live.lua", [[
allow { roles = { "host" } }
rule "flood" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) > 2 end, action = ban(600) }
]])
  local input = table.concat({
    event("chat", "bob"), event("chat", "bob"), "not json", event("chat", "bob"),
    event("chat", "alice", { role = "host" }), event("chat", "alice", { role = "host" }),
    event("chat", "alice", { role = "host" }), "",
  }, "\n")
  local audit = dir .. "/audit.jsonl"
  local code, out, err = rtcadmin("run " .. q(rules) .. " - --audit " .. q(audit), input)
  T.eq(code, 0, "run")
  T.match(out, "flood%s+ban 600s%s+room1%s+bob%s+ok", "the decision with its outcome")
  T.match(out, "actions: 1 succeeded, 0 failed, 0 still waiting", "summary")
  T.match(err, "stdin:3: skipped: not JSON", "the bad line is reported with its number")
  T.ok(emu.room(APP, "room1").banned_users.bob, "bob banned")
  T.ok(T.contains(emu.room(APP, "room1").users, "alice"), "the host is allow-listed")
  local recs = {}
  for l in io.lines(audit) do recs[#recs + 1] = cjson.decode(l) end
  T.eq(#recs, 2, "decision and outcome")
  T.eq(recs[2].outcome, "ok", "outcome")
  T.match(recs[2].request_id, "^%d+%x+$", "request id")
  T.keep_for_scan(audit)

  -- --dry-run: the same input sends nothing.
  emu.reset()
  code, out = rtcadmin("run --dry-run " .. q(rules), input)
  T.eq(code, 0, "dry run")
  T.match(out, "flood%s+ban 600s%s+room1%s+bob%s+dry_run", "decided")
  T.eq(emu.stats().requests, 0, "nothing sent")
end)

T.case("run keeps a failed action, retries it after the input ends, and reports both outcomes", function()
  emu.reset()
  emu.join(APP, "room1", "zed")
  -- The client tries 4 times (3 retries) within a flush; five 500s make the first flush fail.
  emu.faults({ { action = "KickUser", kind = "status500", count = 5 } })
  local rules = T.write_file(dir .. "/kick-zed.lua", 'rule "k" { on = "chat", action = kick }\n')
  local audit = dir .. "/retry-audit.jsonl"
  local code, out = rtcadmin("run " .. q(rules) .. " --audit " .. q(audit) .. " --drain 20",
    event("chat", "zed") .. "\n")
  T.eq(code, 0, "done in the end")
  local rows = lines(out)
  T.match(rows[2], "k%s+kick%s+room1%s+zed%s+retry 1/8%s+error: InternalError %(HTTP 500%)", "first outcome")
  T.match(rows[3], "k%s+kick%s+room1%s+zed%s+ok", "then ok")
  T.match(out, "actions: 1 succeeded, 0 failed, 0 still waiting", "summary")
  T.ok(not T.contains(emu.room(APP, "room1").users, "zed"), "zed kicked")
  local outcomes = {}
  for l in io.lines(audit) do outcomes[#outcomes + 1] = cjson.decode(l).outcome end
  T.same(outcomes, { "queued", "retry", "ok" }, "audit")
  T.keep_for_scan(audit)
end)

T.case("run exits 1 when an action fails for good, 3 when a rules file does not load", function()
  emu.reset()
  local rules = T.write_file(dir .. "/kick.lua", 'rule "k" { on = "chat", action = kick }\n')
  local events = T.write_file(dir .. "/bad-app.jsonl",
    cjson.encode({ type = "chat", app_id = "nosuchapp", room_id = "room1", user_id = "bob", ts = 1 }) .. "\n")
  local code, out = rtcadmin("run " .. q(rules) .. " " .. q(events) .. " --drain 0")
  T.eq(code, 1, "failed action")
  T.match(out, "bob%s+failed%s+error: InvalidParameter.NotExistAppId %(HTTP 400%): AppId nosuchapp", "the row says why")
  T.match(out, "actions: 0 succeeded, 1 failed", "summary")

  local broken = T.write_file(dir .. "/broken.lua", 'rule "a" { on = "chat", action = kick }\nrule "b" {\n')
  local _, err
  code, _, err = rtcadmin("run " .. q(broken) .. " " .. q(events))
  T.eq(code, 3, "rules do not load")
  T.match(err, "broken%.lua:3: .*expected", "file:line")
  T.eq(emu.stats().requests, 1, "nothing more was sent")
end)

T.case("hostile numbers in events are invalid lines, never a crash: replay, run, --json, --audit", function()
  local rules = dir .. "/hostile_rules.lua"
  T.write_file(rules, 'rule "any" { on = "chat", action = kick, cooldown = 0 }\n')
  -- Raw JSON: 1e999 decodes to infinity, which JSON cannot write back.
  local input = table.concat({
    '{"type":"chat","app_id":"' .. APP .. '","room_id":"room1","user_id":"h1","ts":1e308}',
    '{"type":"chat","app_id":"' .. APP .. '","room_id":"room1","user_id":"h2","ts":1e999}',
    '{"type":"chat","app_id":"' .. APP .. '","room_id":"room1","user_id":"h3","ts":-1e999}',
    '{"type":"chat","app_id":"' .. APP .. '","room_id":"room1","user_id":"h4","ts":1764064800,"id":1e999}',
    '{"type":"chat","app_id":"' .. APP .. '","room_id":"room1","user_id":"h5","ts":1764064800000}',
    event("chat", "fine", { id = "ok-1" }),
  }, "\n") .. "\n"
  local events = dir .. "/hostile.jsonl"
  T.write_file(events, input)
  local audit = dir .. "/hostile_audit.jsonl"
  os.remove(audit)
  for _, args in ipairs({ "replay " .. q(rules) .. " " .. q(events), "replay --json " .. q(rules) .. " " .. q(events),
                          "run --audit " .. q(audit) .. " --json " .. q(rules) .. " -" }) do
    local code, out, err = rtcadmin(args, args:find("^run") and input or nil)
    T.eq(code, 0, args .. ": exit 0")
    for i, why in ipairs({ "out of range", "out of range", "out of range", "whole number", "milliseconds" }) do
      T.match(err, ":" .. i .. ": skipped: [^\n]*" .. why, args .. ": line " .. i .. " reported")
    end
    T.match(out, args:find("--json", 1, true) and '"invalid":5,' or "5 invalid", args .. ": counted")
    if args:find("--json", 1, true) then
      local decided = 0
      for _, l in ipairs(lines(out)) do
        local ok, d = pcall(cjson.decode, l)
        T.ok(ok, args .. ": a JSON line: " .. l)
        if d.rule == "any" then decided = decided + 1; T.eq(d.user_id, "fine", "the valid event decided") end
      end
      T.eq(decided, 1, args .. ": one decision, valid JSON")
    else
      T.match(out, "any%s+kick%s+room1%s+fine", args .. ": the valid event decided")
    end
  end
  for _, l in ipairs(lines(T.read_file(audit))) do T.ok(cjson.decode(l), "audit line parses") end
end)

T.case("check reports ok files, warnings and errors with file:line", function()
  local good = T.write_file(dir .. "/good.lua", 'rule "long" { on = "chat", action = ban(days(30)) }\n')
  local code, out = rtcadmin("check " .. q(good))
  T.eq(code, 0, "good file")
  T.match(out, "good%.lua: ok, 1 rules: long\n", "summary")
  T.match(out, "warning: .*good%.lua:1: ban: 2592000 s capped at the API maximum of 604800 s", "warning")
  local bad = T.write_file(dir .. "/bad.lua", '\nrule "x" { on = "chat", action = kick, when = 1 }\n')
  local _, err
  code, _, err = rtcadmin("check " .. q(good) .. " " .. q(bad))
  T.eq(code, 3, "a bad file")
  T.match(err, "bad%.lua:2: rule 'x': 'when' must be a function", "file:line")
  code, out = rtcadmin("check " .. q(T.source_dir .. "/examples/rules") .. " --json")
  T.eq(code, 0, "the examples load")
  for _, l in ipairs(lines(out)) do T.eq(cjson.decode(l).ok, true, l) end
  code, out = rtcadmin("check " .. q(T.source_dir .. "/examples/rules/00-allow.lua"))
  T.eq(code, 0, "allow-only file")
  T.match(out, "00%-allow%.lua: ok, 0 rules %(4 allow%-list entries%)", "counts allow entries")
end)

-- Starts bin/rtcadmin with `args`, its stdin a FIFO this test keeps open: returns the process's
-- stdout, the FIFO's writing end, and finish() -> exit status, rest of stdout, stderr. A CLI that
-- held its output back would be killed after 30 s and the reads would fail.
local function rtcadmin_live(args)
  local fifo, errf = dir .. "/live-stdin", dir .. "/live-stderr"
  os.remove(fifo)
  os.execute("mkfifo " .. q(fifo))
  local p = assert(io.popen("(timeout -s KILL 30 sh -c " .. q(command(args, errf)) .. " <" .. q(fifo)
    .. "); echo \"__exit=$?\"", "r"))
  local w = assert(io.open(fifo, "w"))
  return p, w, function()
    w:close()
    local rest = p:read("*a")
    p:close()
    local code
    rest = rest:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
    local err = T.read_file(errf) or ""
    T.no_match(rest .. err, T.SK, "output")
    return code, rest, err
  end
end

T.case("run prints each row when its action is done, with stdin and stdout pipes (table and --json)", function()
  local rules = T.write_file(dir .. "/stream.lua", 'rule "first-chat" { on = "chat", action = ban(600) }\n')
  for _, json in ipairs({ false, true }) do
    emu.reset()
    local out, w, finish = rtcadmin_live("run " .. q(rules) .. (json and " --json" or ""))
    if not json then T.match(out:read("*l") or "", "^time%s+rule%s+action", "the header comes at once") end
    for i, user in ipairs({ "s1", "s2" }) do
      w:write(event("chat", user, { id = "st-" .. tostring(json) .. i }), "\n")
      w:flush()
      local row = out:read("*l") or ""
      if json then
        local d = cjson.decode(row)
        T.eq(d.kind, "decision", "a decision record")
        T.eq(d.user_id, user, "the row of event " .. i .. " before event " .. (i + 1) .. " is sent")
        T.eq(d.outcome, "ok", "its outcome")
      else
        T.match(row, "first%-chat%s+ban 600s%s+room1%s+" .. user .. "%s+ok", "the row of event " .. i)
      end
      T.ok(emu.room(APP, "room1").banned_users[user], user .. " is banned when the row appears")
      if i == 1 then T.ok(not emu.room(APP, "room1").banned_users.s2, "event 2 not sent yet") end
    end
    local code, rest, err = finish()
    T.eq(code, 0, "exit status")
    if json then
      local objs = lines(rest)
      T.eq(#objs, 1, "only the summary is left")
      local summary = cjson.decode(objs[1])
      T.eq(summary.kind, "summary", "the summary is the last JSON object")
      T.same(summary.actions, { succeeded = 2, failed = 0, waiting = 0, bans_extended = 0, bans_already = 0 },
        "actions")
      T.same(summary.by_rule, { ["first-chat"] = 2 }, "by rule")
      T.same(summary.by_action, { ban = 2 }, "by action")
      T.eq(summary.exit, 0, "exit in the summary")
      T.eq(err, "", "nothing on stderr")
    else
      T.match(rest, "actions: 2 succeeded, 0 failed, 0 still waiting", "the summary at the end")
    end
  end
end)

-- Every line of `out` parses as JSON; returns the decoded objects.
local function json_lines(out, what)
  local objs = {}
  for _, l in ipairs(lines(out)) do
    local ok, o = pcall(cjson.decode, l)
    T.ok(ok and type(o) == "table", what .. ": a JSON object per line: " .. l)
    objs[#objs + 1] = o
  end
  return objs
end

T.case("--json of every command: one JSON object per line, empty lists as []", function()
  emu.reset()
  emu.join(APP, "room1", "jo")
  for _, c in ipairs({ "kick " .. APP .. " room1 jo", "ban " .. APP .. " room1 jo --duration 60",
                       "unban " .. APP .. " room1 jo", "mute " .. APP .. " room1 jo --audio",
                       "unmute " .. APP .. " room1 jo --audio", "kick nosuchapp room1 jo" }) do
    local code, out = rtcadmin(c .. " --json")
    local objs = json_lines(out, c)
    T.eq(#objs, 1, c .. ": one object")
    T.eq(objs[1].ok, code == 0, c .. ": ok as the exit status says")
  end

  local _, code, out
  code, out = rtcadmin("online " .. APP .. " nosuch --json")
  T.eq(code, 0, "online")
  T.match(out, '"users":%[%]', "no users: an empty array")
  T.same(json_lines(out, "online")[1].users, {}, "decodes to a table")
  emu.join(APP, "room1", "jo")
  _, out = rtcadmin("online " .. APP .. " room1 --json")
  T.ok(T.contains(json_lines(out, "online")[1].users, "jo"), "a user")

  local good = T.write_file(dir .. "/j-good.lua", 'rule "j" { on = "chat", action = kick }\n')
  local none = T.write_file(dir .. "/j-none.lua", 'allow { users = { "x" } }\n')
  local bad = T.write_file(dir .. "/j-bad.lua", 'rule "k" {\n')
  code, out = rtcadmin("check " .. q(good) .. " " .. q(none) .. " " .. q(bad) .. " --json")
  T.eq(code, 3, "check with a bad file")
  local objs = json_lines(out, "check")
  T.eq(#objs, 3, "an object per file")
  T.match(lines(out)[1], '"errors":%[%]', "no errors: []")
  T.match(lines(out)[1], '"warnings":%[%]', "no warnings: []")
  T.same(objs[1].names, { "j" }, "rule names")
  T.match(lines(out)[2], '"names":%[%]', "no rules: []")
  T.eq(objs[3].ok, false, "the bad file")
  T.match(objs[3].errors[1], "j%-bad%.lua:2:", "its error")
  T.match(lines(out)[3], '"warnings":%[%]', "[] also for a file that does not load")

  local events = T.write_file(dir .. "/j-events.jsonl", event("chat", "jo") .. "\nnot json\n")
  for _, c in ipairs({ "replay " .. q(good) .. " " .. q(events), "run " .. q(good) .. " " .. q(events),
                       "run --dry-run " .. q(good) .. " -" }) do
    local err
    code, out, err = rtcadmin(c .. " --json", T.read_file(events))
    T.eq(code, 0, c)
    objs = json_lines(out, c)
    -- run from a file prints a decision when its action is done, after the lines read before it.
    local kinds = { objs[1].kind, objs[2].kind }
    table.sort(kinds)
    T.same(kinds, { "decision", "invalid" }, c .. ": records")
    T.eq(objs[3].kind, "summary", c .. ": the summary last")
    T.eq(#objs, 3, c .. ": nothing else on stdout")
    local invalid = objs[1].kind == "invalid" and objs[1] or objs[2]
    T.eq(invalid.line, 2, c .. ": the invalid line's number")
    T.match(invalid.reason, "^not JSON", c .. ": and why")
    T.match(lines(out)[3], '"rule_errors_by_rule":{}', c .. ": maps stay objects")
    T.match(err, ":2: skipped: not JSON", c .. ": the skip also on stderr")
  end
end)

T.case("errors say what to fix: endpoint, paths, options, help; never a position in the CLI", function()
  local _, code, out, err
  code, _, err = rtcadmin("kick --endpoint foo " .. APP .. " room1 bob")
  T.eq(code, 2, "a bad --endpoint is a usage error")
  T.match(err, '^rtcadmin: bad %-%-endpoint "foo": must look like https://host%[:port%]\n', "message")
  code, _, err = rtcadmin("run --endpoint ftp://x " .. q(T.source_dir .. "/examples/rules") .. " -", "")
  T.eq(code, 2, "run with a bad --endpoint")
  T.match(err, 'bad %-%-endpoint "ftp://x": scheme must be http or https', "message")
  code, _, err = rtcadmin("online " .. APP .. " room1 --endpoint http://h:99999")
  T.eq(code, 2, "a bad port")
  T.match(err, 'bad %-%-endpoint "http://h:99999": "h:99999" is not a valid host%[:port%]', "message")
  code = rtcadmin("online --endpoint=" .. q(emu.url .. "/") .. " " .. APP .. " room1")
  T.eq(code, 0, "a trailing slash is fine")

  code, out, err = rtcadmin("help")
  T.eq(code, 0, "help")
  T.match(out, "^usage: rtcadmin %[options%] COMMAND", "usage on stdout")
  T.eq(err, "", "nothing on stderr")
  code, out = rtcadmin("help replay")
  T.eq(code, 0, "help COMMAND")
  T.match(out, "^usage: rtcadmin replay", "the command's help")
  code, _, err = rtcadmin("help nosuch")
  T.eq(code, 2, "help for an unknown command")
  T.match(err, "unknown command 'nosuch'", "message")

  local rules, events = T.source_dir .. "/examples/rules", T.source_dir .. "/examples/events/raid.jsonl"
  local R, E = T.literal(rules), T.literal(events)
  local empty = dir .. "/empty"
  os.execute("mkdir -p " .. q(empty))
  for _, c in ipairs({
    { "replay " .. q(rules .. "z") .. " " .. q(events), "no such file: " .. R .. "z\n" },
    { "replay " .. q(rules .. "/typo.lua") .. " " .. q(events), "no such file: " .. R .. "/typo%.lua\n" },
    { "replay " .. q(rules) .. " " .. q(events .. ".gz"), "no such file: " .. E .. "%.gz\n" },
    { "run " .. q(rules .. "z"), "no such file: " .. R .. "z\n" },
    { "check " .. q(rules .. "z"), "no such file: " .. R .. "z\n" },
    { "replay " .. q(events) .. " " .. q(rules) .. " " .. q(events),
      "not a rules file or directory: " .. E .. " %(EVENTS is the last argument%)" },
    { "replay " .. q(empty) .. " " .. q(events), "no rules files %(%*%.lua%) in directory" },
    { "replay " .. q(rules), "expected RULES%.%.%. EVENTS" },
    { "kick --dry-run " .. APP .. " room1 bob", "%-%-dry%-run is not an option of kick" },
    { "ban --audit x " .. APP .. " room1 bob --duration 60", "%-%-audit is not an option of ban" },
    { "replay --endpoint " .. q(emu.url) .. " " .. q(rules) .. " " .. q(events),
      "%-%-endpoint is not an option of replay" },
    { "check --strict " .. q(rules), "%-%-strict is not an option of check" },
    { "run --duration 5 " .. q(rules) .. " -", "%-%-duration is not an option of run" },
    { "replay --audit " .. q(dir .. "/no/such/dir/audit.jsonl") .. " " .. q(rules) .. " " .. q(events),
      "cannot open the audit log: .*No such file or directory" },
  }) do
    emu.reset()
    code, out, err = rtcadmin(c[1], "")
    T.eq(code, 2, c[1] .. ": usage")
    T.match(err, "^rtcadmin: " .. c[2], c[1] .. ": message")
    T.eq(out, "", c[1] .. ": nothing on stdout")
    T.eq(emu.stats().requests, 0, c[1] .. ": nothing sent")
  end

  code, _, err = rtcadmin("online " .. APP .. " room1", nil, "RTCADMIN_ENDPOINT=bad")
  T.eq(code, 2, "a bad RTCADMIN_ENDPOINT")
  T.match(err, '^rtcadmin: bad RTCADMIN_ENDPOINT "bad": must look like https://host%[:port%]', "message")
  code, _, err = rtcadmin("online " .. APP .. " room1", nil, "HOME=" .. q(dir) .. " VOLC_ACCESSKEY= VOLC_SECRETKEY=")
  T.eq(code, 1, "no credentials")
  T.match(err, "^rtcadmin: no credentials: ", "said plainly")
end)

-- The characters of a line (UTF-8), so that columns are counted as a terminal shows them.
local function chars(s) return lines(s, "[%z\1-\127\194-\244][\128-\191]*") end

-- Checks that every row's cells start where the header's column names do.
local function aligned(out, what)
  local rows = lines(out)
  local header = chars(rows[1])
  local starts = {}
  for i = 1, #header do
    if header[i] ~= " " and (i == 1 or header[i - 1] == " ") then starts[#starts + 1] = i end
  end
  T.eq(#starts, 7, what .. ": seven columns")
  for r = 2, #rows do
    local row = chars(rows[r])
    if not rows[r]:match("^%d+ events") and rows[r]:match("^%d%d:") then
      for c = 2, row[starts[#starts]] and #starts or #starts - 1 do -- (no evidence: no last column)
        T.ok(row[starts[c] - 1] == " " and row[starts[c]] ~= " ",
          what .. ": row " .. r .. " column " .. c .. " starts under its header: " .. rows[r])
      end
    end
  end
end

T.case("run against an unreachable endpoint says so once, early; retry rows show attempt and error, aligned",
  function()
  local port = T.free_port() -- a local port nothing listens on
  local rules = T.write_file(dir .. "/unreach.lua", 'rule "k" { on = "chat", action = kick, cooldown = 0 }\n')
  local long = ("u"):rep(40) .. "-end"
  local input = event("chat", "ua") .. "\n" .. event("chat", long) .. "\n"
  local t0 = T.wall_now()
  local code, out, err = rtcadmin("run --drain 2 --endpoint http://127.0.0.1:" .. port .. " " .. q(rules) .. " -",
    input)
  local took = T.wall_now() - t0
  T.eq(code, 1, "actions still waiting: exit 1")
  T.ok(took < 15, "the drain bounds the run: " .. took .. " s")
  local endpoint = "http://127%.0%.0%.1:" .. port
  T.match(err, "^rtcadmin: cannot reach " .. endpoint .. ": connection refused or host unreachable %(ConnectionFailed: "
    .. "[^\n]+%); retrying for up to %d+ s\n", "said early, with what is wrong")
  T.eq(select(2, err:gsub("cannot reach", "")), 1, "said once")
  T.match(out, "k%s+kick%s+room1%s+ua%s+retry 1/8%s+error: ConnectionFailed: [^\n]*%S", "attempt and error text")
  T.match(out, ("u"):rep(11) .. "…uuuuuu%-end retry 1/8", "a long user id is cut in the middle")
  T.match(out, "actions: 0 succeeded, 0 failed, 2 still waiting for a retry", "summary")
  aligned(out, "run")

  -- Connections closed without an answer, then answers: said when it fails and when it is back.
  emu.reset()
  emu.faults({ { action = "KickUser", kind = "drop", count = 4 } })
  code, out, err = rtcadmin("run --drain 10 " .. q(rules) .. " -", event("chat", "ub") .. "\n")
  T.eq(code, 0, "done in the end")
  T.match(err, "cannot reach " .. T.literal(emu.url) .. ": connection closed or reset %(ConnectionReset: ", "reset")
  T.match(err, "rtcadmin: " .. T.literal(emu.url) .. " answers again", "and back")
  T.match(out, "ub%s+retry 1/8%s+error: ConnectionReset: [^\n]*\n[^\n]*ub%s+ok", "the rows")
end)

T.case("the decision table keeps its columns for long rule names, actions and IDs", function()
  local name = "a-rule-name-longer-than-fourteen"
  local rules = T.write_file(dir .. "/wide.lua", 'rule "' .. name .. '" { on = "chat", action = escalate { kick, '
    .. 'ban_everywhere(days(7)) }, cooldown = 0 }\nrule "r2" { on = "join", action = mute(60, { video = true }) }\n')
  local events = T.write_file(dir .. "/wide.jsonl", table.concat({
    event("chat", "short"), event("chat", "short", { room_id = ("r"):rep(60) }),
    event("chat", ("x"):rep(128)), event("chat", ("x"):rep(128)), event("join", "j"),
  }, "\n") .. "\n")
  local code, out = rtcadmin("replay " .. q(rules) .. " " .. q(events))
  T.eq(code, 0, "replay")
  T.match(out, T.literal(name) .. " kick", "the rule column is as wide as the longest rule name")
  T.match(out, "ban_everywhere 604800s rrrrrr…rrrrr short", "and the action column as the longest action")
  aligned(out, "replay")
end)

T.case("check loads the files together: a rule name defined in two files is an error with both places", function()
  local a = T.write_file(dir .. "/dup-a.lua", 'rule "spam" { on = "chat", action = kick }\n')
  local b = T.write_file(dir .. "/dup-b.lua", '-- again\nrule "other" { on = "join", action = kick }\n'
    .. 'rule "spam" { on = "chat", action = ban(600) }\n')
  local code, out, err = rtcadmin("check " .. q(a) .. " " .. q(b))
  T.eq(code, 3, "exit 3")
  T.match(out, "dup%-a%.lua: ok, 1 rules: spam", "the first file is fine")
  T.match(err, "error: [^\n]*dup%-b%.lua:3: rule 'spam' already defined at [^\n]*dup%-a%.lua:1", "both places")
  local events = T.write_file(dir .. "/dup.jsonl", event("chat", "d") .. "\n")
  local rcode, _, rerr = rtcadmin("replay " .. q(a) .. " " .. q(b) .. " " .. q(events))
  T.eq(rcode, 3, "replay agrees")
  T.match(rerr, "dup%-b%.lua:3: rule 'spam' already defined at", "with the same message")
  code, out = rtcadmin("check --json " .. q(a) .. " " .. q(b))
  T.eq(code, 3, "--json: exit 3")
  local objs = json_lines(out, "check --json")
  T.eq(objs[1].ok, true, "a ok")
  T.eq(objs[2].ok, false, "b not")
  T.match(objs[2].errors[1], "dup%-b%.lua:3: rule 'spam' already defined at .*dup%-a%.lua:1", "the error")
end)

T.case("--strict: replay and run exit 4 on invalid lines or rule errors; without it the summary counts them", function()
  emu.reset()
  local rules = T.write_file(dir .. "/strict.lua", 'rule "boom" { on = "join", when = function(ev) return ev.x.y end, '
    .. 'action = kick }\nrule "k" { on = "chat", action = kick }\n')
  local bad_events = T.write_file(dir .. "/strict-bad.jsonl", table.concat({
    event("join", "a"), "{", event("chat", "b"), event("join", "c"),
  }, "\n") .. "\n")
  local good_events = T.write_file(dir .. "/strict-good.jsonl", event("chat", "b") .. "\n")
  local code, out, err = rtcadmin("replay " .. q(rules) .. " " .. q(bad_events))
  T.eq(code, 0, "without --strict: 0")
  T.match(out, "4 events, 1 decisions %(1 dry%-run%), 0 duplicates, 0 allow%-listed, 1 invalid, 2 rule errors",
    "the summary says how many")
  T.match(err, "rule error: [^\n]*strict%.lua:1:", "rule errors on stderr")
  code, out = rtcadmin("replay --strict " .. q(rules) .. " " .. q(bad_events))
  T.eq(code, 4, "--strict: 4")
  T.match(out, "strict: 1 invalid, 2 rule errors %(exit 4%)", "and says why")
  code = rtcadmin("replay --strict " .. q(rules) .. " " .. q(good_events))
  T.eq(code, 0, "--strict with nothing wrong: 0")
  code, out = rtcadmin("replay --strict --json " .. q(rules) .. " " .. q(bad_events))
  T.eq(code, 4, "--json --strict: 4")
  local objs = json_lines(out, "replay --strict --json")
  local kinds = {}
  for i, o in ipairs(objs) do kinds[i] = o.kind end
  T.same(kinds, { "rule_error", "invalid", "decision", "rule_error", "summary" }, "records in order")
  local summary = objs[#objs]
  T.eq(summary.exit, 4, "the summary's exit")
  T.eq(summary.strict, true, "strict")
  T.same(summary.rule_errors_by_rule, { boom = 2 }, "rule errors by rule")
  code, out = rtcadmin("run --strict " .. q(rules) .. " -", T.read_file(bad_events))
  T.eq(code, 4, "run --strict: 4")
  T.match(out, "actions: 1 succeeded, 0 failed", "the action was still taken")
  code = rtcadmin("run --strict " .. q(rules) .. " -", T.read_file(good_events))
  T.eq(code, 0, "run --strict, nothing wrong: 0")
  local failing = T.write_file(dir .. "/strict-fail.jsonl", table.concat({ "{",
    cjson.encode({ type = "chat", app_id = "nosuchapp", room_id = "room1", user_id = "b", ts = 1 }) }, "\n") .. "\n")
  code = rtcadmin("run --strict --drain 0 " .. q(rules) .. " " .. q(failing))
  T.eq(code, 1, "a failed action (1) comes before --strict (4)")
end)

T.case("replay reads EVENTS from a named pipe: the file is opened once", function()
  local fifo, errf = dir .. "/events-fifo", dir .. "/fifo-stderr"
  os.remove(fifo)
  os.execute("mkfifo " .. q(fifo))
  local rules = T.write_file(dir .. "/fifo.lua", 'rule "k" { on = "chat", action = kick }\n')
  -- The writer gives up after 20 s if nothing opens the pipe for reading.
  os.execute("timeout -s KILL 20 sh -c " .. q("printf '%s\\n' " .. q(event("chat", "f1")) .. " >" .. q(fifo)) .. " &")
  local p = assert(io.popen("timeout -s KILL 20 sh -c " .. q(command("replay " .. q(rules) .. " " .. q(fifo), errf))
    .. "; echo \"__exit=$?\""))
  local out = p:read("*a")
  p:close()
  T.match(out, "k%s+kick%s+room1%s+f1%s+dry_run", "the decision")
  T.match(out, "__exit=0\n$", "exit 0")
end)

T.case("ban and mute durations the API does not take are usage errors, and nothing is sent", function()
  emu.reset()
  for _, c in ipairs({
    { "ban " .. APP .. " room1 bob --duration 0", "from 10 to 604800, got 0" },
    { "ban " .. APP .. " room1 bob --duration 9", "from 10 to 604800, got 9" },
    { "ban --everywhere " .. APP .. " bob --duration 604801", "from 10 to 604800, got 604801" },
    { "ban " .. APP .. " room1 bob --duration 600.5", "from 10 to 604800, got 600.5" },
    { "ban " .. APP .. " room1 bob --duration 1e999", "got 1e999" },
    { "mute " .. APP .. " room1 bob --duration 30", "from 60 to 259200 (or 0: until unmuted), got 30" },
    { "mute " .. APP .. " room1 bob --duration 259201", "got 259201" },
  }) do
    local code, out, err = rtcadmin(c[1])
    T.eq(code, 2, c[1] .. ": usage error")
    T.eq(out, "", c[1] .. ": no success printed")
    T.match(err, "rtcadmin: %-%-duration must be whole seconds .*" .. T.literal(c[2]), c[1] .. ": says what it takes")
  end
  T.eq(emu.stats().requests, 0, "nothing sent")
  emu.join(APP, "room1", "dan")
  local code, out = rtcadmin("mute " .. APP .. " room1 dan --audio --duration 0")
  T.eq(code, 0, "mute --duration 0: until unmuted")
  T.match(out, "muted dan in room1", "said")
  T.eq(emu.room(APP, "room1").muted.dan.audio, 0, "muted until unmuted")
end)

T.case("ban of a user banned already extends the ban to the new duration from now, and says so", function()
  emu.reset()
  local function left(expiry) return expiry - T.now() end
  local code, out = rtcadmin("ban " .. APP .. " room1 bob --duration 600")
  T.eq(code, 0, "first ban")
  T.match(out, "^banned bob in room1 for 600 s %(request %d+%x+%)\n$", "a new ban")
  code, out = rtcadmin("ban " .. APP .. " room1 bob carol --duration 3600")
  T.eq(code, 0, "second ban")
  T.match(out, "extended the ban of bob in room1 to 3600 s from now %(already banned; request %d+%x+%)\n",
    "bob's ban extended")
  T.match(out, "banned carol in room1 for 3600 s", "carol banned anew")
  local banned = emu.room(APP, "room1").banned_users
  T.ok(math.abs(left(banned.bob) - 3600) < 5, "bob banned for an hour, not the 600 s left")
  T.ok(math.abs(left(banned.carol) - 3600) < 5, "carol for an hour")
  T.eq(emu.stats().by_action.UpdateBanRoomUserRule.ok, 1, "one extension")

  code, out = rtcadmin("ban --everywhere " .. APP .. " erin --duration 60 --json")
  T.eq(code, 0, "app-wide")
  T.eq(cjson.decode(out).ban, "new", "json: a new ban")
  code, out = rtcadmin("ban --everywhere " .. APP .. " erin --duration 7200 --json")
  T.eq(code, 0, "app-wide again")
  local doc = cjson.decode(out)
  T.eq(doc.ban, "extended", "json: extended")
  T.match(doc.request_id, "^%d+%x+$", "BanRoomUser's request id")
  T.match(doc.extend_request_id, "^%d+%x+$", "UpdateBanRoomUserRule's request id")
  T.eq(doc.duration, 7200, "json: the duration")
  T.ok(math.abs(left(emu.state().apps[APP].user_bans.erin) - 7200) < 5, "erin banned everywhere for two hours")

  -- A failed extension is a failure: exit 1, and the error says the ban was not extended.
  emu.faults({ { action = "UpdateBanRoomUserRule", kind = "status500", count = 4 } })
  local err
  code, out, err = rtcadmin("ban " .. APP .. " room1 bob --duration 86400")
  T.eq(code, 1, "exit 1")
  T.eq(out, "", "no success printed")
  T.match(err, "FAILED bob: banned already, and the ban was not extended: UpdateBanRoomUserRule failed: "
    .. "InternalError %(HTTP 500%)", "why")
  T.ok(math.abs(left(emu.room(APP, "room1").banned_users.bob) - 3600) < 10, "still the hour")
end)

T.run(function() emu.stop() os.execute("rm -rf " .. q(dir)) end)
