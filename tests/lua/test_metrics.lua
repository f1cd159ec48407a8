-- The operators' metrics (rtcadmin.metrics, docs/metrics.md) outside nginx: the strict parser of the
-- text format (tests/lua/promtext.lua) refusing what is not the format, the renderer's output
-- parsing and saying what the client and the engine counted, the dict publishing adding workers up,
-- and `rtcadmin run --metrics FILE` against the emulator. nginx's /metrics: test_metrics_nginx.lua.
local T = require "testlib"
local promtext = require "promtext"
local metrics = require "rtcadmin.metrics"
local policy = require "rtcadmin.policy"
local cjson = require "cjson"

local emu = T.emulator()
local APP = T.APP
local dir = T.tmpdir()
local q = T.shell_quote

local function raises(text, pattern, what)
  local ok, err = pcall(promtext.parse, text)
  T.ok(not ok, what .. ": refused")
  T.match(tostring(err), pattern, what .. ": the reason")
end

T.case("the parser refuses what is not the exposition format", function()
  local good = table.concat({
    "# HELP a_total Things, with a \\\\ and a \\n.",
    "# TYPE a_total counter",
    'a_total{x="1",y="q\\"\\\\\\n"} 3',
    "a_total 4 1700000000000",
    "# TYPE h histogram",
    'h_bucket{le="0.5"} 1', 'h_bucket{le="1"} 2', 'h_bucket{le="+Inf"} 2', "h_sum 0.75", "h_count 2",
    "# TYPE g gauge", "g -1.5e3", "",
  }, "\n")
  local r = promtext.parse(good)
  T.eq(r:value("a_total", { x = "1", y = 'q"\\\n' }), 3, "escapes read back")
  T.eq(r:value("a_total"), 4, "no labels, with a timestamp")
  T.eq(r.families.a_total.help, "Things, with a \\ and a \n.", "HELP escapes")
  T.eq(r:value("g"), -1500, "a gauge may go below 0")
  T.eq(r:sum("a_total"), 7, "sum")
  local function without_last_newline(s) return s:sub(1, -2) end
  local bad = {
    { without_last_newline(good), "newline", "no final newline" },
    { "a_total 1\n", "before its TYPE", "a sample without TYPE" },
    { "# TYPE a_total counter\n# TYPE a_total counter\n", "TYPE twice", "TYPE twice" },
    { "# TYPE a_total counter\na_total 1\n# HELP a_total late\n", "HELP after the samples", "HELP late" },
    { "# TYPE a counter\n# TYPE b counter\na 1\nb 1\na 2\n", "not together", "a family's lines apart" },
    { "# TYPE a counter\na 1\na 2\n", "series twice", "a duplicate series" },
    { '# TYPE a counter\na{x="1",x="2"} 1\n', "twice", "a label twice" },
    { '# TYPE a counter\na{x="1"} 1\na{x="1"} 2\n', "series twice", "duplicate with labels" },
    { '# TYPE a counter\na{x="\\t"} 1\n', "bad escape", "an escape the format lacks" },
    { '# TYPE a counter\na{x="1} 1\n', "not closed", "an unclosed label value" },
    { "# TYPE a counter\na{x=1} 1\n", "not quoted", "an unquoted label value" },
    { '# TYPE a counter\na{1x="1"} 1\n', "bad label name", "a bad label name" },
    { '# TYPE a counter\na{__x="1"} 1\n', "reserved", "a reserved label name" },
    { '# TYPE a counter\na{x="\255"} 1\n', "UTF%-8", "a label value that is not UTF-8" },
    { "# TYPE 1a counter\n", "bad metric name", "a bad metric name" },
    { "# TYPE a counter\na one\n", "bad value", "a value that is no number" },
    { "# TYPE a counter\na -1\n", "below 0", "a negative counter" },
    { "# TYPE a counter\na 1 x\n", "timestamp", "a bad timestamp" },
    { "# TYPE a counter\na  1\n", "value", "two spaces" },
    { "# TYPE a counter\n a 1\n", "white space", "leading white space" },
    { "# TYPE a counter\na 1 \n", "white space", "trailing white space" },
    { "# TYPE a widget\n", "bad type", "an unknown type" },
    { "# HELP a x\\t\n# TYPE a counter\n", "bad escape in HELP", "a bad HELP escape" },
    { '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="0.5"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      "ascending", "le descending" },
    { '# TYPE h histogram\nh_bucket{le="0.5"} 2\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
      "cumulative", "counts not cumulative" },
    { '# TYPE h histogram\nh_bucket{le="0.5"} 1\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', "%+Inf",
      "no +Inf bucket" },
    { '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', "_count differs", "+Inf != _count" },
    { '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 2\n', "no _sum", "no _sum" },
    { '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 2\n', "no _count", "no _count" },
    { '# TYPE h histogram\nh_bucket 2\nh_sum 2\nh_count 2\n', "without le", "a bucket without le" },
    { '# TYPE h histogram\nh 2\n', "before its TYPE", "a histogram's bare name" },
  }
  for _, b in ipairs(bad) do raises(b[1], b[2], b[3]) end
end)

-- Counters made by hand: the output parses, says them, and escapes what needs it.
T.case("the renderer: every family, escaped label values, consistent histograms", function()
  local odd = 'a "rule"\\ with\na newline'
  local t = {
    api = metrics.api_counters {
      KickUser = { sent = 5, succeeded = 3, failed = 2, failures = { ["InvalidParameter.NotExistAppId"] = 1,
        ["bad code\n"] = 1 }, retries = 1, throttled = 1, waited = 0.5, latency_sum = 0.25,
        buckets = { 1, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4 } },
    },
    callbacks = { accepted = 2, bad_signature = 1 },
    policy = metrics.policy_counters {
      events = 10, ignored = 1, duplicates = 2, allowed = 3, invalid = 1,
      by_outcome = { ["ban ok " .. odd] = 2, ["kick failed join-wave"] = 1, ["ban ok \255x"] = 1 },
      by_rule = { [odd] = 2, ["join-wave"] = 1 }, errors_by_rule = { ["join-wave"] = 4 },
    },
    state_keys = 7,
  }
  local text = metrics.render(t)
  local r = promtext.parse(text)
  local want = { "rtcadmin_api_requests_total", "rtcadmin_api_request_duration_seconds", "rtcadmin_api_retries_total",
    "rtcadmin_api_throttled_total", "rtcadmin_limiter_wait_seconds_total", "rtcadmin_callbacks_total",
    "rtcadmin_policy_events_total", "rtcadmin_policy_decisions_total", "rtcadmin_policy_rule_errors_total",
    "rtcadmin_policy_state_keys", "rtcadmin_fleet_entries_total", "rtcadmin_fleet_checkpoints_total",
    "rtcadmin_fleet_shards", "rtcadmin_build_info" }
  T.same(r.order, want, "the families, in order")
  for _, name in ipairs(want) do T.ok(r.families[name].help ~= "", name .. " has its HELP") end
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }), 3, "ok")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "InvalidParameter.NotExistAppId" }), 1,
    "an API code")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "other" }), 1,
    "a code that is no word is 'other'")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "0.005" }), 1, "le 0.005")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "10" }), 4, "le 10")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "+Inf" }), 5, "+Inf")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_sum", { action = "KickUser" }), 0.25, "sum")
  T.eq(r:value("rtcadmin_api_retries_total", { action = "KickUser" }), 1, "retries")
  T.eq(r:value("rtcadmin_api_throttled_total", { action = "KickUser" }), 1, "throttled")
  T.eq(r:value("rtcadmin_limiter_wait_seconds_total", { action = "KickUser" }), 0.5, "waited")
  T.eq(r:value("rtcadmin_callbacks_total", { status = "accepted" }), 2, "accepted")
  T.eq(r:value("rtcadmin_callbacks_total", { status = "stale" }), 0, "every status, 0 when never counted")
  T.eq(r:value("rtcadmin_policy_events_total", { outcome = "decided" }), 3, "decided = events - the rest")
  T.eq(r:sum("rtcadmin_policy_events_total"), 10, "each event once")
  T.eq(r:value("rtcadmin_policy_decisions_total", { rule = odd, action = "ban", outcome = "ok" }), 2,
    "a rule name with quotes, a backslash and a newline reads back")
  T.eq(r:value("rtcadmin_policy_decisions_total", { rule = "?x", action = "ban", outcome = "ok" }), 1,
    "a rule name that is not UTF-8: its bytes above 0x7F as ?")
  T.eq(r:value("rtcadmin_policy_rule_errors_total", { rule = "join-wave" }), 4, "rule errors")
  T.eq(r:value("rtcadmin_policy_rule_errors_total", { rule = odd }), 0, "every loaded rule, 0 without errors")
  T.eq(r:value("rtcadmin_policy_state_keys"), 7, "state keys")
  local info = r.families.rtcadmin_build_info.samples[1]
  T.eq(info.labels.version, require("rtcadmin")._VERSION, "build info: version")
  T.eq(info.labels.lua, rawget(_G, "jit") and jit.version or _VERSION, "build info: Lua")
  -- Nothing counted: the families are there, without samples, and it still parses.
  r = promtext.parse(metrics.render({}))
  T.eq(#r.order, #want, "every family without counters too")
  T.eq(#r.families.rtcadmin_api_requests_total.samples, 0, "no samples")
end)

-- A shared dict as far as the publisher uses one (incr with an initial value, get, get_keys).
local function fake_dict()
  local d = { data = {} }
  function d.incr(self, k, v, init)
    self.data[k] = (self.data[k] or init) + v
    return self.data[k]
  end
  function d.get(self, k) return self.data[k] end
  function d.get_keys(self)
    local keys = {}
    for k in pairs(self.data) do keys[#keys + 1] = k end
    return keys
  end
  return d
end

T.case("published counters add up over workers, and a new worker counts from 0", function()
  local names = { "a/b", "50%", "#1", "plain" }
  local t = { x = {} }
  for i, n in ipairs(names) do t.x[n] = i end
  T.same(metrics.unflatten(metrics.flatten(t)), t, "names with / % # come back")
  local dict = fake_dict()
  local w1, w2 = metrics.publisher(dict, "api/"), metrics.publisher(dict, "api/")
  local function api(ok, sent, b) return metrics.api_counters { KickUser = { succeeded = ok, sent = sent,
    buckets = { b, b, b, b, b, b, b, b, b, b, b }, latency_sum = 0.001 * sent } } end
  assert(w1:publish(api(2, 2, 2)))
  assert(w2:publish(api(3, 3, 3)))
  assert(w1:publish(api(5, 5, 5))) -- 3 more
  local r = promtext.parse(metrics.render({ api = metrics.read(dict, "api/") }))
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }), 8, "5 + 3")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_count", { action = "KickUser" }), 8, "count")
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "0.005" }), 8, "bucket")
  -- Worker 2 exits; its successor starts from 0 and adds to what is there.
  local w3 = metrics.publisher(dict, "api/")
  assert(w3:publish(api(1, 1, 1)))
  r = promtext.parse(metrics.render({ api = metrics.read(dict, "api/") }))
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }), 9, "never backwards")
  -- rebase: taken as published, nothing added.
  w3:rebase(api(100, 100, 100))
  assert(w3:publish(api(101, 101, 101)))
  r = promtext.parse(metrics.render({ api = metrics.read(dict, "api/") }))
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }), 10, "only the increment")
end)

