-- One view of each room on a host: a single policy engine for all of nginx's workers, fed through
-- a queue in a lua_shared_dict, with its state saved where a crash or a reload cannot lose it.
--
--   init_by_lua:      H = require("rtcadmin.host").new { dict = "rtcadmin_host", engine = factory }
--   callback handler: callback.handler { ..., store = function(ev) return H:store(ev) end }
--   init_worker:      H:start()
--
-- Every worker receives callbacks; each one stores its event in the shared dict (an ordered queue:
-- a sequence number and one key per event) before the callback is answered 200, so a worker that
-- crashes or exits cannot lose it. One worker at a time holds the engine lease (a key with an
-- expiry, renewed while it lives): it decides the events in queue order with the one engine, sends
-- the actions. The dict always holds the engine's whole memory: a checkpoint (engine:snapshot() and
-- the next sequence number) and every event after it, still queued — an event leaves the queue only
-- once a checkpoint covers it. The holder writes a checkpoint every `save_every` seconds or
-- `save_events` events, whichever comes first, and when it exits (and to `state_file`, when one is
-- set): a snapshot costs time in proportion to the state (about 3 µs per user record), so it is
-- taken rarely, and the queue in between bounds what a new holder decides again. When the holder dies, the lease
-- expires and another worker takes over: it restores the saved state and decides the events after
-- it again — the same decisions, since the state and the events are the same — and a journal in
-- the dict (decision ids sent, and being sent) keeps their actions from being sent twice, except one
-- that was on the wire at the crash (sent again and marked `resent` in its audit record).
-- See docs/nginx.md ("One engine per host").
local rtcadmin = require "rtcadmin"
local cjson = require "cjson.safe"
local metrics = require "rtcadmin.metrics"

local host = {}

local Host = {}
Host.__index = Host

local PREFIX = "rtcadmin.host:"
local K_SEQ, K_LEASE, K_STATE = PREFIX .. "seq", PREFIX .. "lease", PREFIX .. "state"
local K_DECIDED = PREFIX .. "decided" -- the last sequence number the engine decided (for status)
-- The decision feed: the newest audit records of decisions, a ring of FEED_RING entries.
local K_FEED = PREFIX .. "feed"
local FEED_RING = 400
local function k_feed(n) return PREFIX .. "feed:" .. n end
local function k_event(n) return PREFIX .. "ev:" .. n end
-- The engine's counters for the metrics (rtcadmin.metrics' policy part, flattened), added up over
-- every holder of this nginx run, with the last sequence number whose decisions they hold, as one
-- JSON value {seq, counters}: one holder at a time writes it, whole. And the engine's record count.
local K_COUNTERS, K_KEYS = PREFIX .. "counters", PREFIX .. "keys"
-- The state as stored: a header line with the format and the next sequence number, then the
-- engine's snapshot.
local STATE_MAGIC = "rtcadmin-host-state 1 "

local DEFAULTS = {
  save_every = 10,     -- seconds between checkpoints (a new holder decides at most this much again)
  save_events = 50000, -- events between checkpoints
  lease = 3,           -- seconds a dead holder keeps the lease
  poll = 0.005,        -- seconds between looks at the queue when it is empty
  batch = 128,         -- events decided per step (the worker serves requests between steps)
  gap_wait = 2,        -- seconds to wait for a sequence number whose event never came
  journal_ttl = 86400, -- seconds a sent decision is remembered
}

local function check_number(opts, name, min)
  local v = opts[name]
  if v == nil then return DEFAULTS[name] end
  if type(v) ~= "number" or not (v >= min and v < math.huge) then
    error(string.format("rtcadmin.host.new: %s must be a number >= %g", name, min), 3)
  end
  return v
end

