-- The example's nginx application: one client per worker, the RTC callback receiver feeding one
-- policy engine for the whole host (rtcadmin.host), and the dashboard's admin endpoint.
-- Configuration comes from the environment (nginx passes only the variables named by `env`
-- directives in nginx.conf), read once in init_by_lua.
local rtcadmin = require "rtcadmin" -- loading does no I/O and makes no client
local quote = require("rtcadmin.logtext").quote -- request text in a log line: escaped, capped
-- Loaded here, by the master process (init_by_lua): the workers inherit them, so they never read the
-- source tree (they may run as a user that cannot), and a broken installation fails at startup.
local policy = require "rtcadmin.policy"
local callback = require "rtcadmin.callback"
local admin = require "rtcadmin.admin"
local host = require "rtcadmin.host"
local metrics = require "rtcadmin.metrics"

local M = {}
local conf = {}
local client, moderation_host, metrics_worker

local function need(name)
  local v = os.getenv(name)
  if not v or v == "" then error("examples/nginx: set " .. name .. " (and list it in an `env` directive)", 0) end
  return v
end

-- init_by_lua: read the settings while the environment is visible.
function M.init()
  conf.endpoint = os.getenv("RTCADMIN_ENDPOINT") -- unset: the production endpoint
  conf.admin_token = need("RTCADMIN_ADMIN_TOKEN")
  conf.callback_secret = need("RTCADMIN_CALLBACK_SECRET")
  -- Optional: when set, GET /metrics needs `Authorization: Bearer $RTCADMIN_METRICS_TOKEN`.
  conf.metrics_token = os.getenv("RTCADMIN_METRICS_TOKEN")
  if conf.metrics_token == "" then conf.metrics_token = nil end
  -- Credentials: VOLC_ACCESSKEY / VOLC_SECRETKEY, read by rtcadmin.client itself.
  conf.access_key, conf.secret_key = need("VOLC_ACCESSKEY"), need("VOLC_SECRETKEY")
  -- Rule files, comma-separated (paths relative to the directory nginx starts in), read here by the
  -- master process: workers may run as a user that cannot read them.
  conf.rules = {}
  for path in (os.getenv("RTCADMIN_RULES") or "examples/rules/00-allow.lua,examples/rules/raid.lua"):gmatch("[^,]+") do
    local f = assert(io.open(path, "rb"))
    conf.rules[#conf.rules + 1] = { path = path, source = f:read("*a") }
    f:close()
  end
  conf.dry_run = os.getenv("RTCADMIN_DRY_RUN") == "1"
  -- RTC EventType -> the event type rules watch: rtcadmin.callback.EVENT_TYPES by default (a user's
  -- UserJoinRoom or InvisibleUserJoinRoom is a "join", UserLeaveRoom or InvisibleUserLeaveRoom a
  -- "leave"); RTCADMIN_EVENT_TYPES, when set, replaces it ("" maps nothing). Unmapped events keep
  -- their EventType, and rules may watch them by that name (on = "RoomCreate").
  local types = os.getenv("RTCADMIN_EVENT_TYPES")
  conf.event_types = types and callback.parse_event_types(types) or callback.EVENT_TYPES
  -- Where the engine's state also goes, so that it survives a stop of nginx (the shared dict
  -- survives reloads and crashed workers, not a stop).
  conf.state_file = os.getenv("RTCADMIN_STATE_FILE")
  if conf.state_file == "" then conf.state_file = nil end
  -- One engine for all workers (docs/nginx.md, "One engine per host"): made here, in the master,
  -- so every worker can take it over.
  moderation_host = host.new { dict = "rtcadmin_host", state_file = conf.state_file, engine = M.new_engine }
  -- The moderators' console (examples/console), read once here and served from memory.
  conf.console = {}
  for _, name in ipairs { "index.html", "console.js", "console.css" } do
    local f = assert(io.open("examples/console/" .. name, "rb"))
    conf.console[name] = f:read("*a")
    f:close()
  end
end

