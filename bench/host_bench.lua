-- The host engine inside nginx (rtcadmin.host, docs/nginx.md "One engine per host"):
--
--   intake   signed, distinct RTC callbacks per second through the receiver with `store` (each
--            event kept in the shared-dict queue before its 200), with 1 and 4 workers, driven by
--            wrk with pre-signed bodies; p50/p99 of the 200 and the CPU share wrk took; with the
--            default checkpoints and with none during the run.
--   latency  from a callback's arrival to its API request at the emulator, at 100 and 1000
--            events/s, every event a kick (no pacing: limiter "none", the emulator's QPS limits off).
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;tests/lua/?.lua;;" LUA_CPATH="build/?.so;;" \
--     RTCADMIN_LUAJIT_CPATH="build/lua-luajit/?.so" lua5.4 bench/host_bench.lua [intake|latency|all] [seconds]
--
-- Needs nginx with its Lua module and the LuaJIT build (make luajit), wrk (apt-get install wrk),
-- lua-socket. Every process is on 127.0.0.1; results go to stdout (bench/RESULTS.md, section 10).
local T = require "testlib"
local socket = require "socket"

local what = arg[1] or "all"
local SECONDS = tonumber(arg[2]) or 10
local SECRET = "CallbackSecret-42"
local emu = T.emulator("--no-qps")

-- nginx with the host engine as in the example (tests/lua/testlib.lua, T.host_nginx); no pacing.
local function start_nginx(workers, rules, opts)
  return T.host_nginx {
    emu = emu, secret = SECRET, rules = rules, workers = workers, dict_size = "256m",
    engine = "dry_run = " .. tostring(opts.dry_run), client = 'limiter = "none"',
    host = "save_events = " .. tostring(opts.save_events or 50000),
  }
end

-- A signed callback body: a chat of `user` in `room`, happening now, with a new EventId.
local function body(user, room) return T.signed_callback(SECRET, "chat", room, user) end

-- CPU seconds (user + system) a process has used, from /proc.
local function cpu_seconds(pid)
  local stat = T.read_file("/proc/" .. pid .. "/stat")
  if not stat then return 0 end
  local fields = {}
  for v in stat:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = v end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime: fields 14, 15 of the line
end

local function intake(workers, save_events)
  local rules = [[rule "flood" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) > 5 end,
    action = escalate { kick, ban(minutes(10)) }, cooldown = 30 }]]
  local ng = start_nginx(workers, rules, { dry_run = true, save_events = save_events })
  T.sleep(1.5)
  -- Enough distinct bodies for the run at 40 000/s, in two files (one per wrk thread).
  local dir = T.tmpdir()
  local per_thread = math.floor(SECONDS * 20000)
  local t0 = socket.gettime()
  for t = 1, 2 do
    local f = assert(io.open(dir .. "/bodies." .. t .. ".txt", "w"))
    for i = 1, per_thread do f:write(body(string.format("u%d_%d", t, i % 50000), "room" .. (i % 100)), "\n") end
    f:close()
  end
  io.stderr:write(string.format("signed %d bodies in %.1f s\n", 2 * per_thread, socket.gettime() - t0))
  local workers_cpu0 = 0
  for _, pid in ipairs(ng.worker_pids()) do workers_cpu0 = workers_cpu0 + cpu_seconds(pid) end
  local cmd = string.format("BODIES_DIR=%s /usr/bin/time -f 'wrk_cpu %%U %%S' wrk -t2 -c32 -d%ds --latency " ..
    "-s %s/bench/wrk_callbacks.lua %s 2>&1", T.shell_quote(dir), SECONDS, T.source_dir, ng.url)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  local workers_cpu = -workers_cpu0
  for _, pid in ipairs(ng.worker_pids()) do workers_cpu = workers_cpu + cpu_seconds(pid) end
  local stats, status = ng.stats(), ng.status()
  T.rmdir(dir)
  ng.stop()
  local rps = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
  local p50 = out:match("\n%s+50%%%s+(%S+)")
  local p99 = out:match("\n%s+99%%%s+(%S+)")
  local u, s = out:match("wrk_cpu ([%d%.]+) ([%d%.]+)")
  local non2xx = out:match("Non%-2xx or 3xx responses: (%d+)") or "0"
  print(string.format("intake workers=%d save_events=%d  %.0f callbacks/s (%.0f per worker)  p50 %s  p99 %s  " ..
    "accepted %d duplicate %d error %d non-2xx %s  wrk CPU %.0f%% of the machine, nginx workers %.0f%%  " ..
    "engine decided %d of %d",
    workers, save_events, rps or 0, (rps or 0) / workers, p50, p99, stats.accepted, stats.duplicate, stats.error,
    non2xx,
    100 * (tonumber(u) + tonumber(s)) / (2 * SECONDS), 100 * workers_cpu / (2 * SECONDS),
    status.decided_seq, status.last_seq))
end

local function latency(rate)
  emu.reset()
  local rules = [[rule "kick-all" { on = "chat", when = function() return true end, action = kick }]]
  local ng = start_nginx(4, rules, { dry_run = false })
  T.sleep(1.5)
  local n = math.floor(rate * SECONDS)
  local bodies, users = {}, {}
  for i = 1, n do
    users[i] = string.format("lat%d_%d", rate, i)
    bodies[i] = body(users[i], "room1")
  end
  local host, port = "127.0.0.1", tonumber(ng.port)
  local sent_at, failures = {}, 0
  local start = socket.gettime() + 0.1
  for i = 1, n do
    local due = start + (i - 1) / rate
    local wait = due - socket.gettime()
    if wait > 0 then T.sleep(wait) end
    local c = socket.tcp()
    c:settimeout(5)
    sent_at[users[i]] = socket.gettime()
    local ok = c:connect(host, port)
    if ok then
      c:send("POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n" ..
        "Content-Length: " .. #bodies[i] .. "\r\n\r\n" .. bodies[i])
      local line = c:receive("*l")
      if not (line and line:find(" 200 ")) then failures = failures + 1 end
    else
      failures = failures + 1
    end
    c:close()
  end
  local took = socket.gettime() - start
  local reqs
  for _ = 1, 100 do
    reqs = emu.control("GET", "/_emulator/requests?action=KickUser").requests
    if #reqs >= n then break end
    T.sleep(0.1)
  end
  ng.stop()
  local lat = {}
  for _, r in ipairs(reqs) do
    if sent_at[r.UserId] then lat[#lat + 1] = (r.wall - sent_at[r.UserId]) * 1000 end
  end
  table.sort(lat)
  local function pct(q) return lat[math.max(1, math.ceil(q * #lat))] or 0 end
  print(string.format("latency %4d events/s (achieved %.0f)  kicks %d of %d  failures %d  p50 %.1f ms  p99 %.1f ms" ..
    "  max %.1f ms", rate, n / took, #lat, n, failures, pct(0.5), pct(0.99), lat[#lat] or 0))
end

if what == "intake" or what == "all" then
  -- With the default checkpoints (every 50 000 events, here every few seconds with a state of
  -- 100 000 users), and with none inside the run, to show what a checkpoint costs the 200s.
  for _, save_events in ipairs { 50000, 1000000000 } do
    intake(1, save_events)
    intake(4, save_events)
  end
end
if what == "latency" or what == "all" then
  latency(100)
  latency(1000)
end
os.exit(0)
