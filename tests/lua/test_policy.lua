-- The policy engine through real rule files: windows with a fake clock, distinct counting,
-- escalation, cooldown, allow-lists, dry-run, audit records, retries, dedupe; live decisions
-- against the emulator.
local T = require "testlib"
local cjson = require "cjson"
local policy = require "rtcadmin.policy"
local rtcadmin = require "rtcadmin"
local bans = require "rtcadmin.bans"

local emu = T.emulator()
local APP = T.APP
local dir = T.tmpdir()
local rules_file = T.numbered_files(dir, "%s/rules%02d.lua") -- writes a rules file, returns its path

-- An engine on a fake clock with the given rules; `opts` adds engine options.
local function engine(src, opts)
  local clock = { t = 1000000 }
  local o = { dry_run = true, now = function() return clock.t end }
  for k, v in pairs(opts or {}) do o[k] = v end
  local e = policy.new(o)
  if src then
    local path = rules_file(src)
    local ok, errs = e:load(path)
    if not ok then error(table.concat(errs, "\n"), 2) end
  end
  return e, clock
end

local function ev(t, typ, user, extra)
  local e = { type = typ, app_id = APP, room_id = "room1", user_id = user, ts = t }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

-- Each {source, text} of `cases`: loading the source into engine `e` fails, and the first error
-- contains the text.
local function refused(e, cases)
  for _, c in ipairs(cases) do
    local ok, errs = e:load(rules_file(c[1]))
    T.eq(ok, nil, c[1])
    T.ok(errs[1]:find(c[2], 1, true), errs[1] .. " contains " .. c[2])
  end
end

