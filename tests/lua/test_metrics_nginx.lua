-- nginx's /metrics (rtcadmin.metrics, docs/metrics.md) in a real nginx against the emulator: the
-- workers' API counters add up in the shared dict to exactly what was done, through a reload too;
-- the example (examples/nginx) with its token, its callbacks and its host engine's decisions. Every
-- answer goes through the strict parser (tests/lua/promtext.lua). Runs on LuaJIT (nginx's Lua).
local T = require "testlib"
local promtext = require "promtext"
local cjson = require "cjson"

local emu = T.emulator()
local APP = T.APP
local q = T.shell_quote

-- GET url/metrics (with headers): parsed, or raises with what came.
local function scrape(url, headers)
  local status, body = T.http("GET", url .. "/metrics", nil, headers)
  if status ~= 200 then error("GET /metrics: " .. tostring(status) .. " " .. tostring(body), 2) end
  return promtext.parse(body), body
end

-- Scrapes until want(result) holds (at most `seconds`); returns the last result and text.
local function scrape_until(url, headers, want, seconds)
  local r, body
  local deadline = T.now() + (seconds or 10)
  repeat
    r, body = scrape(url, headers)
    if want(r) then break end
    T.sleep(0.1)
  until T.now() > deadline
  return r, body
end

-- Runs `n` GETs of url in parallel (8 at a time, each its own connection); returns the bodies.
local function parallel_get(urls)
  local list = T.tmpdir() .. "/urls"
  T.write_file(list, table.concat(urls, "\n") .. "\n")
  local p = assert(io.popen(T.plain_env .. "xargs -P 8 -I{} curl -s -S --max-time 30 {} <" .. q(list)))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local function ok_kicks(r)
  return r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }) or 0
end

T.case("4 workers: the aggregated counters equal the calls made, through a reload too", function()
  emu.reset()
  local app = string.format([[
local rtcadmin = require "rtcadmin"
local metrics = require "rtcadmin.metrics"
local M = {}
local client, worker, handler
function M.init_worker()
  client = rtcadmin.client { access_key = %q, secret_key = %q, endpoint = %q }
  worker = metrics.start_worker { dict = "rtcadmin_metrics", client = function() return client end, every = 0.2 }
end
function M.kick()
  local res, err = client:kick_user(ngx.var.arg_app, "room-n", ngx.var.arg_user)
  ngx.say(ngx.worker.pid(), " ", res and "ok" or err.code)
end
function M.metrics()
  handler = handler or metrics.handler { dict = "rtcadmin_metrics", worker = worker }
  return handler()
end
return M
]], T.AK, T.SK, emu.url)
  local ng = T.nginx {
    workers = 4,
    lua_files = { ["metricsapp.lua"] = app },
    http = [[
  lua_shared_dict rtcadmin_metrics 1m;
  init_by_lua_block { require "metricsapp" }
  init_worker_by_lua_block { require("metricsapp").init_worker() }
  server {
    listen 127.0.0.1:PORT;
    location = /kick { content_by_lua_block { require("metricsapp").kick() } }
    location = /metrics { content_by_lua_block { require("metricsapp").metrics() } }
  }
]],
  }
  local r = scrape(ng.url)
  T.eq(ok_kicks(r), 0, "nothing counted yet")
  T.eq(r:value("rtcadmin_build_info", { version = require("rtcadmin")._VERSION, lua = r.families.rtcadmin_build_info
    .samples[1].labels.lua }), 1, "build info")
  local urls = {}
  for i = 1, 40 do urls[i] = ng.url .. "/kick?app=" .. APP .. "&user=u" .. i end
  urls[41] = ng.url .. "/kick?app=000000000000000000000000&user=x1"
  urls[42] = ng.url .. "/kick?app=000000000000000000000000&user=x2"
  local pids, oks, refused = {}, 0, 0
  for _, line in ipairs(parallel_get(urls)) do
    local pid, outcome = line:match("^(%d+) (%S+)$")
    if pid then pids[pid] = true end
    if outcome == "ok" then oks = oks + 1 end
    if outcome == "InvalidParameter.NotExistAppId" then refused = refused + 1 end
  end
  T.eq(oks, 40, "40 kicks answered ok")
  T.eq(refused, 2, "2 refused")
  local workers = 0
  for _ in pairs(pids) do workers = workers + 1 end
  T.ok(workers >= 2, "served by several workers: " .. workers)
  r = scrape_until(ng.url, nil, function(x) return ok_kicks(x) >= 40 and x:value("rtcadmin_api_requests_total",
    { action = "KickUser", outcome = "InvalidParameter.NotExistAppId" }) == 2 end)
  T.eq(ok_kicks(r), 40, "KickUser ok over all workers")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "InvalidParameter.NotExistAppId" }), 2,
    "the refusals under their code")
  local attempts = emu.stats().requests
  T.eq(r:value("rtcadmin_api_request_duration_seconds_count", { action = "KickUser" }), attempts,
    "attempts = the requests the emulator saw")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "+Inf" }), attempts, "+Inf")
  T.eq(r:value("rtcadmin_api_retries_total", { action = "KickUser" }), 0, "no retries")
  T.sleep(0.5)
  T.eq(ok_kicks(scrape(ng.url)), 40, "and it stays at 40: nothing counted twice")

  -- A reload: the old workers publish what they have as they exit, the new ones start from 0; the
  -- total never goes back and counts nothing twice.
  os.execute("kill -HUP " .. assert(T.read_file(ng.prefix .. "/logs/nginx.pid")):match("%d+"))
  local seen = {}
  for _ = 1, 10 do
    seen[#seen + 1] = ok_kicks(scrape(ng.url))
    T.sleep(0.05)
  end
  for _, v in ipairs(seen) do T.eq(v, 40, "during the reload") end
  urls = {}
  for i = 1, 10 do urls[i] = ng.url .. "/kick?app=" .. APP .. "&user=v" .. i end
  parallel_get(urls)
  r = scrape_until(ng.url, nil, function(x) return ok_kicks(x) >= 50 end)
  T.eq(ok_kicks(r), 50, "40 + 10 after the reload")
  T.sleep(0.5)
  r = scrape(ng.url)
  T.eq(ok_kicks(r), 50, "still 50")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_count", { action = "KickUser" }), emu.stats().requests,
    "attempts after the reload")
  ng.stop()
