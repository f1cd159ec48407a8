-- The Redis limiter for OpenResty: the same GCRA script and the same schedule keys as the C backend
-- (src/limiter_redis.c), over cosockets (ngx.socket.tcp), so a worker never blocks on Redis.
-- One object per worker (make it in init_worker_by_lua* or on first use); connections come from the
-- cosocket keep-alive pool, authenticated and selected once each.
--
--   local lim = require("rtcadmin.redis_limiter").new { url = "redis://10.0.0.5:6379/0", password = ... }
--   local wait, err = lim:reserve(key_id, "KickUser", 60)   -- key_id: see below
--   if not wait then return nil, err end
--   ngx.sleep(wait)                                         -- then send
--
-- key_id is the access key's fingerprint as the C client writes it: the first 8 bytes of
-- SHA-256(access key), 16 lowercase hex digits (the signer computes SHA-256 anyway).
--
-- This file only talks to Redis (the RESP I/O is rtcadmin.resp's). The URL is read by
-- rtcadmin.parse_redis_url, and every decision - whether to ask Redis, which slot to use, falling
-- back to this host's table at fallback_share of each limit while Redis does not answer,
-- re-probing, coming back - is taken by rtcadmin.redis_fallback, the C decision the C backend uses
-- too (src/redis_fallback.c, docs/redis.md).
local rtcadmin = require "rtcadmin"
local gcra = require "rtcadmin.redis_gcra"
local resp = require "rtcadmin.resp"

local M = {}
local Limiter = {}
Limiter.__index = Limiter

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- opts[k] when it is a number in [min, max] (NaN and infinities are not), else raises at new's caller.
-- The bounds are the C backend's (src/client.c): a socket timeout under 1 ms would round to none.
local function bounded(opts, k, default, min, max, unit)
  local v = opts[k]
  if v == nil then return default end
  if type(v) ~= "number" or not (v >= min and v <= max) then
    error(("rtcadmin.redis_limiter.new: %s must be between %g and %g%s, got %s"):format(k, min, max, unit,
      tostring(v)), 3)
  end
  return v
end

function M.new(opts)
  assert(type(opts) == "table", "rtcadmin.redis_limiter.new: expects an options table")
  local timeout = bounded(opts, "timeout", 0.25, 0.001, 60, " seconds")
  local reprobe = bounded(opts, "reprobe", 1, 0.01, 3600, " seconds")
  local margin = bounded(opts, "margin", 0.01, 0, 1, "")
  local share = bounded(opts, "fallback_share", 0.5, 0.01, 1, "")
  local u, err = rtcadmin.parse_redis_url(opts.url)
  if not u then error("rtcadmin.redis_limiter.new: " .. err, 2) end
  if opts.password then
    assert(not u.password, "rtcadmin.redis_limiter.new: give the password in the url or in 'password', not both")
    u.password = opts.password
  end
  if opts.user then
    assert(not u.user, "rtcadmin.redis_limiter.new: give the user in the url or in 'user', not both")
    u.user = opts.user
  end
  assert(not u.user or u.password, "rtcadmin.redis_limiter.new: a Redis user needs a password")
  local fallback = opts.fallback or "host"
  assert(fallback == "host" or fallback == "error", 'rtcadmin.redis_limiter.new: fallback must be "host" or "error"')
  local ngx = opts.ngx or _G.ngx
  return setmetatable({
    url = u, prefix = opts.key_prefix or "rtcadmin:gcra:", margin = margin, ngx = ngx,
    pool = resp.pool_name(u), pool_size = opts.pool_size or 16,
    log = opts.log == nil and true or opts.log,
    sha = hex(ngx.sha1_bin(gcra.script)),
    decision = rtcadmin.redis_fallback { server = u.where, timeout = timeout, reprobe = reprobe,
      fallback_share = share, fallback = fallback, dir = opts.dir },
  }, Limiter)
end

function Limiter:now()
  self.ngx.update_time()
  return self.ngx.now()
end

local call = resp.call

-- Connection from the pool (AUTH, SELECT and PING only when new, as the C backend opens one); nil,
-- err, refused (refused: Redis answered the setup with an error).
function Limiter:connect(budget)
  return resp.connect(self.ngx, self.url, self.pool, budget)
end

-- One GCRA step in Redis: microseconds from the reply's arrival to the slot; or nil, err, refused.
-- The decision reads the clock when it is told (the reply's arrival: src/limiter_redis.c says why).
function Limiter:round_trip(key, interval_us, not_before_us, budget)
  local sock, err, refused = self:connect(budget)
  if not sock then return nil, err, refused end
  local v, e, reply_err = call(sock, "EVALSHA", self.sha, 1, key, interval_us, not_before_us)
  if v == nil and reply_err and e:find("^NOSCRIPT") then
    v, e, reply_err = call(sock, "EVAL", gcra.script, 1, key, interval_us, not_before_us)
  end
  if type(v) == "number" and v >= 0 then
    sock:setkeepalive(60000, self.pool_size)
    return v
  end
  if reply_err then sock:setkeepalive(60000, self.pool_size) else sock:close() end
  return nil, v == nil and tostring(e) or "unexpected reply to the GCRA script"
end

-- Seconds to wait before sending (the slot is taken), or nil, err. `deadline`: an absolute
-- ngx.now() time the caller will not wait past (optional).
function Limiter:reserve(key_id, action, qps, deadline)
  assert(type(key_id) == "string" and #key_id == 16 and key_id:find("^[0-9a-f]+$"),
    "rtcadmin.redis_limiter: key_id must be 16 lowercase hex digits")
  assert(type(action) == "string" and action ~= "", "rtcadmin.redis_limiter: action must be a string")
  assert(type(qps) == "number" and qps > 0, "rtcadmin.redis_limiter: qps must be > 0")
  local d = self.decision
  local turn, interval_us, not_before_us, budget = d:begin(key_id, action, (1 + self.margin) / qps,
    deadline and deadline - self:now())
  if type(turn) ~= "userdata" then return turn, interval_us end -- decided without Redis: wait, or nil, err
  local wait_us, err, refused = self:round_trip(self.prefix .. key_id .. ":" .. action, interval_us,
    not_before_us, budget)
  local wait, e, note
  if wait_us then
    wait, e, note = d:answered(turn, wait_us)
  else
    wait, e, note = d:failed(turn, err, refused)
  end
  if note and self.log then self.ngx.log(self.ngx.WARN, "rtcadmin: ", note) end
  return wait, e
end

-- {backend = "redis", active = "redis" | "host" | "none", server, fallbacks, recoveries, errors,
-- last_error}: the same fields as client:info().limiter_status.
function Limiter:status()
  return self.decision:status()
end

return M