T.case("a client's calls move the API families: outcomes, codes, retries, the histogram", function()
  emu.reset()
  for _, u in ipairs { "u1", "u2", "u3", "u4" } do emu.join(APP, "room-m", u) end
  local c = T.client(emu, { retry_base = 0.01 })
  for _, u in ipairs { "u1", "u2", "u3" } do assert(c:kick_user(APP, "room-m", u)) end
  emu.faults { { action = "KickUser", kind = "status500", count = 1 } }
  assert(c:kick_user(APP, "room-m", "u4")) -- retried once
  emu.faults { { action = "KickUser", kind = "latency:60", count = 1 } }
  assert(c:kick_user(APP, "room-m", "u4"))
  local res, err = c:kick_user("000000000000000000000000", "room-m", "u1")
  T.ok(not res, "an app the service does not know is refused")
  local r = promtext.parse(metrics.render(metrics.collect { clients = { c } }))
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = "ok" }), 5, "5 kicks ok")
  T.eq(r:value("rtcadmin_api_requests_total", { action = "KickUser", outcome = err.code }), 1, "the refusal's code")
  T.eq(r:value("rtcadmin_api_retries_total", { action = "KickUser" }), 1, "one retry")
  local count = r:value("rtcadmin_api_request_duration_seconds_count", { action = "KickUser" })
  T.eq(count, 7, "7 attempts")
  T.eq(count, c:stats().KickUser.sent, "the count is client:stats()'s sent")
  local fast = r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "0.05" })
  T.ok(fast <= 6, "the 60 ms attempt is above le=0.05: " .. fast)
  T.eq(r:value("rtcadmin_api_request_duration_seconds_bucket", { action = "KickUser", le = "10" }), 7, "all below 10 s")
  T.ok(r:value("rtcadmin_api_request_duration_seconds_sum", { action = "KickUser" }) >= 0.06, "the sum has the 60 ms")
  T.ok(r:value("rtcadmin_limiter_wait_seconds_total", { action = "KickUser" }) >= 0, "limiter wait")
  c:close()
