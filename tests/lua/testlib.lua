-- Minimal test runner for the Lua suites: cases, assertions, and a real emulator per file.
-- Each file ends with `T.run()`, which prints "N passed, N failed" and exits non-zero on failure.
local cjson = require "cjson"

local T = {}
local cases = {}

-- Credentials the emulator knows (emulator/rtc_emulator.py); fake, but treated as secrets all the same.
T.AK = "AKLTrtcadminEmulatorKey01"
T.SK = "RW11bGF0b3JTZWNyZXQrLz0hS2V5MDE="
T.AK2 = "AKLTrtcadminEmulatorKey02"
T.SK2 = "U2Vjb25kQWNjb3VudFNlY3JldDAy"
T.STS_AK = "AKTPrtcadminEmulatorTmp01"
T.STS_SK = "VGVtcG9yYXJ5U2VjcmV0S2V5MDE="
T.STS_TOKEN = "STSrtcadminEmulatorToken01"
T.APP = "661e2ebb5ffd4b0e8d3f6b1d"
-- A secret the emulator does not know (for SignatureDoesNotMatch).
T.WRONG_SK = "V3JvbmdTZWNyZXQrLz0hS2V5OTk="
-- Every secret the suites use: no output of the suite may contain one (tests/secrets/scan_outputs.lua).
T.SECRETS = { T.SK, T.SK2, T.STS_SK, T.STS_TOKEN, T.WRONG_SK, "V3JvbmdTZWNyZXQ=", "Tm90QVNlY3JldFRvU2hvdw==",
  "VERY+Secret/Value==", "RnV6elNlY3JldEtleQ==", "Conn-Test-Pw+/=", "Fleet-Test-Pw", "FleetNginxPw" }

T.source_dir = os.getenv("RTCADMIN_SOURCE_DIR") or "."

-- The suites run on Lua 5.1 (and LuaJIT) to 5.4: version differences go through these.
T.unpack = table.unpack or unpack -- luacheck: ignore 143 (5.1 global)
function T.pack(...) return { n = select("#", ...), ... } end

