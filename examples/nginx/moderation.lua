-- The example's nginx application: one client per worker, the RTC callback receiver and the
-- dashboard's admin endpoint. Configuration comes from the environment (nginx passes only the
-- variables named by `env` directives in nginx.conf), read once in init_by_lua.
local rtcadmin = require "rtcadmin" -- loading does no I/O and makes no client

local M = {}
local conf = {}
local client

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
end

-- init_worker_by_lua: one client per worker; the host limiter (the default inside nginx) gives
-- all workers one QPS budget per access key and Action.
function M.init_worker()
  client = rtcadmin.client { access_key = conf.access_key, secret_key = conf.secret_key, endpoint = conf.endpoint,
                             timeout = 3 }
end

function M.client() return client end

-- What to do with a verified, deduplicated event. Replace with a policy engine; this default only
-- logs, and kicks users named in events of the types listed in RTCADMIN_KICK_ON (comma-separated).
function M.on_event(ev)
  ngx.log(ngx.NOTICE, "event ", ev.id, " ", ev.type, " room=", tostring(ev.room_id), " user=", tostring(ev.user_id))
  local kick_on = os.getenv("RTCADMIN_KICK_ON") or ""
  for t in kick_on:gmatch("[^,%s]+") do
    if t == ev.type and ev.room_id and ev.user_id then
      local ok, err = client:kick_user(ev.app_id, ev.room_id, ev.user_id)
      if not ok then ngx.log(ngx.ERR, "kick after event ", ev.id, " failed: ", tostring(err)) end
    end
  end
end

local handlers = {}
function M.callback()
  handlers.callback = handlers.callback or require("rtcadmin.callback").handler {
    secret = conf.callback_secret, dict = "rtcadmin_events", on_event = function(ev) return M.on_event(ev) end,
  }
  return handlers.callback()
end

function M.admin()
  handlers.admin = handlers.admin or require("rtcadmin.admin").handler { token = conf.admin_token, client = M.client }
  return handlers.admin()
end

return M
