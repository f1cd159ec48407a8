-- The moderation fleet over Redis Streams (docs/fleet.md): a durable event log in N stream keys,
-- sharded by room, that producers append to (`rtcadmin ingest`, the callback receiver's `queue`)
-- and engines read (`rtcadmin run --from`), each shard owned by one engine at a time through a lease.
--
-- Keys, all under one prefix (default "rtcadmin:fleet:"):
--   <prefix>shards        N, the number of shards (SET NX by the first producer or engine)
--   <prefix>s:<i>         shard i's stream (i = rtcadmin.shard(app_id, room_id, N)); one field "e",
--                         the event as JSON; consumer group "engines"
--   <prefix>lease:<i>     the engine (consumer name) that owns shard i, with an expiry (PX)
--   <prefix>engines       sorted set: engine name -> until when (ms) it is alive (its heartbeat)
--
-- The functions here take a connection with `call(cmd, ...)` and `pipeline(cmds)` (rtcadmin.redis
-- in plain Lua); inside nginx, M.queue_store talks RESP over cosockets (rtcadmin.resp).
local rtcadmin = require "rtcadmin"
local events = require "rtcadmin.events"
local cjson = require("cjson.safe").new()

local unpack = table.unpack or unpack -- luacheck: ignore 143

local M = {}

M.DEFAULT_PREFIX = "rtcadmin:fleet:"
M.DEFAULT_SHARDS = 16
M.MAX_SHARDS = 1024
M.GROUP = "engines"

local json_encode = rtcadmin.json_encode

-- A runtime failure as the module's errors are: {code, message, retryable} with a __tostring.
local Err = {}
Err.__tostring = function(e) return "fleet: " .. e.code .. ": " .. e.message end
local function fail(code, message, retryable)
  return setmetatable({ code = code, message = message, retryable = retryable == true }, Err)
end
M.error = fail

-- ---- events ----------------------------------------------------------------------------------

-- Why the log cannot take an event (nil when it can): the engine's own checks (rtcadmin.events),
-- and the ids every engine needs to decide about it (its shard is read from app_id and room_id).
function M.problem(ev)
  if type(ev) ~= "table" then return "event is not a table" end
  if type(ev.type) ~= "string" then return events.field_problem(ev, "type") end
  if ev.ts ~= nil then
    local why = events.ts_problem(ev.ts)
    if why then return why end
  end
  if ev.id ~= nil then
    local why = events.id_problem(ev.id)
    if why then return why end
  end
  if not (events.valid_app(ev.app_id) and events.valid_id(ev.room_id) and events.valid_id(ev.user_id)) then
    return events.ids_problem(ev)
  end
end

-- The JSON kept in the stream, and back (nil, reason for an entry that is not an event).
function M.encode(ev) return json_encode(ev) end

function M.decode(s)
  local ev = type(s) == "string" and cjson.decode(s)
  if type(ev) ~= "table" then return nil, "not a JSON object" end
  for k, v in pairs(ev) do if v == cjson.null then ev[k] = nil end end
  return ev
end

-- ---- the log ---------------------------------------------------------------------------------

local Log = {}
Log.__index = Log

local function check_prefix(prefix, fname)
  if prefix == nil then return M.DEFAULT_PREFIX end
  if type(prefix) ~= "string" or prefix == "" or #prefix > 200 then
    error("rtcadmin.fleet." .. fname .. ": prefix must be a string of 1-200 bytes", 3)
  end
  return prefix
end

local function check_shards(n, fname)
  if n ~= nil and (type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > M.MAX_SHARDS) then
    error("rtcadmin.fleet." .. fname .. ": shards must be a whole number from 1 to " .. M.MAX_SHARDS, 3)
  end
  return n
end

local function make_log(prefix, n)
  return setmetatable({ prefix = prefix, n = n, group = M.GROUP }, Log)
end

-- The number of shards the deployment uses: `wanted` (or the default) is stored if none is yet;
-- a stored number that differs from `wanted` given explicitly is an error (changing N is an offline
-- step: docs/fleet.md). Returns n, or nil, err.
local function agree_shards(call, prefix, wanted)
  local key = prefix .. "shards"
  local v, err = call("SET", key, wanted or M.DEFAULT_SHARDS, "NX")
  if v == nil and err then return nil, err end
  v, err = call("GET", key)
  if v == nil then return nil, err or fail("FleetConfig", key .. " vanished", true) end
  local n = tonumber(v)
  if not n or n % 1 ~= 0 or n < 1 or n > M.MAX_SHARDS then
    return nil, fail("FleetConfig", key .. " holds " .. string.format("%q", tostring(v):sub(1, 40))
      .. ", not a number of shards (1-" .. M.MAX_SHARDS .. ")")
  end
  if wanted and n ~= wanted then
    return nil, fail("FleetConfig", string.format("this fleet has %d shards (%s), not %d: changing it is an "
      .. "offline step (docs/fleet.md)", n, key, wanted))
  end
  return n
end

-- fleet.open(conn, {prefix =, shards =}) -> log, or nil, err: the log's keys, with the number of
-- shards agreed with Redis.
function M.open(conn, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("rtcadmin.fleet.open: options must be a table", 2) end
  local prefix = check_prefix(opts.prefix, "open")
  local wanted = check_shards(opts.shards, "open")
  local n, err = agree_shards(function(...) return conn:call(...) end, prefix, wanted)
  if not n then return nil, err end
  return make_log(prefix, n)
end

function Log:key(i) return self.prefix .. "s:" .. i end
function Log:lease_key(i) return self.prefix .. "lease:" .. i end
function Log:engines_key() return self.prefix .. "engines" end
function Log:shard_of(ev) return rtcadmin.shard(ev.app_id, ev.room_id or "", self.n) end

-- The XADD of one event (already checked); `json`, when given, is the event as JSON already (a
-- producer's input line: not encoded again).
function Log:xadd(ev, json)
  return { "XADD", self:key(self:shard_of(ev)), "*", "e", json or M.encode(ev) }
end

-- Appends events (already checked) in one pipeline, with their JSON texts when `jsons` is given:
-- the entry ids, or nil, err (then any of them may or may not have been added: a producer sends
-- them again, and engines drop the duplicates by event id).
function Log:append(conn, list, jsons)
  local cmds = {}
  for i, ev in ipairs(list) do cmds[i] = self:xadd(ev, jsons and jsons[i]) end
  local out, err = conn:pipeline(cmds)
  if not out then return nil, err end
  for i = 1, #out do
    if type(out[i]) ~= "string" then return nil, type(out[i]) == "table" and out[i] or fail("XADD", "no id") end
  end
  return out
end

-- Creates the consumer group on every shard (from the start of the stream: entries added before
-- any engine ran are read too). true, or nil, err.
function Log:ensure_groups(conn)
  local cmds = {}
  for i = 0, self.n - 1 do cmds[#cmds + 1] = { "XGROUP", "CREATE", self:key(i), self.group, "0", "MKSTREAM" } end
  local out, err = conn:pipeline(cmds)
  if not out then return nil, err end
  for _, v in ipairs(out) do
    if type(v) == "table" and v.code ~= "BUSYGROUP" then return nil, v end
  end
  return true
end

-- ---- the producer inside nginx ----------------------------------------------------------------

-- fleet.queue_store(url [, {prefix, shards, timeout, pool_size}]) -> store(ev): a store function for
-- rtcadmin.callback.handler that appends the event to its shard over a cosocket and returns true
-- only once Redis answered the XADD with an id (then the callback is answered 200); nil, err
-- otherwise (the handler answers 503 and logs it; RTC delivers again). The URL is read here: a
-- malformed one raises at configuration time.
function M.queue_store(url, opts)
  opts = opts or {}
  local u, uerr = rtcadmin.parse_redis_url(url)
  if not u then error("rtcadmin.fleet.queue_store: " .. uerr, 2) end
  local prefix = check_prefix(opts.prefix, "queue_store")
  local wanted = check_shards(opts.shards, "queue_store")
  local timeout = opts.timeout or 1
  if type(timeout) ~= "number" or not (timeout >= 0.001 and timeout <= 60) then
    error("rtcadmin.fleet.queue_store: timeout must be 0.001-60 seconds", 2)
  end
  local resp = require "rtcadmin.resp"
  local pool, pool_size = resp.pool_name(u), opts.pool_size or 16
  local log -- per worker, once the number of shards is known
  return function(ev)
    local ngx = rawget(_G, "ngx")
    local why = M.problem(ev)
    if why then return nil, "not an event the fleet can take: " .. why end
    local sock, err = resp.connect(ngx, u, pool, timeout)
    if not sock then return nil, "Redis at " .. u.where .. ": " .. tostring(err) end
    local function call(...)
      local v, e = resp.call(sock, ...)
      if v == nil then return nil, fail("RedisError", tostring(e)) end
      return v
    end
    if not log then
      local n, nerr = agree_shards(call, prefix, wanted)
      if not n then
        sock:close()
        return nil, "Redis at " .. u.where .. ": " .. tostring(nerr)
      end
      log = make_log(prefix, n)
    end
    local id, xerr = resp.call(sock, "XADD", log:key(log:shard_of(ev)), "*", "e", M.encode(ev))
    if type(id) ~= "string" then
      sock:close()
      return nil, "Redis at " .. u.where .. ": XADD: " .. tostring(xerr)
    end
    sock:setkeepalive(60000, pool_size)
    return true
  end
end

-- ---- engines ---------------------------------------------------------------------------------

-- Renews a lease only while it is still this engine's; releases it the same way.
local RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
  .. "return 0"
local RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

local UNREACHABLE = { ConnectionFailed = true, Timeout = true, LOADING = true }

local Worker = {}
Worker.__index = Worker

-- fleet.worker{conn, log, name, engine = function(shard) -> policy engine, after_batch =
-- function(engine, shard), lease = 3, batch = 512, block = 0.2, say = function(line)}: an engine
-- of the fleet. worker:step() does one round (leases when due, one read, the decisions, the acks);
-- worker:stop() releases its leases. One policy engine per owned shard, made when the shard is
-- taken: a shard's state can move alone.
function M.worker(o)
  if type(o) ~= "table" then error("rtcadmin.fleet.worker: expects a table", 2) end
  if type(o.engine) ~= "function" then error("rtcadmin.fleet.worker: engine must be a function(shard)", 2) end
  if type(o.name) ~= "string" or not o.name:find("^[%w@._:-]+$") or #o.name > 128 then
    error("rtcadmin.fleet.worker: name must be 1-128 of A-Z a-z 0-9 @ . _ : -", 2)
  end
  local lease = o.lease or 3
  if type(lease) ~= "number" or not (lease >= 0.3 and lease <= 600) then
    error("rtcadmin.fleet.worker: lease must be 0.3-600 seconds", 2)
  end
  return setmetatable({
    conn = o.conn, log = o.log, name = o.name, make_engine = o.engine, after_batch = o.after_batch,
    lease_ms = math.floor(lease * 1000), batch = o.batch or 512, block_ms = math.floor((o.block or 0.2) * 1000),
    say = o.say or function() end,
    owned = {},          -- shard -> {engine =, backlog = true | nil, cursor = id}
    engines = {},        -- every engine made, for the totals
    next_maintain = 0, acked = 0, read = 0, corrupt = 0, down = nil, last_entry = rtcadmin.time(),
  }, Worker)
end

function Worker:owned_list()
  local out = {}
  for s in pairs(self.owned) do out[#out + 1] = s end
  table.sort(out)
  return out
end

-- A failed call: true when it was Redis being unreachable (logged once; the caller waits), else
-- false (logged each time).
function Worker:trouble(err)
  if type(err) == "table" and UNREACHABLE[err.code] then
    if not self.down then
      self.down = rtcadmin.time()
      self.say(string.format("rtcadmin: Redis at %s unreachable (%s); waiting for it", self.conn:where(),
        tostring(err.message or err)))
    end
    return true
  end
  self.say("rtcadmin: fleet: " .. tostring(err))
  return false
end

-- Back after an outage: the entries delivered to this engine and not acknowledged (a batch cut
-- off by the outage) are read again first; the engine drops the event ids it has decided already.
function Worker:reachable()
  if self.down then
    self.say(string.format("rtcadmin: Redis at %s reachable again after %.1f s", self.conn:where(),
      rtcadmin.time() - self.down))
    self.down = nil
    for _, st in pairs(self.owned) do st.backlog, st.cursor = true, "0" end
  end
end

function Worker:drop(shard, why)
  self.owned[shard] = nil
  self.say(string.format("rtcadmin: %s gave up shard %d (%s)", self.name, shard, why))
end

-- Takes shard i when its lease is free: its pending entries (the previous owner's included) become
-- this engine's, read first, in order. true when taken.
function Worker:take(i)
  local log, conn = self.log, self.conn
  local ok, err = conn:call("SET", log:lease_key(i), self.name, "NX", "PX", self.lease_ms)
  if ok ~= "OK" then
    if err then return nil, err end
    return false -- (a nil reply: another engine holds it)
  end
  local cursor = "0-0"
  repeat
    local r, cerr = conn:call("XAUTOCLAIM", log:key(i), log.group, self.name, 0, cursor, "COUNT", 10000, "JUSTID")
    if not r then return nil, cerr end
    cursor = r[1]
  until cursor == "0-0"
  local engine = self.make_engine(i)
  self.engines[#self.engines + 1] = engine
  self.owned[i] = { engine = engine, backlog = true, cursor = "0" }
  self.say(string.format("rtcadmin: %s took shard %d", self.name, i))
  return true
end

-- Heartbeat, lease renewals, and the fair share: ceil(N / live engines) shards each.
function Worker:maintain()
  local log, conn = self.log, self.conn
  local now_ms = math.floor(rtcadmin.time() * 1000)
  local mine = self:owned_list()
  local cmds = {
    { "ZADD", log:engines_key(), now_ms + self.lease_ms, self.name },
    { "ZREMRANGEBYSCORE", log:engines_key(), "-inf", now_ms },
    { "ZCARD", log:engines_key() },
  }
  for _, s in ipairs(mine) do cmds[#cmds + 1] = { "EVAL", RENEW, 1, log:lease_key(s), self.name, self.lease_ms } end
  local out, err = conn:pipeline(cmds)
  if not out then return nil, err end
  for i, s in ipairs(mine) do
    local v = out[3 + i]
    if type(v) == "table" then return nil, v end
    if v ~= 1 then self:drop(s, "its lease had expired") end
  end
  local alive = math.max(1, tonumber(out[3]) or 1)
  local fair = math.ceil(log.n / alive)
  mine = self:owned_list()
  for k = #mine, fair + 1, -1 do -- more than its share: the last ones go to the newcomers
    local s = mine[k]
    local r, rerr = conn:call("EVAL", RELEASE, 1, log:lease_key(s), self.name)
    if r == nil then return nil, rerr end
    self:drop(s, "released for another engine")
  end
  local have = #self:owned_list()
  local start = rtcadmin.shard(self.name, "", log.n)
  for k = 0, log.n - 1 do
    if have >= fair then break end
    local s = (start + k) % log.n
    if not self.owned[s] then
      local took, terr = self:take(s)
      if took == nil then return nil, terr end
      if took then have = have + 1 end
    end
  end
  self.next_maintain = rtcadmin.time() + self.lease_ms / 3000
  return true
end

-- Decides one shard's entries ({id, {"e", json}} each), then acknowledges them.
function Worker:decide(shard, entries)
  local st = self.owned[shard]
  if not st or #entries == 0 then return true end
  local list, ids = {}, {}
  for _, en in ipairs(entries) do
    ids[#ids + 1] = en[1]
    local fields = en[2]
    local ev, why
    if type(fields) == "table" and fields[1] == "e" then ev, why = M.decode(fields[2]) else why = "no event" end
    if ev then list[#list + 1] = ev else
      self.corrupt = self.corrupt + 1
      self.say(string.format("rtcadmin: shard %d entry %s skipped: %s", shard, tostring(en[1]), why))
      st.engine:note_invalid()
    end
  end
  self.read = self.read + #entries
  st.engine:process_batch(list)
  if self.after_batch then self.after_batch(st.engine, shard) end
  local cmd = { "XACK", self.log:key(shard), self.log.group }
  for _, id in ipairs(ids) do cmd[#cmd + 1] = id end
  local n, err = self.conn:call(unpack(cmd))
  if n == nil then return nil, err end
  self.acked = self.acked + n
  self.last_entry = rtcadmin.time()
  return true
end

-- One round: leases when due, then the backlog of a shard just taken, or a blocking read of new
-- entries on every owned shard. true, or nil, err (then Redis was unreachable: the caller waits).
function Worker:step()
  local log, conn = self.log, self.conn
  if rtcadmin.time() >= self.next_maintain then
    local ok, err = self:maintain()
    if not ok then return nil, err end
  end
  for s, st in pairs(self.owned) do
    if st.backlog then
      local r, err = conn:call("XREADGROUP", "GROUP", log.group, self.name, "COUNT", self.batch, "STREAMS",
        log:key(s), st.cursor)
      if r == nil and err then return nil, err end
      local entries = r and r[1] and r[1][2] or {}
      if #entries == 0 then st.backlog = nil else
        st.cursor = entries[#entries][1]
        local ok, derr = self:decide(s, entries)
        if not ok then return nil, derr end
      end
      return true
    end
  end
  local mine = self:owned_list()
  if #mine == 0 then
    rtcadmin.sleep(self.block_ms / 1000)
    return true
  end
  local cmd = { "XREADGROUP", "GROUP", log.group, self.name, "COUNT", self.batch, "BLOCK", self.block_ms, "STREAMS" }
  for _, s in ipairs(mine) do cmd[#cmd + 1] = log:key(s) end
  for _ = 1, #mine do cmd[#cmd + 1] = ">" end
  local r, err = conn:call(unpack(cmd))
  if r == nil and err then
    if err.code == "NOGROUP" then -- a Redis that lost its data: the groups again (docs/fleet.md)
      local ok, gerr = log:ensure_groups(conn)
      if not ok then return nil, gerr end
      return true
    end
    return nil, err
  end
  local by_key = {}
  for _, s in ipairs(mine) do by_key[log:key(s)] = s end
  for _, stream in ipairs(r or {}) do
    local ok, derr = self:decide(by_key[stream[1]], stream[2])
    if not ok then return nil, derr end
  end
  return true
end

-- Releases every lease this engine holds and leaves the live set: its shards go to the others at
-- once, not after the lease expires.
function Worker:stop()
  local log = self.log
  local cmds = { { "ZREM", log:engines_key(), self.name } }
  for _, s in ipairs(self:owned_list()) do cmds[#cmds + 1] = { "EVAL", RELEASE, 1, log:lease_key(s), self.name } end
  self.owned = {}
  return self.conn:pipeline(cmds)
end

-- Runs rounds until should_stop() is true (checked between rounds: a batch is always finished),
-- or `idle` seconds passed without an entry (Redis unreachable or not); waits while Redis is
-- unreachable. Then stop().
function Worker:run(should_stop, idle)
  while not should_stop() do
    local ok, err = self:step()
    if ok then self:reachable() else
      if not self:trouble(err) then return nil, err end
      rtcadmin.sleep(0.5)
    end
    if idle and rtcadmin.time() - self.last_entry >= idle then break end
  end
  local ok, err = self:stop()
  if not ok then self:trouble(err) end
  return true
end

return M