function T.case(name, fn) cases[#cases + 1] = { name = name, fn = fn } end

local function fail(msg, level) error(msg, (level or 1) + 1) end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

function T.eq(got, want, what)
  if got ~= want then fail(string.format("%s: expected %s, got %s", what or "value", show(want), show(got)), 2) end
end

function T.ok(v, what)
  if not v then fail((what or "expected a true value") .. ", got " .. show(v), 2) end
  return v
end

-- `s` as a Lua pattern that matches it literally.
function T.literal(s) return (s:gsub("%p", "%%%0")) end

function T.match(s, pattern, what)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(string.format("%s: %s does not match %q", what or "string", show(s), pattern), 2)
  end
end

function T.no_match(s, needle, what)
  if type(s) == "string" and s:find(needle, 1, true) then
    fail(string.format("%s: %s must not contain %q", what or "string", show(s), needle), 2)
  end
end

-- No test secret in tostring(err) (s) or in any field of err.
function T.no_secrets(err, s)
  for _, secret in ipairs(T.SECRETS) do
    T.no_match(s, secret, "tostring(err)")
    for k, v in pairs(err) do T.no_match(v, secret, "err." .. tostring(k)) end
  end
end

-- Calls fn(...) and expects an error whose message matches pattern; returns the message.
function T.raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then fail("expected an error matching " .. show(pattern) .. ", got success", 2) end
  err = tostring(err)
  if not err:find(pattern) then fail(string.format("error %s does not match %q", show(err), pattern), 2) end
  return err
end

-- Deep equality for plain data.
function T.same(a, b, what)
  local function eq(x, y)
    if type(x) ~= type(y) then return false end
    if type(x) ~= "table" then return x == y end
    for k, v in pairs(x) do if not eq(v, y[k]) then return false end end
    for k in pairs(y) do if x[k] == nil then return false end end
    return true
  end
  if not eq(a, b) then fail(string.format("%s: expected %s, got %s", what or "value",
    cjson.encode(b), cjson.encode(a)), 2) end
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", [['\'']]) .. "'" end
T.shell_quote = shell_quote

-- Under the sanitizer suite the interpreter runs with the ASan runtime preloaded; helper programs
-- (Python servers, curl, openssl) are started without it: their reports would not be about us.
T.plain_env = os.getenv("LD_PRELOAD") and "env -u LD_PRELOAD " or ""

-- A value whose finalizer calls fn when it is collected or the state closes: a userdata on Lua 5.1
-- and LuaJIT, where a table's __gc never runs.
local newproxy = rawget(_G, "newproxy")
local function gc_guard(fn)
  if newproxy then
    local u = newproxy(true)
    getmetatable(u).__gc = fn
    return u
  end
  return setmetatable({}, { __gc = fn })
end

-- Starts a Python server script that prints "... listening on URL" and serves unsigned JSON control
-- endpoints; it exits with this process even if a test dies. Returns {url, proc, control}.
local function start_python_server(script, args, what, shutdown_path)
  local cmd = "exec " .. T.plain_env .. "python3 " .. shell_quote(script) .. " --port 0 --exit-with-parent "
    .. (args or "")
  local proc = assert(io.popen(cmd, "r"))
  local line = proc:read("*l")
  local url = line and line:match("listening on (https?://[%w%.%-]+:%d+)")
  if not url then error(what .. " did not start: " .. tostring(line)) end
  local srv = { url = url, proc = proc }

  -- Control endpoints are unsigned JSON; curl keeps them outside the module under test.
  function srv.control(method, path, body)
    local cmdline = T.plain_env .. "curl -s -S --max-time 10 " .. (srv.curl_args or "") .. " -X " .. method .. " "
      .. shell_quote(url .. path)
    if body then
      cmdline = cmdline .. " -H 'Content-Type: application/json' --data-binary " .. shell_quote(cjson.encode(body))
    end
    local p = assert(io.popen(cmdline, "r"))
    local out = p:read("*a")
    p:close()
    local ok, doc = pcall(cjson.decode, out)
    if not ok then error(what .. " control " .. path .. " answered: " .. out) end
    return doc
  end
  -- Stop the server before closing the popen handle: close() waits for the process to end.
  function srv.stop()
    if srv.proc then
      pcall(srv.control, "POST", shutdown_path)
      srv.proc:close()
      srv.proc = nil
    end
  end
  -- If the test dies before its teardown, closing the state stops the server first (finalizers run
  -- newest first): closing the popen handle alone would wait for it for ever.
  srv.guard = gc_guard(function() srv.stop() end)
  return srv
end
T.start_server = start_python_server

-- Starts the emulator on a free loopback port.
function T.emulator(args)
  -- Under ctest the request log is kept beside the test's output, for the secrets scan.
  local log_dir = os.getenv("RTCADMIN_TEST_LOG_DIR")
  local log = log_dir and ("--log " .. shell_quote(log_dir .. "/emulator-requests.log") .. " ") or "--quiet "
  local emu = start_python_server(T.source_dir .. "/emulator/rtc_emulator.py", log .. (args or ""), "emulator",
    "/_emulator/shutdown")
  function emu.reset() return emu.control("POST", "/_emulator/reset") end
  function emu.state() return emu.control("GET", "/_emulator/state") end
  function emu.stats() return emu.control("GET", "/_emulator/stats") end
  function emu.config(cfg) return emu.control("POST", "/_emulator/config", cfg) end
  function emu.faults(list) return emu.control("POST", "/_emulator/faults", { faults = list }) end
  function emu.join(app, room, user, extra)
    local body = { app_id = app, room_id = room, user_id = user }
    for k, v in pairs(extra or {}) do body[k] = v end
    return emu.control("POST", "/_emulator/join", body)
  end
  function emu.room(app, room)
    local st = emu.state()
    local a = st.apps[app]
    return a and a.rooms[room]
  end
  return emu
end

-- A fresh empty directory under /tmp.
-- Copies a file the code under test wrote (an audit log, say) beside the test's captured output,
-- so the secrets scan (tests/secrets) reads it too. Outside ctest's capture it does nothing.
function T.keep_for_scan(path)
  local dir = os.getenv("RTCADMIN_TEST_LOG_DIR")
  if dir then assert(os.execute("cp " .. shell_quote(path) .. " " .. shell_quote(dir .. "/"))) end
end

function T.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. shell_quote(d)))
  return d
