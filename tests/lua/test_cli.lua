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
-- The directory the module was loaded from (package.searchpath is 5.2+).
local BUILD
for pattern in package.cpath:gmatch("[^;]+") do
  local f = io.open((pattern:gsub("%?", "rtcadmin")), "rb")
  if f then
    f:close()
    BUILD = pattern:match("^(.*)/[^/]+$")
    break
  end
end

-- Runs bin/rtcadmin with `args` (a string); returns exit status, stdout, stderr.
local function rtcadmin(args, stdin)
  local errf = dir .. "/stderr"
  local cmd = "VOLC_ACCESSKEY=" .. q(T.AK) .. " VOLC_SECRETKEY=" .. q(T.SK) .. " RTCADMIN_ENDPOINT=" .. q(emu.url)
    .. " RTCADMIN_BUILD=" .. q(BUILD) .. " " .. q(LUA) .. " " .. q(BIN) .. " " .. args .. " 2>" .. q(errf)
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
  return code, out, err
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
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
  local decisions = lines(out)
  T.eq(#decisions, 24, "24 decisions")
  local by = {}
  for _, l in ipairs(decisions) do
    local d = cjson.decode(l)
    for _, f in ipairs({ "rule", "action", "app_id", "room_id", "user_id", "duration" }) do
      T.ok(d[f] ~= nil, "decision has " .. f)
    end
    T.eq(d.dry_run, true, "dry run")
    by[d.rule] = (by[d.rule] or 0) + 1
  end
  T.same(by, { ["join-wave"] = 9, ["chat-flood"] = 10, ["loud-audio"] = 4, reported = 1 }, "by rule")
  T.match(err, "143 events, 24 decisions %(24 dry%-run%), 1 duplicates, 12 allow%-listed", "summary on stderr")
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
  T.match(rows[2], "k%s+kick%s+room1%s+zed%s+retry %(InternalError%)", "first outcome")
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
  T.match(out, "failed %(InvalidParameter.NotExistAppId%)", "the row says why")
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
    T.match(out .. err, "5 invalid", args .. ": counted")
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