end)

T.case("an engine's events, decisions by rule, action and outcome, and rule errors", function()
  local e = policy.new { dry_run = true }
  assert(e:load_source([[
rule "flood" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 60) > 2 end, action = kick,
               cooldown = 0 }
rule "broken" { on = "report", when = function(ev) return ev.nothing.here end, action = kick }
allow { users = { "mod" } }
]], "=rules"))
  local n = 0
  local function ev(typ, user, id)
    n = n + 1
    return { type = typ, app_id = APP, room_id = "r1", user_id = user, id = id or ("e" .. n), ts = 1000 + n }
  end
  for _ = 1, 4 do e:process(ev("chat", "spammer")) end -- decisions on the 3rd and 4th
  e:process(ev("report", "x"))                         -- a rule error
  e:process(ev("chat", "mod"))                          -- allowed
  e:process(ev("join", "y"))                            -- ignored
  e:process(ev("chat", "y", "e1"))                      -- duplicate
  e:process({ type = "chat" })                          -- invalid
  local st = e:stats()
  local r = promtext.parse(metrics.render(metrics.collect { engines = { e } }))
  T.eq(r:value("rtcadmin_policy_decisions_total", { rule = "flood", action = "kick", outcome = "dry_run" }), 2,
    "two dry-run kicks")
  T.eq(r:sum("rtcadmin_policy_decisions_total"), st.decisions, "every decision once")
  T.eq(r:value("rtcadmin_policy_rule_errors_total", { rule = "broken" }), 1, "the rule error")
  T.eq(r:value("rtcadmin_policy_rule_errors_total", { rule = "flood" }), 0, "no error")
  for outcome, want in pairs { decided = 5, allowed = 1, ignored = 1, duplicate = 1, invalid = 1 } do
    T.eq(r:value("rtcadmin_policy_events_total", { outcome = outcome }), want, "events " .. outcome)
  end
  T.eq(r:sum("rtcadmin_policy_events_total"), st.events, "every event once")
  T.eq(r:value("rtcadmin_policy_state_keys"), st.keys, "state keys")
  -- The counts travel with the engine's saved state.
  local e2 = policy.new { dry_run = true }
  assert(e2:load_source('rule "flood" { on = "chat", action = kick }\n' ..
    'rule "broken" { on = "report", action = kick }\n', "=rules"))
  assert(e2:restore(e:snapshot()))
  T.same(e2:stats().by_outcome, st.by_outcome, "by_outcome restored")