end

-- This process's pid (children use it to notice that the test run is gone).
function T.pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("*l"):match("^(%d+)")
  f:close()
  return pid
end

-- On the monotonic clock in C: a limiter slot is missed when its sender comes back more than a few
-- milliseconds late, which `os.execute("sleep")` often is.
function T.sleep(seconds) require("rtcadmin").sleep(seconds) end

-- An HTTP request with curl: returns status, body, seconds taken. headers: {"Name: value", ...}.
function T.http(method, url, body, headers)
  local cmd = T.plain_env .. "curl -s -S --max-time 30 -o - -w '\n%{http_code} %{time_total}' -X " .. method .. " "
    .. shell_quote(url)
  for _, h in ipairs(headers or {}) do cmd = cmd .. " -H " .. shell_quote(h) end
  if body then cmd = cmd .. " --data-binary " .. shell_quote(body) end
  local p = assert(io.popen(cmd .. " 2>/dev/null", "r"))
  local out = p:read("*a")
  p:close()
  local resp, status, took = out:match("^(.*)\n(%d+) ([%d%.]+)$")
  return tonumber(status), resp, tonumber(took)
end

-- n loopback TCP ports that are free now (all bound at once, so they differ), as strings.
function T.free_ports(n)
  local p = assert(io.popen(T.plain_env .. "python3 -c 'import socket; s=[socket.socket() for _ in range(" .. n ..
    ")]; [x.bind((\"127.0.0.1\", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])'"))
  local line = p:read("*l")
  p:close()
  local ports = {}
  for port in line:gmatch("%d+") do ports[#ports + 1] = port end
  assert(#ports == n, "free ports: " .. tostring(line))
  return T.unpack(ports)
end

-- Starts nginx (Debian's, with the lua module) on a free loopback port with its own prefix
-- directory. `http` is the body of the http{} block (PORT and PORT2 stand for two free ports); `lua_files`
-- maps file names to contents written into the prefix, which is on lua_package_path. A watchdog
-- stops nginx when this process ends, even if a test dies.
function T.nginx(opts)
  local prefix = T.tmpdir()
  for _, d in ipairs { "logs", "tmp" } do assert(os.execute("mkdir -p " .. shell_quote(prefix .. "/" .. d))) end
  for name, text in pairs(opts.lua_files or {}) do
    local f = assert(io.open(prefix .. "/" .. name, "w"))
    f:write(text)
    f:close()
  end
  local cpath = opts.cpath or os.getenv("RTCADMIN_LUAJIT_CPATH") or "build-luajit/?.so"
  local port, port2 = T.free_ports(2)
  local root = io.popen("id -u"):read("*l") == "0"
  local conf = table.concat({
    "load_module /usr/lib/nginx/modules/ndk_http_module.so;",
    "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;",
    root and "user root root;" or "",
    "daemon off;", "master_process on;",
    "worker_processes " .. (opts.workers or 2) .. ";",
    "worker_priority 10;", -- senders niced below the emulator, as in T.spawn
    "error_log " .. prefix .. "/logs/error.log " .. (opts.log_level or "info") .. ";",
    "pid " .. prefix .. "/logs/nginx.pid;",
    "events { worker_connections 256; }",
    "http {",
    "  access_log off;",
    ("  client_body_temp_path P/tmp; proxy_temp_path P/tmp; fastcgi_temp_path P/tmp; uwsgi_temp_path P/tmp;" ..
     " scgi_temp_path P/tmp;"):gsub("P/", prefix .. "/"),
    "  lua_package_path '" .. prefix .. "/?.lua;" .. T.source_dir .. "/lua/?.lua;" ..
      T.source_dir .. "/lua/?/init.lua;;';",
    "  lua_package_cpath '" .. cpath .. ";;';",
    (opts.http:gsub("PORT2", port2):gsub("PORT", port)),
    "}",
  }, "\n")
  local f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local watchdog = string.format(
    T.plain_env .. "nginx -p %s -c %s -e %s & n=$!; " ..
    "while kill -0 %s 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 0.2; done; " ..
    "kill -QUIT $n 2>/dev/null; wait $n", shell_quote(prefix), shell_quote(prefix .. "/nginx.conf"),
    shell_quote(prefix .. "/logs/error.log"), T.pid())
  local proc = assert(io.popen("sh -c " .. shell_quote(watchdog) .. " >/dev/null 2>&1 &"))
  proc:close()
  local ng = { port = port, port2 = port2, url = "http://127.0.0.1:" .. port, prefix = prefix }
  function ng.log()
    local lf = io.open(prefix .. "/logs/error.log")
    if not lf then return "" end
    local text = lf:read("*a")
    lf:close()
    return text
  end
  local up = false
  for _ = 1, 50 do
    local status = T.http("GET", ng.url .. "/_ready")
    if status and status > 0 then up = true break end
    T.sleep(0.1)
  end
  if not up then error("nginx did not start:\n" .. ng.log()) end
  function ng.stop()
    local pf = io.open(prefix .. "/logs/nginx.pid")
    if pf then
      local pid = pf:read("*l")
      pf:close()
      os.execute("kill -QUIT " .. pid .. " 2>/dev/null")
      for _ = 1, 50 do
        if not io.open(prefix .. "/logs/nginx.pid") then break end
        T.sleep(0.1)
      end
    end
    os.execute("rm -rf " .. shell_quote(prefix))
  end
  return ng
end

-- A signed RTC callback body (JSON): `etype` about `user` in `room` of T.APP, happening now, with a
-- new EventId; `extra` overrides envelope fields.
local n_callbacks = 0
function T.signed_callback(secret, etype, room, user, extra)
  local callback = require "rtcadmin.callback"
  n_callbacks = n_callbacks + 1
  local fields = {
    EventType = etype, EventData = cjson.encode { RoomId = room, UserId = user },
    EventTime = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    EventId = string.format("evt-%d-%d-%d", T.pid(), os.time(), n_callbacks),
    AppId = T.APP, Version = "2020-12-01", Nonce = "n0n3",
  }
  for k, v in pairs(extra or {}) do fields[k] = v end
  fields.Signature = callback.signature(fields, secret)
  return cjson.encode(fields)
end

-- nginx running one policy engine for the host (rtcadmin.host) the way examples/nginx does: the
-- callback receiver storing events in the host's queue (POST /callback), GET /status (host:status())
-- and GET /stats (callback.stats). o: emu, secret, rules (a rules file's text), workers (4),
-- client (Lua fields added to rtcadmin.client{...}), engine (added to policy.new{...}), host (added to
-- host.new{...}), dict_size ("16m"). The engine's audit records go to the error log at NOTICE as
-- `rtcadmin audit {json}`. Returns T.nginx's object with status(), stats(), counters() (GET
-- /counters: host:counters(), its events, its decisions), master_pid(), worker_pids().
function T.host_nginx(o)
  local app = string.format([[
local rtcadmin = require "rtcadmin"
local policy = require "rtcadmin.policy"
local host = require "rtcadmin.host"
local M = {}
local client
local function audit(record)
  if type(record.evidence) == "table" then rtcadmin.json_array(record.evidence) end
  ngx.log(ngx.NOTICE, "rtcadmin audit ", rtcadmin.json_encode(record))
end
function M.new_engine(journal)
  local engine = policy.new { client = client, audit = audit, journal = journal, now = ngx.now, %s }
  local ok, errs = engine:load_source(%q, "=rules")
  if not ok then error(table.concat(errs, "; "), 0) end
  return engine
end
M.host = host.new { dict = "rtcadmin_host", engine = M.new_engine, %s }
function M.init_worker()
  client = rtcadmin.client { access_key = %q, secret_key = %q, endpoint = %q, %s }
  M.host:start()
end
M.callback = require("rtcadmin.callback").handler {
  secret = %q, dict = "rtcadmin_events", store = function(ev) return M.host:store(ev) end,
}
return M
]], o.engine or "", o.rules, o.host or "", T.AK, T.SK, o.emu.url, o.client or "", o.secret)
  local size = o.dict_size or "16m"
  local ng = T.nginx {
    workers = o.workers or 4,
    log_level = "notice",
    lua_files = { ["hostapp.lua"] = app },
    http = [[
  lua_shared_dict rtcadmin_events ]] .. size .. [[;
  lua_shared_dict rtcadmin_host ]] .. size .. [[;
  init_by_lua_block { require "hostapp" }
  init_worker_by_lua_block { require("hostapp").init_worker() }
  server {
    listen 127.0.0.1:PORT backlog=4096;
    location = /callback { content_by_lua_block { require("hostapp").callback() } }
    location = /status { content_by_lua_block { ngx.say(require("cjson").encode(require("hostapp").host:status())) } }
    location = /stats { content_by_lua_block { ngx.say(require("cjson").encode(
      require("rtcadmin.callback").stats("rtcadmin_events"))) } }
    location = /counters { content_by_lua_block { ngx.say(require("cjson").encode(
      require("hostapp").host:counters())) } }
  }
]],
  }
  local function get(path)
    local status, text = T.http("GET", ng.url .. path)
    if status ~= 200 then error("GET " .. path .. ": " .. tostring(status) .. " " .. tostring(text), 2) end
    return cjson.decode(text)
  end
  function ng.status() return get("/status") end
  function ng.stats() return get("/stats") end
  -- host:counters(), and the events and the decisions in it added up.
  function ng.counters()
    local c = get("/counters")
    local events, decisions = 0, 0
    for _, n in pairs(c.policy.events) do events = events + n end
    for _, by_action in pairs(c.policy.decisions) do
      for _, by_outcome in pairs(by_action) do
        for _, n in pairs(by_outcome) do decisions = decisions + n end
      end
    end
    return c, events, decisions
  end
  function ng.master_pid() return assert(T.read_file(ng.prefix .. "/logs/nginx.pid")):match("%d+") end
  function ng.worker_pids()
    local p = io.popen("pgrep -P " .. ng.master_pid())
    local pids = {}
    for pid in p:lines() do pids[#pids + 1] = pid end
    p:close()
    return pids
  end
  return ng
end

-- The example application (examples/nginx) against `emu`, started from the repository root as its
-- header says, on a free port with its own prefix; `env` adds environment variables. Returns
-- {url, port, token, secret, log(), stop()}.
function T.example_nginx(emu, env)
  local port = T.free_ports(1)
  local prefix = T.tmpdir()
  assert(os.execute("mkdir -p " .. shell_quote(prefix .. "/logs") .. " " .. shell_quote(prefix .. "/tmp")))
  local conf = assert(T.read_file(T.source_dir .. "/examples/nginx/nginx.conf"))
  conf = conf:gsub("listen 127%.0%.0%.1:8088;", "listen 127.0.0.1:" .. port .. ";")
  local cpath = os.getenv("RTCADMIN_LUAJIT_CPATH")
  if cpath then
    conf = conf:gsub('lua_package_cpath "build/lua%-luajit/%?%.so;;";', 'lua_package_cpath "' .. cpath .. ';;";')
  end
  if io.popen("id -u"):read("*l") == "0" then conf = "user root root;\n" .. conf end
  T.write_file(prefix .. "/nginx.conf", conf)
  local ng = { port = port, url = "http://127.0.0.1:" .. port, prefix = prefix,
               token = "console-token-0123456789abcdef", secret = "CallbackSecret-42" }
  local vars = { VOLC_ACCESSKEY = T.AK, VOLC_SECRETKEY = T.SK, RTCADMIN_ENDPOINT = emu.url,
                 RTCADMIN_ADMIN_TOKEN = ng.token, RTCADMIN_CALLBACK_SECRET = ng.secret }
  for k, v in pairs(env or {}) do vars[k] = v end
  local exports = {}
  for k, v in pairs(vars) do exports[#exports + 1] = k .. "=" .. shell_quote(v) end
  local log_file = prefix .. "/nginx.out"
  local start = "cd " .. shell_quote(T.source_dir) .. " && " .. table.concat(exports, " ") .. " " .. T.plain_env ..
    "nginx -p " .. shell_quote(prefix) .. " -c " .. shell_quote(prefix .. "/nginx.conf") .. " & n=$!; " ..
    "while kill -0 " .. T.pid() .. " 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 0.2; done; " ..
    "kill -QUIT $n 2>/dev/null; wait $n"
  local proc = assert(io.popen("sh -c " .. shell_quote(start) .. " >" .. shell_quote(log_file) .. " 2>&1 &"))
  proc:close()
  function ng.log() return T.read_file(log_file) or "" end
  local up = false
  for _ = 1, 50 do
    if T.http("GET", ng.url .. "/admin/online") == 401 then up = true break end
    T.sleep(0.1)
  end
  if not up then error("the example nginx did not start:\n" .. ng.log()) end
  function ng.stop()
    local pid = T.read_file(prefix .. "/logs/nginx.pid")
    if pid then
      os.execute("kill -QUIT " .. pid:match("%d+") .. " 2>/dev/null")
      for _ = 1, 50 do
        if not io.open(prefix .. "/logs/nginx.pid") then break end
        T.sleep(0.1)
      end
    end
    os.execute("rm -rf " .. shell_quote(prefix))
  end
  return ng
end

-- Starts tests/servers/hostile_server.py (HTTPS when given cert and key files; its control calls then
-- skip verification, which is curl's business, not the module's).
function T.hostile(cert, key)
  local args = cert and ("--tls-cert " .. shell_quote(cert) .. " --tls-key " .. shell_quote(key)) or ""
  local h = start_python_server(T.source_dir .. "/tests/servers/hostile_server.py", args, "hostile server",
    "/_hostile/shutdown")
  if cert then h.curl_args = "-k" end
  function h.queue(...) return h.control("POST", "/_hostile/queue", { modes = { ... } }) end
  function h.log() return h.control("GET", "/_hostile/log").requests end
  function h.reset() return h.control("POST", "/_hostile/reset") end
  return h
end

-- Wall-clock seconds with sub-second resolution (LuaSocket).
T.now = require("socket").gettime

-- A client for the emulator with the first test account, plus any overrides.
function T.client(emu, overrides)
  local rtcadmin = require "rtcadmin"
  local opts = { access_key = T.AK, secret_key = T.SK, endpoint = emu.url }
  for k, v in pairs(overrides or {}) do opts[k] = v end
  return rtcadmin.client(opts)
end

-- The directory the rtcadmin module was loaded from (package.searchpath is 5.2+): what bin/rtcadmin
-- run by a test should load (RTCADMIN_BUILD).
function T.module_dir()
  for pattern in package.cpath:gmatch("[^;]+") do
    local f = io.open((pattern:gsub("%?", "rtcadmin")), "rb")
    if f then
      f:close()
      return pattern:match("^(.*)/[^/]+$")
    end
  end
end

-- Removes a directory made by T.tmpdir.
function T.rmdir(d) os.execute("rm -rf " .. shell_quote(d)) end


-- Wall-clock seconds with sub-millisecond precision (the emulator logs `wall` on the same clock).
function T.wall_now()
  local p = assert(io.popen("date +%s.%N"))
  local t = tonumber(p:read("*a"))
  p:close()
  return t
end

-- Lua source for a process that kicks `count` users through its own client of `emu` with the given
-- `limiter` (a Lua expression), prints "succeeded<TAB>failed", then runs `tail` (Lua source, with
-- the client as `c`).
function T.kicker(emu, limiter, count, tail)
  return string.format([[
    local c = require("rtcadmin").client{access_key = %q, secret_key = %q, endpoint = %q, limiter = %s}
    local users = {}
    for i = 1, %d do users[i] = "p" .. i end
    local _, s = c:kick_users(%q, "room1", users)
    print(s.succeeded, s.failed)
    io.stdout:flush()
    %s
  ]], T.AK, T.SK, emu.url, limiter, count, T.APP, tail or "")
end

-- Runs Lua source `code` in a child interpreter (this one, with this environment) for at most
-- `seconds`; a child still running then is killed, so a hang fails the test instead of blocking it.
-- Returns its output (stderr joined), its exit status (137 when killed) and the seconds it took.
function T.child(code, seconds)
  local lua = arg[-1] or "lua5.4"
  -- timeout runs without the sanitizer preload; the interpreter gets it back (the module needs it).
  local preload = os.getenv("LD_PRELOAD")
  local p = assert(io.popen(T.plain_env .. "timeout -s KILL " .. seconds .. " env "
    .. (preload and "LD_PRELOAD=" .. shell_quote(preload) .. " " or "") .. shell_quote(lua) .. " -e "
    .. shell_quote(code) .. " 2>&1; echo \"__exit=$?\""))
  local t0 = T.now()
  local out = p:read("*a")
  p:close()
  local text, status = out:match("^(.*)__exit=(%d+)\n$")
  return text, tonumber(status), T.now() - t0
end

-- Starts one independent interpreter per Lua source in `codes` (stderr joins stdout). The returned
-- group's wait() collects every process's output, in order.
function T.spawn(codes)
  local lua = arg[-1] or "lua5.4"
  local procs = {}
  for i, code in ipairs(codes) do
    -- The emulator stands in for a remote service, whose arrival clock our CPU load cannot delay:
    -- the senders run niced so that on a busy machine the emulator is scheduled first.
    procs[i] = assert(io.popen("nice -n 10 " .. shell_quote(lua) .. " -e " .. shell_quote(code) .. " 2>&1"))
  end
  return {
    wait = function()
      local outs = {}
      for i, p in ipairs(procs) do
        outs[i] = p:read("*a")
        p:close()
      end
      return outs
    end,
  }
end

local function free_port()
  local p = assert(io.popen(T.plain_env
    .. [[python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"]]))
  local port = tonumber(p:read("*a"))
  p:close()
  return assert(port, "no free port")
end
T.free_port = free_port -- (nothing listens on it: also a closed port)

-- A zombie counts as gone: an orphaned server is reaped by whatever runs as PID 1, maybe late.
local function alive(pid)
  local f = pid and io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  return stat:match("%) (%a)") ~= "Z"
end

-- Starts `cmdline` (a foreground server) in the background; returns its pid. A watcher ends it
-- when this process is gone, so a test that dies leaves nothing behind.
local function start_server(cmdline)
  local p = assert(io.popen("lua_pid=$PPID; " .. T.plain_env .. cmdline .. " >/dev/null 2>&1 & sp=$!; echo $sp; "
    .. "(while kill -0 $lua_pid 2>/dev/null && kill -0 $sp 2>/dev/null; do sleep 0.5; done; "
    .. "kill $sp 2>/dev/null) >/dev/null 2>&1 &"))
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

-- Waits until file `log` contains `ready` (true), or `failed` or the process is gone (false).
local function wait_ready(pid, log, ready, failed)
  for _ = 1, 200 do
    local f = io.open(log)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    if text:find(ready, 1, true) then return true end
    if (failed and text:find(failed, 1, true)) or not alive(pid) then return false end
    T.sleep(0.05)
  end
  error("no " .. ready .. " in " .. log)
end

local function stop_server(pid, signal)
  if not pid then return end
  os.execute("kill -" .. (signal or "TERM") .. " " .. pid .. " 2>/dev/null")
  while alive(pid) do T.sleep(0.02) end
end

-- A real redis-server on a free loopback port with its own temporary directory and no persistence
-- (with `aof`, an append-only file written on every command). kill() ends it at once (SIGKILL);
-- start() brings it back on the same port, empty (with `aof`, as it was); stop() ends it and removes
-- its directory.
function T.redis(password, aof)
  local r = { dir = T.tmpdir(), password = password }
  local function launch()
    os.remove(r.dir .. "/redis.log")
    r.pid = start_server(string.format("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly %s"
      .. " --dir %s --logfile redis.log %s", r.port, aof and "yes --appendfsync always" or "no", shell_quote(r.dir),
      password and ("--requirepass " .. shell_quote(password)) or ""))
    return wait_ready(r.pid, r.dir .. "/redis.log", "Ready to accept connections", "Address already in use")
  end
  function r.start() assert(launch(), "redis-server could not listen on port " .. r.port .. " again") end
  function r.kill()
    stop_server(r.pid, "KILL")
    r.pid = nil
  end
  function r.stop()
    stop_server(r.pid)
    r.pid = nil
    T.rmdir(r.dir)
  end
  -- redis-cli against this server; returns its output.
  function r.cli(args)
    local p = assert(io.popen(T.plain_env .. string.format("redis-cli -p %d %s --no-auth-warning %s 2>&1", r.port,
      password and ("-a " .. shell_quote(password)) or "", args)))
    local out = p:read("*a")
    p:close()
    return out
  end
  for _ = 1, 5 do
    r.port = free_port()
    if launch() then
      r.url = "redis://127.0.0.1:" .. r.port
      return r
    end
  end
  error("redis-server found no free port")
end

-- The most emulator request records ({t = seconds, ...}) that fall in any window [t, t + 1 s).
function T.max_in_any_second(reqs)
  local t = {}
  for _, r in ipairs(reqs) do t[#t + 1] = r.t end
  table.sort(t)
  local best, j = 0, 1
  for i = 1, #t do
    while t[i] - t[j] >= 1.0 do j = j + 1 end
    if i - j + 1 > best then best = i - j + 1 end
  end
  return best
end

-- Writes `text` to `path` and returns the path.
function T.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- A writer of numbered files in `dir`: each call writes `text` to the next name made by the format
-- (e.g. "%s/rules%02d.lua") and returns its path.
function T.numbered_files(dir, format)
  local n = 0
  return function(text)
    n = n + 1
    return T.write_file(string.format(format, dir, n), text)
  end
end

-- Runs a shell command: its stdout (stderr too if the command says 2>&1) and exit status, on every Lua.
function T.capture(cmd)
  local p = assert(io.popen("(" .. cmd .. "); echo \"__exit=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code
  out = out:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
  return out, code
end

function T.read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function T.contains(list, value)
  for _, v in ipairs(list or {}) do if v == value then return true end end
  return false
end

-- Runs every case (or, with T_ONLY set, those whose name contains it); a failing case does not
-- stop the others.
function T.run(teardown)
  local passed, failed = 0, 0
  local only = os.getenv("T_ONLY")
  for _, c in ipairs(cases) do
    if not only or c.name:find(only, 1, true) then
      local ok, err = xpcall(c.fn, debug.traceback)
      if ok then
        passed = passed + 1
        print("ok - " .. c.name)
      else
        failed = failed + 1
        print("not ok - " .. c.name .. "\n    " .. tostring(err):gsub("\n", "\n    "))
      end
    end
  end
  if teardown then teardown() end
  print(string.format("%d passed, %d failed", passed, failed))
  -- Closing the state runs every __gc and unloads the module, so a leak checker sees what it left.
  os.exit(failed == 0 and passed > 0 and 0 or 1, true)
end

return T