-- host.new{dict, engine, state_file?, save_every?, save_events?, lease?, poll?, batch?, gap_wait?, journal_ttl?,
-- on_state?}: `engine(journal)` makes the host's engine (rules loaded) and must pass `journal` to
-- policy.new.
function host.new(opts)
  if type(opts) ~= "table" then error("rtcadmin.host.new: expects a table {dict, engine}", 2) end
  local ngx = ngx
  local dict = ngx and ngx.shared[opts.dict or ""]
  if not dict then error("rtcadmin.host.new: dict must name a lua_shared_dict", 2) end
  if type(opts.engine) ~= "function" then
    error("rtcadmin.host.new: engine must be a function(journal) returning a policy engine", 2)
  end
  if opts.state_file ~= nil and type(opts.state_file) ~= "string" then
    error("rtcadmin.host.new: state_file must be a path", 2)
  end
  local self = setmetatable({
    dict = dict, make_engine = opts.engine, state_file = opts.state_file,
    save_every = check_number(opts, "save_every", 0.01), save_events = check_number(opts, "save_events", 1),
    lease = check_number(opts, "lease", 0.5),
    poll = check_number(opts, "poll", 0.001), batch = check_number(opts, "batch", 1),
    gap_wait = check_number(opts, "gap_wait", 0.01), journal_ttl = check_number(opts, "journal_ttl", 1),
    engine = nil, next_seq = nil, saved_seq = nil, saved_at = 0, gap_since = nil,
    counted = nil, counters_seen = nil, replay_to = 0,
  }, Host)
  local ttl = self.journal_ttl
  -- The send journal the engine's outbox keeps (docs/policy.md, "Saving and restoring state").
  self.journal = {
    sent = function(id) return dict:get(PREFIX .. "sent:" .. id) ~= nil end,
    sending = function(id) dict:set(PREFIX .. "sending:" .. id, true, ttl) end,
    was_sending = function(id) return dict:get(PREFIX .. "sending:" .. id) ~= nil end,
    done = function(id) dict:set(PREFIX .. "sent:" .. id, true, ttl) end,
  }
  return self
end

-- Stores a verified event in the queue: true, or nil, err when the dict cannot hold it (the
-- callback then answers 5xx and RTC delivers it again). Any worker, any phase with ngx.shared.
function Host:store(ev)
  local ok, text = pcall(rtcadmin.json_encode, ev)
  if not ok then return nil, "event cannot be stored: " .. tostring(text) end
  local n, err = self.dict:incr(K_SEQ, 1, 0)
  if not n then return nil, "queue sequence: " .. tostring(err) end
  -- safe_set: a full dict refuses rather than evicting queued events or the saved state.
  local stored, serr = self.dict:safe_set(k_event(n), text)
  if not stored then return nil, "queue full: " .. tostring(serr) end
  return true
end

-- The saved state (nil when there is none yet), and whether it came from the state file: the dict
-- does not survive a stop of nginx, the file does.
function Host:_load_state()
  local s = self.dict:get(K_STATE)
  if s == nil and self.state_file then
    local f = io.open(self.state_file, "rb")
    if f then
      s = f:read("*a")
      f:close()
      return s, true
    end
  end
  return s, false
end

