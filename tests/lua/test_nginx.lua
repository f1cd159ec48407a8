-- The module inside a real nginx (Debian's nginx with the lua module, LuaJIT build of rtcadmin):
-- moderation through an admin handler, the cosocket transport never blocking a worker, one QPS
-- budget across four workers, and the callback receiver. Each nginx gets its own prefix and port.
local T = require "testlib"
local cjson = require "cjson"
local callback = require "rtcadmin.callback"

local emu = T.emulator()
local APP = T.APP
local TOKEN = "dashboard-token-0123456789abcdef"
local CB_SECRET = "CallbackSecret-42"

-- The nginx-side application: a per-worker client, the admin endpoint and the callback receiver.
local function app_module(limiter_dir)
  return string.format([[
local rtcadmin = require "rtcadmin" -- at load time: no I/O, no client
local quote = require("rtcadmin.logtext").quote
local M = {}
local client
function M.init_worker()
  client = rtcadmin.client { access_key = %q, secret_key = %q, endpoint = %q, retry_base = 0.05,
                             limiter = { backend = "host", dir = %q } }
  -- init_worker has no cosockets: this call takes the libcurl path (and blocks only startup).
  local res, err = client:online_users(%q, "room1")
  ngx.shared.rtcadmin_events:set("init_worker_call", res and "ok" or tostring(err))
  ngx.shared.rtcadmin_events:set("init_worker_non_blocking", require("rtcadmin.nginx").non_blocking())
end
function M.client() return client end
local tls
function M.tls_client(endpoint)
  tls = tls or rtcadmin.client { access_key = %q, secret_key = %q, endpoint = endpoint, limiter = "none",
                                 retries = 0 }
  return tls
end
M.admin = require("rtcadmin.admin").handler { token = %q, client = M.client }
-- An API answering GetRoomOnlineUsers with a result nested deeper than the JSON writer goes.
local deep = { RoomExists = true, VisibleUserList = {}, Extra = {} }
local at = deep.Extra
for _ = 1, 40 do at[1] = {} at = at[1] end
M.admin_deep = require("rtcadmin.admin").handler { token = %q,
  client = { online_users = function() return deep, { request_id = "deep-1", attempts = 1 } end } }
M.callback = require("rtcadmin.callback").handler {
  secret = %q, dict = "rtcadmin_events",
  on_event = function(ev) -- acts on each event: kicks the user it names
    local res, err = client:kick_user(ev.app_id, ev.room_id, ev.user_id)
    ngx.log(ngx.NOTICE, "test on_event ", quote(ev.id), " ", res and "kicked" or tostring(err))
  end,
}
-- Each worker kicks n users from a timer (cosockets work there), then counts itself done.
function M.hammer(n)
  ngx.timer.at(0, function()
    local pid = ngx.worker.pid()
    for i = 1, n do client:kick_user(%q, "room1", "w" .. pid .. "x" .. i) end
    ngx.shared.rtcadmin_events:incr("hammer_done", 1, 0)
    ngx.shared.rtcadmin_events:set("hammer_pid_" .. pid, n)
  end)
end
return M
]], T.AK, T.SK, emu.url, limiter_dir, APP, T.AK, T.SK, TOKEN, TOKEN, CB_SECRET, APP)
end

-- Two self-signed certificates for 127.0.0.1 / localhost: nginx trusts the first.
local CERTS = T.tmpdir()
for _, name in ipairs { "trusted", "other" } do
  assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/%s.key -out %s/%s.pem " ..
    "-days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1",
    CERTS, name, CERTS, name)))
end

-- server_cert: the certificate nginx's TLS front for the emulator (on PORT2) presents.
local function start_nginx(workers, extra_worker_init, server_cert)
  local dir = T.tmpdir()
  local cert = CERTS .. "/" .. (server_cert or "trusted")
  local ng = T.nginx {
    workers = workers,
    lua_files = { ["testapp.lua"] = app_module(dir) },
    http = [[
  lua_shared_dict rtcadmin_events 1m;
  init_by_lua_block { require "testapp" }
  init_worker_by_lua_block { local app = require "testapp"; app.init_worker() ]] .. (extra_worker_init or "") .. [[ }
  lua_ssl_trusted_certificate ]] .. CERTS .. [[/trusted.pem;
  server {
    listen 127.0.0.1:PORT2 ssl;
    ssl_certificate ]] .. cert .. [[.pem;
    ssl_certificate_key ]] .. cert .. [[.key;
    location / { proxy_pass ]] .. emu.url .. [[; proxy_set_header Host $http_host; }
  }
  server {
    listen 127.0.0.1:PORT;
    location = /tls {
      content_by_lua_block {
        require("rtcadmin.nginx").hosts["localhost"] = "127.0.0.1" -- nginx's resolver ignores /etc/hosts
        local res, err = require("testapp").tls_client("https://localhost:PORT2"):kick_user(
          ngx.var.arg_app, "room1", ngx.var.arg_user)
        ngx.say(res and "ok" or err.code .. " " .. err.message)
      }
    }
    location /admin/ { content_by_lua_block { require("testapp").admin() } }
    location /deep_admin/ { content_by_lua_block { require("testapp").admin_deep() } }
    location = /callback { content_by_lua_block { require("testapp").callback() } }
    location = /callback_stats {
      content_by_lua_block {
        local out = require("rtcadmin.callback").stats("rtcadmin_events")
        if ngx.var.arg_id then -- the dedupe entry of that EventId: seconds left
          out.ttl = ngx.shared.rtcadmin_events:ttl("rtcadmin.callback:" .. ngx.var.arg_id)
        end
        ngx.say(require("cjson").encode(out))
      }
    }
    location = /ping { content_by_lua_block { ngx.say("pong") } }
    location = /bulk {
      content_by_lua_block {
        local c, progress = require("testapp").client(), 0
        local results, summary = c:kick_users(ngx.var.arg_app, "room1", { "alice", "bob", "carol" },
          { concurrency = 2, progress = function() progress = progress + 1 end })
        local out = { summary = summary, progress = progress, items = {} }
        for i, r in ipairs(results) do out.items[i] = r.ok and "ok" or r.err.code end
        local ok, err = pcall(c.kick_users, c, ngx.var.arg_app, "room1", { "dave", "bad user" })
        out.bad_input = not ok and tostring(err) or "accepted"
        ngx.say(require("cjson").encode(out))
      }
    }
    location = /info {
      content_by_lua_block {
        local info = require("testapp").client():info()
        info.phase_non_blocking = require("rtcadmin.nginx").non_blocking()
        info.hammer_done = ngx.shared.rtcadmin_events:get("hammer_done")
        info.init_worker_call = ngx.shared.rtcadmin_events:get("init_worker_call")
        info.init_worker_non_blocking = ngx.shared.rtcadmin_events:get("init_worker_non_blocking")
        ngx.say(require("cjson").encode(info))
      }
    }
  }
]],
  }
  ng.limiter_dir = dir
  local stop = ng.stop
  function ng.stop()
    stop()
    os.execute("rm -rf " .. T.shell_quote(dir))
  end
  return ng
