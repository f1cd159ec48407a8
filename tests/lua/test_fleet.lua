-- The fleet over Redis Streams (docs/fleet.md) with real processes: `rtcadmin ingest` producers and
-- `rtcadmin run --from` engines (bin/rtcadmin) against a real redis-server, compared with a single
-- `rtcadmin run` over the same events; kill -9 and SIGTERM of an engine.
local T = require "testlib"
local cjson = require "cjson"
local rtcadmin = require "rtcadmin"
local raid = require "fleetlib"

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

T.case("3 engines, 2 producers, 60 rooms: the decisions of a single run", function()
  fresh()
  T.ok(TOTAL >= 5000, "at least 5 000 events: " .. TOTAL)
  local want = single_run()
  T.ok(count(want) > 500, "the raid makes decisions: " .. count(want))
  local engines = {}
  for i = 1, 3 do
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer e" .. i
      .. " --dry-run --json --idle 6")
  end
  wait_split({ "e1", "e2", "e3" }, 20)
  local p1 = start("ingest --to " .. q(URL) .. " " .. q(file1))
  local p2 = start("ingest --to " .. q(URL) .. " " .. q(file2))
  T.eq(p1.wait(60), 0, p1.err())
  T.eq(p2.wait(60), 0, p2.err())
  local got = {}
  for i, e in ipairs(engines) do
    T.eq(e.wait(90), 0, "engine " .. i .. ": " .. e.err())
    decisions(e.out(), got)
  end
  T.eq(entries(), TOTAL)
  T.eq(count(got), count(want), diff(want, got))
  T.same(got, want, diff(want, got))
  local pending, lag = backlog()
  T.eq(pending, 0, "no pending entries")
  T.eq(lag, 0, "every entry delivered")
end)

T.case("live: the actions the emulator receives are those of a single run", function()
  fresh()
  local small, small_rooms = raid.rooms(4, APP)
  local f = T.write_file(dir .. "/small.jsonl", table.concat(raid.lines(small, small_rooms), "\n") .. "\n")
  local function received()
    local out = {}
    for _, action in ipairs { "KickUser", "BanRoomUser", "BanUserStream", "UpdateBanRoomUserRule" } do
      for _, r in ipairs(emu.control("GET", "/_emulator/requests?action=" .. action).requests) do
        local k = action .. "|" .. tostring(r.RoomId) .. "|" .. tostring(r.UserId)
        out[k] = (out[k] or 0) + 1
      end
    end
    return out
  end
  emu.reset()
  local code, _, err = rtcadmin_cli("run " .. q(RULES) .. " " .. q(f) .. " --json")
  T.eq(code, 0, err)
  local want = received()
  T.ok(count(want) > 20, "actions sent: " .. count(want))
  emu.reset()
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

T.case("kill -9 of an engine: its shards are taken over within a few seconds, every entry is acknowledged", function()
  fresh()
  local want = single_run()
  local engines = {}
  for i = 1, 3 do
    engines[i] = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer k" .. i
      .. " --dry-run --json --idle 8")
  end
  local _, split = wait_split({ "k1", "k2", "k3" }, 20)
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(file1)).wait(60), 0)
  engines[1].signal("KILL")
  local killed = T.now()
  local took = wait_split({ "k2", "k3" }, 10)
  T.ok(took <= 5, string.format("shards taken over %.2f s after the kill", took))
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(file2)).wait(60), 0)
  local got = {}
  for i = 2, 3 do
    T.eq(engines[i].wait(90), 0, "engine " .. i .. ": " .. engines[i].err())
    T.match(engines[i].err(), "took shard")
    decisions(engines[i].out(), got)
  end
  T.ok(T.now() - killed > 0)
  local pending, lag = backlog()
  T.eq(pending, 0, "no pending entries: the dead engine's were claimed")
  T.eq(lag, 0)
  -- Rooms on shards that never changed owner are decided exactly as by the single run.
  local stayed = {}
  for s = 0, 15 do if split[s] ~= "k1" then stayed[s] = true end end
  local checked = 0
  for k, v in pairs(want) do
    local room = k:match("^[^|]*|[^|]*|([^|]*)|")
    if stayed[rtcadmin.shard(APP, room, 16)] then
      T.eq(got[k], v, "decision " .. k)
      checked = checked + 1
    end
  end
  T.ok(checked > 100, "decisions checked on the shards that stayed: " .. checked)
  for k in pairs(got) do
    local room = k:match("^[^|]*|[^|]*|([^|]*)|")
    if stayed[rtcadmin.shard(APP, room, 16)] then T.ok(want[k], "no extra decision " .. k) end
  end
end)

T.case("SIGTERM: the engine finishes its batch, releases its shards at once and exits 0", function()
  fresh()
  local a = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer t1 --dry-run --json")
  local b = start("run " .. q(RULES) .. " --from " .. q(URL) .. " --consumer t2 --dry-run --json --idle 6")
  wait_split({ "t1", "t2" }, 20)
  T.eq(start("ingest --to " .. q(URL) .. " " .. q(file1)).wait(60), 0)
  a.signal("TERM")
  T.eq(a.wait(10), 0, a.err())
  T.match(a.out(), '"kind":"summary"')
  -- Released, not expired: t2 holds every shard well within one lease.
  local took = wait_split({ "t2" }, 10)
  T.ok(took < 1.5, string.format("taken %.2f s after the exit", took))
  T.eq(b.wait(60), 0, b.err())
  local pending, lag = backlog()
  T.eq(pending, 0)
  T.eq(lag, 0)
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
  local want = single_run()
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