end)

T.case("the example: /metrics behind its token, API calls, callbacks and the host engine's decisions", function()
  emu.reset()
  local metrics_token = "metrics-token-0123456789abcdef"
  local ng = T.example_nginx(emu, { RTCADMIN_METRICS_TOKEN = metrics_token })
  local auth = { "Authorization: Bearer " .. metrics_token }
  T.eq(T.http("GET", ng.url .. "/metrics"), 401, "no token")
  T.eq(T.http("GET", ng.url .. "/metrics", nil, { "Authorization: Bearer " .. ng.token }), 401,
    "another token (the admin's)")
  T.eq(T.http("POST", ng.url .. "/metrics", "", auth), 405, "POST")
  T.eq(T.http("GET", ng.url .. "/metrics", nil, auth), 200, "with the token")
  local p = assert(io.popen(T.plain_env .. "curl -s -o /dev/null -w '%{content_type}' -H " .. q(auth[1]) .. " " ..
    q(ng.url .. "/metrics")))
  local ctype = p:read("*a")
  p:close()
  T.eq(ctype, "text/plain; version=0.0.4; charset=utf-8", "the format's content type")

  -- 5 kicks and a refusal through the admin endpoint.
  local admin = { "Authorization: Bearer " .. ng.token }
  for i = 1, 5 do
    emu.join(APP, "lobby", "k" .. i)
    local s = T.http("POST", ng.url .. "/admin/kick",
      cjson.encode { app_id = APP, room_id = "lobby", user_id = "k" .. i }, admin)
    T.eq(s, 200, "kick " .. i)
  end
  local s, body = T.http("POST", ng.url .. "/admin/kick", cjson.encode { app_id = "000000000000000000000000",
    room_id = "lobby", user_id = "k1" }, admin)
  T.eq(s, 502, "refused")
  local code = cjson.decode(body).code

  -- Callbacks: 20 joins within 10 s (join-wave bans the five past the fifteenth), one sent twice, one
  -- with a bad signature.
  local first
  for i = 1, 20 do
    local cb = T.signed_callback(ng.secret, "UserJoinRoom", "raid-room", string.format("raider_%02d", i))
    first = first or cb
    T.eq(T.http("POST", ng.url .. "/rtc/callback", cb), 200, "callback " .. i)
  end
  T.eq(T.http("POST", ng.url .. "/rtc/callback", first), 200, "the duplicate")
  local forged = T.signed_callback("not-the-secret", "UserJoinRoom", "raid-room", "raider_99")
  T.eq(T.http("POST", ng.url .. "/rtc/callback", forged), 401, "the bad signature")

  local function bans(x, family, labels) return x:value(family, labels) or 0 end
  local r, text = scrape_until(ng.url, auth, function(x)
    return bans(x, "rtcadmin_policy_decisions_total", { rule = "join-wave", action = "ban", outcome = "ok" }) >= 5
      and bans(x, "rtcadmin_api_requests_total", { action = "BanRoomUser", outcome = "ok" }) >= 5 and ok_kicks(x) >= 5
  end, 15)
  T.eq(ok_kicks(r), 5, "5 kicks over the workers")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = code }), 1, "the refusal: " .. code)
  T.eq(r:value("rtcadmin_callbacks_total", { status = "accepted" }), 20, "accepted")
  T.eq(r:value("rtcadmin_callbacks_total", { status = "duplicate" }), 1, "duplicate")
  T.eq(r:value("rtcadmin_callbacks_total", { status = "bad_signature" }), 1, "bad signature")
  T.eq(r:value("rtcadmin_callbacks_total", { status = "stale" }), 0, "stale")
  T.eq(r:value("rtcadmin_policy_decisions_total", { rule = "join-wave", action = "ban", outcome = "ok" }), 5,
    "five bans decided and done")
  T.eq(r:sum("rtcadmin_policy_decisions_total"), 5, "no other decision")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "BanRoomUser", outcome = "ok" }), 5, "five BanRoomUser calls")
  T.eq(r:value("rtcadmin_policy_events_total", { outcome = "decided" }), 20, "20 joins reached the rules")
  T.eq(r:sum("rtcadmin_policy_events_total"), 20, "each event once")
  T.eq(r:value("rtcadmin_policy_rule_errors_total", { rule = "join-wave" }), 0, "no rule error")
  T.ok((r:value("rtcadmin_policy_state_keys") or 0) > 0, "the engine's records")
  local banned = 0
  for _ in pairs(emu.room(APP, "raid-room").banned_users) do banned = banned + 1 end
  T.eq(banned, 5, "the emulator has the five bans")
  T.no_match(text .. ng.log(), metrics_token, "the metrics token in no output")
  T.no_match(text, ng.token, "nor the admin token")
  T.no_match(text, "raider_", "no user id in a label")
  -- Prometheus' own checker (Debian's promtool) takes the page, lint included.
  local page = T.write_file(ng.prefix .. "/metrics.txt", text)
  local checked, status = T.capture("promtool check metrics < " .. q(page) .. " 2>&1")
  T.eq(status, 0, "promtool check metrics: " .. checked)
  ng.stop()