end

local function admin(ng, path, body, token)
  local status, text = T.http(body and "POST" or "GET", ng.url .. "/admin/" .. path, body and cjson.encode(body),
    { "Authorization: Bearer " .. (token or TOKEN), "Content-Type: application/json" })
  local ok, doc = pcall(cjson.decode, text)
  return status, ok and doc or text
end

local function api_requests(action)
  return emu.control("GET", "/_emulator/requests?action=" .. action).requests
end

-- ISO-8601 UTC, `offset` seconds from now.
local function iso_time(offset) return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + (offset or 0)) end

-- Callback envelope fields for a UserJoinRoom of `user` in room1, happening now; `extra` overrides.
local n_events = 0
local function event_fields(user, extra)
  n_events = n_events + 1
  local fields = {
    EventType = "UserJoinRoom", EventData = cjson.encode { RoomId = "room1", UserId = user },
    EventTime = iso_time(), EventId = "evt-" .. os.time() .. "-" .. n_events, AppId = APP,
    Version = "2020-12-01", Nonce = "n0n3",
  }
  for k, v in pairs(extra or {}) do fields[k] = v end
  return fields
end

-- Signs `fields` with `secret` (default: the receiver's) and posts them; returns status, body.
local function post_callback(ng_, fields, secret)
  fields.Signature = callback.signature(fields, secret or CB_SECRET)
  return T.http("POST", ng_.url .. "/callback", cjson.encode(fields), { "Content-Type: application/json" })
end

-- The receiver's counters (callback.stats), and with an EventId, its dedupe entry's seconds left.
local function callback_stats(ng_, id)
  local status, text = T.http("GET", ng_.url .. "/callback_stats" .. (id and ("?id=" .. id) or ""))
  T.eq(status, 200, "stats status")
  return cjson.decode(text)
end

-- Waits until the emulator has seen `n` KickUser requests (or 3 s), then a little longer for a wrongly
-- repeated one to show up; returns them.
local function kicks_after(n)
  for _ = 1, 30 do
    if #api_requests("KickUser") >= n then break end
    T.sleep(0.1)
  end
  T.sleep(0.5)
  return api_requests("KickUser")
end

local ng = start_nginx(2)

T.case("inside nginx: host limiter by default, cosockets in requests, libcurl in init_worker", function()
  local status, text = T.http("GET", ng.url .. "/info")
  T.eq(status, 200, "status")
  local info = cjson.decode(text)
  T.eq(info.limiter, "host", "limiter")
  T.eq(info.phase_non_blocking, true, "content phase uses cosockets")
  T.eq(info.init_worker_non_blocking, false, "init_worker cannot")
  T.eq(info.init_worker_call, "ok", "a call from init_worker_by_lua (libcurl path) succeeded")
end)

T.case("kick, ban and mute through the admin handler change the emulator's room", function()
  emu.reset()
  local status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "alice" })
  T.eq(status, 200, "kick status")
  T.eq(doc.ok, true, "kick ok")
  T.eq(doc.result.message, "success", "KickUser Result")
  T.match(doc.request_id, "^%d+%x+$", "request id")
  T.ok(not T.contains(emu.room(APP, "room1").users, "alice"), "alice was kicked")

  status, doc = admin(ng, "ban", { app_id = APP, room_id = "room1", user_id = "bob", duration = 600 })
  T.eq(status, 200, "ban status " .. cjson.encode(doc))
  T.ok(emu.room(APP, "room1").banned_users.bob, "bob is banned")
  T.eq(emu.join(APP, "room1", "bob").joined, false, "bob cannot rejoin")

  emu.join(APP, "room1", "carol")
  status = admin(ng, "mute", { app_id = APP, room_id = "room1", user_id = "carol", audio = true, duration = 600 })
  T.eq(status, 200, "mute status")
  local muted = emu.room(APP, "room1").muted.carol
  T.ok(muted and muted.audio, "carol's audio is muted")
  T.ok(not muted.video, "carol's video is not")

  status, doc = admin(ng, "online?app_id=" .. APP .. "&room_id=room1")
  T.eq(status, 200, "online status")
  T.ok(T.contains(doc.result.VisibleUserList, "carol"), "carol is online")

  T.eq(emu.stats().requests, 4, "four API requests")
end)

-- An admin request's raw answer: status, body text.
local function admin_raw(ng_, path, body, token)
  return T.http(body and "POST" or "GET", ng_.url .. "/admin/" .. path, body,
    { "Authorization: Bearer " .. (token or TOKEN), "Content-Type: application/json" })
