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
--
-- Per shard i, besides its stream and lease:
--   <prefix>epoch:<i>     how many times shard i was taken (INCR on each take): the owner's fencing
--                         token, checked with the lease by every checkpoint
--   <prefix>ckpt:<i>      hash: state (engine:snapshot()), id (the newest entry it covers), owner, at (ms)
--   <prefix>j:<decision>  the send journal: "sending" or "sent" (EX journal_ttl)
--
-- A checkpoint and the acknowledgement of the entries it covers are one script: an entry is pending
-- exactly when its decisions are not in the shard's checkpoint. A new owner restores the checkpoint
-- and decides every pending entry of the shard (XAUTOCLAIM), in id order; the journal keeps it from
-- sending again what the previous owner sent.

-- Takes a free lease and returns the new epoch (0 when another engine holds it).
local TAKE = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end "
  .. "return 0"
-- Renews a lease only while it is still this engine's; releases it the same way.
local RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
  .. "return 0"
local RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
-- KEYS: lease, epoch, checkpoint, stream. ARGV: name, epoch, state, at, group, newest id ("" for
-- none), trim ("1": drop the entries below both the newest id and the oldest pending one), ids to
-- acknowledge... 0 when the lease or the epoch is no longer this engine's: nothing is written.
local CHECKPOINT = [[
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[3], 'state', ARGV[3], 'owner', ARGV[1], 'at', ARGV[4], 'id', ARGV[6])
for i = 8, #ARGV, 4000 do
  redis.call('XACK', KEYS[4], ARGV[5], unpack(ARGV, i, math.min(#ARGV, i + 3999)))
end
if ARGV[7] == '1' and ARGV[6] ~= '' then
  local function parts(id)
    local a, b = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(a), tonumber(b)
  end
  local to, p = ARGV[6], redis.call('XPENDING', KEYS[4], ARGV[5])
  if p[1] > 0 then
    local a1, a2 = parts(p[2])
    local b1, b2 = parts(to)
    if a1 < b1 or (a1 == b1 and a2 < b2) then to = p[2] end
  end
  redis.call('XTRIM', KEYS[4], 'MINID', to)
end
return 1
]]

local UNREACHABLE = { ConnectionFailed = true, Timeout = true, LOADING = true }
local CHECKPOINT_IDS = 20000 -- entries decided since the last checkpoint that force the next one
local REFUSED_FOR = 30       -- seconds before a shard whose checkpoint cannot be restored is tried again

-- Whether stream id a is older than b ("ms-seq").
local function id_less(a, b)
  local a1, a2 = a:match("^(%d+)-(%d+)$")
  local b1, b2 = b:match("^(%d+)-(%d+)$")
  a1, b1 = tonumber(a1), tonumber(b1)
  return a1 < b1 or (a1 == b1 and tonumber(a2) < tonumber(b2))
end
M.id_less = id_less

function Log:epoch_key(i) return self.prefix .. "epoch:" .. i end
function Log:checkpoint_key(i) return self.prefix .. "ckpt:" .. i end
function Log:journal_key(decision_id) return self.prefix .. "j:" .. decision_id end

local Worker = {}
Worker.__index = Worker

local function check_seconds(o, name, default, lo, hi)
  local v = o[name]
  if v == nil then return default end
  if type(v) ~= "number" or not (v >= lo and v <= hi) then
    error(string.format("rtcadmin.fleet.worker: %s must be %s-%s seconds", name, lo, hi), 3)
  end
  return v
end

-- fleet.worker{conn, log, name, engine = function(shard, journal) -> policy engine, after_batch =
-- function(engine, shard, progress), lease = 3, checkpoint_every = 2, trim = true, journal_ttl =
-- 86400, batch = 512, block = 0.2, say = function(line)}: an engine of the fleet. worker:step()
-- does one round (leases when due, one read, the decisions, checkpoints when due); worker:stop()
-- checkpoints and releases its leases. One policy engine per owned shard, made (and restored from
-- the shard's checkpoint) when the shard is taken: a shard's state moves alone. `engine` must pass
-- `journal` to policy.new; `after_batch` sends the decisions (engine:flush{progress = progress}:
-- the progress function keeps the leases while a paced flush takes its time).
function M.worker(o)
  if type(o) ~= "table" then error("rtcadmin.fleet.worker: expects a table", 2) end
  if type(o.engine) ~= "function" then error("rtcadmin.fleet.worker: engine must be a function(shard, journal)", 2) end
  if type(o.name) ~= "string" or not o.name:find("^[%w@._:-]+$") or #o.name > 128 then
    error("rtcadmin.fleet.worker: name must be 1-128 of A-Z a-z 0-9 @ . _ : -", 2)
  end
  local lease = check_seconds(o, "lease", 3, 0.3, 600)
  local w = setmetatable({
    conn = o.conn, log = o.log, name = o.name, make_engine = o.engine, after_batch = o.after_batch,
    lease_ms = math.floor(lease * 1000), batch = o.batch or 512, block_ms = math.floor((o.block or 0.2) * 1000),
    checkpoint_every = check_seconds(o, "checkpoint_every", 2, 0.01, 3600),
    journal_ttl = math.floor(check_seconds(o, "journal_ttl", 86400, 1, 365 * 86400)),
    trim = o.trim ~= false,
    say = o.say or function() end,
    owned = {},          -- shard -> {engine, epoch, backlog, cursor, unacked, decided, newest, dirty, ...}
    engines = {},        -- every engine made, for the totals
    baselines = {},      -- engine -> its stats when restored (the previous owners' share of them)
    refused = {},        -- shard -> until when its checkpoint is not tried again
    next_renew = 0, acked = 0, read = 0, corrupt = 0, checkpoints = 0, restored = 0, down = nil,
    last_entry = rtcadmin.time(),
  }, Worker)
  w.journal = w:make_journal()
  return w
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

-- Back after an outage: the shards' pending entries are read again first (a batch cut off by the
-- outage); the ones this engine decided already are skipped.
function Worker:reachable()
  if self.down then
    self.say(string.format("rtcadmin: Redis at %s reachable again after %.1f s", self.conn:where(),
      rtcadmin.time() - self.down))
    self.down = nil
    for _, st in pairs(self.owned) do st.backlog, st.cursor = true, "0" end
  end
end

-- The send journal the shards' engines share (policy.new{journal = ...}). Its calls wait while
-- Redis does not answer: a decision is never sent because the journal could not be read.
function Worker:make_journal()
  local conn, log, ttl = self.conn, self.log, self.journal_ttl
  local function call(...)
    while true do
      local v, err = conn:call(...)
      if v ~= nil or err == nil then
        self:reachable()
        return v
      end
      self:trouble(err)
      rtcadmin.sleep(0.5)
    end
  end
  return {
    sent = function(id) return call("GET", log:journal_key(id)) == "sent" end,
    was_sending = function(id) return call("GET", log:journal_key(id)) ~= nil end,
    sending = function(id) call("SET", log:journal_key(id), "sending", "EX", ttl) end,
    done = function(id) call("SET", log:journal_key(id), "sent", "EX", ttl) end,
  }
end

function Worker:drop(shard, why)
  self.owned[shard] = nil
  self.say(string.format("rtcadmin: %s gave up shard %d (%s)", self.name, shard, why))
end

-- The engine's stats as plain numbers and maps (a baseline to subtract from later ones).
local function stats_copy(engine)
  local out = {}
  for k, v in pairs(engine:stats()) do
    if type(v) == "table" then
      local m = {}
      for mk, mv in pairs(v) do m[mk] = mv end
      out[k] = m
    else
      out[k] = v
    end
  end
  return out
end

-- now less base, maps of numbers too.
local function minus(now, base)
  local out = {}
  for k, v in pairs(now) do
    local b = base and base[k]
    if type(v) == "number" then out[k] = v - (type(b) == "number" and b or 0)
    elseif type(v) == "table" then out[k] = minus(v, type(b) == "table" and b or nil)
    else out[k] = v end
  end
  return out
end

-- What this process's engines did: each engine's stats less what its restored checkpoint brought
-- (the previous owners' share), as objects with a stats() method (what rtcadmin.metrics collects).
-- `keys` is a level, not a count: that of the shards this engine holds now.
function Worker:own_stats()
  local held = {}
  for _, st in pairs(self.owned) do held[st.engine] = true end
  local out = {}
  for i, e in ipairs(self.engines) do
    local st = e:stats()
    local d = minus(st, self.baselines[e])
    d.keys = held[e] and st.keys or 0
    out[i] = { stats = function() return d end }
  end
  return out
end

-- The sum of own_stats().
function Worker:totals()
  local add, t = require("rtcadmin.metrics").add, { by_action = {} }
  for _, e in ipairs(self:own_stats()) do add(t, e:stats()) end
  return t
end

-- Takes shard i when its lease is free: the engine restored from the shard's checkpoint, and the
-- shard's pending entries (the previous owner's included) made this engine's, read first, in
-- order. true when taken, false when not (held by another engine, or a checkpoint that cannot be
-- restored: said, and the shard left alone), nil, err on a failed call.
function Worker:take(i)
  local log, conn = self.log, self.conn
  if (self.refused[i] or 0) > rtcadmin.time() then return false end
  local t0 = rtcadmin.time()
  local epoch, err = conn:call("EVAL", TAKE, 2, log:lease_key(i), log:epoch_key(i), self.name, self.lease_ms)
  if epoch == nil then return nil, err end
  if epoch == 0 then return false end
  local function give_back()
    conn:call("EVAL", RELEASE, 1, log:lease_key(i), self.name)
  end
  local ck, cerr = conn:call("HMGET", log:checkpoint_key(i), "state", "id")
  if not ck then
    give_back()
    return nil, cerr
  end
  local engine = self.make_engine(i, self.journal)
  if ck[1] then
    local ok, rerr = engine:restore(ck[1])
    if not ok then
      give_back()
      self.refused[i] = rtcadmin.time() + REFUSED_FOR
      self.say(string.format("rtcadmin: shard %d left alone: its checkpoint %s cannot be restored (%s); the shard "
        .. "is not started afresh (delete the key to start it with an empty state)", i,
        log:checkpoint_key(i), tostring(rerr)))
      return false
    end
    self.restored = self.restored + 1
  end
  local cursor = "0-0"
  repeat
    local r, aerr = conn:call("XAUTOCLAIM", log:key(i), log.group, self.name, 0, cursor, "COUNT", 10000, "JUSTID")
    if not r then
      give_back()
      return nil, aerr
    end
    cursor = r[1]
  until cursor == "0-0"
  self.engines[#self.engines + 1] = engine
  self.baselines[engine] = stats_copy(engine)
  self.owned[i] = {
    engine = engine, epoch = epoch, backlog = true, cursor = "0",
    unacked = {}, decided = {}, newest = ck[2] or nil, dirty = false,
    next_checkpoint = rtcadmin.time() + self.checkpoint_every,
    valid_until = t0 + self.lease_ms / 1000 * 2 / 3,
  }
  self.say(string.format("rtcadmin: %s took shard %d%s", self.name, i, ck[1] and " (from its checkpoint)" or ""))
  return true
end

-- Heartbeat and lease renewals (a lease found expired or taken is given up at once); entries left
-- pending by an engine that lost its lease while it read are claimed. Due every lease/3 seconds,
-- also in the middle of a long paced flush (keep_leases).
function Worker:renew()
  local log, conn = self.log, self.conn
  local t0 = rtcadmin.time()
  local now_ms = math.floor(t0 * 1000)
  local mine = self:owned_list()
  local cmds = {
    { "ZADD", log:engines_key(), now_ms + self.lease_ms, self.name },
    { "ZREMRANGEBYSCORE", log:engines_key(), "-inf", now_ms },
    { "ZCARD", log:engines_key() },
  }
  -- Entries idle longer than this were delivered to an engine that did not decide them.
  local orphan_ms = 3 * math.max(self.lease_ms, math.floor(self.checkpoint_every * 1000))
  for _, s in ipairs(mine) do
    cmds[#cmds + 1] = { "EVAL", RENEW, 1, log:lease_key(s), self.name, self.lease_ms }
    cmds[#cmds + 1] = { "XPENDING", log:key(s), log.group } -- (per consumer: cheap)
  end
  local out, err = conn:pipeline(cmds)
  if not out then return nil, err end
  local others = {}
  for k, s in ipairs(mine) do
    local v, pending = out[2 + 2 * k], out[3 + 2 * k]
    if type(v) == "table" then return nil, v end
    local st = self.owned[s]
    if v ~= 1 then self:drop(s, "its lease had expired")
    elseif st then
      st.valid_until = t0 + self.lease_ms / 1000 * 2 / 3
      for _, c in ipairs(type(pending) == "table" and type(pending[4]) == "table" and pending[4] or {}) do
        if c[1] ~= self.name then others[#others + 1] = s break end
      end
    end
  end
  for _, s in ipairs(others) do
    local claimed, cerr = conn:call("XAUTOCLAIM", log:key(s), log.group, self.name, orphan_ms, "0-0", "COUNT", 1000,
      "JUSTID")
    if not claimed then return nil, cerr end
    local st = self.owned[s]
    for _, id in ipairs(st and type(claimed[2]) == "table" and claimed[2] or {}) do
      if not st.decided[id] then st.backlog, st.cursor = true, "0" break end
    end
  end
  self.alive = math.max(1, tonumber(out[3]) or 1)
  self.next_renew = t0 + self.lease_ms / 3000
  return true
end

-- Renews when due; for a flush's progress function (its failures are seen at the next round).
function Worker:keep_leases()
  if rtcadmin.time() >= self.next_renew then self:renew() end
end

-- The fair share, ceil(N / live engines) shards each: more than that are checkpointed and released
-- (the last ones, for the newcomers); with fewer, free ones are taken.
function Worker:balance()
  local log, conn = self.log, self.conn
  local fair = math.ceil(log.n / (self.alive or 1))
  local mine = self:owned_list()
  for k = #mine, fair + 1, -1 do
    local s = mine[k]
    local ok, cerr = self:checkpoint(s)
    if not ok then return nil, cerr end
    if self.owned[s] then
      local r, rerr = conn:call("EVAL", RELEASE, 1, log:lease_key(s), self.name)
      if r == nil then return nil, rerr end
      self:drop(s, "released for another engine")
    end
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
  return true
end

-- Writes shard s's checkpoint and acknowledges the entries it covers, in one script that does
-- nothing unless the lease and the epoch are still this engine's (then the shard is given up:
-- another engine owns it). true (also when there was nothing to write), or nil, err.
function Worker:checkpoint(s)
  local st = self.owned[s]
  if not st or not st.dirty then return true end
  local log = self.log
  local cmd = { "EVAL", CHECKPOINT, 4, log:lease_key(s), log:epoch_key(s), log:checkpoint_key(s), log:key(s),
                self.name, tostring(st.epoch), st.engine:snapshot(), math.floor(rtcadmin.time() * 1000), log.group,
                st.newest or "", self.trim and "1" or "0" }
  for _, id in ipairs(st.unacked) do cmd[#cmd + 1] = id end
  local out, err = self.conn:pipeline({ cmd })
  if not out then return nil, err end
  local v = out[1]
  if type(v) == "table" then return nil, v end
  if v ~= 1 then
    self:drop(s, "another engine owns it now; its checkpoint was not written")
    return true
  end
  self.acked = self.acked + #st.unacked
  self.checkpoints = self.checkpoints + 1
  st.unacked, st.decided, st.dirty = {}, {}, false
  st.next_checkpoint = rtcadmin.time() + self.checkpoint_every
  return true
end

-- Whether this engine may still act for shard s: its lease was renewed recently enough by its own
-- clock, or is renewed now. An engine that stalled past its lease gives the shard up here rather
-- than decide and send for a shard another engine may own.
function Worker:still_owner(s)
  local st = self.owned[s]
  if not st then return false end
  if rtcadmin.time() < st.valid_until then return true end
  local t0 = rtcadmin.time()
  local v, err = self.conn:call("EVAL", RENEW, 1, self.log:lease_key(s), self.name, self.lease_ms)
  if v == nil and err then return nil, err end
  if v ~= 1 then
    self:drop(s, "its lease had expired")
    return false
  end
  st.valid_until = t0 + self.lease_ms / 1000 * 2 / 3
  return true
end

-- Decides one shard's entries ({id, {"e", json}} each). They are acknowledged with the shard's next
-- checkpoint. Entries this engine decided already (read again after an outage or a claim) are
-- skipped.
function Worker:decide(shard, entries)
  if #entries == 0 then return true end
  local mine, merr = self:still_owner(shard)
  if not mine then return mine == false, merr end
  local st = self.owned[shard]
  local list, decided, unacked = {}, st.decided, st.unacked
  for _, en in ipairs(entries) do
    local id = en[1]
    if not decided[id] then
      decided[id] = true
      unacked[#unacked + 1] = id
      if not st.newest or id_less(st.newest, id) then st.newest = id end
      local fields = en[2]
      local ev, why
      if type(fields) == "table" and fields[1] == "e" then ev, why = M.decode(fields[2]) else why = "no event" end
      if ev then list[#list + 1] = ev else
        self.corrupt = self.corrupt + 1
        self.say(string.format("rtcadmin: shard %d entry %s skipped: %s", shard, tostring(id), why))
        st.engine:note_invalid()
      end
    end
  end
  self.read = self.read + #entries
  if #list > 0 then st.engine:process_batch(list) end
  if self.after_batch then
    self.after_batch(st.engine, shard, function() self:keep_leases() end)
  end
  st.dirty = true
  self.last_entry = rtcadmin.time()
  if #unacked >= CHECKPOINT_IDS then return self:checkpoint(shard) end
  return true
end

-- Checkpoints every shard whose interval is up (all with `all`).
function Worker:checkpoint_due(all)
  local now = rtcadmin.time()
  for _, s in ipairs(self:owned_list()) do
    local st = self.owned[s]
    if st and st.dirty and (all or now >= st.next_checkpoint) then
      local ok, err = self:checkpoint(s)
      if not ok then return nil, err end
    end
  end
  return true
end

-- One round: leases when due, checkpoints when due, then the backlog of a shard just taken, or a
-- blocking read of new entries on every owned shard. true, or nil, err (then Redis was
-- unreachable: the caller waits).
function Worker:step()
  local log, conn = self.log, self.conn
  if rtcadmin.time() >= self.next_renew then
    local ok, err = self:renew()
    if ok then ok, err = self:balance() end
    if not ok then return nil, err end
  end
  local ok, cerr = self:checkpoint_due()
  if not ok then return nil, cerr end
  for s, st in pairs(self.owned) do
    if st.backlog then
      local r, err = conn:call("XREADGROUP", "GROUP", log.group, self.name, "COUNT", self.batch, "STREAMS",
        log:key(s), st.cursor)
      if r == nil and err then return nil, err end
      local entries = r and r[1] and r[1][2] or {}
      if #entries == 0 then st.backlog = nil else
        st.cursor = entries[#entries][1]
        local dok, derr = self:decide(s, entries)
        if not dok then return nil, derr end
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
      local gok, gerr = log:ensure_groups(conn)
      if not gok then return nil, gerr end
      return true
    end
    return nil, err
  end
  local by_key = {}
  for _, s in ipairs(mine) do by_key[log:key(s)] = s end
  for _, stream in ipairs(r or {}) do
    local dok, derr = self:decide(by_key[stream[1]], stream[2])
    if not dok then return nil, derr end
  end
  return true
end

-- Checkpoints every owned shard (after `before(engine, shard)`, e.g. a drain of the retries), then
-- releases the leases and leaves the live set: the shards go to the others at once, with their
-- state, not after the leases expire.
function Worker:stop(before)
  local log = self.log
  for _, s in ipairs(self:owned_list()) do
    local st = self.owned[s] -- (nil when a renewal during an earlier shard's drain found it lost)
    if before and st then
      before(st.engine, s)
      st.dirty = true
    end
  end
  local ok, err = self:checkpoint_due(true)
  if not ok then return nil, err end
  local cmds = { { "ZREM", log:engines_key(), self.name } }
  for _, s in ipairs(self:owned_list()) do cmds[#cmds + 1] = { "EVAL", RELEASE, 1, log:lease_key(s), self.name } end
  self.owned = {}
  return self.conn:pipeline(cmds)
end

-- Runs rounds until should_stop() is true (checked between rounds: a batch is always finished),
-- or `idle` seconds passed without an entry (Redis unreachable or not); waits while Redis is
-- unreachable. Then stop(before), retried while Redis is unreachable (up to 30 s): what was
-- decided and not checkpointed stays pending for the next owner.
function Worker:run(should_stop, idle, before)
  while not should_stop() do
    local ok, err = self:step()
    if ok then self:reachable() else
      if not self:trouble(err) then return nil, err end
      rtcadmin.sleep(0.5)
    end
    if idle and rtcadmin.time() - self.last_entry >= idle then break end
  end
  local give_up = rtcadmin.time() + 30
  while true do
    local ok, err = self:stop(before)
    before = nil
    if ok then
      self:reachable()
      return true
    end
    if not self:trouble(err) or rtcadmin.time() > give_up then return true end
    rtcadmin.sleep(0.5)
  end
end

return M
