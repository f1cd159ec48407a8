-- What the fleet suites and the benchmark share (tests/lua/test_fleet.lua, bench/fleet_bench.lua):
-- a recorded multi-room raid - deterministic JSON Lines, every room's events in time order, the
-- users of each room its own (per-app offence counts do not cross rooms, so a room's decisions
-- depend on its own events only: see docs/fleet.md) - and bin/rtcadmin processes in the background
-- with a look at the fleet's keys in Redis.
--   local F = require "fleetlib"
--   local by_room, rooms = F.rooms(60, app)  -- {room_id = {line, ...}, ...} and the ordered room list
local cjson = require "cjson"
local T = require "testlib"

local M = {}

local BASE = 1764064800

-- One room's events: a join wave, chat floods (twice for some: the ladder), loud audio, reports,
-- and ordinary chat in between. About 90 events.
local function room_events(app, room, r, out)
  local t, n = BASE + r * 7, 0
  local function ev(typ, user, extra)
    n = n + 1
    local e = { id = room .. "-" .. n, ts = t, type = typ, app_id = app, room_id = room, user_id = user }
    for k, v in pairs(extra or {}) do e[k] = v end
    out[#out + 1] = cjson.encode(e)
  end
  local function u(k) return room .. "_u" .. k end
  ev("join", "alice", { role = "host" })
  for k = 1, 20 do
    t = t + 0.3
    ev("join", u(k))
  end
  for round = 1, 2 do
    for k = 1, 3 + (r % 3) do
      for m = 1, 7 do
        t = t + 0.1
        ev("chat", u(k), { text = "spam " .. m })
      end
    end
    t = t + 40 + round
  end
  for k = 6, 8 do
    for _ = 1, 3 do
      t = t + 1
      ev("stream", u(k), { kind = "audio", loud = true })
    end
  end
  for k = 9, 12 do
    t = t + 2
    ev("report", u(13), { reporter = u(k) })
  end
  for k = 14, 20 do
    t = t + 3
    ev("chat", u(k), { text = "hello" })
  end
  return out
end

-- `count` rooms of `app`: lines by room and the room ids in order.
function M.rooms(count, app)
  local by, order = {}, {}
  for r = 1, count do
    local room = string.format("room%03d", r)
    order[r] = room
    by[room] = room_events(app, room, r, {})
  end
  return by, order
end

-- All lines of the given rooms, each room's in order (rooms one after another).
function M.lines(by, rooms)
  local out = {}
  for _, room in ipairs(rooms) do
    for _, l in ipairs(by[room]) do out[#out + 1] = l end
  end
  return out
end

-- ---- processes -------------------------------------------------------------------------------

-- fleet(conn, env, lua, dir): helpers for one deployment (default prefix, 16 shards) reached through
-- conn (rtcadmin.redis), starting bin/rtcadmin with `env` (a shell prefix) and interpreter `lua`,
-- keeping their output in `dir`.
local n_fleets = 0
function M.fleet(conn, env, lua, dir)
  n_fleets = n_fleets + 1
  local tag = dir .. "/fleet" .. n_fleets .. "-" -- (its own files: two fleets may share `dir`)
  local q = T.shell_quote
  local BIN = T.source_dir .. "/bin/rtcadmin"
  local F = { procs = {} } -- every process started, newest last (their stderr goes into failure messages)
  local n_procs = 0

  -- Starts bin/rtcadmin with `args` in the background: {pid, code(), wait(s), out(), err(), signal(s)}.
  function F.start(args)
    n_procs = n_procs + 1
    local base = tag .. "proc" .. n_procs
    -- A watcher kills the process when this one (the suite) is gone, so a failing case leaves no
    -- engine behind.
    local script = env() .. q(lua) .. " " .. q(BIN) .. " " .. args .. " >" .. q(base .. ".out") .. " 2>"
      .. q(base .. ".err") .. " </dev/null & p=$!; echo $p >" .. q(base .. ".pid") .. "; "
      .. "(while kill -0 " .. T.pid() .. " 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.5; done; "
      .. "kill -9 $p 2>/dev/null) >/dev/null 2>&1 & wait $p; echo $? >" .. q(base .. ".code")
    assert(io.popen("sh -c " .. q(script) .. " >/dev/null 2>&1 &")):close()
    local pr = { base = base }
    F.procs[#F.procs + 1] = pr
    for _ = 1, 100 do
      local s = T.read_file(base .. ".pid")
      if s and s:match("%d+") then pr.pid = s:match("%d+") break end
      T.sleep(0.02)
    end
    assert(pr.pid, "no pid for " .. args)
    function pr.code()
      local s = T.read_file(base .. ".code")
      return s and tonumber(s:match("%d+"))
    end
    function pr.wait(seconds)
      for _ = 1, seconds * 20 do
        if pr.code() then return pr.code() end
        T.sleep(0.05)
      end
      os.execute("kill -9 " .. pr.pid .. " 2>/dev/null")
      error("process did not end within " .. seconds .. " s: " .. args .. "\n" .. (T.read_file(base .. ".err") or ""))
    end
    function pr.out() return T.read_file(base .. ".out") or "" end
    function pr.err() return T.read_file(base .. ".err") or "" end
    function pr.signal(sig) os.execute("kill -" .. sig .. " " .. pr.pid) end
    return pr
  end

  -- The owner of every shard's lease (shard -> name or false).
  function F.owners()
    local out = {}
    for i = 0, 15 do out[i] = conn:call("GET", "rtcadmin:fleet:lease:" .. i) or false end
    return out
  end

  -- Waits until every shard is owned and the owners are exactly `names` (each holds at most its fair
  -- share, ceil(16 / #names), and so at least one). Returns the seconds it took and the owners.
  function F.wait_split(names, seconds)
    local want = {}
    for _, n in ipairs(names) do want[n] = true end
    local t0 = T.now()
    while T.now() - t0 < seconds do
      local o, per, ok = F.owners(), {}, true
      for i = 0, 15 do
        if not o[i] or not want[o[i]] then ok = false break end
        per[o[i]] = (per[o[i]] or 0) + 1
      end
      if ok then
        for _, n in ipairs(names) do
          if (per[n] or 0) < 1 then ok = false end
        end
      end
      if ok then return T.now() - t0, o end
      T.sleep(0.02)
    end
    local errs = {}
    for _, pr in ipairs(F.procs) do errs[#errs + 1] = pr.err() end
    error("shards not split between " .. table.concat(names, ", ") .. " within " .. seconds .. " s: "
      .. cjson.encode(F.owners()) .. "\n" .. table.concat(errs, "\n"))
  end

  -- A reply of field/value pairs as a table.
  local function fields(list)
    local t = {}
    for j = 1, #list, 2 do t[list[j]] = list[j + 1] end
    return t
  end

  -- Pending (delivered, not acknowledged) entries over all shards, and the shards with entries
  -- never delivered (the group's last delivered id is not the stream's last one; engines trim what
  -- their checkpoints cover, so XINFO's lag is not always known).
  function F.backlog()
    local pending, behind = 0, 0
    for i = 0, 15 do
      local key = "rtcadmin:fleet:s:" .. i
      local info = conn:call("XINFO", "STREAM", key)
      local groups = conn:call("XINFO", "GROUPS", key)
      if type(info) == "table" then
        local last = fields(info)["last-generated-id"]
        local delivered = "0-0"
        for _, g in ipairs(type(groups) == "table" and groups or {}) do
          g = fields(g)
          pending = pending + g.pending
          delivered = g["last-delivered-id"]
        end
        if last ~= "0-0" and delivered ~= last then behind = behind + 1 end
      end
    end
    return pending, behind
  end

  -- Entries ever appended to the log (trimmed ones included).
  function F.entries()
    local n = 0
    for i = 0, 15 do
      local info = conn:call("XINFO", "STREAM", "rtcadmin:fleet:s:" .. i)
      if type(info) == "table" then n = n + fields(info)["entries-added"] end
    end
    return n
  end

  -- Entries still in the log.
  function F.kept()
    local n = 0
    for i = 0, 15 do n = n + (conn:call("XLEN", "rtcadmin:fleet:s:" .. i) or 0) end
    return n
  end

  return F
end

return M
