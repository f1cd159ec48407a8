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
-- While Redis does not answer, each worker paces on its own at fallback_share / (number of workers)
-- of each limit (so the whole nginx instance stays within fallback_share of it), logs once, and tries
-- Redis again every `reprobe` seconds; the handover rules are those of docs/redis.md.
local gcra = require "rtcadmin.redis_gcra"

local unpack = table.unpack or unpack -- luacheck: ignore 143

local M = {}
local Limiter = {}
Limiter.__index = Limiter

local HANDOVER = 1.0 -- seconds: slots Redis handed out just before an outage are spent first

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- redis://[[user]:password@]host[:port][/db]; errors never quote the userinfo.
function M.parse_url(url)
  if type(url) ~= "string" then return nil, "url must be a string" end
  if url:find("^rediss://") then return nil, "rediss:// (TLS) is not supported; use a local TLS tunnel" end
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil, "url must start with redis://" end
  local u = { port = 6379, db = 0 }
  local userinfo, hostpart = rest:match("^(.*)@([^@]*)$")
  if userinfo then
    local user, pw = userinfo:match("^([^:]*):(.*)$")
    if user then
      u.user = user ~= "" and unescape(user) or nil
      u.password = unescape(pw)
    else
      u.password = unescape(userinfo)
    end
    rest = hostpart
  end
  local host, port, path = rest:match("^%[([^%]]+)%]:?(%d*)(.*)$")
  if not host then host, port, path = rest:match("^([^:/]+):?(%d*)(.*)$") end
  if not host then return nil, "url has no host" end
  u.host = host
  if port ~= "" then
    u.port = tonumber(port)
    if u.port < 1 or u.port > 65535 then return nil, "url: port must be 1-65535" end
  end
  if path ~= "" and path ~= "/" then
    local db = path:match("^/(%d+)$")
    if not db then return nil, "url: the path must be a database number" end
    u.db = tonumber(db)
  end
  u.where = (host:find(":") and ("[" .. host .. "]") or host) .. ":" .. u.port .. "/" .. u.db
  return u
end