-- Collects decisions through on_decision.
local function collector()
  local list = {}
  return list, function(d) list[#list + 1] = d end
end

T.case("ctx:count agrees with counting the event list, for any spacing of events and any window", function()
  local windows = { 1, 2.5, 5, 10, 30, 60 }
  local queries = {}
  for i, w in ipairs(windows) do queries[i] = string.format("ctx:count(\"chat\", %s) >= 0", w) end
  local got, on = collector()
  local e = engine('rule "probe" { on = "chat", cooldown = 0, action = kick, when = function(ev, ctx) return '
    .. table.concat(queries, " and ") .. " end }", { on_decision = on })
  local seed = 4242
  local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end
  -- Gaps from none (the same second) to longer than every window, in runs: bursts over many
  -- seconds grow a counter past 8 slots, quiet spells let it wrap and drop old seconds.
  local gaps = { 0, 0, 0.3, 0.5, 1, 1, 1, 2, 3, 7, 20, 75 }
  local times = { u1 = {}, u2 = {}, u3 = {} }
  local users = { "u1", "u2", "u3" }
  local t, checked = 100, 0
  for _ = 1, 3000 do
    t = t + gaps[rand(#gaps)] * (rand(10) == 1 and 3 or 1)
    local user = users[rand(#users)]
    local list = times[user]
    list[#list + 1] = t
    e:process(ev(t, "chat", user))
    local d = got[#got]
    T.eq(d.event_ts, t, "a decision for each event")
    local sec = math.floor(t)
    for i, w in ipairs(windows) do
      local want, first = 0, sec - math.ceil(w) + 1
      for k = #list, 1, -1 do
        if math.floor(list[k]) < first then break end
        want = want + 1
      end
      if d.evidence[i].value ~= want then
        error(string.format("count(chat, %s) at %s for %s: %d, counting the list: %d", w, t, user,
          d.evidence[i].value, want))
      end
      checked = checked + 1
    end
  end
  T.eq(checked, 3000 * #windows, "every count checked")
end)

T.case("a threshold over a window, on event time: the fourth chat within 10 s fires, spaced chats do not", function()
  local got, on = collector()
  local e = engine([[rule "flood" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) > 3 end,
                                    action = kick }]], { on_decision = on })
  for i = 0, 2 do T.eq(e:process(ev(i, "chat", "fast")), 0, "chat " .. i) end
  T.eq(e:process(ev(3, "chat", "fast")), 1, "fourth chat")
  T.eq(got[1].user_id, "fast", "user")
  T.eq(got[1].action, "kick", "action")
  T.same(got[1].evidence, { { query = "count", type = "chat", window = 10, scope = "user", value = 4 } }, "evidence")
  -- 4 s apart: at t = 12 the window (2, 12] holds 4, 8, 12.
  for _, t in ipairs({ 0, 4, 8, 12 }) do T.eq(e:process(ev(t, "chat", "slow")), 0, "slow chat at " .. t) end
  T.eq(e:process(ev(13, "chat", "slow")), 1, "the fourth within 10 s")
  -- Counters are per (room, user): another room starts from zero.
  local other = ev(13, "chat", "fast", { room_id = "lobby" })
  T.eq(e:process(other), 0, "same user, other room")
end)

T.case("counters are exact for every window up to 60 s as they grow from sparse to flooding", function()
  local e = engine([[rule "probe" { on = "chat", when = function(ev, ctx)
                       return ctx:count("chat", 60) < 0 or ctx:count("chat", 7) < 0 end, action = kick }]])
  local seed = 7
  local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end
  local steps = { 0, 0.3, 1, 2, 5, 13, 0.9, 0 }
  local users = { "a", "b", "c" }
  local history = { a = {}, b = {}, c = {} }
  local t, checked = 500.5, 0
  for i = 1, 3000 do
    -- Phases: sparse for a while, then a flood of several events a second, then sparse again.
    local phase = math.floor(i / 500) % 2
    t = t + (phase == 0 and steps[rand(#steps)] or steps[rand(3)] / 3)
    local user = users[rand(#users)]
    T.eq(e:process(ev(t, "chat", user)), 0, "event " .. i)
    local h = history[user]
    h[#h + 1] = t
    for _, w in ipairs({ 1, 3, 7, 15, 30, 59, 60 }) do
      local want, edge = 0, math.floor(t) - w
      for k = #h, 1, -1 do
        if math.floor(h[k]) <= edge then break end
        want = want + 1
      end
      local got = e.ctx:count("chat", w)
      if got ~= want then T.eq(got, want, string.format("user %s, window %d at t=%.1f (event %d)", user, w, t, i)) end
      checked = checked + 1
    end
  end
  T.eq(checked, 21000, "every window checked after every event")
end)

T.case("events without ts are stamped by the clock; windows follow it", function()
  local e, clock = engine([[rule "r" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 60) >= 3 end,
                                       action = kick }]])
  local function chat() return e:process({ type = "chat", app_id = APP, room_id = "room1", user_id = "u" }) end
  T.eq(chat(), 0, "1")
  clock.t = clock.t + 59
  T.eq(chat(), 0, "2")
  clock.t = clock.t + 2 -- the first chat left the window
  T.eq(chat(), 0, "3, but only two in 60 s")
  clock.t = clock.t + 1
  T.eq(chat(), 1, "three within 60 s")
end)

T.case("room-scope counters count everyone's joins in the room", function()
  local got, on = collector()
  local e = engine([[rule "wave" { on = "join", when = function(ev, ctx) return ctx:count("join", 10, "room") > 3 end,
                                   action = ban(60) }]], { on_decision = on })
  for i = 1, 3 do T.eq(e:process(ev(i, "join", "u" .. i)), 0, "join " .. i) end
  T.eq(e:process(ev(4, "join", "u4")), 1, "the fourth join")
  T.eq(e:process(ev(5, "join", "u5", { room_id = "lobby" })), 0, "another room has its own count")
  T.eq(e:process(ev(20, "join", "u6")), 0, "after the window")
  T.eq(got[1].user_id, "u4", "the newcomer is banned")
  T.eq(got[1].duration, 60, "duration")
  T.eq(got[1].evidence[1].scope, "room", "evidence scope")
end)

T.case("distinct counting: one reporter three times does nothing, three reporters fire; old ones expire", function()
  local e = engine([[rule "reported" { on = "report", action = kick,
    when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 3 end }]])
  for i = 1, 3 do T.eq(e:process(ev(i, "report", "target1", { reporter = "carol" })), 0, "same reporter " .. i) end
  T.eq(e:process(ev(10, "report", "target2", { reporter = "a" })), 0, "a")
  T.eq(e:process(ev(400, "report", "target2", { reporter = "b" })), 0, "b (a is 390 s old)")
  T.eq(e:process(ev(401, "report", "target2", { reporter = "c" })), 0, "c: only b and c within 300 s")
  T.eq(e:process(ev(402, "report", "target2", { reporter = "d" })), 1, "b, c, d")
  -- Any value counts, even one that looks like a bookkeeping field; at most distinct_max are kept.
  local e2 = engine([[rule "r" { on = "report", action = kick,
    when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 3 end }]], { distinct_max = 2 })
  for i, who in ipairs({ "n", "seen", "d" }) do e2:process(ev(i, "report", "t", { reporter = who })) end
  T.eq(e2:stats().decisions, 0, "only the last two reporters are kept")
  local e3 = engine([[rule "r" { on = "report", action = kick,
    when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 3 end }]])
  for i, who in ipairs({ "n", "seen", "d" }) do e3:process(ev(i, "report", "t", { reporter = who })) end
  T.eq(e3:stats().decisions, 1, "three reporters named n, seen, d")
end)

T.case("escalation climbs the ladder by prior offences, capped at the API maximum, and offences expire", function()
  local got, on = collector()
  local e = engine([[rule "r" { on = "chat", cooldown = 0,
    action = escalate { kick, ban(minutes(10)), ban_everywhere(days(30)) } }]],
    { on_decision = on, offence_window = 3600 })
  T.eq(#e.warnings, 1, "one warning")
  T.match(e.warnings[1], "rules%d+%.lua:2: ban_everywhere: 2592000 s capped at the API maximum of 604800 s", "warning")
  for i = 1, 4 do e:process(ev(i, "chat", "x")) end
  T.eq(#got, 4, "decisions")
  T.eq(got[1].action, "kick", "1st");           T.eq(got[1].step, 1, "step 1"); T.eq(got[1].offences, 0, "prior 0")
  T.eq(got[2].action, "ban", "2nd");            T.eq(got[2].duration, 600, "10 minutes")
  T.eq(got[3].action, "ban_everywhere", "3rd"); T.eq(got[3].duration, 604800, "capped")
  T.eq(got[3].scope, "app_user", "app-wide scope")
  T.eq(got[4].action, "ban_everywhere", "the ladder's top repeats"); T.eq(got[4].offences, 3, "prior 3")
  e:process(ev(4 + 3601, "chat", "x"))
  T.eq(got[5].action, "kick", "offences older than the window no longer count")
  -- Offences follow the user across rooms of the app.
  e:process(ev(4 + 3602, "chat", "x", { room_id = "lobby" }))
  T.eq(got[6].action, "ban", "second offence, other room")
end)

T.case("the rules of one event all see the state before it: its own offences count from the next event", function()
  local got, on = collector()
  local e = engine([[
rule "first" { on = "chat", cooldown = 0, action = kick }
rule "repeat" { on = "chat", cooldown = 0, action = ban(60), when = function(ev, ctx) return ctx:offences() >= 1 end }
]], { on_decision = on })
  T.eq(e:process(ev(1, "chat", "x")), 1, "only the first rule: the offence it adds is not seen by the second")
  T.eq(e:process(ev(2, "chat", "x")), 2, "the next event sees it")
  T.same({ got[2].rule, got[3].rule }, { "first", "repeat" }, "decisions in rule order")
  T.eq(got[3].offences, 2, "escalation and evidence count the offences before the decision")
  T.same(got[3].evidence, { { query = "offences", window = 86400, scope = "app_user", value = 1 } }, "evidence")
end)

T.case("a batch: later events see the cooldowns and offences of earlier ones; outcomes follow in order", function()
  local got, errors = {}, {}
  local e = engine([[
rule "flood" { on = "chat", cooldown = 30, action = kick,
  when = function(ev, ctx) return ctx:count("chat", 10) > 2 end }
rule "odd" { on = "chat", cooldown = 0, action = kick, when = function(ev, ctx) return ev.boom and error("boom") end }
rule "again" { on = "chat", cooldown = 100, action = ban(60), when = function(ev, ctx) return ctx:offences() >= 1 end }
]], { on_decision = function(d) got[#got + 1] = d.rule .. string.format("@%g", d.event_ts) end,
      on_error = function(r) errors[#errors + 1] = r.rule .. "@" .. r.event_id; got[#got + 1] = "error" end })
  local batch = {}
  for i = 1, 10 do batch[i] = ev(i * 0.5, "chat", "spammer", { id = "c" .. i, boom = i == 4 or nil }) end
  for i, t in ipairs({ 31, 31.5, 32 }) do batch[10 + i] = ev(t, "chat", "spammer", { id = "d" .. i }) end
  batch[#batch + 1] = "not an event"
  local made, invalid = e:process_batch(batch)
  T.eq(invalid, 1, "the invalid entry counted")
  -- At 2.0 flood is cooling down, odd fails and again sees the offence flood added at 1.5.
  T.same(got, { "flood@1.5", "error", "again@2", "flood@32" }, "decisions and the error, in order")
  T.eq(made, 3, "decisions")
  T.same(errors, { "odd@c4" }, "the failing rule's error, for its event")
  -- flood: 2.0 .. 5.0 and 31, 31.5 (until 31.5: 31.5 evaluates); again: 2.5 .. 5.0 and 31, 31.5, 32.
  T.eq(e:stats().cooldown, 7 + 1 + 6 + 3, "cooldowns held inside the batch")
end)

T.case("a counter first asked for by ctx:distinct can be counted with a window seen before", function()
  local got, on = collector()
  local e = engine([[
rule "spam" { on = "chat", cooldown = 0, action = kick,
  when = function(ev, ctx) return ctx:count("chat", 10) > 100 end }
rule "reported" { on = "report", cooldown = 0, action = ban(60), when = function(ev, ctx)
  return ctx:distinct("report", "reporter", 300) >= 2 and ctx:count("report", 10) >= 3 end }
]], { on_decision = on })
  e:process(ev(1, "chat", "x"))
  for i = 1, 3 do e:process(ev(1 + i, "report", "x", { reporter = "r" .. i })) end
  T.eq(#got, 1, "the third report fired")
  T.eq(e:stats().rule_errors, 0, "no rule errors")
  T.same(got[1].evidence[2], { query = "count", type = "report", window = 10, scope = "user", value = 3 }, "count")
end)

T.case("a cooldown stops the same user being actioned twice for one burst", function()
  local got, on = collector()
  local e = engine([[rule "flood" { on = "chat", cooldown = 30, action = kick,
    when = function(ev, ctx) return ctx:count("chat", 10) > 2 end }]], { on_decision = on })
  for i = 1, 10 do e:process(ev(i * 0.2, "chat", "spammer")) end
  T.eq(#got, 1, "one decision for the burst")
  T.eq(e:stats().cooldown, 7, "seven evaluations skipped")
  for i = 1, 3 do e:process(ev(31 + i, "chat", "spammer")) end
  T.eq(#got, 2, "a new burst after the cooldown")
end)

T.case("a cooldown is per rule and per (room, user), across the rule's event types and later rule files", function()
  local got, on = collector()
  local e = engine([[rule "noisy" { on = { "chat", "join" }, cooldown = 30, action = kick }
rule "other" { on = "join", cooldown = 0, action = kick }]], { on_decision = on })
  e:process(ev(1, "chat", "u1"))              -- noisy acts on u1 in room1
  e:process(ev(2, "join", "u1"))              -- noisy is cooling down for u1 (join too); other acts
  e:process(ev(3, "chat", "u1", { room_id = "room2" })) -- another room: noisy acts
  e:process(ev(4, "chat", "u2"))              -- another user: noisy acts
  -- A rule loaded after u1's record was made has no cooldown there until it acts.
  assert(e:load(rules_file([[rule "late" { on = "chat", cooldown = 30, action = kick }]])))
  e:process(ev(5, "chat", "u1"))              -- noisy still cooling down; late acts
  e:process(ev(6, "chat", "u1"))              -- both cooling down
  e:process(ev(32, "join", "u1"))             -- noisy's cooldown is over (ends at 31); other acts
  local seen = {}
  for _, d in ipairs(got) do
    seen[#seen + 1] = string.format("%s %s %s %g", d.rule, d.room_id, d.user_id, d.event_ts)
  end
  T.same(seen, { "noisy room1 u1 1", "other room1 u1 2", "noisy room2 u1 3", "noisy room1 u2 4", "late room1 u1 5",
    "noisy room1 u1 32", "other room1 u1 32" }, "decisions")
  T.eq(e:stats().cooldown, 1 + 1 + 2, "evaluations skipped for cooldowns")
end)

T.case("allow-lists (roles, users, patterns, engine-wide) come first and no rule can override them", function()
  local got, on = collector()
  local e = engine(nil, { on_decision = on, allow = { users = { "ops" } } })
  assert(e:load(rules_file([[allow { roles = { "host" }, users = { "alice" }, patterns = { "^svc%-" } }]])))
  assert(e:load(rules_file([[
rule "everyone" { on = "chat", action = ban(60), cooldown = 0 }
rule "sneaky" { on = "chat", cooldown = 0, action = kick,
  when = function(ev, ctx) allow { users = { ev.user_id } } return true end }
]])))
  local errors = {}
  e.on_error = function(r) errors[#errors + 1] = r.error end
  for _, u in ipairs({ "alice", "svc-recorder", "ops", "h" }) do
    T.eq(e:process(ev(1, "chat", u, { role = u == "h" and "host" or nil })), 0, u)
  end
  T.eq(e:stats().allowed, 4, "allowed")
  T.eq(e:process(ev(2, "chat", "mallory")), 1, "others are not allowed")
  T.eq(got[1].rule, "everyone", "only the plain rule decided")
  T.match(errors[1], "rules%d+%.lua:3: allow: only while the rules file loads", "allow() at run time is refused")
  T.eq(e:process(ev(3, "chat", "mallory")), 1, "and mallory did not get onto the list")
end)

T.case("dry-run: global and per rule decisions are recorded, nothing is sent", function()
  emu.reset()
  local client = T.client(emu)
  local audit = {}
  local e = engine([[rule "k" { on = "chat", action = kick }]],
    { client = client, audit = function(r) audit[#audit + 1] = r end })
  e:process(ev(1, "chat", "bob"))
  local s = e:flush()
  T.eq(s.sent, 0, "nothing sent")
  T.eq(emu.stats().requests, 0, "the emulator saw no request")
  T.eq(audit[1].dry_run, true, "recorded as dry-run")
  T.eq(audit[1].outcome, "dry_run", "outcome")
  T.ok(T.contains(emu.room(APP, "room1").users, "bob"), "bob is still in the room")

  local live = engine([[
rule "trial" { on = "chat", action = ban(600), dry_run = true }
rule "kick" { on = "chat", action = kick }
]], { dry_run = false, client = client })
  live:process(ev(1, "chat", "bob"))
  local sum = live:flush()
  T.eq(sum.sent, 1, "only the live rule's decision is sent")
  T.eq(emu.stats().by_action.KickUser.ok, 1, "one KickUser")
  T.eq(emu.stats().by_action.BanRoomUser, nil, "no BanRoomUser")
  T.ok(not T.contains(emu.room(APP, "room1").users, "bob"), "bob was kicked")
  T.same(emu.room(APP, "room1").banned_users, {}, "and not banned")
  client:close()
end)

T.case("live decisions act through the client, and every audit record is complete", function()
  emu.reset()
  for _, u in ipairs({ "k1", "b1", "e1", "m1" }) do emu.join(APP, "room1", u) end
  local client = T.client(emu)
  local path = dir .. "/audit.jsonl"
  os.remove(path)
  local e = engine([[
rule "kick"  { on = "kick-me", action = kick }
rule "ban"   { on = "ban-me", action = ban(minutes(10)) }
rule "every" { on = "ban-everywhere", action = ban_everywhere(hours(1)) }
rule "mute"  { on = "mute-me", action = mute(minutes(5), { audio = true }) }
]], { dry_run = false, client = client, audit = path })
  e:process(ev(1, "kick-me", "k1", { id = "e1" }))
  e:process(ev(1, "ban-me", "b1", { id = "e2" }))
  e:process(ev(1, "ban-everywhere", "e1", { id = "e3" }))
  e:process(ev(1, "mute-me", "m1", { id = "e4" }))
  T.eq(#e:pending(), 4, "four queued before the flush")
  local s = e:flush()
  T.eq(s.succeeded, 4, "all four succeeded")
  T.eq(#e:pending(), 0, "nothing pending")
  local room = emu.room(APP, "room1")
  T.ok(not T.contains(room.users, "k1"), "k1 kicked")
  T.ok(room.banned_users.b1, "b1 banned from the room")
  T.ok(emu.state().apps[APP].user_bans.e1, "e1 banned app-wide")
  T.ok(room.muted.m1 and room.muted.m1.audio and not room.muted.m1.video, "m1's audio muted")
  client:close()

  local records = {}
  for line in io.lines(path) do records[#records + 1] = cjson.decode(line) end
  T.eq(#records, 8, "a record per decision and one per outcome")
  local want = { kick = { "room_user", 0 }, ban = { "room_user", 600 }, ban_everywhere = { "app_user", 3600 },
                 mute = { "room_user", 300 } }
  for i, r in ipairs(records) do
    for _, f in ipairs({ "time", "event_id", "rule", "rule_at", "evidence", "action", "scope", "duration", "dry_run",
                         "outcome", "app_id", "room_id", "user_id" }) do
      T.ok(r[f] ~= nil, "record " .. i .. " has " .. f)
    end
    T.match(r.time, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", "ISO time")
    T.eq(r.scope, want[r.action][1], r.action .. " scope")
    T.eq(r.duration, want[r.action][2], r.action .. " duration")
    T.eq(r.dry_run, false, "dry_run flag")
    if i <= 4 then
      T.eq(r.outcome, "queued", "decision record")
    else
      T.eq(r.outcome, "ok", "outcome record")
      T.match(r.request_id, "^%d+%x+$", "request id")
    end
  end
  T.no_match(T.read_file(path), T.SK, "audit log")
  T.keep_for_scan(path)
end)

T.case("failed actions are kept, visible, retried later and reported; permanent failures are listed", function()
  emu.reset()
  emu.join(APP, "room1", "r1")
  local client = T.client(emu, { retries = 0 })
  local audit = {}
  local e, clock = engine([[rule "k" { on = "chat", action = kick }]],
    { dry_run = false, client = client, audit = function(r) audit[#audit + 1] = r end, retry_base = 5,
      max_attempts = 3 })
  emu.faults({ { action = "KickUser", kind = "status500", count = 1 } })
  e:process(ev(1, "chat", "r1", { id = "x1" }))
  T.eq(e:due(), true, "a queued decision is due")
  local s = e:flush()
  T.eq(s.succeeded, 0, "first attempt failed")
  T.eq(s.waiting, 1, "waiting for a retry")
  local p = e:pending()
  T.eq(#p, 1, "visible in pending()")
  T.eq(p[1].outcome, "retry", "outcome")
  T.eq(p[1].error.code, "InternalError", "error kept")
  T.eq(audit[#audit].outcome, "retry", "audited")
  T.eq(audit[#audit].error.http_status, 500, "with the HTTP status")
  T.ok(audit[#audit].next_retry, "and when it is retried")
  T.eq(e:due(), false, "the retry is not due yet")
  T.eq(e:flush().sent, 0, "not due yet")
  clock.t = clock.t + 5
  T.eq(e:due(), true, "the retry is due")
  s = e:flush()
  T.eq(s.succeeded, 1, "the retry succeeded")
  T.eq(#e:pending(), 0, "nothing left")
  T.eq(audit[#audit].outcome, "ok", "audited ok")
  T.eq(audit[#audit].attempts, 2, "after two attempts")
  T.eq(audit[#audit].event_id, "x1", "same decision")
  T.ok(not T.contains(emu.room(APP, "room1").users, "r1"), "r1 kicked in the end")

  -- Out of attempts: three 500s with max_attempts = 3.
  emu.faults({ { action = "KickUser", kind = "status500", count = 3 } })
  e:process(ev(2, "chat", "r2"))
  for _ = 1, 3 do
    e:flush()
    clock.t = clock.t + 60
  end
  T.eq(#e:pending(), 0, "no longer pending")
  T.eq(#e:failed(), 1, "listed as failed")
  T.eq(e:failed()[1].attempts, 3, "after max_attempts")
  T.eq(audit[#audit].outcome, "failed", "audited as failed")

  -- A non-retryable error fails at once.
  emu.faults({})
  e:process({ type = "chat", app_id = "nosuchapp", room_id = "room1", user_id = "u", ts = 3 })
  s = e:flush()
  T.eq(s.failed, 1, "failed")
  T.eq(e:failed()[2].error.code, "InvalidParameter.NotExistAppId", "error code")
  T.eq(e:stats().failed, 2, "stats")
  client:close()
end)

T.case("dedupe by event id: a redelivered event is counted once", function()
  local got, on = collector()
  local e = engine([[rule "r" { on = "chat", action = kick,
                                when = function(ev, ctx) return ctx:count("chat", 60) >= 2 end }]],
    { on_decision = on })
  e:process(ev(1, "chat", "u", { id = "m1" }))
  e:process(ev(2, "chat", "u", { id = "m1" }))
  T.eq(#got, 0, "the duplicate did not count")
  T.eq(e:stats().duplicates, 1, "counted as duplicate")
  e:process(ev(3, "chat", "u", { id = "m2" }))
  T.eq(#got, 1, "a new id counts")
  -- The last `dedupe` ids are remembered, oldest forgotten first.
  local small = engine([[rule "r" { on = "chat", action = kick, when = function() return false end }]], { dedupe = 3 })
  for i = 1, 4 do small:process(ev(i, "chat", "u", { id = "n" .. i })) end
  for _, id in ipairs({ "n2", "n3", "n4" }) do small:process(ev(5, "chat", "u", { id = id })) end
  T.eq(small:stats().duplicates, 3, "the last three ids are remembered")
  small:process(ev(6, "chat", "u", { id = "n1" }))
  T.eq(small:stats().duplicates, 3, "the fourth one back was forgotten")
  small:process(ev(7, "chat", "u", { id = "n2" }))
  T.eq(small:stats().duplicates, 3, "n1 taken again retired n2")
  small:process(ev(8, "chat", "u", { id = "n4" }))
  small:process(ev(8, "chat", "u", { id = "n1" }))
  T.eq(small:stats().duplicates, 5, "n4 and n1 are remembered")
end)

T.case("rules files: syntax and definition errors name file:line and nothing from the file is applied", function()
  local e = engine()
  local path = rules_file('rule "ok" { on = "chat", action = kick }\nrule "broken" { on = "chat", action = }\n')
  local ok, errs = e:load(path)
  T.eq(ok, nil, "refused")
  T.match(errs[1], "rules%d+%.lua:2: unexpected symbol", "syntax error with file:line")
  T.eq(#e.rules, 0, "not even the good rule was applied")
  refused(e, {
    { 'rule "a" { on = "chat", action = kick, colour = "red" }', ":1: rule 'a': unknown field 'colour'" },
    { 'rule "a" { on = "chat" }', ":1: rule 'a': 'action' is required" },
    { '\n\nrule "a" { on = "chat", action = ban(5) }', ":3: ban: 5 s is below the API minimum of 10 s" },
    { 'rule "a" { on = "chat", action = mute(60, { audio = 1 }) }', ":1: mute: unknown stream option 'audio'" },
    { 'rule "a" { on = "chat", action = kick }\nrule "a" { on = "join", action = kick }',
      ":2: rule 'a' defined twice" },
    { 'local x = nil\nx.y = 1', ":2: attempt to index" },
    { 'while true do end', ":1: instruction budget exceeded" },
    { 'allow { roles = "host" }', ":1: allow: 'roles' must be a list of strings" },
    { 'allow { patterns = { "[" } }', ":1: allow: bad pattern" },
  })
  T.eq(#e.rules, 0, "no rules")
  -- Rule names are unique across files.
  assert(e:load(rules_file('rule "same" { on = "chat", action = kick }')))
  local ok3, errs3 = e:load(rules_file('rule "same" { on = "join", action = kick }'))
  T.eq(ok3, nil, "duplicate across files")
  T.match(errs3[1], "already defined at .*rules%d+%.lua:1", "names the first")
end)

T.case("a failing condition is that rule's error with file:line; other rules and events carry on", function()
  local got, on = collector()
  local errors = {}
  local e = engine([[
rule "broken" { on = "chat", action = kick, cooldown = 0,
  when = function(ev, ctx)
    return ev.text:find("x")
  end }
rule "works" { on = "chat", action = ban(60), cooldown = 0 }
]], { on_decision = on, on_error = function(r) errors[#errors + 1] = r end, rule_error_reports = 3 })
  for i = 1, 5 do e:process(ev(i, "chat", "u" .. i)) end
  T.eq(#got, 5, "the other rule decided on every event")
  T.eq(e:stats().rule_errors, 5, "every error counted")
  T.eq(#errors, 3, "the first three reported")
  T.match(errors[1].error, "rules%d+%.lua:3: attempt to index .*'text'", "file:line")
  T.eq(errors[1].rule, "broken", "names the rule")
end)

T.case("entries that are not events, or whose ts is not a number, are refused in any position of a batch", function()
  local got, on = collector()
  local e = engine([[rule "flood" { on = "chat", cooldown = 0, action = kick,
    when = function(ev, ctx) return ctx:count("chat", 10) >= 3 end }]], { on_decision = on })
  local bad_ts = setmetatable({}, { __lt = function() return true end, __le = function() return true end })
  local list = { 42, ev(1, "chat", "u"), true, "chat", print, io.stdout, ev("1", "chat", "u"), ev(0 / 0, "chat", "u"),
                 ev(true, "chat", "u"), ev(bad_ts, "chat", "u"), ev(1.5, "chat", "u"), ev(2, "chat", "u"), false }
  local made, invalid = e:process_batch(list)
  T.eq(invalid, 10, "ten entries refused")
  T.eq(made, 1, "the three valid chats made one decision")
  T.eq(got[1].event_ts, 2, "on the third valid chat")
  local reasons = {}
  for _, x in ipairs({ 7, "chat", io.stdout, ev("soon", "chat", "u"), ev({}, "chat", "u"), ev(0 / 0, "chat", "u") }) do
    local n, why = e:process(x)
    T.eq(n, nil, "refused: " .. tostring(x))
    reasons[#reasons + 1] = why
  end
  local NOT_A_NUMBER = "event ts must be a number (seconds since 1970)"
  T.same(reasons, { "event is not a table", "event is not a table", "event is not a table", NOT_A_NUMBER,
                    NOT_A_NUMBER, NOT_A_NUMBER }, "reasons")
  T.eq(e:stats().invalid, 16, "all counted")
  T.eq(e:stats().events, 19, "and seen")
end)

T.case("invalid events are refused with a reason and counted; bad options raise", function()
  local e = engine([[rule "r" { on = "chat", action = kick }]])
  local n, why = e:process({ type = "chat", app_id = APP, room_id = "room1" })
  T.eq(n, nil, "no user_id")
  T.eq(why, "missing user_id", "reason")
  n, why = e:process(ev(1, "chat", "bad user!"))
  T.eq(n, nil, "bad characters")
  T.eq(why, 'user_id "bad user!" has a character outside A-Z a-z 0-9 @ . _ - (" " at byte 4)', "reason")
  n = e:process(ev("soon", "chat", "u"))
  T.eq(n, nil, "ts not a number")
  for _, id in ipairs({ {}, 0 / 0, true }) do
    n, why = e:process(ev(1, "chat", "u", { id = id }))
    T.eq(n, nil, "id " .. tostring(id))
    T.match(why, "^event id must be a .*whole number", "reason")
  end
  n, why = e:process({ type = "chat", app_id = APP, room_id = 7, user_id = "u" })
  T.eq(n, nil, "room_id not a string")
  T.eq(why, "room_id must be a string, got number 7", "reason")
  T.eq(e:stats().invalid, 7, "counted")
  T.eq(e:process(ev(1, "chat", "u", { id = 5 })), 1, "a valid event still acts")
  T.raises("a 'client' is required unless dry_run = true", policy.new, {})
  T.raises("unknown option 'colour'", policy.new, { dry_run = true, colour = 1 })
  T.raises("'max_keys' must be a positive number", policy.new, { dry_run = true, max_keys = -1 })
  T.raises("unknown limit 'hook_every'", policy.new, { dry_run = true, limits = { hook_every = 10 } })
  T.raises("limit 'memory' must be a positive number", policy.new, { dry_run = true, limits = { memory = 0 } })
  local e2 = engine([[rule "r" { on = "chat", action = kick, when = function(ev, ctx) return ctx:count(1, 10) end }]])
  local errs = {}
  e2.on_error = function(r) errs[#errs + 1] = r.error end
  e2:process(ev(1, "chat", "u"))
  T.match(errs[1], "rules%d+%.lua:1: ctx:count: expected an event type", "a bad ctx call is the rule's error")
end)

T.case("rule-file mistakes name the name, the rule and the line, at load and at run time", function()
  local e = engine()
  refused(e, {
    { 'rule "a" { on = "chat", action = kik }', ":1: unknown name 'kik' (did you mean 'kick'?)" },
    { 'rule "a" {\n  on = "chat",\n  action = ban,\n}',
      ":3: rule 'a': action = ban is the ban function, not an action: write ban(seconds), e.g. ban(600)" },
    { 'rule "a" {\n  on = "chat",\n  action = escalate { kick, mute },\n}',
      ":3: rule 'a': escalate step 2 is the mute function, not an action: write mute(seconds)" },
    { 'rule "a" {\n  on = "chat",\n  action = "kick",\n}', ":3: rule 'a': action must be kick, ban(seconds), " },
    { 'rule "a" {\n  on = "chat",\n  action = kick,\n  cooldwon = 5,\n}',
      ":4: rule 'a': unknown field 'cooldwon' (did you mean 'cooldown'?)" },
    { 'rule "a" {\n  on = "chat",\n  action = kick,\n  cooldown = -5,\n}', ":4: rule 'a': cooldown: expected seconds" },
    { 'rule "a" {\n  on = "chat",\n  when = 1,\n  action = kick }', ":3: rule 'a': 'when' must be a function" },
    { 'rule "a" {\n  on = "chat" }', ":1: rule 'a': 'action' is required" },
    { 'local lower = strnig.lower', ":1: unknown name 'strnig' (did you mean 'string'?)" },
    { 'if undefined_flag then end', ":1: unknown name 'undefined_flag'" },
  })
  -- At run time reading an undefined name is the rule's error; globals a file sets while it loads
  -- are its own.
  local errors = {}
  e.on_error = function(r) errors[#errors + 1] = r.error end
  assert(e:load(rules_file([[
limit = 2
rule "typo" { on = "chat", action = kick, cooldown = 0, when = function(ev, ctx)
  return ctx:count("chat", 10) > treshold end }
rule "fine" { on = "chat", action = kick, cooldown = 0, when = function(ev, ctx)
  return ctx:count("chat", 10) > limit end }
]])))
  for i = 1, 3 do e:process(ev(i, "chat", "u")) end
  T.match(errors[1], "rules%d+%.lua:3: unknown name 'treshold'", "a run-time typo")
  T.eq(e:stats().by_rule.fine, 1, "the file's own global")
end)

T.case("an invalid event's reason names the field and what is wrong with it", function()
  local e = engine([[rule "r" { on = "chat", action = kick }]])
  local base = { type = "chat", app_id = APP, room_id = "room1", user_id = "u" }
  local function why(changes)
    local x = {}
    for k, v in pairs(base) do x[k] = v end
    for k, v in pairs(changes) do if v == false then x[k] = nil else x[k] = v end end
    local n, reason = e:process(x)
    T.eq(n, nil, "refused")
    return reason
  end
  T.eq(why({ user_id = false, usr_id = "u" }), "missing user_id (the event has 'usr_id')", "a misspelt field")
  T.eq(why({ room_id = false }), "missing room_id", "a missing field")
  T.eq(why({ room_id = "bad room" }),
    'room_id "bad room" has a character outside A-Z a-z 0-9 @ . _ - (" " at byte 4)', "a bad character")
  T.eq(why({ user_id = ("x"):rep(129) }), "user_id is 129 bytes long: at most 128", "too long")
  T.eq(why({ user_id = "" }), "user_id is empty", "empty")
  T.eq(why({ user_id = true }), "user_id must be a string, got boolean true", "not a string")
  T.eq(why({ app_id = "my app" }),
    'app_id "my app" has a character outside printable ASCII without spaces (" " at byte 3)', "app_id")
  T.eq(why({ type = 7 }), "type must be a string, got number 7", "type")
  T.eq(why({ type = false }), "missing type", "no type")
  T.eq(why({ user_id = "caf\195\169" }),
    'user_id "caf\\195\\169" has a character outside A-Z a-z 0-9 @ . _ - ("\\195" at byte 4)', "bytes shown")
  T.eq(why({ ts = 1.7e12 }), "event ts 1700000000000 looks like milliseconds: expected seconds since 1970 "
    .. "(divide by 1000)", "milliseconds")
  T.eq(e:process(base), 1, "the valid event decides")
end)

T.case("audit records: real milliseconds, a run id per engine, rule_at without '@', sorted keys, [] lists", function()
  local path = dir .. "/runs.jsonl"
  os.remove(path)
  local runs = {}
  for run = 1, 2 do
    local e = policy.new { dry_run = true, audit = path }
    assert(e:load_source('rule "k" { on = "chat", cooldown = 0, action = kick }', "@" .. dir .. "/inline.lua"))
    for i = 1, 3 do e:process(ev(i, "chat", "u" .. i)) end
    runs[run] = e.run
    T.sleep(0.0137)
  end
  T.ok(runs[1] ~= runs[2], "two runs, two run ids")
  local seen, millis, n = {}, {}, 0
  for line in io.lines(path) do
    n = n + 1
    local r = cjson.decode(line)
    T.ok(r.run == runs[1] or r.run == runs[2], "the record names its run")
    local key = r.run .. "/" .. r.id
    T.eq(seen[key], nil, "(run, id) is unique in the file")
    seen[key] = true
    T.eq(r.rule_at, dir .. "/inline.lua:1", "rule_at is file:line")
    T.match(line, '"evidence":%[%]', "an empty list is []")
    local keys = {}
    for k in line:gmatch('"([%w_]+)":') do keys[#keys + 1] = k end
    for i = 2, #keys do T.ok(keys[i - 1] < keys[i], "keys sorted: " .. keys[i - 1] .. " < " .. keys[i]) end
    millis[r.time:match("%.(%d%d%d)Z$")] = true
  end
  T.eq(n, 6, "six records")
  millis["000"] = nil
  T.ok(next(millis), "times carry milliseconds")
  -- The run id may be given.
  local e = policy.new { dry_run = true, run = "nightly-42" }
  T.eq(e.run, "nightly-42", "run option")
  T.raises("'run' must be a non%-empty string", policy.new, { dry_run = true, run = 42 })
end)

-- Seconds left of a ban that ends at `expiry` (the emulator's epoch seconds), or nil when none.
local function left(expiry) return expiry and expiry - rtcadmin.time() end
-- ... of `user`'s ban in room1, and of their app-wide ban.
local function room_left(user) return left(emu.room(APP, "room1").banned_users[user]) end
local function app_left(user) return left(emu.state().apps[APP].user_bans[user]) end
local function near(value, want, slack, what)
  T.ok(type(value) == "number" and math.abs(value - want) <= slack,
    string.format("%s: %s not within %g of %g", what, tostring(value), slack, want))
end

-- A live engine on the real clock (bans run on the service's clock) with its audit records.
local function live(src, client, opts)
  local audit = {}
  local o = { dry_run = false, client = client, now = rtcadmin.time, audit = function(r) audit[#audit + 1] = r end }
  for k, v in pairs(opts or {}) do o[k] = v end
  return engine(src, o), audit
end

-- Gives a live engine one event and sends what it decided: returns the last audit record.
local function act(e, audit, event)
  e:process(event)
  e:flush()
  return audit[#audit]
end

T.case("an escalated ban lasts its new duration: kick, ban 600 s, ban 24 h leaves the user banned 24 h", function()
  emu.reset()
  local client = T.client(emu, { retries = 0 })
  local e, audit = live([[rule "reported" { on = "report", cooldown = 0,
    action = escalate { kick, ban(minutes(10)), ban(hours(24)) } }
rule "short" { on = "chat", cooldown = 0, action = ban(600) }]], client)
  local done = {}
  for i = 1, 3 do
    e:process(ev(i, "report", "troll"))
    T.eq(e:flush().succeeded, 1, "step " .. i .. " done")
    done[i] = audit[#audit]
  end
  T.same({ done[1].action, done[1].outcome, done[2].action, done[2].outcome, done[3].action, done[3].outcome },
    { "kick", "ok", "ban", "ok", "ban", "extended" }, "the ladder's outcomes")
  T.match(done[2].ban_until, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", "a new ban says when it ends")
  T.match(done[3].request_id, "^%d+%x+$", "BanRoomUser's request id")
  T.match(done[3].extend_request_id, "^%d+%x+$", "UpdateBanRoomUserRule's request id")
  T.ok(done[3].request_id ~= done[3].extend_request_id, "two requests")
  near(room_left("troll"), 86400, 5, "banned for 24 h, not the 10 minutes left")
  local by = emu.stats().by_action
  T.eq(by.BanRoomUser.ok, 2, "two BanRoomUser")
  T.eq(by.UpdateBanRoomUserRule.ok, 1, "one extension")

  -- A shorter ban after it leaves it as it is: the service says banned, the engine knows until when.
  local d = act(e, audit, ev(4, "chat", "troll"))
  T.eq(d.outcome, "already", "already banned")
  T.eq(d.ban_until, done[3].ban_until, "until the 24 h ban ends")
  T.eq(d.extend_request_id, nil, "no extension")
  near(room_left("troll"), 86400, 5, "still banned for 24 h")
  T.eq(emu.stats().by_action.UpdateBanRoomUserRule.ok, 1, "nothing extended")
  local st = e:stats()
  T.eq(st.bans_extended, 1, "stats: extended")
  T.eq(st.bans_already, 1, "stats: already")

  -- Lifted by hand: the service bans anew, and the engine says so (it never trusts its memory alone).
  assert(client:unban_user { app_id = APP, room_id = "room1", user_id = "troll" })
  T.eq(act(e, audit, ev(5, "chat", "troll")).outcome, "ok", "a new ban")
  near(room_left("troll"), 600, 5, "banned for 600 s")

  -- A ban the engine did not make: the API does not say when it ends, so it is set to the new
  -- duration from now (docs/policy.md).
  assert(client:ban_user { app_id = APP, room_id = "room1", user_id = "vip", duration = 60 })
  T.eq(act(e, audit, ev(6, "chat", "vip")).outcome, "extended", "extended")
  near(room_left("vip"), 600, 5, "to 600 s")
  client:close()
end)

T.case("app-wide bans (ban_everywhere) are extended and never shortened the same way", function()
  emu.reset()
  local client = T.client(emu, { retries = 0 })
  local e, audit = live([[rule "raid" { on = "raid", cooldown = 0,
    action = escalate { ban_everywhere(600), ban_everywhere(days(7)) } }
rule "again" { on = "spam", cooldown = 0, action = ban_everywhere(3600) }]], client)
  for i = 1, 2 do e:process(ev(i, "raid", "raider")) end
  e:flush()
  T.same({ audit[#audit - 1].outcome, audit[#audit].outcome }, { "ok", "extended" }, "outcomes")
  T.eq(audit[#audit].scope, "app_user", "app-wide")
  near(app_left("raider"), 604800, 5, "banned for 7 days")
  T.eq(act(e, audit, ev(3, "spam", "raider")).outcome, "already", "an hour after 7 days")
  near(app_left("raider"), 604800, 5, "still 7 days")
  -- A room ban of the same user is another ban.
  e:load(rules_file([[rule "room" { on = "flood", cooldown = 0, action = ban(600) }]]))
  T.eq(act(e, audit, ev(4, "flood", "raider")).outcome, "ok", "a room ban of its own")
  near(room_left("raider"), 600, 5, "600 s in room1")
  client:close()
end)

T.case("a failed extension fails the decision: retried later, then extended", function()
  emu.reset()
  local client = T.client(emu, { retries = 0 })
  local e, audit = live([[rule "b" { on = "chat", cooldown = 0, action = ban(3600) }]], client,
    { retry_base = 0.01, retry_cap = 0.01 })
  assert(client:ban_user { app_id = APP, room_id = "room1", user_id = "flaky", duration = 60 })
  emu.faults({ { action = "UpdateBanRoomUserRule", kind = "status500", count = 1 } })
  e:process(ev(1, "chat", "flaky"))
  local s = e:flush()
  T.eq(s.succeeded, 0, "not done")
  T.eq(s.waiting, 1, "waiting for a retry")
  local d = audit[#audit]
  T.eq(d.outcome, "retry", "retry")
  T.eq(d.error.action, "UpdateBanRoomUserRule", "the extension failed")
  T.eq(d.error.code, "InternalError", "with its error")
  near(room_left("flaky"), 60, 5, "still the old ban")
  T.sleep(0.05)
  T.eq(e:flush().succeeded, 1, "the retry")
  T.eq(audit[#audit].outcome, "extended", "extended")
  T.eq(audit[#audit].error, nil, "no error left")
  near(room_left("flaky"), 3600, 5, "to an hour")
  client:close()
end)

T.case("rtcadmin.bans extends a ban of a whole room too", function()
  emu.reset()
  local client = T.client(emu, { retries = 0 })
  local call = { "ban_user", { app_id = APP, room_id = "room9", duration = 60 } }
  local r = bans.batch(client, { call })[1]
  T.eq(r.ban, "new", "banned")
  call[2].duration = 3600
  r = bans.batch(client, { call })[1]
  T.eq(r.ban, "extended", "extended")
  near(left(emu.room(APP, "room9").banned_until), 3600, 5, "the room is banned for an hour")
  r = bans.batch(client, { call }, nil, function(i) return i == 1 end)[1]
  T.eq(r.ban, "already", "kept when the caller knows it ends later")
  client:close()
end)

T.case("what a REPL shows: the engine, its stats and the errors of a load", function()
  local e = engine([[rule "k" { on = "chat", action = kick }
rule "m" { on = "chat", action = mute(600), cooldown = 0 }]])
  e:process(ev(1, "chat", "u"))
  e:process({ type = "chat" })
  T.eq(tostring(e), "rtcadmin.policy{rules=2, events=2, decisions=2, queued=0, waiting=0, failed=0, dry_run}",
    "tostring(engine)")
  local st = e:stats()
  T.eq(st.decisions, 2, "stats is a table of counters")
  T.match(tostring(st), "^events=2 ignored=0 duplicates=0 allowed=0 invalid=1 decisions=2 dry_run=2 ", "its line")
  T.match(tostring(st), " by_action={kick=1, mute=1} by_rule={k=1, m=1}$", "with the maps")
  local ok, errs = e:load(rules_file('rule "a" { on = "chat", action = kik }'))
  T.eq(ok, nil, "refused")
  T.eq(#errs, 1, "a list")
  T.match(errs[1], "rules%d+%.lua:1: unknown name 'kik'", "indexable")
  T.eq(tostring(errs), errs[1], "tostring is the messages")
  -- (The assert of Lua 5.1 and 5.2 takes only a string message.)
  if (_VERSION ~= "Lua 5.1" and _VERSION ~= "Lua 5.2") or rawget(_G, "jit") then
    local ok2, err2 = pcall(function() assert(e:load(rules_file('rule "b" { on = "chat", action = ban(1) }'))) end)
    T.eq(ok2, false, "assert raises")
    T.match(tostring(err2), "rules%d+%.lua:1: ban: 1 s is below the API minimum of 10 s", "with the message")
  end
end)

T.run(function() emu.stop() os.execute("rm -rf " .. T.shell_quote(dir)) end)