end

T.case("admin answers are JSON with sorted keys, and the API's lists are arrays, [] when empty", function()
  emu.reset() -- room1: alice, bob and carol, all visible
  local online = "online?app_id=" .. APP .. "&room_id="
  local status, text = admin_raw(ng, online .. "room1")
  T.eq(status, 200, "online status")
  T.match(text, '^{"attempts":1,"ok":true,"request_id":"%d+%x+","result":{"InvisibleUserList":%[%],' ..
    '"RoomExists":true,"TotalInvisibleUser":0,"TotalUser":3,"VisibleUserList":%["alice","bob","carol"%]}}\n$',
    "no invisible user: []")
  emu.join(APP, "room1", "watcher", { invisible = true })
  status, text = admin_raw(ng, online .. "room1")
  T.eq(status, 200, "online status")
  T.match(text, '"InvisibleUserList":%["watcher"%]', "an invisible user: a list of one")
  T.match(text, '"VisibleUserList":%["alice","bob","carol"%]', "the visible ones")
  -- An empty room: the API says RoomExists false and leaves the lists out; the endpoint gives them as [].
  status, text = admin_raw(ng, online .. "nobody-here")
  T.eq(status, 200, "empty room status")
  T.match(text, '"result":{"InvisibleUserList":%[%],"RoomExists":false,"VisibleUserList":%[%]}', "empty room: []")
  T.eq(cjson.decode(text).result.RoomExists, false, "RoomExists")
  status, text = admin_raw(ng, "kick", cjson.encode { app_id = APP, room_id = "room1", user_id = "bob" })
  T.eq(status, 200, "kick status")
  T.match(text, '^{"attempts":1,"ok":true,"request_id":"%d+%x+","result":{"message":"success"}}\n$', "kick answer")
  -- Error answers, byte for byte.
  for _, c in ipairs {
    { "kick", '{"app_id":"' .. APP .. '"}', "wrong-token-0000000000", 401,
      '{"message":"missing or wrong bearer token","ok":false}' },
    { "nothing", "{}", nil, 404, '{"message":"unknown action","ok":false}' },
    { "kick", "[1,2", nil, 400, '{"message":"body must be a JSON object","ok":false}' },
    { "kick", cjson.encode { app_id = APP, room_id = "room1", user_id = "bad user" }, nil, 400,
      '{"message":"rtcadmin.kick_user: bad argument \'user_id\': expected 1-128 characters of A-Z a-z 0-9 @ . _ -, ' ..
      'got \\"bad user\\"","ok":false}' },
  } do
    status, text = admin_raw(ng, c[1], c[2], c[3])
    T.eq(status, c[4], c[1] .. " status")
    T.eq(text, c[5] .. "\n", c[1] .. " answer")
  end
  emu.faults { { action = "KickUser", kind = "status500", count = 10 } }
  status, text = admin_raw(ng, "kick", cjson.encode { app_id = APP, room_id = "room1", user_id = "carol" })
  T.eq(status, 502, "failure status")
  T.match(text, '^{"code":"InternalError","http_status":500,"message":".-","ok":false,"request_id":"%d+%x+",' ..
    '"retryable":true}\n$', "failure answer")
end)

T.case("admin: an API result the JSON writer cannot hold is a 502 that says so", function()
  local status, text = T.http("GET", ng.url .. "/deep_admin/online?app_id=" .. APP .. "&room_id=room1", nil,
    { "Authorization: Bearer " .. TOKEN })
  T.eq(status, 502, "status")
  T.eq(text, '{"message":"the API\'s answer cannot be written as JSON: rtcadmin.json_encode: tables nested deeper ' ..
    'than 32 (or a cycle) (in key \\"Extra\\")","ok":false}\n', "answer")
end)

T.case("https through cosockets: the certificate is verified, and the call works", function()
  emu.reset()
  local status, text = T.http("GET", ng.url .. "/tls?app=" .. APP .. "&user=alice")
  T.eq(status, 200, "status")
  T.eq(text, "ok\n", "kicked over TLS")
  T.ok(not T.contains(emu.room(APP, "room1").users, "alice"), "alice was kicked")
  local other = start_nginx(1, nil, "other")
  status, text = T.http("GET", other.url .. "/tls?app=" .. APP .. "&user=bob")
  other.stop()
  T.eq(status, 200, "status")
  T.match(text, "^TLSError ", "an untrusted certificate is refused")
  T.ok(T.contains(emu.room(APP, "room1").users, "bob"), "bob stays")
end)

T.case("calls from nginx reuse keep-alive connections", function()
  emu.reset()
  local before = emu.stats().connections
  for i = 1, 8 do
    T.eq(admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "k" .. i }), 200, "kick " .. i)
  end
  local opened = emu.stats().connections - before - 1 -- less this stats request's own connection
  T.ok(opened <= 2, "8 kicks through 2 workers opened " .. opened .. " connections")
end)

T.case("the admin endpoint refuses a wrong token and bad input before any API request", function()
  emu.reset()
  local status = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "alice" }, "wrong-token-0000000000")
  T.eq(status, 401, "wrong token")
  local doc
  status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "bad user" })
  T.eq(status, 400, "bad user id")
  T.match(doc.message, "bad argument 'user_id'", "message")
  status, doc = admin(ng, "ban", { app_id = APP, room_id = "room1", user_id = "x", duration = 600, oops = 1 })
  T.eq(status, 400, "unknown field")
  T.match(doc.message, 'unknown field "oops"', "message")
  T.eq(emu.stats().requests, 0, "no API request")
end)

