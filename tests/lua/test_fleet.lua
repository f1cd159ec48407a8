-- The fleet over Redis Streams (docs/fleet.md) with real processes: `rtcadmin ingest` producers and
-- `rtcadmin run --from` engines (bin/rtcadmin) against a real redis-server, compared with a single
-- `rtcadmin run` over the same events; kill -9 and SIGTERM of an engine.
local T = require "testlib"
local cjson = require "cjson"
local rtcadmin = require "rtcadmin"
local raid = require "fleetlib"
local promtext = require "promtext"

local emu = T.emulator()
local APP = T.APP
local dir = T.tmpdir()
local q = T.shell_quote
local LUA = arg and arg[-1] or "lua5.4"
local BIN = T.source_dir .. "/bin/rtcadmin"
local RULES = T.source_dir .. "/examples/rules"
local PASSWORD = "Fleet-Test-Pw"
local redis = T.redis(PASSWORD)
local URL = "redis://:" .. PASSWORD .. "@127.0.0.1:" .. redis.port
local LEASE = "1.5" -- seconds: engines renew every 0.5 s, a dead one's shards are free after 1.5 s

local BUILD = T.module_dir()

local function env()
  return "VOLC_ACCESSKEY=" .. q(T.AK) .. " VOLC_SECRETKEY=" .. q(T.SK) .. " RTCADMIN_ENDPOINT=" .. q(emu.url)
    .. " RTCADMIN_BUILD=" .. q(BUILD) .. " RTCADMIN_FLEET_LEASE=" .. LEASE .. " "
end