local function command(...)
  local args = { ... }
  local out = { "*", #args, "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- One RESP reply: value, or nil, err, is_reply_error (an error *reply*: the connection is still good).
local function read_reply(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local kind, body = line:sub(1, 1), line:sub(2)
  if kind == "+" then return body end
  if kind == "-" then return nil, body, true end
  if kind == ":" then return tonumber(body) end
  if kind == "$" then
    local n = tonumber(body)
    if n < 0 then return false end
    local data, e = sock:receive(n + 2)
    if not data then return nil, e end
    return data:sub(1, n)
  end
  if kind == "*" then
    local n, list = tonumber(body), {}
    for i = 1, n do
      local v, e, reply_err = read_reply(sock)
      if v == nil then return nil, e, reply_err end
      list[i] = v
    end
    return list
  end
  return nil, "unexpected reply from Redis"
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
  local u = assert(M.parse_url(opts.url))
  if opts.password then
    assert(not u.password, "rtcadmin.redis_limiter.new: give the password in the url or in 'password', not both")
    u.password = opts.password
  end
  if opts.user then
    assert(not u.user, "rtcadmin.redis_limiter.new: give the user in the url or in 'user', not both")
    u.user = opts.user
  end
  assert(not u.user or u.password, "rtcadmin.redis_limiter.new: a Redis user needs a password")
  local fallback = opts.fallback or "worker"
  assert(fallback == "worker" or fallback == "error", "rtcadmin.redis_limiter.new: fallback must be worker or error")
  local share = opts.fallback_share or 0.5
  assert(share > 0 and share <= 1, "rtcadmin.redis_limiter.new: fallback_share must be in (0, 1]")
  local ngx = opts.ngx or _G.ngx
  local self = setmetatable({
    url = u, prefix = opts.key_prefix or "rtcadmin:gcra:", timeout = timeout,
    reprobe = reprobe, share = share, fallback_error = fallback == "error",
    margin = margin, workers = opts.workers or ngx.worker.count(), ngx = ngx,
    pool = "rtcadmin-redis:" .. u.where .. ":" .. (u.user or ""), pool_size = opts.pool_size or 16,
    log = opts.log == nil and true or opts.log,
    sha = hex(ngx.sha1_bin(gcra.script)),
    on_fallback = false, answered = false, next_probe = 0, fallback_from = 0, grace_until = 0, horizon = 0,
    local_tat = {}, fallbacks = 0, recoveries = 0, errors = 0,
  }, Limiter)
  return self
end

function Limiter:now()
  self.ngx.update_time()
  return self.ngx.now()
end

function Limiter:note(msg)
  if self.log then self.ngx.log(self.ngx.WARN, "rtcadmin: ", msg) end
end

-- Connection from the pool (AUTH/SELECT only when new); nil, err.
function Limiter:connect(budget)
  local sock = self.ngx.socket.tcp()
  sock:settimeout(math.max(1, math.floor(budget * 1000)))
  local ok, err = sock:connect(self.url.host, self.url.port, { pool = self.pool })
  if not ok then return nil, "cannot connect: " .. tostring(err) end
  if sock:getreusedtimes() == 0 then
    local setup = {}
    if self.url.password then
      setup[#setup + 1] = self.url.user and { "AUTH", self.url.user, self.url.password }
        or { "AUTH", self.url.password }
    end
    if self.url.db ~= 0 then setup[#setup + 1] = { "SELECT", self.url.db } end
    for _, cmd in ipairs(setup) do
      local sent, e = sock:send(command(unpack(cmd)))
      local v, e2, refused = nil, e, false
      if sent then v, e2, refused = read_reply(sock) end
      if v == nil then
        sock:close()
        return nil, refused and (cmd[1] .. " refused: " .. tostring(e2)) or tostring(e2), refused
      end
    end
  end
  return sock
end

-- One GCRA step in Redis: seconds from the reply's arrival to the slot, and that arrival time; or
-- nil, err, refused (refused: AUTH or SELECT said no, a configuration error). The anchor is the
-- reply's arrival, as in src/limiter_redis.c (which says why).
function Limiter:round_trip(key, interval, not_before, budget)
  local sock, err, refused = self:connect(budget)
  if not sock then return nil, err, refused end
  local us, nb = tostring(math.ceil(interval * 1e6)), tostring(math.ceil(not_before * 1e6))
  local v, e, reply_err
  local sent, se = sock:send(command("EVALSHA", self.sha, 1, key, us, nb))
  if sent then v, e, reply_err = read_reply(sock) else e = se end
  if v == nil and reply_err and e:find("^NOSCRIPT") then
    sent, se = sock:send(command("EVAL", gcra.script, 1, key, us, nb))
    if sent then v, e, reply_err = read_reply(sock) else e, reply_err = se, false end
  end
  local at = self:now()
  if type(v) == "number" and v >= 0 then
    sock:setkeepalive(60000, self.pool_size)
    return v / 1e6, at
  end
  if reply_err then sock:setkeepalive(60000, self.pool_size) else sock:close() end
  return nil, v == nil and tostring(e) or "unexpected reply to the GCRA script"
end

-- This worker's own schedule, for the fallback. (Redis slots are used as they are: coroutines whose
-- replies come back out of order would otherwise push an earlier slot late, onto another's.)
function Limiter:local_slot(key, step, from)
  local tat = self.local_tat[key] or 0
  local start = math.max(tat, from)
  self.local_tat[key] = start + step
  return start
end

-- Seconds to wait before sending (the slot is taken), or nil, err. `deadline`: an absolute
-- ngx.now() time the caller will not wait past (optional).
function Limiter:reserve(key_id, action, qps, deadline)
  assert(type(key_id) == "string" and key_id:find("^%x+$"), "rtcadmin.redis_limiter: key_id must be hex")
  assert(type(action) == "string" and action ~= "", "rtcadmin.redis_limiter: action must be a string")
  assert(type(qps) == "number" and qps > 0, "rtcadmin.redis_limiter: qps must be > 0")
  local key = self.prefix .. key_id .. ":" .. action
  local interval = (1 + self.margin) / qps
  local shared = interval * self.workers / self.share
  local now = self:now()
  if not self.on_fallback or now >= self.next_probe then
    local recovering = self.on_fallback
    local step = (recovering or now < self.grace_until) and shared or interval
    local budget = math.min(self.timeout, deadline and (deadline - now) or self.timeout)
    -- Back from the fallback: the slots it still has booked come first.
    local not_before = math.max(0, (self.local_tat[key] or 0) - now)
    local wait, at, refused = self:round_trip(key, step, not_before, math.max(budget, 0.001))
    if not wait and refused and not self.answered then
      -- Never worked: a wrong password, user or db is a configuration error, not an outage.
      return nil, "Redis limiter at " .. self.url.where .. ": " .. at
    end
    if wait then
      self.answered = true
      if recovering then
        self.on_fallback = false
        self.recoveries = self.recoveries + 1
        self.grace_until = at + self.reprobe + self.timeout
        self:note("Redis limiter at " .. self.url.where .. " answers again; pacing with Redis")
      end
      local slot = at + wait
      self.horizon = math.max(self.horizon, slot + step)
      return math.max(0, slot - self:now())
    end
    self.errors = self.errors + 1
    self.last_error = at
    now = self:now()
    self.next_probe = now + self.reprobe
    if not self.on_fallback then
      self.on_fallback = true
      self.fallbacks = self.fallbacks + 1
      self.fallback_from = math.max(self.horizon, now) + HANDOVER
      self:note("Redis limiter at " .. self.url.where .. ": " .. tostring(at) .. (self.fallback_error
        and "; reservations fail until Redis answers again"
        or string.format("; pacing in each worker at %g%% of each limit until Redis answers again",
          self.share / self.workers * 100)))
    end
  end
  if self.fallback_error then
    return nil, "Redis limiter at " .. self.url.where .. " is unavailable: " .. tostring(self.last_error)
  end
  return math.max(0, self:local_slot(key, shared, math.max(now, self.fallback_from)) - self:now())
end

function Limiter:status()
  return {
    backend = "redis", server = self.url.where,
    active = not self.on_fallback and "redis" or (self.fallback_error and "none" or "worker"),
    fallbacks = self.fallbacks, recoveries = self.recoveries, errors = self.errors, last_error = self.last_error,
  }
end

return M