T.case("the admin endpoint logs each action with its fields quoted, and no other request text", function()
  emu.reset()
  local status = admin(ng, "online?app_id=" .. APP .. "&room_id=room1&note=%0A2026/01/01%20forged")
  T.eq(status, 200, "online status")
  local n = 0
  for line in ng.log():gmatch("[^\n]*rtcadmin%.admin: online [^\n]*&note=%%0A[^\n]*") do
    n = n + 1
    T.match(line, 'rtcadmin%.admin: online "{.-\\"room_id\\":\\"room1\\".-}" request_id=', "its fields, quoted")
    -- (nginx itself adds the request line after ", client:"; the handler's message ends before it)
    T.no_match(line:match("^(.-) request_id="), "note", "an argument the call does not read")
  end
  T.ok(n >= 1, "the online call is logged")
  T.no_match(ng.log(), "\n2026/01/01", "no forged line")
end)

T.case("runtime failures come back as errors, after the same retries as the blocking path", function()
  emu.reset()
  emu.faults { { action = "KickUser", kind = "status500", count = 1 } }
  local status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "alice" })
  T.eq(status, 200, "retried to success")
  T.eq(doc.attempts, 2, "attempts")
  emu.faults { { action = "KickUser", kind = "status500", count = 10 } }
  status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "bob" })
  T.eq(status, 502, "gave up")
  T.eq(doc.retryable, true, "retryable")
  T.eq(#api_requests("KickUser"), 2 + 4, "1 + 3 retries for the second kick")
  T.match(ng.log(), "%[warn%][^\n]*rtcadmin: KickUser failed", "the failure is in the error log at warn")
end)

T.case("the cosocket HTTP client classifies every fault like the libcurl path", function()
  for _, kind in ipairs { "status500", "internal_error_200", "throttle", "html502", "drop", "reset_mid_body" } do
    emu.reset()
    emu.faults { { action = "KickUser", kind = kind, count = 1 } }
    local status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "alice" })
    T.eq(status, 200, kind .. ": retried to success")
    T.eq(doc.attempts, 2, kind .. ": attempts")
  end
  for kind, code in pairs { huge = "ResponseTooLarge", malformed = "MalformedResponse" } do
    emu.reset()
    emu.faults { { action = "KickUser", kind = kind, count = 10 } }
    local status, doc = admin(ng, "kick", { app_id = APP, room_id = "room1", user_id = "alice" })
    T.eq(status, 502, kind .. ": failed")
    T.eq(doc.code, code, kind .. ": code")
  end
end)

