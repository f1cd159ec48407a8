-- An authenticated moderation endpoint for nginx (a dashboard's backend): POST /kick, /ban, /unban,
-- /update_ban, /mute, /unmute with a JSON body of the method's fields, GET /online?app_id=&room_id=,
-- and GET /decisions?limit= (the engine's newest decisions, when given a source), each answered
-- with JSON (rtcadmin.json_encode: sorted keys, lists as arrays even when empty).
-- Requests carry `Authorization: Bearer <token>`.
local rtcadmin = require "rtcadmin"
local cjson = require "cjson.safe"
local quote = require("rtcadmin.logtext").quote

local M = {}

-- The fields of API results that are lists. lua-cjson decodes `[]` and `{}` alike into an empty
-- table, so an empty list is written back as `[]` only when it is marked (rtcadmin.json_array).
M.LIST_FIELDS = { "VisibleUserList", "InvisibleUserList" }

-- The result with its list fields marked as arrays. GetRoomOnlineUsers leaves the lists out when
-- RoomExists is false (an empty room): the online answer has them as [] then, so a dashboard always
-- finds both.
local function with_lists(route, res)
  if type(res) ~= "table" then return res end
  for _, k in ipairs(M.LIST_FIELDS) do
    local v = res[k]
    if v == nil and route == "online" then v = {} end
    if type(v) == "table" then res[k] = rtcadmin.json_array(v) end
  end
  return res
end

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

-- Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
function M.authorized(token)
  local auth = ngx.var.http_authorization or ""
  local given = auth:match("^[Bb]earer%s+(%S+)%s*$")
  return given ~= nil and rtcadmin.secure_equal(given, token)
end

-- opts: token (the bearer token), client (a client, or a function returning one, e.g. per worker),
-- decisions (optional: function(limit) -> the newest decisions, e.g. rtcadmin.host's, for
-- GET /decisions?limit=).
function M.handler(opts)
  if type(opts) ~= "table" or type(opts.token) ~= "string" or #opts.token < 16 then
    error("rtcadmin.admin.handler: opts.token must be a string of at least 16 characters", 2)
  end
  if opts.client == nil then error("rtcadmin.admin.handler: opts.client is required", 2) end
  if opts.decisions ~= nil and type(opts.decisions) ~= "function" then
    error("rtcadmin.admin.handler: opts.decisions must be a function(limit)", 2)
  end
  local decisions = opts.decisions
  local ngx = ngx
  local token, get_client = opts.token, opts.client
  if type(get_client) ~= "function" then
    local c = get_client
    get_client = function() return c end
  end

  local function reply(status, doc)
    -- A result the writer refuses (nesting deeper than 32, say) came from the API: a bad gateway.
    local ok, body = pcall(rtcadmin.json_encode, doc)
    if not ok then
      status, body = 502, rtcadmin.json_encode { ok = false, message = "the API's answer cannot be written as JSON: " ..
        tostring(body) }
    end
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(body)
    return ngx.exit(status)
  end

  return function()
    if not M.authorized(token) then
      ngx.header["WWW-Authenticate"] = 'Bearer realm="rtcadmin"'
      return reply(401, { ok = false, message = "missing or wrong bearer token" })
    end
    local route = ngx.var.uri:match("([%w_]+)/?$")
    if route == "decisions" and decisions then
      if ngx.req.get_method() ~= "GET" then return reply(405, { ok = false, message = "GET only" }) end
      return reply(200, { ok = true, decisions = rtcadmin.json_array(decisions(ngx.var.arg_limit)) })
    end
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
      -- kick_user takes its three arguments, not the table: the other fields go nowhere, so are dropped
      -- here (the other methods refuse fields they do not know).
      if route == "kick" then
        fields = { app_id = fields.app_id, room_id = fields.room_id, user_id = fields.user_id }
      end
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
    ngx.log(ngx.NOTICE, "rtcadmin.admin: ", route, " ", quote(rtcadmin.json_encode(fields), 512), " request_id=",
      tostring(meta.request_id))
    return reply(200, { ok = true, result = with_lists(route, res), request_id = meta.request_id,
                        attempts = meta.attempts })
  end
end

return M
