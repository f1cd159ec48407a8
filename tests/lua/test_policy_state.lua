-- The policy engine's saved state (engine:snapshot / engine:restore) and its send journal, against
-- the emulator: a raid cut at every 10th event and carried on by a fresh engine from the snapshot
-- makes the same decisions, sends the same requests and writes the same audit records as one
-- engine; corrupt, truncated, foreign and misshapen snapshots are refused with the engine
-- unchanged; a journal keeps a decision made twice from being sent twice.
local T = require "testlib"
local cjson = require "cjson"
local policy = require "rtcadmin.policy"
local rtcadmin = require "rtcadmin"

local APP = T.APP
local unpack = T.unpack
local RULES = { T.source_dir .. "/examples/rules/00-allow.lua", T.source_dir .. "/examples/rules/raid.lua" }

-- A raid over three rooms: join waves, chat floods climbing the escalation ladder, reports from
-- several reporters (distinct counts), loud streams, allow-listed users, duplicates, an unknown app
-- (a permanent failure) and events without ids.
local function raid_events()
  local seed = 777
  local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end
  local list, ts = {}, 1764064800
  local users = { "alice", "bob", "carol", "dave", "eve", "mallory", "oscar", "svc-rec" }
  local function add(ev)
    local i = #list + 1
    ev.id, ev.ts, ev.app_id = "ev-" .. i, ts, ev.app_id or APP
    if i % 50 == 0 then ev.id = "ev-" .. (i - 1) end -- a duplicate
    if i % 61 == 0 then ev.id = nil end
    if i > 200 and i <= 208 then -- a flood in an app the service does not know: a permanent failure
      ev.app_id, ev.type, ev.user_id, ev.role = "nosuchapp", "chat", "bob", nil
    end
    list[i] = ev
  end
  while #list < 420 do
    ts = ts + (rand(4) == 1 and rand(40) or 0.5)
    local user, room, r = users[rand(#users)], "room" .. rand(2), rand(10)
    if r <= 5 then -- a burst of chat
      for _ = 1, rand(9) do
        ts = ts + 0.3
        add { type = "chat", room_id = room, user_id = user, role = rand(15) == 1 and "moderator" or nil }
      end
    elseif r <= 7 then -- a join wave of new accounts
      for _ = 1, rand(20) do
        ts = ts + 0.2
        add { type = "join", room_id = room, user_id = "new" .. rand(60) }
      end
    elseif r == 8 then
      add { type = "report", room_id = room, user_id = user, reporter = users[rand(#users)] }
    elseif r == 9 then
      add { type = "stream", room_id = room, user_id = user, kind = "audio", loud = rand(3) > 1 }
    else
      add { type = "leave", room_id = room, user_id = user }
    end
  end
  return list
end

-- What an audit record says, without the wall-clock time and the emulator's request ids.
local function comparable(rec)
  local t = cjson.decode(rtcadmin.json_encode(rec))
  t.time, t.request_id, t.extend_request_id = nil, nil, nil
  if type(t.error) == "table" then t.error.request_id = nil end
  return rtcadmin.json_encode(t) -- (sorted keys)
end

-- An engine over `emu` on a clock that follows the events, recording its audit into `audit`.
local function engine_for(emu, audit, clock, extra)
  local o = {
    client = T.client(emu, { retries = 0 }), now = function() return clock.t end, run = "raid-run",
    retry_base = 2, max_attempts = 3,
    audit = function(r) audit[#audit + 1] = comparable(r) end,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  local e = policy.new(o)
  for _, f in ipairs(RULES) do assert(e:load(f)) end
  return e
end

-- Runs the events through an engine, flushing every 7th event; every `cut` events (if given) the
-- engine is snapshotted and replaced by a fresh one restored from it. Returns the audit records,
-- the emulator's requests and the number of snapshots taken.
local function raid_run(events, cut)
  local emu = T.emulator()
  emu.faults({ { action = "KickUser", kind = "status500", count = 3 }, { action = "BanRoomUser", kind = "status500",
    count = 2 } })
  local audit, clock = {}, { t = events[1].ts }
  local e = engine_for(emu, audit, clock)
  local snapshots, queued_in_snapshots = 0, 0
  for i, ev in ipairs(events) do
    clock.t = ev.ts
    e:process(ev)
    if i % 7 == 0 then e:flush() end
    if cut and i % cut == 0 then
      local s = e:snapshot()
      queued_in_snapshots = queued_in_snapshots + #e:pending()
      e.client:close()
      e = engine_for(emu, audit, clock)
      local ok, err = e:restore(s)
      T.eq(err, nil, "restore after event " .. i)
      T.eq(ok, true, "restored")
      snapshots = snapshots + 1
    end
  end
  for _ = 1, 10 do
    clock.t = clock.t + 60
    e:flush()
  end
  local reqs = emu.control("GET", "/_emulator/requests").requests
  local sent = {}
  for _, r in ipairs(reqs) do
    -- (An injected fault answers before the request's parameters are read: no target.)
    if r.fault then r.RoomId, r.UserId = "-", "-" end
    sent[#sent + 1] = cjson.encode({ r.action, r.RoomId, r.UserId, r.status, r.code })
  end
  local st = e:stats()
  e.client:close()
  emu.stop()
  return audit, sent, st, snapshots, queued_in_snapshots
end

T.case("a raid cut at every 10th event and restored into fresh engines decides, sends and audits as one run", function()
  local events = raid_events()
  local audit1, sent1, st1 = raid_run(events)
  local audit2, sent2, st2, snapshots, queued = raid_run(events, 10)
  T.eq(snapshots, math.floor(#events / 10), "a snapshot every 10 events")
  T.ok(queued > 0, "some snapshots held queued or retrying decisions (" .. queued .. ")")
  T.ok(st1.decisions >= 20, "the raid made decisions (" .. st1.decisions .. ")")
  T.ok(st1.retried > 0 and st1.failed > 0 and st1.duplicates > 0 and st1.allowed > 0 and st1.cooldown > 0,
    "retries, a permanent failure, duplicates, allow-listed users and cooldowns were all part of it")
  local steps = {}
  for _, line in ipairs(audit1) do
    local r = cjson.decode(line)
    if r.step then steps[r.step] = true end
  end
  T.ok(steps[1] and steps[2] and steps[3], "the escalation ladder was climbed to its third step")
  T.eq(#audit2, #audit1, "as many audit records")
  for i = 1, #audit1 do T.eq(audit2[i], audit1[i], "audit record " .. i) end
  T.eq(#sent2, #sent1, "as many requests")
  for i = 1, #sent1 do T.eq(sent2[i], sent1[i], "request " .. i) end
  for _, k in ipairs({ "events", "decisions", "duplicates", "allowed", "invalid", "cooldown", "succeeded", "failed",
                       "retried", "keys" }) do
    T.eq(st2[k], st1[k], "stats " .. k)
  end
  T.same(st2.by_rule, st1.by_rule, "decisions by rule")
end)

-- A dry-run engine over part of the raid, for the refusal cases.
local function dry_engine(n)
  local e = policy.new { dry_run = true, now = function() return 1764064800 end }
  for _, f in ipairs(RULES) do assert(e:load(f)) end
  local events = raid_events()
  for i = 1, n or 150 do e:process(events[i]) end
  return e
end

T.case("corrupt, truncated and foreign snapshots are refused with a message and the engine unchanged", function()
  local e = dry_engine()
  local good = e:snapshot()
  local function refused(s, pattern, what)
    local ok, err = e:restore(s)
    T.eq(ok, nil, what)
    T.match(err, "^rtcadmin.policy: cannot restore: " .. pattern, what)
    T.eq(e:snapshot(), good, what .. ": the engine is unchanged")
  end
  refused(good:sub(1, math.floor(#good / 2)), "truncated", "half a snapshot")
  refused(good:sub(1, 10), "truncated", "ten bytes")
  refused("", "not packed data", "nothing")
  refused("{\"format\":1}", "not packed data", "JSON")
  local flipped = good:sub(1, 100) .. string.char((good:byte(101) + 1) % 256) .. good:sub(102)
  refused(flipped, "checksum mismatch", "a changed byte")
  refused(rtcadmin.pack({ 1, 2, 3 }), "not a policy engine snapshot", "another value")
  refused(rtcadmin.pack("state"), "the snapshot is not a table", "a string")
  local t = rtcadmin.unpack(good)
  t.version = 2
  refused(rtcadmin.pack(t), "snapshot format version 2, this rtcadmin reads version 1", "a newer version")
  t = rtcadmin.unpack(good)
  t.limits.dedupe = 5
  refused(rtcadmin.pack(t), "the snapshot was made with dedupe = 5, this engine has dedupe = 100000", "other limits")
  T.raises("restore expects a snapshot string, got nil", e.restore, e)
  -- A restore that succeeds replaces everything.
  local other = dry_engine(300)
  T.eq(other:restore(good), true, "restored")
  -- The same state (the allow-list version aside: a restore moves it past both engines').
  local want, got = rtcadmin.unpack(good), rtcadmin.unpack(other:snapshot())
  T.ok(got.allow_ver > want.allow_ver, "records are checked against this engine's allow-list again")
  want.allow_ver, got.allow_ver = nil, nil
  T.same(got, want, "the same state")
end)

-- Every part of a snapshot the engine relies on, replaced by something of the wrong type.
T.case("fuzz: bit flips, truncations, random bytes and misshapen snapshots never get in", function()
  local e = dry_engine(200)
  local good = e:snapshot()
  local seed = 99
  local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end
  local function try(s, what)
    local ok, res, err = pcall(e.restore, e, s)
    T.ok(ok, what .. ": no error raised (" .. tostring(res) .. ")")
    T.eq(res, nil, what)
    T.match(err, "^rtcadmin.policy: cannot restore: ", what)
  end
  for i = 1, 200 do
    local pos = rand(#good)
    local b = good:byte(pos)
    local bit = 2 ^ (rand(8) - 1)
    local flipped = (b % (2 * bit) >= bit) and b - bit or b + bit
    try(good:sub(1, pos - 1) .. string.char(flipped) .. good:sub(pos + 1), "bit flip " .. i)
    try(good:sub(1, rand(#good) - 1), "truncation " .. i)
    local bytes = {}
    for k = 1, rand(200) do bytes[k] = string.char(rand(256) - 1) end
    try(table.concat(bytes), "random bytes " .. i)
    try(good:sub(1, 18) .. table.concat(bytes), "random bytes after a header " .. i)
  end
  -- For each part down to three levels, values of another type than the engine writes there.
  local WRONG = { table = { "x", 1.5, true, { 1, 2 } }, number = { "x", true, {} }, string = { 1.5, true, {} },
                  boolean = { "x", 1.5 } }
  local paths = {}
  local function collect(t, path, depth)
    for k, v in pairs(t) do
      local p = { unpack(path) }
      p[#p + 1] = k
      paths[#paths + 1] = { keys = p, kind = type(v) }
      if type(v) == "table" and depth < 2 then collect(v, p, depth + 1) end
    end
  end
  collect(rtcadmin.unpack(good), {}, 0)
  local checked = 0
  for _, p in ipairs(paths) do
    local name = table.concat(p.keys, "/")
    for _, w in ipairs(WRONG[p.kind]) do
      -- Rings of keys: any list of ids is one (what a position holds only retires it).
      local harmless = type(w) == "table" and name:match("ring$")
      if not harmless then
        local t = rtcadmin.unpack(good)
        local node = t
        for i = 1, #p.keys - 1 do node = node[p.keys[i]] end
        node[p.keys[#p.keys]] = w
        local ok, res, err = pcall(e.restore, e, rtcadmin.pack(t))
        T.ok(ok, name .. ": no error raised (" .. tostring(res) .. ")")
        if res ~= nil then error(name .. " replaced by " .. cjson.encode(w) .. " was taken", 0) end
        T.match(err, "^rtcadmin.policy: cannot restore: ", name)
        checked = checked + 1
      end
    end
  end
  T.ok(checked > 100, "misshapen snapshots tried: " .. checked)
  T.eq(e:snapshot(), good, "the engine is unchanged after all of them")
end)

T.case("a send journal: sent decisions are not sent again, ones being sent are sent again and marked", function()
  local emu = T.emulator()
  local sent, sending, calls = {}, {}, {}
  local journal = {
    sent = function(id) calls[#calls + 1] = "sent?" return sent[id] == true end,
    sending = function(id) calls[#calls + 1] = "sending" sending[id] = true end,
    done = function(id) calls[#calls + 1] = "done" sent[id] = true end,
    was_sending = function(id) calls[#calls + 1] = "was_sending?" return sending[id] == true end,
  }
  local audit, clock = {}, { t = 1764064800 }
  local records = {}
  local function make()
    local e = engine_for(emu, audit, clock, { journal = journal, on_result = function(d)
      records[#records + 1] = { outcome = d.outcome, recovered = d.recovered, resent = d.resent, id = d.decision_id,
                                user = d.user_id }
    end })
    return e
  end
  local function flood(e, user, first)
    for k = 0, 5 do e:process({ id = user .. "-" .. (first + k), ts = clock.t + k * 0.1, type = "chat", app_id = APP,
                                room_id = "jr", user_id = user }) end
  end
  local e = make()
  local s0 = e:snapshot()
  flood(e, "u1", 1)
  flood(e, "u2", 1)
  T.eq(#e.queue, 2, "two decisions queued")
  local id1, id2 = e.queue[1].decision_id, e.queue[2].decision_id
  T.match(id1, "^%x+$", "a decision id")
  T.eq(#id1, 32, "of 32 hex digits")
  T.ok(id1 ~= id2, "different targets, different ids")
  e:flush()
  T.ok(sent[id1] and sent[id2], "both done")
  T.eq(table.concat(calls, ","), "sent?,was_sending?,sent?,was_sending?,sending,sending,done,done",
    "asked before, noted just before and after sending")
  local kicks = #emu.control("GET", "/_emulator/requests?action=KickUser").requests
  T.eq(kicks, 2, "two KickUser requests")

  -- A crash after the snapshot taken before those events: the events come again to a restored
  -- engine, which makes the same decisions with the same ids. u1's was done; u2's is marked as
  -- being sent (the crash came while it was on the wire).
  sent[id2], sending[id2] = nil, true
  local e2 = make()
  T.eq(e2:restore(s0), true, "restored")
  flood(e2, "u1", 1)
  flood(e2, "u2", 1)
  T.eq(e2.queue[1].decision_id, id1, "the same id for the same decision")
  T.eq(e2.queue[2].decision_id, id2, "and for the other")
  records = {}
  e2:flush()
  T.eq(#records, 2, "two results")
  T.eq(records[1].outcome, "recovered", "u1's decision: recovered")
  T.eq(records[1].recovered, true, "marked recovered")
  T.eq(records[2].outcome, "ok", "u2's decision: sent again")
  T.eq(records[2].resent, true, "marked resent")
  local reqs = emu.control("GET", "/_emulator/requests?action=KickUser").requests
  local per_user = {}
  for _, r in ipairs(reqs) do per_user[r.UserId] = (per_user[r.UserId] or 0) + 1 end
  T.eq(per_user.u1, 1, "u1 was kicked once in all")
  T.eq(per_user.u2, 2, "u2's kick went out again")
  T.eq(e2:stats().recovered, 1, "stats: recovered")
  T.eq(e2:stats().resent, 1, "stats: resent")
  local last = cjson.decode(audit[#audit - 1])
  T.eq(last.outcome, "recovered", "the audit record of the recovered decision")
  T.eq(last.decision_id, id1, "with its id")

  -- Without a journal nothing of this happens, and a journal must have its four functions.
  T.raises("journal.was_sending must be a function", policy.new, { dry_run = true, journal = { sent = print,
    sending = print, done = print } })
  e.client:close()
  e2.client:close()
  emu.stop()
end)

T.run()