end)

local LUA = arg and arg[-1] or "lua5.4"
local BIN = T.source_dir .. "/bin/rtcadmin"

local function rtcadmin(args, env)
  local cmd = "cd " .. q(T.source_dir) .. " && VOLC_ACCESSKEY=" .. q(T.AK) .. " VOLC_SECRETKEY=" .. q(T.SK) ..
    " RTCADMIN_ENDPOINT=" .. q(emu.url) .. " RTCADMIN_BUILD=" .. q(T.module_dir()) .. " " .. (env or "") .. q(LUA) ..
    " " .. q(BIN) .. " " .. args .. " 2>" .. q(dir .. "/stderr")
  local p = assert(io.popen("(" .. cmd .. "); echo \"__exit=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code
  out = out:gsub("__exit=(%d+)\n$", function(c) code = tonumber(c) return "" end)
  local err = T.read_file(dir .. "/stderr") or ""
  T.no_match(out .. err, T.SK, "output")
  return code, out, err
end

T.case("docs/metrics.md: the example alert rules are valid rules for Prometheus (promtool)", function()
  local doc = assert(T.read_file(T.source_dir .. "/docs/metrics.md"))
  local yaml = doc:match("## Example alert rules\n\n```yaml\n(.-)```")
  T.ok(yaml and yaml:find("alert: RtcadminThrottled", 1, true), "the rules block")
  local rules = T.write_file(dir .. "/rules.yml", yaml)
  local out, code = T.capture("promtool check rules " .. q(rules) .. " 2>&1")
  T.eq(code, 0, out)
  T.match(out, "SUCCESS: 6 rules found")
  -- (and promtool fails a broken one, so the check means something)
  local broken = T.write_file(dir .. "/broken.yml", (yaml:gsub("rate%(rtcadmin_api_throttled_total%[5m%]%)",
    "rate(rtcadmin_api_throttled_total[5m]")))
  local _, bcode = T.capture("promtool check rules " .. q(broken) .. " 2>&1")
  T.ok(bcode ~= 0, "a broken expression is refused")
end)

T.case("rtcadmin run --metrics FILE: the file parses and says what the summary says", function()
  emu.reset()
  local file = dir .. "/rtcadmin.prom"
  local code, out, err = rtcadmin("run examples/rules examples/events/raid.jsonl --json --metrics " .. q(file))
  T.eq(code, 0, "exit status: " .. err)
  local lines = {}
  for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
  local summary = cjson.decode(lines[#lines])
  T.eq(summary.kind, "summary", "the summary")
  local r = promtext.parse(assert(T.read_file(file)))
  T.ok(summary.decisions > 0, "decisions were made")
  T.eq(r:sum("rtcadmin_policy_decisions_total"), summary.decisions, "decisions")
  T.eq(r:sum("rtcadmin_policy_decisions_total", { outcome = "ok" }), summary.actions.succeeded, "ok = succeeded")
  for rule, n in pairs(summary.by_rule) do
    T.eq(r:sum("rtcadmin_policy_decisions_total", { rule = rule }), n, "rule " .. rule)
  end
  for action, n in pairs(summary.by_action) do
    T.eq(r:sum("rtcadmin_policy_decisions_total", { action = action }), n, "action " .. action)
  end
  T.eq(r:sum("rtcadmin_policy_events_total"), summary.events, "events")
  T.eq(r:value("rtcadmin_policy_events_total", { outcome = "duplicate" }), summary.duplicates, "duplicates")
  T.eq(r:value("rtcadmin_policy_events_total", { outcome = "allowed" }), summary.allowed, "allowed")
  T.eq(r:sum("rtcadmin_api_requests_total", { outcome = "ok" }), summary.actions.succeeded, "API calls ok")
  local stats = emu.stats()
  T.eq(r:sum("rtcadmin_api_request_duration_seconds_count"), stats.requests, "attempts = what the emulator saw")
  T.ok(not io.open(file .. ".tmp"), "nothing left beside it")
  -- Prometheus' own checker (Debian's promtool) takes the file, lint included.
  local pout, pcode = T.capture("promtool check metrics < " .. q(file) .. " 2>&1")
  T.eq(pcode, 0, "promtool check metrics: " .. pout)
  -- Usage errors.
  local _
  code, _, err = rtcadmin("run examples/rules examples/events/raid.jsonl --dry-run --metrics-every 1")
  T.eq(code, 2, "--metrics-every without --metrics")
  T.match(err, "needs %-%-metrics", "says so")
  code, _, err = rtcadmin("run examples/rules examples/events/raid.jsonl --dry-run --metrics " .. q(file) ..
    " --metrics-every 0")
  T.eq(code, 2, "--metrics-every 0")
  T.match(err, "seconds > 0", "says so")
  code, _, err = rtcadmin("replay examples/rules examples/events/raid.jsonl --metrics " .. q(file))
  T.eq(code, 2, "replay has no --metrics")
  T.match(err, "not an option of replay", "says so")
end)

T.case("rtcadmin run --metrics writes the file every few seconds while the input is quiet", function()
  local file = dir .. "/live.prom"
  os.remove(file)
  local fifo = dir .. "/fifo"
  os.remove(fifo)
  os.execute("mkfifo " .. q(fifo))
  local cmd = "cd " .. q(T.source_dir) .. " && RTCADMIN_BUILD=" .. q(T.module_dir()) .. " timeout -s KILL 30 " ..
    q(LUA) .. " " .. q(BIN) .. " run examples/rules - --dry-run --json --metrics " .. q(file) ..
    " --metrics-every 0.2 <" .. q(fifo) .. " >/dev/null 2>&1"
  local p = assert(io.popen(cmd, "r"))
  local w = assert(io.open(fifo, "w"))
  local events = assert(T.read_file(T.source_dir .. "/examples/events/raid.jsonl"))
  local first, n = {}, 0
  for l in events:gmatch("[^\n]+") do
    n = n + 1
    if n <= 20 then first[#first + 1] = l end
  end
  w:write(table.concat(first, "\n"), "\n")
  w:flush()
  -- The input stays open and quiet: the file still follows the engine.
  local r
  for _ = 1, 50 do
    T.sleep(0.1)
    local text = T.read_file(file)
    r = text and promtext.parse(text)
    if r and r:sum("rtcadmin_policy_events_total") == 20 then break end
  end
  T.eq(r and r:sum("rtcadmin_policy_events_total"), 20, "the first 20 events, written while the input waits")
  local before = r:sum("rtcadmin_policy_decisions_total")
  w:close()
  p:read("*a")
  p:close()
  r = promtext.parse(assert(T.read_file(file)))
  T.eq(r:sum("rtcadmin_policy_events_total"), 20, "the last write at the end")
  T.eq(r:sum("rtcadmin_policy_decisions_total", { outcome = "dry_run" }), before, "dry-run decisions")
end)

T.run(function()
  emu.stop()
  T.rmdir(dir)
end)