T.case("bulk calls inside nginx: every item in order, progress, bad input raised before traffic", function()
  emu.reset()
  emu.faults { { action = "KickUser", kind = "status500", count = 10 } }
  local status, text = T.http("GET", ng.url .. "/bulk?app=" .. APP)
  T.eq(status, 200, "status " .. tostring(text))
  local doc = cjson.decode(text)
  T.eq(doc.summary.succeeded + doc.summary.failed, 3, "every item settled")
  T.eq(doc.progress, 3, "progress calls")
  local fails = 0
  for _, item in ipairs(doc.items) do
    if item ~= "ok" then
      fails = fails + 1
      T.eq(item, "InternalError", "failure code")
    end
  end
  T.eq(fails, doc.summary.failed, "summary matches items")
  T.ok(fails >= 1, "the 10 queued 500s failed at least one kick after its retries")
  T.match(doc.bad_input, "rtcadmin%.kick_user: bad argument 'user_id'", "bad input raised")
  T.no_match(doc.bad_input, "nginx.lua", "the error points at the caller, not the transport")
  T.eq(#api_requests("KickUser"), 10 + doc.summary.succeeded, "10 failed attempts plus one per success")
end)

T.case("secrets never appear in client info or the error log", function()
  local status, text = T.http("GET", ng.url .. "/info")
  T.eq(status, 200, "info")
  T.no_match(text, T.SK, "info never shows the secret")
  T.no_match(ng.log(), T.SK, "the error log never shows the secret")
end)

T.case("callback: signed event accepted and acted on once over three deliveries", function()
  emu.reset()
  emu.join(APP, "room1", "mallory")
  local fields = event_fields("mallory")
  for i = 1, 3 do
    local status, text = post_callback(ng, fields)
    T.eq(status, 200, "delivery " .. i .. " " .. tostring(text))
  end
  T.eq(#kicks_after(1), 1, "one KickUser for three deliveries")
  T.ok(not T.contains(emu.room(APP, "room1").users, "mallory"), "mallory was kicked")
end)

T.case("callback: bad signature is 401, malformed body 400, and neither acts", function()
  emu.reset()
  local fields = event_fields("alice")
  local status = post_callback(ng, fields, "not-the-secret")
  T.eq(status, 401, "bad signature")
  fields.Signature = callback.signature(fields, CB_SECRET)
  fields.EventData = cjson.encode { RoomId = "room1", UserId = "bob" } -- tampered after signing
  status = T.http("POST", ng.url .. "/callback", cjson.encode(fields))
  T.eq(status, 401, "tampered EventData")
  status = T.http("POST", ng.url .. "/callback", "{not json")
  T.eq(status, 400, "not JSON")
  status = T.http("POST", ng.url .. "/callback", cjson.encode { EventType = "X" })
  T.eq(status, 400, "fields missing")
  T.sleep(0.3)
  T.eq(#api_requests("KickUser"), 0, "no kick")
  T.ok(T.contains(emu.room(APP, "room1").users, "alice"), "alice stays")
end)

T.case("callback: the nonce may come as Noce; a body with both names is 400", function()
  emu.reset()
  emu.join(APP, "room1", "mallory")
  local fields = event_fields("mallory")
  fields.Noce, fields.Nonce = fields.Nonce, nil
  local status, text = post_callback(ng, fields)
  T.eq(status, 200, "signed with Noce " .. tostring(text))
  T.eq(#kicks_after(1), 1, "acted on")
  T.ok(not T.contains(emu.room(APP, "room1").users, "mallory"), "mallory was kicked")
  fields = event_fields("alice")
  fields.Noce, fields.Nonce = fields.Nonce, nil
  T.eq(post_callback(ng, fields, "not-the-secret"), 401, "Noce with a bad signature")
  fields = event_fields("alice")
  fields.Signature = callback.signature(fields, CB_SECRET) -- right for Nonce alone
  fields.Noce = fields.Nonce
  status, text = T.http("POST", ng.url .. "/callback", cjson.encode(fields))
  T.eq(status, 400, "both")
  T.match(text, "both Nonce and Noce are present", "message")
  T.eq(#kicks_after(1), 1, "nothing more acted on")
end)

T.case("callback: an old or future-dated signed event is 403, counted stale, and not acted on", function()
  emu.reset()
  local before = callback_stats(ng)
  local old = event_fields("alice", { EventTime = iso_time(-3600) })
  local status, text = post_callback(ng, old)
  T.eq(status, 403, "an hour old " .. tostring(text))
  T.match(text, "EventTime outside the accepted window", "message")
  T.eq(post_callback(ng, old), 403, "its retry: still stale, though no dedupe entry remembers it")
  local ahead = event_fields("alice", { EventTime = iso_time(3600) })
  T.eq(post_callback(ng, ahead), 403, "an hour ahead")
  local after = callback_stats(ng)
  T.eq(after.stale - before.stale, 3, "counted stale")
  T.eq(after.accepted - before.accepted, 0, "none accepted")
  T.eq(#kicks_after(1), 0, "no KickUser")
  T.ok(T.contains(emu.room(APP, "room1").users, "alice"), "alice stays")
  T.match(ng.log(), "rtcadmin%.callback: stale event " .. T.literal('"' .. old.EventId .. '" EventTime "' ..
    old.EventTime .. '"') .. ": EventTime is 36%d%d%.%d s old %(max_age 300%)", "logged, quoted")
  -- Inside the window (default max_age 300 s, max_skew 60 s) events are taken, and an accepted
  -- event's dedupe entry lives max_age + max_skew = 360 s.
  emu.join(APP, "room1", "mallory")
  local recent = event_fields("mallory", { EventTime = iso_time(-290) })
  T.eq(post_callback(ng, recent), 200, "290 s old")
  local soon = event_fields("mallory", { EventTime = iso_time(50) })
  T.eq(post_callback(ng, soon), 200, "50 s ahead")
  local ttl = callback_stats(ng, soon.EventId).ttl
  T.ok(ttl > 355 and ttl <= 360, "dedupe entry for 360 s, " .. tostring(ttl) .. " left")
  T.eq(#kicks_after(2), 2, "both acted on")
end)

T.case("callback: one count per answer, in the shared dict all workers count into", function()
  emu.reset()
  emu.join(APP, "room1", "mallory")
  local before = callback_stats(ng)
  local fields = event_fields("mallory")
  for _, want in ipairs { 200, 200, 200 } do T.eq(post_callback(ng, fields), want, "delivery") end -- 1 + 2 duplicates
  T.eq(post_callback(ng, event_fields("bob"), "not-the-secret"), 401, "bad signature")
  T.eq(post_callback(ng, event_fields("bob", { EventTime = iso_time(-400) })), 403, "stale")
  T.eq(post_callback(ng, event_fields("bob", { EventTime = "yesterday" })), 400, "signed, unparsable EventTime")
  T.eq(T.http("POST", ng.url .. "/callback", "{not json"), 400, "not JSON")
  T.eq(T.http("GET", ng.url .. "/callback"), 405, "GET")
  local after = callback_stats(ng)
  local delta, total = {}, 0
  for _, status in ipairs(callback.STATUSES) do
    delta[status] = after[status] - before[status]
    total = total + delta[status]
  end
  T.same(delta, { accepted = 1, duplicate = 2, bad_signature = 1, stale = 1, malformed = 3, error = 0 }, "counted")
  T.eq(total, 8, "one count per request")
  T.eq(#kicks_after(1), 1, "one KickUser")
end)

T.case("callback: every answer is a JSON object with sorted keys", function()
  emu.reset()
  local fields = event_fields("carol")
  local function answer(status, message)
    return status, '{"message":"' .. message .. '","ok":' .. tostring(status == 200) .. '}\n'
  end
  for _, c in ipairs {
    { { post_callback(ng, fields) }, answer(200, "accepted") },
    { { post_callback(ng, fields) }, answer(200, "duplicate") },
    { { post_callback(ng, event_fields("carol"), "not-the-secret") }, answer(401, "bad signature") },
    { { post_callback(ng, event_fields("carol", { EventTime = iso_time(-3600) })) },
      answer(403, "EventTime outside the accepted window") },
    { { T.http("POST", ng.url .. "/callback", "{not json") }, answer(400, "body is not a JSON object") },
    { { T.http("GET", ng.url .. "/callback") }, answer(405, "POST only") },
  } do
    local got, want_status, want_text = c[1], c[2], c[3]
    T.eq(got[1], want_status, "status")
    T.eq(got[2], want_text, "answer")
  end
end)

T.case("callback: request text in the error log is quoted, so a newline in EventId forges no line", function()
  emu.reset()
  emu.join(APP, "room1", "mallory")
  local forged = '2026/01/01 00:00:00 [notice] 1#1: *1 rtcadmin audit {"action":"ban","room_id":"room1"}'
  local unsigned = event_fields("alice", { EventId = "evt-forged\n" .. forged })
  T.eq(post_callback(ng, unsigned, "not-the-secret"), 401, "bad signature")
  -- A signature says RTC sent the text, not that it is fit for a log line: signed, it is quoted too.
  local signed = event_fields("mallory", { EventType = "UserJoinRoom\r\n" .. forged })
  signed.EventId = signed.EventId .. "\n" .. forged
  T.eq(post_callback(ng, signed), 200, "signed and accepted")
  local long = event_fields("alice", { EventId = ("L"):rep(5000) .. "\n" .. forged })
  T.eq(post_callback(ng, long, "not-the-secret"), 401, "long, bad signature")
  T.eq(#kicks_after(1), 1, "the signed event was acted on") -- and its on_event line is in the log
  local log = ng.log()
  local lines = 0
  for line in log:gmatch("[^\n]+") do
    lines = lines + 1
    T.ok(not line:find("^2026/01/01 00:00:00"), "a forged line: " .. line)
    T.ok(not line:find('rtcadmin audit {"', 1, true), "an unescaped audit record: " .. line)
    T.ok(not line:find("[%z\1-\31\127-\255]"), "a raw control or high byte: " .. line)
  end
  T.ok(lines > 10, "the log has lines")
  T.no_match(log, CB_SECRET, "the callback secret")
  local quote = require("rtcadmin.logtext").quote
  for _, want in ipairs {
    "rtcadmin.callback: rejected event " .. quote(unsigned.EventId) .. ": signature does not match",
    "rtcadmin.callback: accepted event " .. quote(signed.EventId) .. " " .. quote(signed.EventType),
    "test on_event " .. quote(signed.EventId) .. " kicked",
    "rtcadmin.callback: rejected event " .. quote(long.EventId),
  } do
    T.ok(log:find(want, 1, true), "the log has " .. want)
  end
  T.match(log, 'rejected event "' .. ("L"):rep(128) .. '"%.%.%.%(' .. #long.EventId .. ' bytes%): signature does not',
    "the long id is cut after 128 bytes, its length given")
end)

T.case("non-blocking: with 1 s API latency and one worker, another request is answered in < 100 ms", function()
  emu.reset()
  emu.config { latency_ms = 1000 }
  local one = start_nginx(1)
  local kick = assert(io.popen("curl -s -o /dev/null -w '%{http_code} %{time_total}' -X POST " ..
    "-H " .. T.shell_quote("Authorization: Bearer " .. TOKEN) .. " --data-binary " ..
    T.shell_quote(cjson.encode { app_id = APP, room_id = "room1", user_id = "alice" }) .. " " ..
    T.shell_quote(one.url .. "/admin/kick")))
  T.sleep(0.3) -- the kick is now waiting on the emulator
  local status, text, took = T.http("GET", one.url .. "/ping")
  local kick_out = kick:read("*a")
  kick:close()
  one.stop()
  emu.reset()
  T.eq(status, 200, "ping status")
  T.eq(text, "pong\n", "ping body")
  T.ok(took < 0.1, string.format("ping answered in %.3f s while the kick was in flight", took))
  local kstatus, ktook = kick_out:match("^(%d+) ([%d%.]+)$")
  print(string.format("    ping answered in %.3f s while the kick took %s s", took, tostring(ktook)))
  T.eq(kstatus, "200", "kick status")
  T.ok(tonumber(ktook) >= 1.0, "the kick did wait for the emulator (" .. ktook .. " s)")
end)

T.case("four workers hammering kicks stay within 60/s at the emulator and reach >= 90% of it", function()
  emu.reset()
  local four = start_nginx(4, "app.hammer(60)")
  local info
  for _ = 1, 100 do
    local _, text = T.http("GET", four.url .. "/info")
    info = cjson.decode(text)
    if info.hammer_done == 4 then break end
    T.sleep(0.2)
  end
  local log = four.log()
  four.stop()
  for line in log:gmatch("[^\n]*%[warn%][^\n]*") do print("    " .. line) end -- throttles, if any
  T.eq(info.hammer_done, 4, "all four workers finished")
  local reqs = api_requests("KickUser")
  T.eq(#reqs, 240, "requests at the emulator")
  local pids, npids = {}, 0
  for pid in log:gmatch("(%d+)#%d+: [^\n]-rtcadmin: KickUser ok") do
    if not pids[pid] then pids[pid], npids = true, npids + 1 end
  end
  T.eq(npids, 4, "worker processes that kicked")
  for _, r in ipairs(reqs) do T.eq(r.code, cjson.null, "no throttle") end
  local worst = T.max_in_any_second(reqs)
  T.ok(worst <= 60, "at most 60 in any second, got " .. worst)
  local rate = (#reqs - 1) / (reqs[#reqs].t - reqs[1].t)
  print(string.format("    4 workers: 240 kicks, at most %d in any second, %.1f/s overall", worst, rate))
  T.ok(rate >= 54, string.format("aggregate rate %.1f/s >= 54/s", rate))
end)

T.case("a rule with a backtracking pattern gets hostile signed chat: the worker keeps answering", function()
  -- One worker, so /ping and the engine share it. Before rtcadmin's own matcher, string.find ran
  -- for minutes in C on this text and froze the worker (it then ignored SIGQUIT).
  local rules = [==[
rule "spam-pattern" { on = "chat", action = kick, cooldown = 0, when = function(ev)
  return ev.data.Text:find("(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*(.-)%s*x$") ~= nil end }
rule "link" { on = "chat", action = kick, when = function(ev) return ev.data.Text:find("http://", 1, true) ~= nil end }
]==]
  local app = string.format([[
local quote = require("rtcadmin.logtext").quote
local M = {}
local engine
function M.init_worker()
  local client = require("rtcadmin").client { access_key = %q, secret_key = %q, endpoint = %q, limiter = "none" }
  engine = require("rtcadmin.policy").new { client = client, now = ngx.now,
    on_error = function(r) ngx.log(ngx.ERR, "rule error ", quote(r.error, 300)) end }
  assert(engine:load_source(%q, "chat_rules.lua"))
end
M.callback = require("rtcadmin.callback").handler { secret = %q, dict = "rtcadmin_events",
  on_event = function(ev) engine:process(ev) engine:flush() end }
return M
]], T.AK, T.SK, emu.url, rules, CB_SECRET)
  local ng1 = T.nginx {
    workers = 1,
    lua_files = { ["chatapp.lua"] = app },
    http = [[
  lua_shared_dict rtcadmin_events 1m;
  init_worker_by_lua_block { require("chatapp").init_worker() }
  server {
    listen 127.0.0.1:PORT;
    location = /callback { content_by_lua_block { require("chatapp").callback() } }
    location = /ping { content_by_lua_block { ngx.say("pong") } }
  }
]],
  }
  local function chat(user, text)
    local f = event_fields(user, { EventType = "chat", EventData = cjson.encode { RoomId = "room1", UserId = user,
      Text = text } })
    f.Signature = callback.signature(f, CB_SECRET)
    return T.http("POST", ng1.url .. "/callback", cjson.encode(f), { "Content-Type: application/json" })
  end
  local kicks_before = #api_requests("KickUser")
  local hostile = ("a "):rep(3000)
  for i = 1, 5 do T.eq(chat("raider" .. i, hostile), 200, "hostile callback " .. i .. " accepted") end
  local worst = 0
  for _ = 1, 20 do -- during (the five events' conditions run in the worker's timers) and after
    local status, body, took = T.http("GET", ng1.url .. "/ping")
    T.eq(status, 200, "ping answered")
    T.eq(body, "pong\n", "ping body")
    if took > worst then worst = took end
  end
  T.ok(worst < 0.1, ("/ping answered within 100 ms (worst %.3f s)"):format(worst))
  T.eq(chat("linker", "see http://spam.example"), 200, "a plain chat after them")
  local deadline = T.now() + 10
  while #api_requests("KickUser") == kicks_before and T.now() < deadline do T.sleep(0.05) end
  T.sleep(0.3)
  T.eq(#api_requests("KickUser") - kicks_before, 1, "the next event was decided and acted on: one KickUser")
  local log = ng1.log()
  local _, errors = log:gsub("rule error \"chat_rules%.lua:2: instruction budget exceeded", "")
  -- (The pattern is catastrophic on the plain chat too: that one's error is logged as well, and the
  -- other rule still acts on it.)
  T.eq(errors, 6, "the worker logged each event's rule error with file:line")
  ng1.stop()
end)

-- The commands in examples/nginx/nginx.conf's header: lines "#   cmd", continued by more deeply
-- indented lines after a trailing \ or |.
local function header_commands(conf)
  local cmds = {}
  for line in conf:gmatch("([^\n]*)\n") do
    if not line:find("^#") then break end
    local cont, cmd = line:match("^#    +(%S.*)$"), line:match("^#   (%S.*)$")
    local last = cmds[#cmds]
    if cont and last and (last:find("\\$") or last:find("|$")) then
      cmds[#cmds] = last .. "\n" .. cont
    elseif cmd then
      cmds[#cmds + 1] = cmd
    end
  end
  return cmds
end

-- s with every occurrence of the text `from` replaced by `to`; the number of replacements.
local function replace(s, from, to) return s:gsub(T.literal(from), (to:gsub("%%", "%%%%"))) end

T.case("the example (examples/nginx) runs as its header says: admin answers, signed callbacks, rules act", function()
  emu.reset()
  local src = T.source_dir
  local conf = assert(T.read_file(src .. "/examples/nginx/nginx.conf"))
  local cmds = header_commands(conf)
  local function find(prefix)
    for _, c in ipairs(cmds) do if c:sub(1, #prefix) == prefix then return c end end
    error("the header has no command starting with " .. prefix .. ":\n" .. table.concat(cmds, "\n"))
  end
  local function sh(cmd) -- runs cmd from the repository root: output, exit status
    local p = assert(io.popen(T.plain_env .. "sh -c " .. T.shell_quote("cd " .. T.shell_quote(src) .. " && " ..
      cmd) .. " 2>&1"))
    local out = p:read("*a")
    local ok = p:close()
    return out, ok
  end
  -- The build and packages lines name a real target and script (ctest has built it already).
  T.ok(find("./scripts/bootstrap"), "bootstrap line")
  local build = find("make luajit")
  local out, ok = sh("make -n luajit")
  T.ok(ok, "`make luajit` is a target: " .. out)
  T.match(out, "build/lua%-luajit %-DRTCADMIN_LUA=luajit", "it builds build/lua-luajit for LuaJIT")
  T.match(conf, 'lua_package_cpath "build/lua%-luajit/%?%.so;;";', "nginx loads what " .. build .. " builds")
  T.match(find("python3 emulator/rtc_emulator.py"), "%-%-port 8080 &$", "the emulator line")

  -- What the header lets a user change: the ports (listen, the URLs, the emulator's), the prefix,
  -- where the LuaJIT build is (lua_package_cpath) and so where the file is.
  local port = T.free_ports(1)
  local prefix, confdir = T.tmpdir(), T.tmpdir()
  os.execute("rmdir " .. T.shell_quote(prefix)) -- the header's mkdir makes it
  local function subst(cmd)
    cmd = replace(cmd, "/tmp/rtcadmin-nginx", prefix)
    cmd = replace(cmd, "127.0.0.1:8088", "127.0.0.1:" .. port)
    cmd = replace(cmd, "http://127.0.0.1:8080", emu.url)
    return (replace(cmd, '"$PWD/examples/nginx/nginx.conf"', T.shell_quote(confdir .. "/nginx.conf")))
  end
  local edited, n = replace(conf, "listen 127.0.0.1:8088;", "listen 127.0.0.1:" .. port .. ";")
  T.eq(n, 1, "one listen line")
  local cpath = os.getenv("RTCADMIN_LUAJIT_CPATH")
  if cpath then
    edited, n = replace(edited, 'lua_package_cpath "build/lua-luajit/?.so;;";',
      'lua_package_cpath "' .. cpath .. ';;";')
    T.eq(n, 1, "one lua_package_cpath line")
  end
  T.write_file(confdir .. "/nginx.conf", edited)

  local env = {}
  for _, c in ipairs(cmds) do if c:find("^export ") then env[#env + 1] = subst(c) end end
  T.eq(#env, 3, "export lines")
  env = table.concat(env, "\n") .. "\n"
  local secrets = {} -- the values the header exports, none of which may reach the log
  for name, value in env:gmatch("([%w_]+)=(%S+)") do secrets[name] = value end
  local log_file = confdir .. "/nginx.out"
  -- nginx as the header starts it (in the background), stopped with this test process if it dies.
  local start = env .. subst(find("mkdir ")) .. "\n" .. subst(find("nginx ")) .. "\n" ..
    "n=$!; while kill -0 " .. T.pid() .. " 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 0.2; done; " ..
    "kill -QUIT $n 2>/dev/null; wait $n"
  local proc = assert(io.popen(T.plain_env .. "sh -c " .. T.shell_quote("cd " .. T.shell_quote(src) .. " && " ..
    start) .. " >" .. T.shell_quote(log_file) .. " 2>&1 &"))
  proc:close()
  local url = "http://127.0.0.1:" .. port
  local function log() return T.read_file(log_file) or "" end
  local up = false
  for _ = 1, 50 do
    if T.http("GET", url .. "/admin/online") == 401 then up = true break end -- (logs nothing)
    T.sleep(0.1)
  end
  T.ok(up, "nginx started:\n" .. log())

  -- The header's admin call: room1's people, the empty list as [].
  local online = subst(find("curl "))
  T.match(online, "/admin/online%?", "the header's curl is the online listing")
  out = sh(env .. online)
  T.match(out, '^{"attempts":1,"ok":true,"request_id":"%d+%x+","result":{"InvisibleUserList":%[%],' ..
    '"RoomExists":true,"TotalInvisibleUser":0,"TotalUser":3,"VisibleUserList":%["alice","bob","carol"%]}}\n$',
    "online answer")

  -- The header's signed callback, then a wave of joins: one worker sees more than 15 of them within
  -- 10 s, and rule join-wave (examples/rules/raid.lua) bans the newcomers past that.
  local signed = subst(find("luajit examples/nginx/sign_callback.lua"))
  T.match(signed, "UserJoinRoom " .. APP .. " room1 raid_01 |\ncurl %-s %-%-data%-binary @%- " .. T.literal(url) ..
    "/rtc/callback$", "the header's callback line")
  out = sh(env .. signed)
  T.eq(out, '{"message":"accepted","ok":true}\n', "the header's signed callback is accepted")
  local wave = {}
  for i = 2, 33 do
    local user = string.format("raid_%02d", i)
    emu.join(APP, "room1", user)
    wave[#wave + 1] = (replace(signed, "raid_01", user)) .. "; echo"
  end
  out = sh(env .. table.concat(wave, "\n"))
  local _, accepted = out:gsub('{"message":"accepted","ok":true}\n', "")
  T.eq(accepted, 32, "32 more joins accepted:\n" .. out)
  local bans
  for _ = 1, 50 do
    bans = api_requests("BanRoomUser")
    if #bans >= 2 then break end
    T.sleep(0.1)
  end
  T.sleep(0.5)
  bans = api_requests("BanRoomUser")
  T.ok(#bans >= 2, "join-wave banned newcomers: " .. #bans .. " BanRoomUser requests")
  local room = emu.room(APP, "room1")
  local records = {}
  for line in log():gmatch("[^\n]+") do
    local json = line:match("^%S+ %S+ %[%w+%] %d+#%d+: %*?%d* ?%[lua%] moderation%.lua:%d+: %w*%(%): " ..
      "rtcadmin audit ({.*})")
    if json then
      records[#records + 1] = cjson.decode(json)
      T.eq(json, require("rtcadmin").json_encode(records[#records]), "an audit record: sorted keys, written once")
    end
  end
  local banned = 0
  for _, r in ipairs(records) do
    T.eq(r.rule, "join-wave", "rule")
    T.eq(r.event_type, "join", "UserJoinRoom is a join by default")
    if r.outcome == "ok" then
      banned = banned + 1
      T.eq(r.action, "ban", "action")
      T.ok(room.banned_users[r.user_id], r.user_id .. " is banned at the emulator")
      T.ok(not T.contains(room.users, r.user_id), r.user_id .. " is out of the room")
    end
  end
  T.eq(banned, #bans, "an audit record with outcome ok for each ban")
  local text = log()
  for name, value in pairs(secrets) do
    if name ~= "VOLC_ACCESSKEY" and name ~= "RTCADMIN_ENDPOINT" then T.no_match(text, value, name .. " in the log") end
  end
  T.no_match(text, "[error]", "no error in the log")

  -- The header's way to stop it.
  local stop = subst(conf:match("Stop it with `([^`]+)`"))
  out, ok = sh(stop)
  T.ok(ok, "stopped: " .. out)
  for _ = 1, 50 do
    if not io.open(prefix .. "/logs/nginx.pid") then break end
    T.sleep(0.1)
  end
  T.eq(io.open(prefix .. "/logs/nginx.pid"), nil, "nginx is gone")
  os.execute("rm -rf " .. T.shell_quote(prefix) .. " " .. T.shell_quote(confdir))
end)

T.run(function()
  ng.stop()
  os.execute("rm -rf " .. T.shell_quote(CERTS))
  emu.stop()
end)
