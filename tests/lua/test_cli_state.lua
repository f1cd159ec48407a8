-- `rtcadmin run --state FILE` as a separate process: a run stopped half way and started again on the
-- rest decides and acts as one run; `kill -9` at random points never leaves a state file that does
-- not restore; SIGTERM stops a run reading a quiet pipe and saves its state; a corrupt state file
-- stops the run and is left as it is.
local T = require "testlib"
local cjson = require "cjson"
local policy = require "rtcadmin.policy"

local dir = T.tmpdir()
local q = T.shell_quote
local LUA = arg and arg[-1] or "lua5.4"
local BIN = T.source_dir .. "/bin/rtcadmin"
local RULES = T.source_dir .. "/examples/rules"
local RAID = T.source_dir .. "/examples/events/raid.jsonl"
local BUILD = T.module_dir()

local function env(emu)
  return "VOLC_ACCESSKEY=" .. q(T.AK) .. " VOLC_SECRETKEY=" .. q(T.SK) .. " RTCADMIN_ENDPOINT="
    .. q(emu and emu.url or "") .. " RTCADMIN_BUILD=" .. q(BUILD) .. " "
end

-- Runs bin/rtcadmin; returns exit status, stdout, stderr.
local function rtcadmin(emu, args)
  local errf = dir .. "/stderr"
  local p = assert(io.popen("(" .. env(emu) .. q(LUA) .. " " .. q(BIN) .. " " .. args .. " 2>" .. q(errf)
    .. " </dev/null); echo \"__exit=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code
  out = out:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
  return code, out, T.read_file(errf) or ""
end

-- Starts bin/rtcadmin in the background (stdin from `stdin`); returns its pid.
local function start(emu, args, stdin, tag)
  local pidf = dir .. "/" .. tag .. ".pid"
  os.remove(pidf)
  os.execute("sh -c " .. q("echo $$ > " .. q(pidf) .. "; exec env " .. env(emu) .. q(LUA) .. " " .. q(BIN) .. " "
    .. args .. " <" .. q(stdin) .. " >" .. q(dir .. "/" .. tag .. ".out") .. " 2>" .. q(dir .. "/" .. tag .. ".err"))
    .. " &")
  for _ = 1, 200 do
    local pid = T.read_file(pidf)
    if pid and pid:match("%d+") then return pid:match("%d+") end
    T.sleep(0.01)
  end
  error("the CLI did not start")
end
-- Running: its /proc entry is there and it is not a zombie (an exited child of a parent that does
-- not reap it still answers kill -0).
local function alive(pid)
  local stat = T.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end
local function wait_exit(pid, seconds)
  for _ = 1, seconds * 100 do
    if not alive(pid) then return true end
    T.sleep(0.01)
  end
  return false
end

-- The state in `path` restored into an engine with the example rules: the engine, or nil, err.
local function restored(path)
  local s = T.read_file(path)
  if not s then return nil, "no state file" end
  local e = policy.new { dry_run = true }
  for _, f in ipairs({ RULES .. "/00-allow.lua", RULES .. "/raid.lua" }) do assert(e:load(f)) end
  local ok, err = e:restore(s)
  if not ok then return nil, err end
  return e
end

-- The decisions of an audit log, without what differs from run to run.
local function decisions(path)
  local list = {}
  for line in (T.read_file(path) or ""):gmatch("[^\n]+") do
    local r = cjson.decode(line)
    if r.kind == "decision" and r.outcome == "queued" then
      r.time, r.run = nil, nil
      list[#list + 1] = require("rtcadmin").json_encode(r)
    end
  end
  return list
end

T.case("a run stopped half way and started again with --state decides and acts as one run", function()
  local lines = {}
  for l in T.read_file(RAID):gmatch("[^\n]+") do lines[#lines + 1] = l end
  local half = math.floor(#lines / 2)
  T.write_file(dir .. "/first.jsonl", table.concat(lines, "\n", 1, half) .. "\n")
  T.write_file(dir .. "/rest.jsonl", table.concat(lines, "\n", half + 1) .. "\n")

  local emu1, emu2 = T.emulator(), T.emulator()
  local state, audit_split, audit_one = dir .. "/split.state", dir .. "/split.audit", dir .. "/one.audit"
  local code, _, err = rtcadmin(emu1, "run " .. q(RULES) .. " " .. q(dir .. "/first.jsonl") .. " --state " .. q(state)
    .. " --audit " .. q(audit_split) .. " --drain 0")
  T.eq(code, 0, "first half: " .. err)
  local e = assert(restored(state))
  T.eq(e:stats().events, half, "the state holds the first half's events")
  code, _, err = rtcadmin(emu1, "run " .. q(RULES) .. " " .. q(dir .. "/rest.jsonl") .. " --state " .. q(state)
    .. " --audit " .. q(audit_split) .. " --drain 0 --json")
  T.eq(code, 0, "the rest: " .. err)
  code, _, err = rtcadmin(emu2, "run " .. q(RULES) .. " " .. q(RAID) .. " --audit " .. q(audit_one) .. " --drain 0")
  T.eq(code, 0, "one run: " .. err)
  local split, one = decisions(audit_split), decisions(audit_one)
  T.ok(#one >= 20, "the raid made decisions (" .. #one .. ")")
  T.eq(#split, #one, "as many decisions")
  for i = 1, #one do T.eq(split[i], one[i], "decision " .. i) end
  local function requests(emu)
    local t = {}
    for _, r in ipairs(emu.control("GET", "/_emulator/requests").requests) do
      t[#t + 1] = table.concat({ r.action, r.RoomId or "-", r.UserId or "-", tostring(r.status) }, " ")
    end
    table.sort(t) -- (a batch sends several at once: their order at the emulator varies)
    return t
  end
  T.same(requests(emu1), requests(emu2), "the same requests, each once")
  T.eq(restored(state):stats().events, #lines, "the state holds every event")
  emu1.stop()
  emu2.stop()
end)

T.case("kill -9 at random points never leaves a state file that does not restore", function()
  -- Enough events for a run of a few seconds (LuaJIT reads 150k a second here), saved every 10 ms.
  local out, ts = {}, 1764064800
  for i = 1, 300000 do
    ts = ts + 0.05
    out[i] = cjson.encode({ id = "k" .. i, ts = ts, type = i % 3 == 0 and "join" or "chat", app_id = T.APP,
      room_id = "room" .. (i % 7), user_id = "user" .. (i % 501) })
  end
  local events = dir .. "/many.jsonl"
  T.write_file(events, table.concat(out, "\n") .. "\n")
  local state = dir .. "/killed.state"
  local seed = os.time() % 1000 + 1
  local function rand() seed = (seed * 16807) % 2147483647; return seed % 1000 / 1000 end
  local restored_events = 0
  for try = 1, 10 do
    local before = T.read_file(state)
    local pid = start(nil, "run " .. q(RULES) .. " - --dry-run --json --state " .. q(state) .. " --state-every 0.01",
      events, "kill")
    -- Killed at a random point once this run has saved at least once (however slowly it starts,
    -- under a sanitizer say), so each try kills a process in the middle of its work.
    local saved = false
    for _ = 1, 3000 do
      local now = T.read_file(state)
      if now and now ~= before then saved = true break end
      T.sleep(0.01)
    end
    T.ok(saved, "try " .. try .. ": the run saved its state")
    T.sleep(rand() * 0.5)
    T.ok(alive(pid), "try " .. try .. ": still running when killed")
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    T.ok(wait_exit(pid, 10), "killed")
    local e, err = restored(state)
    T.ok(e, "try " .. try .. ": the state file restores (" .. tostring(err) .. ")")
    T.ok(e:stats().events > (before and restored_events or 0), "try " .. try .. ": with more events than before")
    restored_events = e:stats().events
  end
end)

T.case("SIGTERM and SIGINT stop a run that waits on a quiet pipe, and its state is saved", function()
  for _, sig in ipairs({ "TERM", "INT" }) do
    local fifo = dir .. "/events." .. sig
    os.remove(fifo)
    assert(os.execute("mkfifo " .. q(fifo)))
    local state = dir .. "/term." .. sig .. ".state"
    os.remove(state)
    -- A save interval far longer than the test: only the signal can write the file.
    local pid = start(nil, "run " .. q(RULES) .. " - --dry-run --state " .. q(state) .. " --state-every 3600", fifo,
      "term")
    local w = assert(io.open(fifo, "w"))
    for l in T.read_file(RAID):gmatch("[^\n]+") do w:write(l, "\n") end
    w:flush()
    T.sleep(0.8)
    T.ok(alive(pid), "still waiting for more input")
    T.eq(T.read_file(state), nil, "nothing saved yet")
    os.execute("kill -" .. sig .. " " .. pid)
    T.ok(wait_exit(pid, 10), "SIG" .. sig .. " stopped it")
    w:close()
    local e = assert(restored(state))
    T.eq(e:stats().events, 143, "the state holds every event it read")
    T.match(T.read_file(dir .. "/term.err"), "rtcadmin: SIG" .. sig .. ": stopped; state saved to ", "it says so")
    T.match(T.read_file(dir .. "/term.out"), "143 events, 24 decisions", "and prints its summary")
  end
end)

T.case("a state file that cannot be restored stops the run and is left as it is", function()
  local state = dir .. "/bad.state"
  for _, content in ipairs({ "not a state", string.rep("\0", 40) }) do
    T.write_file(state, content)
    local code, _, err = rtcadmin(nil, "run " .. q(RULES) .. " " .. q(RAID) .. " --dry-run --state " .. q(state))
    T.eq(code, 1, "exit 1")
    T.match(err, "rtcadmin: cannot restore the state in " .. T.literal(state) .. ": not packed data", "why")
    T.match(err, "the file is left as it is", "what happens to it")
    T.eq(T.read_file(state), content, "the file is unchanged")
  end
  local good = dir .. "/good.state"
  T.eq((rtcadmin(nil, "run " .. q(RULES) .. " " .. q(RAID) .. " --dry-run --state " .. q(good))), 0, "a fresh state")
  local s = T.read_file(good)
  T.write_file(state, s:sub(1, #s - 7))
  local code, _, err = rtcadmin(nil, "run " .. q(RULES) .. " " .. q(RAID) .. " --dry-run --state " .. q(state))
  T.eq(code, 1, "a truncated state: exit 1")
  T.match(err, "cannot restore the state in .*: truncated", "truncated")
  code, _, err = rtcadmin(nil, "run " .. q(RULES) .. " " .. q(RAID) .. " --dry-run --state-every 1")
  T.eq(code, 2, "--state-every alone is a usage error")
  T.match(err, "%-%-state%-every needs %-%-state FILE", "says so")
  code = rtcadmin(nil, "replay " .. q(RULES) .. " " .. q(RAID) .. " --state " .. q(good))
  T.eq(code, 2, "--state is an option of run")
end)

T.run(function() T.rmdir(dir) end)