end)

T.case("the host engine's counters after its worker is killed: what it decides again is not counted twice", function()
  emu.reset()
  local secret, limits = "CallbackSecret-metrics", T.tmpdir()
  -- No checkpoint before the kill (save_every 60 s): the next holder decides every event again.
  local ng = T.host_nginx {
    emu = emu, secret = secret, rules = 'rule "kick-all" { on = "chat", action = kick, cooldown = 0 }\n',
    client = string.format("limiter = { backend = 'host', dir = %q }", limits),
    host = "save_every = 60, lease = 1",
  }
  local function post(user)
    return T.http("POST", ng.url .. "/callback", T.signed_callback(secret, "chat", "room1", user))
  end
  local function drained(other_than)
    local deadline = T.now() + 20
    while T.now() < deadline do
      local st = ng.status()
      if st.holder_pid and st.holder_pid ~= other_than and st.decided_seq == st.last_seq and st.last_seq > 0 then
        return st
      end
      T.sleep(0.05)
    end
  end
  for i = 1, 30 do T.eq(post(string.format("first_%02d", i)), 200, "callback " .. i) end
  local st = assert(drained(), "decided")
  T.sleep(0.3) -- the decisions' kicks done and counted
  local _, events, decisions = ng.counters()
  T.eq(events, 30, "30 events counted")
  T.eq(decisions, 30, "30 decisions counted")
  os.execute("kill -9 " .. st.holder_pid)
  T.ok(drained(st.holder_pid), "another worker took over and decided the queue again")
  for i = 1, 10 do T.eq(post(string.format("second_%02d", i)), 200, "callback after the kill " .. i) end
  st = assert(drained(st.holder_pid), "decided")
  T.sleep(0.3)
  local c
  c, events, decisions = ng.counters()
  T.eq(st.last_seq, 40, "40 events stored")
  T.eq(events, 40, "each event counted once")
  T.eq(c.policy.events.decided, 40, "decided")
  T.eq(decisions, 40, "each decision counted once")
  T.eq(c.policy.decisions["kick-all"].kick.ok, 40, "every kick ok")
  local again = 0
  for _ in ng.log():gmatch('"outcome":"recovered"') do again = again + 1 end
  T.ok(again >= 30, "the first 30 were decided again and found sent (audit): " .. again)
  local froms = {}
  for from in ng.log():gmatch("runs the engine from event (%d+)") do froms[#froms + 1] = from end
  T.same(froms, { "1", "1" }, "the new holder started from the first event")
  ng.stop()
  T.rmdir(limits)
end)

T.run(function() emu.stop() end)
