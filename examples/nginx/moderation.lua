-- The example's nginx application: one client per worker, the RTC callback receiver and the
-- dashboard's admin endpoint. Configuration comes from the environment (nginx passes only the
-- variables named by `env` directives in nginx.conf), read once in init_by_lua.
local rtcadmin = require "rtcadmin" -- loading does no I/O and makes no client
local quote = require("rtcadmin.logtext").quote -- request text in a log line: escaped, capped
-- Loaded here, by the master process (init_by_lua): the workers inherit them, so they never read the
-- source tree (they may run as a user that cannot), and a broken installation fails at startup.
local policy = require "rtcadmin.policy"
local callback = require "rtcadmin.callback"
local admin = require "rtcadmin.admin"

local M = {}
local conf = {}
local client, engine

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
  -- RTC EventType -> the event type rules watch (docs/callbacks.md lists RTC's). By default a visible
  -- user's UserJoinRoom is a "join" and UserLeaveRoom a "leave"; RTCADMIN_EVENT_TYPES, when set,
  -- replaces that mapping ("" maps nothing). Unmapped events keep their EventType, and rules may watch
  -- them by that name (on = "InvisibleUserJoinRoom").
  conf.event_types = {}
  for from, to in (os.getenv("RTCADMIN_EVENT_TYPES") or "UserJoinRoom=join,UserLeaveRoom=leave"):gmatch(
    "([^,=%s]+)=([^,=%s]+)") do
    conf.event_types[from] = to
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
end

-- init_worker_by_lua: one client per worker; the host limiter (the default inside nginx) gives
-- all workers one QPS budget per access key and Action.
-- The policy engine is per worker too (its counters see the events this worker receives; put a
-- sticky hash in front, or one worker, if rules must see every event of a room).
function M.init_worker()
  client = rtcadmin.client { access_key = conf.access_key, secret_key = conf.secret_key, endpoint = conf.endpoint,
                             timeout = 3 }
  engine = policy.new { client = client, audit = audit_to_log, dry_run = conf.dry_run,
                                            now = function() return ngx.now() end }
  for _, file in ipairs(conf.rules) do
    local ok, errs = engine:load_source(file.source, "@" .. file.path)
    if not ok then error("examples/nginx: " .. table.concat(errs, "; "), 0) end
  end
end

function M.client() return client end

-- A verified, deduplicated event, in an ngx.timer.at callback (the callback was already answered):
-- the rules decide, and the decisions go out through the client (cosockets, paced, retried).
function M.on_event(ev)
  ngx.log(ngx.INFO, "event ", quote(ev.id), " ", quote(ev.type), " room=", quote(ev.room_id), " user=",
    quote(ev.user_id))
  ev.type = conf.event_types[ev.type] or ev.type
  engine:process(ev)
  engine:flush()
end

-- The receiver's defaults: events whose signed EventTime is more than max_age = 300 s old or
-- max_skew = 60 s ahead of this host's clock are refused (403, counted "stale"): keep the clock in
-- NTP sync. EventIds are remembered for ttl = max_age + max_skew seconds (no less is allowed).
-- Outcome counters: callback.stats("rtcadmin_events") (docs/nginx.md).
local handlers = {}
function M.callback()
  handlers.callback = handlers.callback or callback.handler {
    secret = conf.callback_secret, dict = "rtcadmin_events", on_event = function(ev) return M.on_event(ev) end,
  }
  return handlers.callback()
end

function M.admin()
  handlers.admin = handlers.admin or admin.handler { token = conf.admin_token, client = M.client }
  return handlers.admin()
end

return M