local function parse_state(s)
  if s:sub(1, #STATE_MAGIC) ~= STATE_MAGIC then return nil, "not a rtcadmin host state" end
  local nl = s:find("\n", #STATE_MAGIC + 1, true)
  local next_seq = nl and tonumber(s:sub(#STATE_MAGIC + 1, nl - 1))
  if not next_seq or next_seq < 1 or next_seq % 1 ~= 0 then return nil, "bad sequence number in host state" end
  return next_seq, s:sub(nl + 1)
end

-- Takes the engine over: a fresh engine with the saved state restored (or a fresh start).
function Host:_take_over()
  local engine = self.make_engine(self.journal)
  local next_seq = 1
  local s, from_file = self:_load_state()
  if s then
    local seq, snapshot = parse_state(s)
    local ok, err = seq, snapshot
    if seq then ok, err = engine:restore(snapshot) end
    if not ok then
      -- Never silently reset: the state stays where it is, and this worker does not take over.
      ngx.log(ngx.ERR, "rtcadmin.host: cannot restore the saved state: ", tostring(err),
        "; the engine is not started (remove the state to start afresh)")
      return nil
    end
    -- A state from the file meets a new dict (nginx was stopped): its queue starts again at 1.
    if not from_file then next_seq = seq end
  end
  self.engine, self.next_seq, self.saved_seq, self.saved_at = engine, next_seq, next_seq, ngx.now()
  self.dict:set(K_DECIDED, next_seq - 1)
  -- The restored counters were published already (by the holder that saved them), and so were the
  -- events up to the seq saved with them that this engine decides again after a crash: not counted twice.
  local counted = cjson.decode(self.dict:get(K_COUNTERS) or "{}")
  if type(counted) ~= "table" then counted = {} end
  self.counted, self.replay_to = type(counted.counters) == "table" and counted.counters or {}, counted.seq or 0
  self.counters_seen = metrics.flatten(metrics.policy_counters(engine:stats()))
  ngx.log(ngx.NOTICE, "rtcadmin.host: worker ", ngx.worker.id(), " runs the engine from event ", next_seq)
  return true
end

-- Writes the state to the dict (and the state file), then drops the events it covers.
function Host:_save()
  local engine, seq = self.engine, self.next_seq
  local s = STATE_MAGIC .. seq .. "\n" .. engine:snapshot()
  local ok, err = self.dict:safe_set(K_STATE, s)
  if not ok then
    ngx.log(ngx.ERR, "rtcadmin.host: cannot save the engine state (", tostring(err), "): events stay queued")
    return false
  end
  if self.state_file then
    -- Written beside it, synced and renamed over it: a crash leaves the old state or the new one.
    local saved, ferr = rtcadmin.save_file(self.state_file, s)
    if not saved then ngx.log(ngx.ERR, "rtcadmin.host: cannot write ", self.state_file, ": ", tostring(ferr)) end
  end
  for n = self.saved_seq, seq - 1 do
    self.dict:delete(k_event(n))
    if n % 4096 == 0 then ngx.sleep(0) end -- a long queue: let the worker serve requests meanwhile
  end
  self.saved_seq, self.saved_at = seq, ngx.now()
  return true
end

-- Decides the next events of the queue (at most `batch`); returns how many it took.
function Host:_step()
  local dict, engine = self.dict, self.engine
  local last = dict:get(K_SEQ) or 0
  local list, n = {}, self.next_seq
  -- Events decided again (after a crash) are taken apart from new ones, so that a step is either.
  if n <= self.replay_to then last = math.min(last, self.replay_to) end
  while n <= last and #list < self.batch do
    local text = dict:get(k_event(n))
    if text == nil then
      -- A number taken whose event is not there (yet): its store may still be under way, or failed.
      local now = ngx.now()
      self.gap_since = self.gap_since or now
      if now - self.gap_since < self.gap_wait then break end
      ngx.log(ngx.WARN, "rtcadmin.host: no event under sequence number ", n, " after ", self.gap_wait,
        " s: its store failed (that callback was answered 5xx)")
    else
      local ev = cjson.decode(text)
      if type(ev) == "table" then list[#list + 1] = ev
      else ngx.log(ngx.ERR, "rtcadmin.host: event ", n, " does not decode: skipped") end
    end
    self.gap_since = nil
    n = n + 1
  end
  if #list > 0 then
    local ok, err = pcall(engine.process_batch, engine, list)
    if not ok then
      ngx.log(ngx.ERR, "rtcadmin.host: the engine failed on events ", self.next_seq, "..", n - 1, ": ", err)
    end
  end
  local took = n - self.next_seq
  self.next_seq = n
  if took > 0 then dict:set(K_DECIDED, n - 1) end
  local due = engine:due()
  if due then engine:flush() end
  if took > 0 or due then self:_count(n - 1) end
  return took
end

-- Publishes the engine's counters after a step that decided the events up to `upto`; a step that
-- only decided again what an earlier holder had counted is taken as published.
function Host:_count(upto)
  local st = self.engine:stats()
  local now, seen, counted = metrics.flatten(metrics.policy_counters(st)), self.counters_seen, self.counted
  if upto > self.replay_to then
    for k, v in pairs(now) do
      local d = v - (seen[k] or 0)
      if d ~= 0 or counted[k] == nil then counted[k] = (counted[k] or 0) + d end
    end
    local ok, err = self.dict:safe_set(K_COUNTERS, rtcadmin.json_encode({ seq = upto, counters = counted }))
    if not ok then ngx.log(ngx.WARN, "rtcadmin.host: cannot publish the engine's counters: ", tostring(err)) end
  end
  self.counters_seen = now
  self.dict:set(K_KEYS, st.keys)
end

-- The engine's counters for rtcadmin.metrics: {policy = {events, decisions, rule_errors}, state_keys},
-- added up over every worker that held the engine since nginx started. Any worker.
function Host:counters()
  local saved = cjson.decode(self.dict:get(K_COUNTERS) or "{}")
  local c = metrics.unflatten(type(saved) == "table" and type(saved.counters) == "table" and saved.counters or {})
  return { policy = { events = c.events or {}, decisions = c.decisions or {}, rule_errors = c.rule_errors or {} },
           state_keys = self.dict:get(K_KEYS) }
end

-- Holds the lease while it lives: true when this worker holds it now.
function Host:_hold()
  local dict, me = self.dict, ngx.worker.pid()
  local holder = dict:get(K_LEASE)
  if holder == me then
    dict:expire(K_LEASE, self.lease)
    return true
  end
  if holder == nil and dict:add(K_LEASE, me, self.lease) then return true end
  return false
end

local function loop(premature, self)
  if premature then return end
  local renew_every = self.lease / 3
  local renewed = 0
  while true do
    local now = ngx.now()
    local exiting = ngx.worker.exiting()
    if self.engine then
      if exiting then
        self:_step()
        self:_save()
        if self.dict:get(K_LEASE) == ngx.worker.pid() then self.dict:delete(K_LEASE) end
        return
      end
      if now - renewed >= renew_every then
        renewed = now
        if not self:_hold() then
          ngx.log(ngx.ERR, "rtcadmin.host: lost the engine lease (this worker stalled for over ", self.lease,
            " s): stopping its engine")
          self.engine = nil
        end
      end
      if self.engine then
        local took = self:_step()
        if ngx.now() - self.saved_at >= self.save_every or self.next_seq - self.saved_seq >= self.save_events then
          self:_save()
        end
        -- Yield between steps (sleep(0) lets the worker serve what is waiting), wait when idle.
        ngx.sleep(took == 0 and self.poll or 0)
      end
    else
      if exiting then return end
      if now - renewed >= renew_every then
        renewed = now
        if self:_hold() and not self:_take_over() then
          self.dict:delete(K_LEASE)
          ngx.sleep(self.lease)
        end
      end
      if not self.engine then ngx.sleep(math.min(renew_every, 0.5)) end
    end
  end
end

-- Starts the worker's loop (init_worker_by_lua): every worker stands by to take the engine over.
function Host:start()
  local ok, err = ngx.timer.at(0, loop, self)
  if not ok then error("rtcadmin.host: cannot start its timer: " .. tostring(err), 2) end
end

-- Keeps an audit record for the decision feed (call it from the engine's audit function): the
-- decisions, each again when its outcome changes. Any worker; a record the dict cannot hold is
-- left out of the feed (the audit log has it).
function Host:feed(record)
  if type(record) ~= "table" or record.kind ~= "decision" then return end
  if type(record.evidence) == "table" then rtcadmin.json_array(record.evidence) end
  local ok, text = pcall(rtcadmin.json_encode, record)
  if not ok then return end
  local dict = self.dict
  local n = dict:incr(K_FEED, 1, 0)
  if not n then return end
  dict:set(k_feed(n), text)
  dict:delete(k_feed(n - FEED_RING))
end

-- The newest `limit` decisions of the feed (at most 100), newest first, each with its latest
-- outcome.
function Host:decisions(limit)
  limit = math.min(math.max(math.floor(tonumber(limit) or 50), 1), 100)
  local dict, list, seen = self.dict, {}, {}
  local n = dict:get(K_FEED) or 0
  for i = n, math.max(1, n - FEED_RING + 1), -1 do
    local text = dict:get(k_feed(i))
    local d = text and cjson.decode(text)
    if type(d) == "table" then
      local key = tostring(d.run) .. ":" .. tostring(d.id)
      if not seen[key] then
        seen[key] = true
        if type(d.evidence) == "table" then rtcadmin.json_array(d.evidence) end
        list[#list + 1] = d
        if #list >= limit then break end
      end
    end
  end
  return rtcadmin.json_array(list)
end

-- Facts for an admin or metrics endpoint: the queue and who holds the engine.
function Host:status()
  local dict = self.dict
  local last = dict:get(K_SEQ) or 0
  local s = dict:get(K_STATE)
  local saved = s and parse_state(s) or 1
  return { holder_pid = dict:get(K_LEASE), last_seq = last, saved_seq = saved, queued = last - saved + 1,
           decided_seq = dict:get(K_DECIDED) or saved - 1, engine_here = self.engine ~= nil }
end

host.DEFAULTS = DEFAULTS
return host