-- Audit records go to nginx's error log: decisions and successes at NOTICE, failures at WARN/ERR.
-- JSON keeps each record on one line (control characters are escaped), and whatever the receiver
-- logs of a request is quoted (rtcadmin.logtext), so it never starts a line: a record is a line where
-- `rtcadmin audit {` follows nginx's and the Lua module's prefixes (docs/nginx.md, "Request text in
-- the log"). rtcadmin.json_encode writes the keys sorted and a marked list as [] even when empty
-- (a decision's evidence is a list: empty when its rule asked the context nothing).
local function audit_to_log(record)
  local level = ngx.NOTICE
  if record.error then level = record.outcome == "retry" and ngx.WARN or ngx.ERR end
  if type(record.evidence) == "table" then rtcadmin.json_array(record.evidence) end
  ngx.log(level, "rtcadmin audit ", rtcadmin.json_encode(record))
  moderation_host:feed(record) -- the console's decision feed
end

-- The host's engine, made by the worker that takes it over: the rules, this worker's client, the
-- audit log and the host's send journal (so a decision made again after a crash is not sent twice).
function M.new_engine(journal)
  local engine = policy.new { client = client, audit = audit_to_log, dry_run = conf.dry_run, journal = journal,
                              now = function() return ngx.now() end }
  for _, file in ipairs(conf.rules) do
    local ok, errs = engine:load_source(file.source, "@" .. file.path)
    if not ok then error("examples/nginx: " .. table.concat(errs, "; "), 0) end
  end
  return engine
end

-- init_worker_by_lua: one client per worker; the host limiter (the default inside nginx) gives
-- all workers one QPS budget per access key and Action. Every worker stands by to run the host's
-- engine; one at a time does.
function M.init_worker()
  client = rtcadmin.client { access_key = conf.access_key, secret_key = conf.secret_key, endpoint = conf.endpoint,
                             timeout = 3 }
  -- Rule files are checked once here too, so that a broken rule stops nginx from starting.
  M.new_engine(nil)
  moderation_host:start()
  -- The worker's API counters go to the rtcadmin_metrics dict every second (and when it exits).
  metrics_worker = metrics.start_worker { dict = "rtcadmin_metrics", client = M.client }
end

function M.client() return client end
function M.host() return moderation_host end

-- The receiver's defaults: events whose signed EventTime is more than max_age = 300 s old or
-- max_skew = 60 s ahead of this host's clock are refused (403, counted "stale"): keep the clock in
-- NTP sync. EventIds are remembered for ttl = max_age + max_skew seconds (no less is allowed).
-- Outcome counters: callback.stats("rtcadmin_events") (docs/nginx.md).
local handlers = {}
function M.callback()
  handlers.callback = handlers.callback or callback.handler {
    secret = conf.callback_secret, dict = "rtcadmin_events", event_types = conf.event_types,
    -- The event is in the host's queue (a shared dict) before the 200: no worker's exit loses it.
    store = function(ev)
      ngx.log(ngx.INFO, "event ", quote(ev.id), " ", quote(ev.rtc_type), " room=", quote(ev.room_id), " user=",
        quote(ev.user_id))
      return moderation_host:store(ev)
    end,
  }
  return handlers.callback()
end

function M.admin()
  handlers.admin = handlers.admin or admin.handler { token = conf.admin_token, client = M.client,
    decisions = function(limit) return moderation_host:decisions(limit) end }
  return handlers.admin()
end

-- GET /metrics: every worker's API calls, the receiver's answers and the host engine's decisions,
-- in Prometheus' text format (docs/metrics.md).
function M.metrics()
  handlers.metrics = handlers.metrics or metrics.handler { dict = "rtcadmin_metrics", worker = metrics_worker,
    callbacks = "rtcadmin_events", host = moderation_host, token = conf.metrics_token }
  return handlers.metrics()
end

-- GET /console/...: the console's three files. It talks to /admin/ with the token the moderator
-- types in; the page itself holds no secret.
local CONSOLE_TYPES = { html = "text/html; charset=utf-8", js = "text/javascript; charset=utf-8",
                        css = "text/css; charset=utf-8" }
function M.console()
  local name = ngx.var.uri:match("^/console/(.*)$")
  if name == "" then name = "index.html" end
  local body = name and conf.console[name]
  if not body then return ngx.exit(404) end
  ngx.header["Content-Type"] = CONSOLE_TYPES[name:match("%.(%w+)$")]
  -- Only this origin's own files, no inline script, no framing.
  ngx.header["Content-Security-Policy"] =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
  ngx.header["X-Content-Type-Options"] = "nosniff"
  ngx.header["Cache-Control"] = "no-cache"
  ngx.print(body)
end

return M
