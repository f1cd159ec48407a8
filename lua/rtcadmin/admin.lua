-- An authenticated moderation endpoint for nginx (a dashboard's backend): POST /kick, /ban, /unban,
-- /update_ban, /mute, /unmute with a JSON body of the method's fields, GET /online?app_id=&room_id=,
-- each answered with JSON. Requests carry `Authorization: Bearer <token>`.
local rtcadmin = require "rtcadmin"
local cjson = require "cjson.safe"
local quote = require("rtcadmin.logtext").quote

local M = {}

-- route -> how to call the client with the request's fields
local ROUTES = {
  kick = function(c, b) return c:kick_user(b.app_id, b.room_id, b.user_id) end,
  ban = function(c, b) return c:ban_user(b) end,
  unban = function(c, b) return c:unban_user(b) end,
  update_ban = function(c, b) return c:update_ban(b) end,
  mute = function(c, b) return c:mute_user(b) end,
  unmute = function(c, b) return c:unmute_user(b) end,
  online = function(c, b) return c:online_users(b.app_id, b.room_id) end,
}
M.ROUTES = ROUTES

-- opts: token (the bearer token), client (a client, or a function returning one, e.g. per worker).
function M.handler(opts)
  if type(opts) ~= "table" or type(opts.token) ~= "string" or #opts.token < 16 then
    error("rtcadmin.admin.handler: opts.token must be a string of at least 16 characters", 2)
  end
  if opts.client == nil then error("rtcadmin.admin.handler: opts.client is required", 2) end
  local ngx = ngx
  local token, get_client = opts.token, opts.client
  if type(get_client) ~= "function" then
    local c = get_client
    get_client = function() return c end
  end

  local function reply(status, doc)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(doc))
    return ngx.exit(status)
  end

  return function()
    local auth = ngx.var.http_authorization or ""
    local given = auth:match("^[Bb]earer%s+(%S+)%s*$")
    if not given or not rtcadmin.secure_equal(given, token) then
      ngx.header["WWW-Authenticate"] = 'Bearer realm="rtcadmin"'
      return reply(401, { ok = false, message = "missing or wrong bearer token" })
    end
    local route = ngx.var.uri:match("([%w_]+)/?$")
    local call = route and ROUTES[route]
    if not call then return reply(404, { ok = false, message = "unknown action" }) end
    local fields
    if route == "online" then
      if ngx.req.get_method() ~= "GET" then return reply(405, { ok = false, message = "GET only" }) end
      -- Only the arguments the call reads: the others would reach nothing but the log.
      local args = ngx.req.get_uri_args()
      fields = { app_id = args.app_id, room_id = args.room_id }
    else
      if ngx.req.get_method() ~= "POST" then return reply(405, { ok = false, message = "POST only" }) end
      ngx.req.read_body()
      fields = cjson.decode(ngx.req.get_body_data() or "")
      if type(fields) ~= "table" then return reply(400, { ok = false, message = "body must be a JSON object" }) end
    end
    -- Bad input raises in the module before any traffic: that is the caller's 400.
    local ok, res, meta = pcall(call, get_client(), fields)
    if not ok then
      return reply(400, { ok = false, message = tostring(res):gsub("^[^:]*:%d+: ", "") })
    end
    if not res then
      local err = meta
      ngx.log(ngx.WARN, "rtcadmin.admin: ", route, " failed: ", tostring(err))
      return reply(err.http_status == 429 and 429 or 502, {
        ok = false, code = err.code, message = err.message, http_status = err.http_status,
        request_id = err.request_id, retryable = err.retryable,
      })
    end
    -- The fields the module accepted, as they came in: request text, so quoted.
    ngx.log(ngx.NOTICE, "rtcadmin.admin: ", route, " ", quote(cjson.encode(fields), 512), " request_id=",
      tostring(meta.request_id))
    return reply(200, { ok = true, result = res, request_id = meta.request_id, attempts = meta.attempts })
  end
end

return M