-- Runs bin/rtcadmin to the end: exit status, stdout, stderr.
local function rtcadmin_cli(args, stdin_file)
  local errf = dir .. "/stderr"
  local p = assert(io.popen("(" .. env() .. q(LUA) .. " " .. q(BIN) .. " " .. args .. " 2>" .. q(errf) .. " <"
    .. q(stdin_file or "/dev/null") .. "); echo \"__exit=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code
  out = out:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
  local err = T.read_file(errf) or ""
  T.no_match(out .. err, PASSWORD, "output")
  T.no_match(out .. err, T.SK, "output")
  return code, out, err
end

local conn = assert(rtcadmin.redis(URL))
local F = raid.fleet(conn, env, LUA, dir)
local start, wait_split, backlog, entries = F.start, F.wait_split, F.backlog, F.entries
local function fresh() assert(conn:call("FLUSHALL")) end

-- "rule|action|room|user|event" of every decision record in JSON Lines text.
local function decisions(text, into)
  into = into or {}
  for line in text:gmatch("[^\n]+") do
    local ok, d = pcall(cjson.decode, line)
    if ok and type(d) == "table" and d.kind == "decision" then
      local k = table.concat({ d.rule, d.action, d.room_id, d.user_id, tostring(d.event_id) }, "|")
      into[k] = (into[k] or 0) + 1
    end
  end
  return into
end

-- The same decisions, each once (a new owner may decide again what the old one decided after its
-- last checkpoint: same decision, same id).
local function once(set)
  local out = {}
  for k in pairs(set) do out[k] = 1 end
  return out
end

-- The decisions about the given rooms.
local function in_rooms(set, list)
  local want, out = {}, {}
  for _, r in ipairs(list) do want[r] = true end
  for k, v in pairs(set) do
    if want[k:match("^[^|]*|[^|]*|([^|]*)|")] then out[k] = v end
  end
  return out
end

local function total(set)
  local n = 0
  for _, v in pairs(set) do n = n + v end
  return n
end

local function count(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

-- Differences between two decision sets, for a failure message.
local function diff(a, b)
  local out = {}
  for k, v in pairs(a) do if b[k] ~= v then out[#out + 1] = "-" .. k .. " x" .. v end end
  for k, v in pairs(b) do if a[k] ~= v then out[#out + 1] = "+" .. k .. " x" .. v end end
  table.sort(out)
  return table.concat(out, "\n", 1, math.min(#out, 20))
end

-- "Action|room|user" of every moderation request the emulator carried out, counted (requests it
-- refused, e.g. throttled ones the client sent again, are not actions).
local function received()
  local out = {}
  for _, action in ipairs { "KickUser", "BanRoomUser", "BanUserStream", "UpdateBanRoomUserRule" } do
    for _, r in ipairs(emu.control("GET", "/_emulator/requests?action=" .. action).requests) do
      if r.status == 200 and (r.code == nil or r.code == cjson.null) then
        local k = action .. "|" .. tostring(r.RoomId) .. "|" .. tostring(r.UserId)
        out[k] = (out[k] or 0) + 1
      end
    end
  end
  return out
end

local by_room, rooms = raid.rooms(60, APP)
local all = T.write_file(dir .. "/all.jsonl", table.concat(raid.lines(by_room, rooms), "\n") .. "\n")
local half1, half2 = {}, {}
for i, r in ipairs(rooms) do
  if i % 2 == 1 then half1[#half1 + 1] = r else half2[#half2 + 1] = r end
end
local file1 = T.write_file(dir .. "/half1.jsonl", table.concat(raid.lines(by_room, half1), "\n") .. "\n")
local file2 = T.write_file(dir .. "/half2.jsonl", table.concat(raid.lines(by_room, half2), "\n") .. "\n")
local TOTAL = #raid.lines(by_room, rooms)

-- The reference: one `rtcadmin run` over all the events in order.
local reference
local function single_run()
  if reference then return reference end
  local code, out, err = rtcadmin_cli("run " .. q(RULES) .. " " .. q(all) .. " --dry-run --json")
  T.eq(code, 0, "single run: " .. err)
  reference = decisions(out)
  return reference
end

T.case("ingest: valid events go to their shard's stream as JSON; invalid lines are reported, not sent", function()
  fresh()
  local lines = {
    cjson.encode { id = "e1", ts = 1764064800, type = "join", app_id = APP, room_id = "r1", user_id = "u1" },
    "not json",
    cjson.encode { id = "e2", ts = 1764064800000, type = "join", app_id = APP, room_id = "r1", user_id = "u1" },
    cjson.encode { id = "e3", type = "chat", app_id = APP, room_id = "bad room", user_id = "u1" },
    "",
    cjson.encode { id = "e4", ts = 1764064801, type = "chat", app_id = APP, room_id = "r2", user_id = "u2",
                   text = "hi \"there\"" },
    cjson.encode { type = "chat", app_id = APP, room_id = "r2" },
    "[1,2]",
  }
  local f = T.write_file(dir .. "/mixed.jsonl", table.concat(lines, "\n") .. "\n")
  local code, out, err = rtcadmin_cli("ingest --to " .. q(URL) .. " " .. q(f))
  T.eq(code, 0, err)
  T.match(out, "^2 events sent to 127%.0%.0%.1:%d+/0 %(16 shards%), 5 lines skipped")
  T.match(err, "mixed.jsonl:2: skipped: not JSON")
  T.match(err, "mixed.jsonl:3: skipped: event ts 1764064800000 looks like milliseconds")
  T.match(err, 'mixed.jsonl:4: skipped: room_id "bad room" has a character outside')
  T.match(err, "mixed.jsonl:7: skipped: missing user_id")
  T.match(err, "mixed.jsonl:8: skipped: not a JSON object")
  T.eq(conn:call("GET", "rtcadmin:fleet:shards"), "16")
  T.eq(entries(), 2)
  for _, want in ipairs { cjson.decode(lines[1]), cjson.decode(lines[6]) } do
    local key = "rtcadmin:fleet:s:" .. rtcadmin.shard(APP, want.room_id, 16)
    local found
    for _, en in ipairs(conn:call("XRANGE", key, "-", "+")) do
      local got = cjson.decode(en[2][2])
      T.eq(en[2][1], "e")
      if got.id == want.id then found = got end
    end
    T.same(found, want, "the event as sent, in shard " .. key)
  end
  -- --strict: exit 4 when lines were skipped; --json: one record per skipped line, and a summary.
  code, out = rtcadmin_cli("ingest --to " .. q(URL) .. " --strict --json -", f)
  T.eq(code, 4)
  local recs = {}
  for l in out:gmatch("[^\n]+") do recs[#recs + 1] = cjson.decode(l) end
  T.eq(#recs, 6)
  T.eq(recs[1].kind, "invalid")
  T.eq(recs[1].line, 2)
  T.eq(recs[6].kind, "summary")
  T.eq(recs[6].sent, 2)
  T.eq(recs[6].invalid, 5)
  T.eq(entries(), 4, "sent again (engines drop repeated event ids)")
end)

T.case("ingest and run: configuration errors are clear, at start, and never show the password", function()
  fresh()
  local code, _, err = rtcadmin_cli("ingest --to " .. q("redis://:wrong-pw@127.0.0.1:" .. redis.port) .. " " .. q(all))
  T.eq(code, 1)
  T.match(err, "cannot use Redis: connect failed: RedisRefused: Redis at 127%.0%.0%.1:%d+/0: AUTH refused: WRONGPASS")
  T.no_match(err, "wrong%-pw")
  code, _, err = rtcadmin_cli("ingest --to " .. q(URL .. "/99") .. " " .. q(all))
  T.eq(code, 1)
  T.match(err, "SELECT refused")
  code, _, err = rtcadmin_cli("ingest --to http://x " .. q(all))
  T.eq(code, 2)
  T.match(err, "bad URL: url must start with redis://")
  code, _, err = rtcadmin_cli("ingest " .. q(all))
  T.eq(code, 2)
  T.match(err, "%-%-to redis://HOST:PORT%[/DB%] is required")
  code, _, err = rtcadmin_cli("run " .. q(RULES) .. " --from " .. q("redis://:nope@127.0.0.1:" .. T.free_port())
    .. " --dry-run")
  T.eq(code, 1)
  T.match(err, "cannot use Redis: connect failed: ConnectionFailed")
  code, _, err = rtcadmin_cli("run " .. q(RULES) .. " --consumer x --dry-run " .. q(all))
  T.eq(code, 2)
  T.match(err, "%-%-consumer goes with %-%-from")
  code, _, err = rtcadmin_cli("run " .. q(RULES) .. " --from " .. q(URL) .. " --drain 5 --dry-run")
  T.eq(code, 2)
  T.match(err, "%-%-drain does not go with %-%-from")
  -- A deployment's shard count is fixed: another --shards is refused.
  T.eq((rtcadmin_cli("ingest --to " .. q(URL) .. " --shards 16 " .. q(file1))), 0)
  code, _, err = rtcadmin_cli("ingest --to " .. q(URL) .. " --shards 8 " .. q(file1))
  T.eq(code, 1)
  T.match(err, "this fleet has 16 shards %(rtcadmin:fleet:shards%), not 8")
end)

-- 3 engines named <name>1..3 (with `flags`) split the shards, the 2 producers send a half each; the
-- engines' decisions once they ended (within `seconds`).
local function three_engines(name, flags, seconds)
  local engines, names = {}, {}
  for i = 1, 3 do
    names[i] = name .. i
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer " .. names[i] .. " " .. flags
      .. " --json --idle 6")
  end
  wait_split(names, 20)
  local p1 = start("ingest --to " .. q(URL) .. " " .. q(file1))
  local p2 = start("ingest --to " .. q(URL) .. " " .. q(file2))
  T.eq(p1.wait(60), 0, p1.err())
  T.eq(p2.wait(60), 0, p2.err())
  local got = {}
  for i, e in ipairs(engines) do
    T.eq(e.wait(seconds), 0, "engine " .. i .. ": " .. e.err())
    decisions(e.out(), got)
  end
  return got
end

T.case("3 engines, 2 producers, 60 rooms: the decisions of a single run", function()
  fresh()
  T.ok(TOTAL >= 5000, "at least 5 000 events: " .. TOTAL)
  local want = single_run()
  T.ok(count(want) > 500, "the raid makes decisions: " .. count(want))
  local got = three_engines("e", "--dry-run", 90)
  T.eq(entries(), TOTAL)
  T.eq(count(got), count(want), diff(want, got))
  T.same(got, want, diff(want, got))
  local pending, lag = backlog()
  T.eq(pending, 0, "no pending entries")
  T.eq(lag, 0, "every entry delivered")
end)

-- A fresh log and `n` rooms' events in a file: the file, and the actions a single live `rtcadmin
-- run` over it makes the emulator carry out (the emulator is reset after it).
local function live_reference(n, name)
  fresh()
  local by, list = raid.rooms(n, APP)
  local f = T.write_file(dir .. "/" .. name .. ".jsonl", table.concat(raid.lines(by, list), "\n") .. "\n")
  emu.reset()
  local code, _, err = rtcadmin_cli("run " .. q(RULES) .. " " .. q(f) .. " --json")
  T.eq(code, 0, err)
  local want = received()
  emu.reset()
  return f, want
end

T.case("3 live engines, 2 producers, 60 rooms: the emulator carries out a single run's actions", function()
  local _, want = live_reference(60, "all-live")
  T.ok(total(want) > 500, "actions: " .. total(want))
  local got = three_engines("le", "", 180)
  T.same(once(got), once(single_run()), diff(once(single_run()), once(got)))
  local carried = received()
  T.same(carried, want, diff(want, carried))
  local pending, behind = backlog()
  T.eq(pending + behind, 0)
end)

T.case("live: the actions the emulator receives are those of a single run", function()
  local f, want = live_reference(4, "small")
  T.ok(count(want) > 20, "actions sent: " .. count(want))
  local engines = {}
  for i = 1, 2 do
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer live" .. i .. " --json --idle 5")
  end
  wait_split({ "live1", "live2" }, 20)
  T.eq((rtcadmin_cli("ingest --to " .. q(URL) .. " " .. q(f))), 0)
  for i, e in ipairs(engines) do T.eq(e.wait(120), 0, "engine " .. i .. ": " .. e.err()) end
  local got = received()
  T.same(got, want, diff(want, got))
  T.eq((backlog()), 0, "no pending entries")
end)

T.case("kill -9 of an engine: its shards are taken over with their state, same decisions, all acknowledged", function()
  fresh()
  local want = single_run()
  local engines = {}
  for i = 1, 3 do
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer k" .. i
      .. " --dry-run --json --idle 8 --state-every 0.5")
  end
  wait_split({ "k1", "k2", "k3" }, 20)
  local p1 = start("ingest --to " .. q(URL) .. " " .. q(file1))
  T.sleep(0.5) -- in the middle of the first half, after some checkpoints
  engines[1].signal("KILL")
  local took = wait_split({ "k2", "k3" }, 10)
  T.ok(took <= 5, string.format("shards taken over %.2f s after the kill", took))
  T.eq(p1.wait(60), 0)
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(file2)).wait(60), 0)
  local got = decisions(engines[1].out())
  local restored = 0
  for i = 2, 3 do
    T.eq(engines[i].wait(90), 0, "engine " .. i .. ": " .. engines[i].err())
    T.match(engines[i].err(), "took shard")
    decisions(engines[i].out(), got)
    restored = restored + #engines[i].err():gsub("took shard %d+ %(from its checkpoint%)", "")
  end
  T.ok(restored >= 1, "shards restored from a checkpoint: " .. restored)
  -- Every decision of the single run, and no other: the killed engine's before the kill, the new
  -- owners' after (some made twice: decided after the last checkpoint, and again by the new owner).
  got = once(got)
  T.same(got, once(want), diff(once(want), got))
  local pending, behind = backlog()
  T.eq(pending, 0, "no pending entries: the dead engine's were claimed")
  T.eq(behind, 0)
  T.eq(entries(), TOTAL)
  T.ok(F.kept() < TOTAL, "the streams are trimmed below the checkpoints: " .. F.kept() .. " kept")
end)

T.case("live, kill -9 mid-run: every action sent, none twice but the ones in flight, which the audit marks", function()
  local f, want = live_reference(12, "some")
  local engines, audits = {}, {}
  for i = 1, 2 do
    audits[i] = dir .. "/kill-audit" .. i .. ".jsonl"
    -- lk1 checkpoints rarely: what it sent before the kill is decided again by the survivor.
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer lk" .. i .. " --json --idle 6"
      .. " --state-every " .. (i == 1 and 60 or 0.2) .. " --audit " .. q(audits[i]))
  end
  wait_split({ "lk1", "lk2" }, 20)
  local p = start("ingest --to " .. q(URL) .. " " .. q(f))
  local t0 = T.now()
  while not (T.read_file(audits[1]) or ""):find('"outcome":"ok"', 1, true) and T.now() - t0 < 60 do T.sleep(0.02) end
  engines[1].signal("KILL")
  T.eq(p.wait(60), 0)
  T.eq(engines[2].wait(120), 0, engines[2].err())
  -- The survivor's audit: decisions the journal says were sent are not sent again (recovered);
  -- one whose request was on the wire at the kill is sent again and marked resent.
  local resent, recovered = {}, 0
  for line in (T.read_file(audits[2]) or ""):gmatch("[^\n]+") do
    local rec = cjson.decode(line)
    local target = rec.room_id .. "|" .. rec.user_id
    if rec.resent then resent[target] = (resent[target] or 0) + 1 end
    if rec.outcome == "recovered" then recovered = recovered + 1 end
  end
  T.ok(recovered > 0, "decisions made again by the new owner and not sent again: " .. recovered)
  local got = received()
  for k, n in pairs(want) do T.ok((got[k] or 0) >= n, "sent: " .. k) end
  -- Requests beyond the single run's, by target: only as many as the audit marks resent. A ban
  -- sent again finds the user banned and extends that ban (UpdateBanRoomUserRule): such an extension
  -- comes only with a BanRoomUser sent again.
  local sends, bans, extensions = {}, {}, {}
  for k, n in pairs(got) do
    local action, target = k:match("^([^|]*)|(.*)$")
    local more = n - (want[k] or 0)
    if action == "UpdateBanRoomUserRule" then extensions[target] = (extensions[target] or 0) + more
    else sends[target] = (sends[target] or 0) + more end
    if action == "BanRoomUser" then bans[target] = (bans[target] or 0) + more end
  end
  local function detail(target)
    local out = {}
    for k, n in pairs(got) do
      if k:sub(-#target - 1) == "|" .. target then out[#out + 1] = k .. " " .. (want[k] or 0) .. "->" .. n end
    end
    return table.concat(out, ", ") .. "; resent " .. (resent[target] or 0)
  end
  for target, n in pairs(sends) do
    T.ok(n <= (resent[target] or 0), "sent again only when marked resent: " .. target .. " +" .. n .. ": "
      .. detail(target))
  end
  for target, n in pairs(extensions) do
    T.ok(n <= math.max(0, bans[target] or 0), "an extension only after a ban sent again: " .. target .. " +" .. n
      .. ": " .. detail(target))
  end
  local pending, behind = backlog()
  T.eq(pending, 0)
  T.eq(behind, 0)
end)

T.case("--idle: retries drain before the last checkpoint, with the leases kept meanwhile", function()
  local f, want = live_reference(4, "drain")
  -- Kicks fail for a while: they wait for retries when the input ends.
  emu.faults({ { action = "KickUser", kind = "status500", count = 108 } })
  local audit = dir .. "/drain-audit.jsonl"
  local d1 = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer d1 --json --idle 1 --audit " .. q(audit))
  wait_split({ "d1" }, 20)
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(f)).wait(60), 0)
  local t0 = T.now()
  while not d1.err():find("actions waiting for a retry; waiting for them until") and T.now() - t0 < 20 do
    T.sleep(0.05)
  end
  T.match(d1.err(), "rtcadmin: shard %d+: %d+ actions waiting for a retry; waiting for them until %d%d:%d%d:%d%d")
  -- d1 is draining: a second engine joins, and must not take d1's shards before d1 is done.
  local d2 = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer d2 --json --idle 4")
  T.eq(d1.wait(60), 0, d1.err())
  T.eq(d2.wait(60), 0, d2.err())
  T.no_match(d1.err(), "gave up shard", "d1 kept its shards while it drained")
  local retried = 0
  for line in (T.read_file(audit) or ""):gmatch("[^\n]+") do
    local rec = cjson.decode(line)
    if rec.action == "kick" and rec.outcome == "ok" and rec.attempts > 1 then retried = retried + 1 end
    T.ok(not rec.resent, "nothing sent again")
  end
  T.ok(retried > 0, "kicks that succeeded on a retry: " .. retried)
  local got = received()
  T.same(got, want, diff(want, got))
  T.match(d2.err(), "took shard %d+ %(from its checkpoint%)")
  T.no_match(d2.out(), '"kind":"decision"', "d2 had nothing to decide or send")
end)

T.case("SIGTERM: the engine finishes its batch, releases its shards at once and exits 0", function()
  fresh()
  local ma, mb = dir .. "/t1.prom", dir .. "/t2.prom"
  local a = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer t1 --dry-run --json --state-every 60"
    .. " --keep-log --metrics " .. q(ma))
  local b = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer t2 --dry-run --json --idle 6 --keep-log"
    .. " --metrics " .. q(mb) .. " --metrics-every 0.5")
  wait_split({ "t1", "t2" }, 20)
  local p1 = start("ingest --to " .. q(URL) .. " " .. q(file1))
  T.sleep(0.5) -- in the middle of the producer's batches
  a.signal("TERM")
  T.eq(a.wait(10), 0, a.err())
  T.match(a.out(), '"kind":"summary"')
  T.eq(p1.wait(60), 0)
  -- Released, not expired: t2 holds every shard well within one lease.
  local took = wait_split({ "t2" }, 10)
  T.ok(took < 1.5, string.format("taken %.2f s after the exit", took))
  T.eq(b.wait(60), 0, b.err())
  -- t1 checkpointed on the way out (its interval is a minute): t2 restored its shards' state.
  T.match(b.err(), "took shard %d+ %(from its checkpoint%)")
  local got = once(decisions(b.out(), decisions(a.out())))
  local want = once(in_rooms(single_run(), half1))
  T.same(got, want, diff(want, got))
  local pending, behind = backlog()
  T.eq(pending, 0)
  T.eq(behind, 0)
  T.eq(F.kept(), #raid.lines(by_room, half1), "--keep-log: nothing trimmed")
  -- --metrics: each engine counts what it decided; t2 does not count again what t1's checkpoints
  -- brought, so the two files add up to the events once each.
  local n_events, n_decisions, read, acked = 0, 0, 0, 0
  local files = {}
  for i, file in ipairs { ma, mb } do
    local r = promtext.parse(assert(T.read_file(file), file))
    files[i] = r
    n_events = n_events + r:sum("rtcadmin_policy_events_total")
    n_decisions = n_decisions + r:sum("rtcadmin_policy_decisions_total", { outcome = "dry_run" })
    read = read + r:value("rtcadmin_fleet_entries_total", { state = "read" })
    acked = acked + r:value("rtcadmin_fleet_entries_total", { state = "acknowledged" })
    T.eq(r:value("rtcadmin_fleet_shards"), 0, "no shard held at the end")
    local checked, status = T.capture("promtool check metrics < " .. q(file) .. " 2>&1")
    T.eq(status, 0, "promtool check metrics: " .. checked)
  end
  local n = #raid.lines(by_room, half1)
  T.eq(n_events, n)
  T.eq(n_decisions, total(want), "one dry-run decision each")
  T.eq(read, n, "entries read, once each")
  T.eq(acked, n, "entries acknowledged, once each")
  T.ok(files[1]:value("rtcadmin_fleet_checkpoints_total", { op = "written" }) >= 1, "t1 checkpointed its shards")
  T.ok(files[2]:value("rtcadmin_fleet_checkpoints_total", { op = "restored" }) >= 1, "t2 restored them")
end)

T.case("a checkpoint that cannot be restored: said clearly, its shard left alone, not reset", function()
  fresh()
  local BAD = 3
  local key = "rtcadmin:fleet:ckpt:" .. BAD
  assert(conn:call("HSET", key, "state", "not a snapshot", "id", "1-0", "owner", "x"))
  local e = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer c1 --dry-run --json --idle 3")
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(all)).wait(60), 0)
  T.eq(F.owners()[BAD], false, "nobody holds the shard")
  T.eq(e.wait(60), 0, e.err())
  T.match(e.err(), "shard 3 left alone: its checkpoint rtcadmin:fleet:ckpt:3 cannot be restored %(rtcadmin.policy: "
    .. "cannot restore: not packed data.-%); the shard is not started afresh")
  T.eq(conn:call("HGET", key, "state"), "not a snapshot", "the checkpoint is as it was")
  local pending, behind = backlog()
  T.eq(pending, 0)
  T.eq(behind, 1, "shard 3's entries wait")
  -- Deleting the checkpoint is the deliberate reset: the shard is decided from its first entry.
  conn:call("DEL", key)
  local again = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer c2 --dry-run --json --idle 3")
  T.eq(again.wait(60), 0, again.err())
  local got = once(decisions(again.out(), decisions(e.out())))
  T.same(got, once(single_run()), diff(once(single_run()), got))
  pending, behind = backlog()
  T.eq(pending + behind, 0)
end)

T.case("an engine stopped (SIGSTOP) past its lease gives its shards up when it wakes, without acting", function()
  fresh()
  local a = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer s1 --dry-run --json --state-every 0.2")
  wait_split({ "s1" }, 20)
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(file1)).wait(60), 0)
  a.signal("STOP")
  local b = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer s2 --dry-run --json --idle 5")
  wait_split({ "s2" }, 10)
  local p2 = start("ingest --to " .. q(URL) .. " " .. q(file2))
  a.signal("CONT")
  T.eq(p2.wait(60), 0)
  T.eq(b.wait(90), 0, b.err())
  a.signal("TERM")
  T.eq(a.wait(10), 0, a.err())
  T.match(a.err(), "s1 gave up shard %d+ %(its lease had expired%)")
  T.no_match(a.out(), '"event_id":"room0[0-9][02468]%-', "s1 decided nothing of the second half")
  local got = once(decisions(b.out(), decisions(a.out())))
  T.same(got, once(single_run()), diff(once(single_run()), got))
  local pending, behind = backlog()
  T.eq(pending + behind, 0)
end)

T.case("fencing: a checkpoint or a decision by an engine whose lease is gone does nothing", function()
  fresh()
  local fleet = require "rtcadmin.fleet"
  local policy = require "rtcadmin.policy"
  local log = assert(fleet.open(conn))
  assert(log:ensure_groups(conn))
  local lines = {}
  local w = fleet.worker {
    conn = conn, log = log, name = "w1", lease = 60,
    engine = function(_, journal)
      local e = policy.new { dry_run = true, journal = journal }
      assert(e:load(RULES .. "/raid.lua"))
      return e
    end,
    say = function(l) lines[#lines + 1] = l end,
  }
  T.eq(w:take(5), true)
  T.eq(conn:call("GET", "rtcadmin:fleet:epoch:5"), "1")
  local ev = { id = "f1", ts = 1764064800, type = "join", app_id = APP, room_id = "r", user_id = "u" }
  local id = conn:call("XADD", log:key(5), "*", "e", fleet.encode(ev))
  local read = conn:call("XREADGROUP", "GROUP", log.group, "w1", "STREAMS", log:key(5), ">")
  T.eq(read[1][2][1][1], id)
  T.ok(w:decide(5, read[1][2]))
  T.eq(w.owned[5].engine:stats().events, 1)
  -- Another engine took the shard (this one stalled): the checkpoint is refused, nothing acknowledged.
  assert(conn:call("SET", log:lease_key(5), "w2"))
  assert(conn:call("INCR", "rtcadmin:fleet:epoch:5"))
  T.eq(w:checkpoint(5), true)
  T.eq(w.owned[5], nil, "given up")
  T.eq(conn:call("EXISTS", log:checkpoint_key(5)), 0, "no checkpoint written")
  T.eq(conn:call("XPENDING", log:key(5), log.group)[1], 1, "not acknowledged")
  T.match(lines[#lines], "w1 gave up shard 5 %(another engine owns it now")
  -- The same name with an older epoch (a restarted engine of that name took it meanwhile).
  assert(conn:call("DEL", log:lease_key(5)))
  T.eq(w:take(5), true)
  T.eq(w.owned[5].epoch, 3)
  w.owned[5].dirty = true
  assert(conn:call("INCR", "rtcadmin:fleet:epoch:5"))
  T.eq(w:checkpoint(5), true)
  T.eq(w.owned[5], nil)
  T.eq(conn:call("EXISTS", log:checkpoint_key(5)), 0)
  -- Past its lease by its own clock and no longer the owner: entries are not decided.
  assert(conn:call("DEL", log:lease_key(5)))
  T.eq(w:take(5), true)
  local engine = w.owned[5].engine
  w.owned[5].valid_until = 0
  assert(conn:call("SET", log:lease_key(5), "w2"))
  T.eq(w:decide(5, { { id, { "e", fleet.encode(ev) } } }), true)
  T.eq(engine:stats().events, 0, "not decided")
  T.eq(w.owned[5], nil)
  T.match(lines[#lines], "w1 gave up shard 5 %(its lease had expired%)")
  -- An entry delivered to an engine that lost the shard before deciding it is claimed by the owner
  -- once it has been idle for 3 leases.
  fresh()
  log = assert(fleet.open(conn))
  assert(log:ensure_groups(conn))
  local said = {}
  local o = fleet.worker {
    conn = conn, log = log, name = "owner", lease = 0.5, checkpoint_every = 0.1,
    engine = function() return policy.new { dry_run = true } end,
    say = function(l) said[#said + 1] = l end,
  }
  T.eq(o:take(7), true)
  local engine7 = o.owned[7].engine
  T.ok(o:step())
  conn:call("XADD", log:key(7), "*", "e", fleet.encode(ev))
  T.eq(#conn:call("XREADGROUP", "GROUP", log.group, "gone", "STREAMS", log:key(7), ">")[1][2], 1)
  local t0 = T.now()
  while engine7:stats().events == 0 and T.now() - t0 < 5 do T.ok(o:step()) end
  T.eq(engine7:stats().events, 1, "the orphan was decided")
  T.ok(T.now() - t0 >= 1.5, "after 3 leases")
  T.eq(o.owned[7].engine, engine7, "by the same owner: " .. table.concat(said, "\n"))
  T.ok(o:checkpoint_due(true))
  T.eq(conn:call("XPENDING", log:key(7), log.group)[1], 0, "and acknowledged with the checkpoint")
end)

T.case("Redis killed and restarted (append-only file on): engines wait, resume, same decisions", function()
  local aof = T.redis(PASSWORD, true)
  local aurl = "redis://:" .. PASSWORD .. "@127.0.0.1:" .. aof.port
  local aconn = assert(rtcadmin.redis(aurl))
  local A = raid.fleet(aconn, env, LUA, dir)
  local engines = {}
  for i = 1, 2 do
    engines[i] = A.start("run " .. q(RULES) .. " --from " .. q(aurl) .. " --consumer r" .. i
      .. " --dry-run --json --idle 6")
  end
  A.wait_split({ "r1", "r2" }, 20)
  local p1 = A.start("ingest --to " .. q(aurl) .. " " .. q(file1))
  T.sleep(0.3)
  aof.kill() -- in the middle of the first producer's batches, or just after them
  aof.start()
  T.eq(aconn:call("PING"), nil, "this suite's own connection was cut too") -- (the next call connects again)
  T.eq(p1.wait(60), 0, p1.err())
  T.eq(A.start("ingest --to " .. q(aurl) .. " " .. q(file2)).wait(60), 0)
  local got = {}
  for i, e in ipairs(engines) do
    T.eq(e.wait(90), 0, "engine " .. i .. ": " .. e.err())
    T.match(e.err(), "Redis at 127%.0%.0%.1:%d+/0 unreachable %(")
    T.match(e.err(), "Redis at 127%.0%.0%.1:%d+/0 reachable again after")
    decisions(e.out(), got)
  end
  T.eq(A.entries(), TOTAL, "every event in the log once (" .. A.entries() .. ")")
  local want = once(single_run())
  got = once(got)
  T.same(got, want, diff(want, got))
  local pending, lag = A.backlog()
  T.eq(pending, 0)
  T.eq(lag, 0)
  aconn:close()
  aof.stop()
end)

T.run(function()
  conn:close()
  redis.stop()
  emu.stop()
  T.rmdir(dir)
end)
