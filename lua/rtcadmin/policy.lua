-- The moderation policy engine: room events in, decisions out, the client acts.
--
--   local policy = require "rtcadmin.policy"
--   local engine = policy.new { client = client, audit = "audit.jsonl" }
--   assert(engine:load("rules.lua"))
--   for ev in events do engine:process(ev) end
--   engine:flush()        -- sends the decisions through client:batch (paced, retried, in order)
--
-- Rules live in sandboxed files (rtcadmin.sandbox). Conditions see the event and a context with
-- windowed counters per (room, user) or per room; the engine picks the action (escalation ladder by
-- prior offences), applies cooldowns and allow-lists, records every decision and outcome in a JSON
-- Lines audit log, keeps failed actions for retry, and bounds its memory. See docs/policy.md.
local sandbox = require "rtcadmin.sandbox"
local event_checks = require "rtcadmin.events"
local store = require "rtcadmin.store"
local rule_files = require "rtcadmin.rules"
local outbox = require "rtcadmin.outbox"
local state = require "rtcadmin.state"

-- The JSON writer of audit records, from the C module when it is there (sorted keys, lists marked
-- with json_array written as [] even when empty, NaN and infinities as null); without it (the Lua
-- files alone) a private lua-cjson encoder (inf and NaN as null; an empty list is {}).
local json_encode, json_array, sha256
do
  local ok, core = pcall(require, "rtcadmin")
  if ok and type(core) == "table" and core.json_encode then
    json_encode, json_array, sha256 = core.json_encode, core.json_array, core.sha256
  else
    local cjson = require("cjson").new()
    cjson.encode_invalid_numbers("null")
    json_encode, json_array = cjson.encode, function(t) return t end
  end
end

local policy = {}

local type, pairs, ipairs, tostring, error, setmetatable = type, pairs, ipairs, tostring, error, setmetatable
local table_unpack = table.unpack or unpack -- luacheck: ignore 113 (5.1)
local string_format, string_find, math_min, math_max = string.format, string.find, math.min, math.max
local math_floor = math.floor

-- What the pieces give the engine (the per-event path keeps them in locals).
local wall_clock, iso_time = event_checks.wall_clock, event_checks.iso_time
local valid_id, valid_app = event_checks.valid_id, event_checks.valid_app
local ids_problem, ts_problem, id_problem = event_checks.ids_problem, event_checks.ts_problem, event_checks.id_problem
local field_problem, ID_MAX = event_checks.field_problem, event_checks.ID_MAX
local EVENT_TYPE_MAX = event_checks.TYPE_MAX
local recent_new, gen3_new, ROOM = store.recent_new, store.gen3_new, store.ROOM
local SLOT, REC_SEEN, REC_ALLOW, REC_COOL, REC_FIXED = store.SLOT, store.REC_SEEN, store.REC_ALLOW, store.REC_COOL,
  store.REC_FIXED
local ring_new, distinct_add, add_event = store.ring_new, store.distinct_add, store.add_event
local distinct_count = store.distinct_count

-- Limits, the rules loader and the decision calls, as the engine's API has them.
policy.BAN_MIN, policy.BAN_MAX = rule_files.BAN_MIN, rule_files.BAN_MAX
policy.MUTE_MIN, policy.MUTE_MAX = rule_files.MUTE_MIN, rule_files.MUTE_MAX
policy.TS_MAX, policy.ID_MAX = event_checks.TS_MAX, event_checks.ID_MAX
policy.load_source, policy.load_file = rule_files.load_source, rule_files.load_file
local errors = rule_files.errors
policy.decision_call = outbox.decision_call

policy.DEFAULTS = {
  max_keys = 100000,        -- (room, user) and room records per generation (at most twice this are held)
  dedupe = 100000,          -- event ids remembered (the most recent)
  max_offenders = 100000,   -- users with offences remembered per app (the most recently actioned)
  offence_window = 86400,   -- offences older than this no longer escalate
  cooldown = 60,            -- default seconds a rule leaves a (room, user) alone after acting on it
  slots = 60,               -- seconds kept per counter (60 + the 4-entry header fill a 64-entry array)
  distinct_max = 64,        -- distinct values kept per counter
  retry_base = 1, retry_cap = 60, max_attempts = 8,
  rule_error_reports = 10,  -- rule errors reported (audit, on_error) per rule; all are counted
  max_counters = 256,       -- counters: one per (scope, event type) counted, and per (scope, type, field) distinct
}

-- Record slots made with every record (the fixed ones and the first counters); counters beyond
-- take a slot only in the records that have them.
local REC_PREALLOC = 19
-- Count windows remembered per event type and scope (more are computed on each call).
local WINDOWS_KEPT = 32

---------------------------------------------------------------------------------------------------
-- The engine.

local Engine = {}
Engine.__index = Engine
-- Sending decisions: flush, due, pending, next_retry_in, failed (rtcadmin.outbox).
for k, v in pairs(outbox) do if type(v) == "function" and k ~= "decision_call" then Engine[k] = v end end
-- Saving and restoring its state: snapshot, restore (rtcadmin.state).
for k, v in pairs(state) do if type(v) == "function" then Engine[k] = v end end

-- A run id for the audit records of one engine: its start time to the microsecond and 24 bits of a
-- heap address (which differs from process to process), so runs that append to one audit file
-- keep their decision ids apart (a decision is (run, id)).
local function new_run_id()
  local t = wall_clock()
  local whole = math_floor(t)
  local addr = tonumber(string.match(tostring({}), "0x(%x+)") or string.match(tostring({}), "(%x+)$") or "0", 16) or 0
  return os.date("!%Y%m%dT%H%M%S", whole) .. string_format(".%06dZ-%06x", math_floor((t - whole) * 1e6),
    math_floor(addr / 16) % 16777216)
end

local function audit_sink(a)
  if a == nil or a == false then return nil end
  if type(a) == "function" then return a end
  local fh = a
  if type(a) == "string" then
    local err
    fh, err = io.open(a, "a")
    if not fh then error("rtcadmin.policy: cannot open audit log: " .. tostring(err), 3) end
  end
  if type(fh) ~= "userdata" and type(fh) ~= "table" then
    error("rtcadmin.policy: 'audit' must be a file name, a file handle or a function", 3)
  end
  return function(record)
    fh:write(json_encode(record), "\n")
    fh:flush()
  end
end

local known_opts = {
  client = true, now = true, dry_run = true, audit = true, limits = true, allow = true,
  on_decision = true, on_error = true, on_result = true, run = true, journal = true,
}

-- The send journal's functions (policy.new{journal = ...}; docs/policy.md, "Saving and restoring state").
local JOURNAL_FNS = { "sent", "sending", "done", "was_sending" }
for k in pairs(policy.DEFAULTS) do known_opts[k] = true end

function policy.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("rtcadmin.policy.new: expected an options table", 2) end
  for k in pairs(opts) do
    if not known_opts[k] then error("rtcadmin.policy.new: unknown option '" .. tostring(k) .. "'", 2) end
  end
  for k, v in pairs(policy.DEFAULTS) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] <= 0) then
      error(string_format("rtcadmin.policy.new: '%s' must be a positive number (default %s)", k, tostring(v)), 2)
    end
  end
  if not opts.dry_run and (type(opts.client) ~= "userdata" and type(opts.client) ~= "table") then
    error("rtcadmin.policy.new: a 'client' is required unless dry_run = true", 2)
  end
  if opts.now ~= nil and type(opts.now) ~= "function" then error("rtcadmin.policy.new: 'now' must be a function", 2) end
  if opts.run ~= nil and (type(opts.run) ~= "string" or opts.run == "") then
    error("rtcadmin.policy.new: 'run' must be a non-empty string", 2)
  end
  if opts.journal ~= nil then
    if type(opts.journal) ~= "table" then
      error("rtcadmin.policy.new: 'journal' must be a table {sent=, sending=, done=, was_sending=}", 2)
    end
    for _, f in ipairs(JOURNAL_FNS) do
      if type(opts.journal[f]) ~= "function" then
        error("rtcadmin.policy.new: journal." .. f .. " must be a function", 2)
      end
    end
  end
  if opts.limits ~= nil then
    if type(opts.limits) ~= "table" then error("rtcadmin.policy.new: 'limits' must be a table", 2) end
    for k, v in pairs(opts.limits) do
      if sandbox.DEFAULTS[k] == nil then
        error("rtcadmin.policy.new: unknown limit '" .. tostring(k) .. "' (instructions, memory, string_max, time)", 2)
      end
      if type(v) ~= "number" or v ~= v or v <= 0 then
        error(string_format("rtcadmin.policy.new: limit '%s' must be a positive number", k), 2)
      end
    end
  end
  local cfg = {}
  for k, v in pairs(policy.DEFAULTS) do cfg[k] = opts[k] or v end

  local E = setmetatable({
    cfg = cfg, client = opts.client, now = opts.now or wall_clock, dry_run = opts.dry_run == true,
    run = opts.run or new_run_id(),
    audit = audit_sink(opts.audit), on_decision = opts.on_decision, on_error = opts.on_error,
    on_result = opts.on_result, journal = opts.journal,
    limits = opts.limits or sandbox.DEFAULTS,
    rules = {}, by_type = {}, files = {}, warnings = {},
    allow_roles = {}, allow_users = {}, allow_patterns = {},
    track = {},        -- event type -> its counter's slot in (room, user) records; see ctx:count
    track_room = {},   -- event type -> its counter's slot in room records
    keep = {},         -- event type -> the longest count window on its (room, user) counters
    keep_room = {},    -- the same, room counters
    track_fields = {}, -- event type -> list of fields counted by ctx:distinct (per (room, user))
    track_room_fields = {}, -- the same, per room
    max_window = 0,
    nslots = REC_FIXED, tmpl = { 0, 0, false }, -- record slots in use, and a record's empty values
    ncounters = 0,     -- counters registered (see max_counters)
    allow_ver = 0,     -- bumped when the allow-list changes (records cache their user's verdict)
    queue = {}, waiting = {}, failures = {}, next_decision = 0,
    st = { events = 0, ignored = 0, duplicates = 0, allowed = 0, invalid = 0, decisions = 0, dry_run = 0,
              succeeded = 0, failed = 0, retried = 0, cooldown = 0, rule_errors = 0, bans_extended = 0,
              bans_already = 0, recovered = 0, resent = 0,
              by_rule = {}, by_action = {}, errors_by_rule = {}, by_outcome = {} },
  }, Engine)
  E.keys = gen3_new(cfg.max_keys, nil)
  E.seen = { map = {}, ring = {}, pos = 0 } -- the last `dedupe` event ids (see Engine:_make_hot)
  E.offenders = {} -- app_id -> the recent offenders: user_id -> {n, last}
  -- The bans the engine made, the most recent max_offenders: ban_key(...) -> {ends = engine time}.
  E.bans = recent_new(cfg.max_offenders)
  E.runner = sandbox.runner(E.limits)
  E:allow(opts.allow)
  E.ctx, E._batch, E._take, E._seen_pos = E:_make_hot()
  E._one = {} -- process(ev) runs a batch of one
  return E
end

-- Adds allow-list entries {roles=, users=, patterns=} (engine-wide, checked before every rule).
function Engine:allow(spec)
  if spec == nil then return end
  self.allow_ver = self.allow_ver + 1
  for _, r in ipairs(spec.roles or {}) do self.allow_roles[r] = true end
  for _, u in ipairs(spec.users or {}) do self.allow_users[u] = true end
  for _, p in ipairs(spec.patterns or {}) do
    if not pcall(string_find, "", p) then error("rtcadmin.policy: bad allow pattern " .. string_format("%q", p), 2) end
    self.allow_patterns[#self.allow_patterns + 1] = p
  end
end

-- The condition of a rule without one.
local function always() return true end

local function add_file(self, file)
  local names = {}
  for _, r in ipairs(self.rules) do names[r.name] = r.at end
  for _, r in ipairs(file.rules) do
    if names[r.name] then
      return nil, errors { r.at .. ": rule '" .. r.name .. "' already defined at " .. names[r.name] }
    end
  end
  for _, r in ipairs(file.rules) do
    r.test = r.when or always
    r.index = #self.rules + 1
    r.cooldown = r.cooldown or self.cfg.cooldown
    self.rules[r.index] = r
    self.st.by_rule[r.name] = 0
    for _, t in ipairs(r.on) do
      local list = self.by_type[t]
      if not list then list = {}; self.by_type[t] = list end
      list[#list + 1] = r
    end
  end
  for _, r in ipairs(file.rules) do self.max_cooldown = math_max(self.max_cooldown or 0, r.cooldown) end
  self.keys.ttl = math_max(self.max_window, self.max_cooldown or 0)
  self:allow(file.allow)
  for _, w in ipairs(file.warnings) do self.warnings[#self.warnings + 1] = w end
  self.files[#self.files + 1] = file.name
  return file
end

-- Loads a rules file. On any error nothing from the file is applied: returns nil, {"file:line: ..."}.
function Engine:load(path)
  local file, errs = policy.load_file(path, self.limits)
  if not file then return nil, errs end
  return add_file(self, file)
end

function Engine:load_source(source, name)
  local file, errs = policy.load_source(source, name, self.limits)
  if not file then return nil, errs end
  return add_file(self, file)
end

-- Whether the allow-list covers this user id (by id or pattern; roles are per event).
function Engine:_allowed_user(user)
  if self.allow_users[user] then return true end
  local pats = self.allow_patterns
  for i = 1, #pats do
    if string_find(user, pats[i]) then return true end
  end
  return false
end

-- The offenders of one app (keyed by user, so a lookup makes no string).
function Engine:_offenders(app)
  local g = self.offenders[app]
  if not g then
    g = recent_new(self.cfg.max_offenders)
    self.offenders[app] = g
  end
  return g
end

-- The per-event path: ingest (dedupe, checks, the event's record and counters), the conditions of
-- the rules watching its type, the ctx methods they call, and the state half of a decision
-- (cooldown, offences), made at once so the next events see it. These are closures over shared
-- locals rather than methods reading table fields: on the PUC interpreters an upvalue costs a
-- fraction of a field lookup. A batch runs in one protected call of the sandbox; a rule error
-- unwinds it, is noted, and the run resumes after that rule. What outcomes cause (audit records,
-- callbacks, the send queue) happens after the batch, out of the sandbox (Engine:_act).
--
-- The ctx table passed to conditions holds nothing itself: its methods close over the engine, so
-- rule code cannot reach the engine, the client or other users' data through it.
function Engine:_make_hot()
  local E = self
  local cfg, st, runner = self.cfg, self.st, self.runner
  local budget, arm, disarm = runner.budget, runner.arm, runner.disarm
  local first_steps, rest_steps = runner.fresh_steps()
  local slots, dmax = cfg.slots, cfg.distinct_max
  local by_type, track, track_room = self.by_type, self.track, self.track_room
  local keep, keep_room = self.keep, self.keep_room
  local track_fields, track_room_fields = self.track_fields, self.track_room_fields
  local allow_roles, keys = self.allow_roles, self.keys
  -- The event ids seen: a set of the last `dedupe`, and the ring that retires them in order (an id
  -- is put only when it is not in the set, so the ring holds each id once).
  local seen_map, seen_ring, seen_pos, dedupe = self.seen.map, self.seen.ring, self.seen.pos, cfg.dedupe

  -- The event being evaluated.
  local c_ev, c_type, c_ts, c_sec, c_app, c_room, c_user, c_rec -- c_sec: math.floor(c_ts)
  local c_room_rec -- the room's record, once looked up for this event (else nil)
  -- The queries a condition made (the first 8), noted only while `recording`: when it runs again
  -- for the evidence of a decision.
  local noted, recording = {}, false
  -- Where a run is: the event, and the rule whose condition is running (0: engine code). After a
  -- rule error the driver sets at_rule to the rule to resume at.
  local at_event, at_rule = 1, 0
  local made, invalid, reason = 0, 0, nil -- of the current batch
  local now_ts -- the time of events without ts: when the batch was given to the engine
  -- Decisions and rule errors, in order: {rule =, ev =, evidence =, and once decide() ran prior =,
  -- type =, ts =, app =, room =, user =} or {rule =, ev =, error =}. The last `pending` are the
  -- event's being evaluated.
  local outcomes, pending = {}, 0

  local function note(kind, t, field, window, scope, value)
    local n = #noted + 1
    if n <= 8 then
      noted[n] = { query = kind, type = t, field = field, window = window, scope = scope, value = value }
    end
  end

  local function window_arg(fname, t, window, scope)
    if type(t) ~= "string" or #t == 0 or #t > EVENT_TYPE_MAX then
      error(string_format("ctx:%s: expected an event type (a string of 1-%d bytes)", fname, EVENT_TYPE_MAX), 3)
    end
    if type(window) ~= "number" or window ~= window or window <= 0 or window == math.huge then
      error("ctx:" .. fname .. ": expected a window in seconds (> 0)", 3)
    end
    if scope ~= nil and scope ~= "user" and scope ~= "room" then
      error("ctx:" .. fname .. ": scope must be \"user\" (default) or \"room\"", 3)
    end
    if window > E.max_window then
      E.max_window = window
      keys.ttl = math_max(window, E.max_cooldown or 0)
    end
  end

  -- Registers one more counter, or raises (at `level`, the rule's line) when the engine counts
  -- max_counters kinds already: what bounds a record however many kinds events bring.
  local function new_counter(fname, level)
    local n = E.ncounters + 1
    if n > cfg.max_counters then
      error(string_format("ctx:%s: the engine counts %d kinds of events already (policy option max_counters); "
        .. "count fixed event types and fields, not ones made from event content", fname, cfg.max_counters), level)
    end
    E.ncounters = n
  end

  -- The record a query reads and its counter's slot, registering the counter (and counting the
  -- current event) on first use. `window` is a count window (nil for distinct): counters keep the
  -- seconds of the longest one.
  local function record_for(t, scope, window, fname, level)
    local room = scope == "room"
    local tr, kp = room and track_room or track, room and keep_room or keep
    local slot = tr[t]
    if not slot then new_counter(fname, level + 1) end
    if window and window > (kp[t] or 0) then kp[t] = window end
    local rec = c_rec
    if room then
      rec = c_room_rec or E:_room_rec(c_app, c_room, c_ts)
      c_room_rec = rec
    end
    if not slot then
      slot = E:_slot()
      tr[t] = slot
      if c_type == t then add_event(rec, slot, c_ev, c_sec, kp[t] or 0, slots) end
    end
    return rec, slot
  end

  -- The count windows in use, by scope and event type: {slot = the counter's slot, [window] = the
  -- window's cutoff offset}. A window is there once its arguments were checked and its counter keeps
  -- it; any other call of ctx:count goes the long way once.
  local wins_user, wins_room, wins_none = {}, {}, {}
  local function count_window(t, window, scope)
    local rec, slot = record_for(t, scope, window, "count", 4)
    local wins = scope == "room" and wins_room or wins_user
    local w = wins[t]
    if not w then w = { slot = slot, n = 0 }; wins[t] = w end
    -- The window's first second is c_sec - ceil(window) + 1 (seconds are whole): slots from
    -- there on, second * SLOT + ..., are at or above c_sec * SLOT - w[window].
    local woff = (math.ceil(window) - 1) * SLOT
    if w.n < WINDOWS_KEPT then w[window] = woff; w.n = w.n + 1 end
    return rec, w, woff
  end

  -- A user's offences within the offence window, and their entry (kept when it is older).
  local offenders, offence_window = E.offenders, cfg.offence_window
  local function offences_of(app, user, now)
    local g = offenders[app]
    local o = g and g.map[user]
    if not o or now - o.last > offence_window then return 0, o end
    return o.n, o
  end

  local methods = {}
  function methods.count(_, t, window, scope)
    local wins, rec = wins_user, c_rec
    if scope ~= nil then
      if scope == "room" then wins, rec = wins_room, c_room_rec elseif scope ~= "user" then wins = wins_none end
    end
    local w = wins[t]
    local woff = w and w[window]
    if not (woff and rec) then
      window_arg("count", t, window, scope)
      rec, w, woff = count_window(t, window, scope)
    end
    -- The events in the last `window` seconds up to second c_sec (the counter layout is above
    -- ring_new): the total minus the events before the first slot inside the window.
    local ring, v = rec[w.slot], 0
    local n = ring and ring[1] or 0
    if n > 0 then
      local cutoff, cap = c_sec * SLOT - woff, ring[4]
      local i = (n - 1) % cap + 5 -- the newest slot
      local s = ring[i]
      if s >= cutoff then
        local oldest = n > cap and n % cap + 5 or 5
        local so = ring[oldest]
        if so >= cutoff then
          s = so -- all of them (usual for long windows)
        elseif cap <= 8 then
          -- Back from the newest while inside the window; the oldest is not, so this stops.
          i = i - 1
          if i < 5 then i = i + cap end
          local si = ring[i]
          while si >= cutoff do
            s = si
            i = i - 1
            if i < 5 then i = i + cap end
            si = ring[i]
          end
        else -- binary search over the slots in age order (0 = the oldest held)
          local a, j = 0, (n < cap and n or cap) - 1
          while a < j do
            local m = a + math_floor((j - a) / 2)
            if ring[(oldest - 5 + m) % cap + 5] >= cutoff then j = m else a = m + 1 end
          end
          s = ring[(oldest - 5 + j) % cap + 5]
        end
        v = (ring[2] - s) % SLOT
        if v == 0 then v = SLOT - 1 end
      end
    end
    if recording then note("count", t, nil, window, scope or "user", v) end
    return v
  end

  function methods.distinct(_, t, field, window, scope)
    if type(field) ~= "string" or #field == 0 or #field > EVENT_TYPE_MAX then
      error(string_format("ctx:distinct: expected a field name (a string of 1-%d bytes)", EVENT_TYPE_MAX), 2)
    end
    window_arg("distinct", t, window, scope)
    local rec, slot = record_for(t, scope, nil, "distinct", 3)
    local registry = scope == "room" and track_room_fields or track_fields
    local fields = registry[t]
    if not fields then fields = {}; registry[t] = fields end
    if not fields[field] then
      new_counter("distinct", 3)
      fields[field] = true
      fields[#fields + 1] = field
      local v = c_ev[field]
      if c_type == t and (type(v) == "string" or type(v) == "number") then
        local ring = rec[slot] or ring_new()
        rec[slot] = ring
        distinct_add(ring, field, v, c_sec, dmax)
      end
    end
    local ring = rec[slot]
    local v = ring and distinct_count(ring, field, window, c_sec) or 0
    if recording then note("distinct", t, field, window, scope or "user", v) end
    return v
  end

  function methods.offences()
    local n = offences_of(c_app, c_user, c_ts)
    if recording then note("offences", nil, nil, offence_window, "app_user", n) end
    return n
  end

  function methods.now() return c_ts end

  -- Seconds since the engine started tracking this (room, user).
  function methods.age() return c_ts - c_rec[REC_SEEN] end

  local ctx = setmetatable({}, {
    __index = methods,
    __newindex = function() error("ctx is read-only", 2) end,
    __metatable = false,
  })
  -- What conditions see of the event: a read-only view (the holder's [1] is the event).
  local view, view_holder = sandbox.event_view()

  local function invalid_event(why)
    st.invalid = st.invalid + 1
    invalid, reason = invalid + 1, why
  end

  -- What makes an entry of a batch something ingest cannot take as it is (nil if nothing does):
  -- ingest leaves these checks to the error they raise (indexing what is not a table, comparing
  -- or counting with what is not a number), and batch() then asks here.
  local function event_problem(ev)
    if type(ev) ~= "table" then return "event is not a table" end
    local ts = ev.ts
    if ts ~= nil then return ts_problem(ts) end
  end

  -- The whole second of the times from sec_lo (included) to sec_hi (excluded): math.floor and the
  -- type check once per second of event time rather than once per event.
  local sec_lo, sec_hi, sec_of = 0, -1, 0

  -- Ingests one event; returns the rules watching it, or nothing when it stops here (invalid,
  -- duplicate, ignored, allowed, or watched by counters only).
  local function ingest(ev)
    local typ, app, room, user = ev.type, ev.app_id, ev.room_id, ev.user_id
    local rules, slot, rslot = by_type[typ], track[typ], track_room[typ]
    local watched = rules or slot or rslot -- then typ is a string: only strings are registered
    if not watched and type(typ) ~= "string" then
      return invalid_event(event_problem(ev) or field_problem(ev, "type"))
    end
    local ts, sec = ev.ts, sec_of
    if ts == nil then ts = now_ts end
    if ts >= sec_lo and ts < sec_hi then
      -- Comparing what is not a number raises unless it has comparison metamethods; a numeric
      -- `for` uses none, so this raises for anything but a number.
      for _ = ts, 0 do end
    else
      local why = event_problem(ev) or ts_problem(ts) -- the latter: the engine clock's, for no ts
      if why then return invalid_event(why) end
      sec = math_floor(ts)
      sec_lo, sec_hi, sec_of = sec, sec + 1, sec
    end
    local id = ev.id
    if id ~= nil then
      if seen_map[id] then st.duplicates = st.duplicates + 1; return end
      local tid = type(id)
      if tid == "string" then
        if #id > ID_MAX or id == "" then return invalid_event(id_problem(id)) end
      elseif tid ~= "number" or id % 1 ~= 0 then -- NaN and infinities too
        return invalid_event(id_problem(id))
      end
      -- The oldest id out first: the delete leaves an empty node the insert may take.
      local pos = seen_pos + 1
      if pos > dedupe then pos = 1 end
      local retired = seen_ring[pos]
      if retired then seen_map[retired] = nil end
      seen_ring[pos] = id
      seen_map[id] = true
      seen_pos = pos
    end
    if not watched then st.ignored = st.ignored + 1; return end
    if allow_roles[ev.role] then st.allowed = st.allowed + 1; return end

    -- app_id, room_id and user_id are checked where a record is made: a record is only ever
    -- found by the strings it was made for.
    local a = keys.young[app]
    local r = a and a[room]
    local rec = r and r[user]
    if not rec then rec = keys:promote(app, room, user, ts) end
    local ver = E.allow_ver
    if not rec or rec[REC_ALLOW] < ver then -- versions only grow
      if not rec and not (valid_app(app) and valid_id(room) and valid_id(user)) then
        return invalid_event(ids_problem(ev))
      end
      -- The allow-list verdict for the user id is kept in its record until the list changes.
      if E:_allowed_user(user) then st.allowed = st.allowed + 1; return end
      if not rec then
        rec = E:_new_rec(ts)
        keys:put(app, room, user, rec, ts)
      else
        rec[REC_ALLOW] = ver
      end
    end
    local room_rec = nil
    if slot then
      -- What add_event does for a counter that exists, needs no growth and counts no fields,
      -- inline (on the PUC interpreters the call costs as much as the update); add_event for
      -- the rest.
      local ring, fields = rec[slot], track_fields[typ]
      local total = ring and ring[2]
      if not total or fields then
        add_event(rec, slot, ev, sec, keep[typ] or 0, slots, fields, dmax)
      elseif sec <= ring[3] then
        ring[2] = total + 1
      else
        local n, cap = ring[1], ring[4]
        if n >= cap and cap < slots and ring[n % cap + 5] >= (sec - (keep[typ] or 0)) * SLOT then
          add_event(rec, slot, ev, sec, keep[typ] or 0, slots, nil, dmax)
        else
          ring[n % cap + 5] = sec * SLOT + total % SLOT
          ring[1] = n + 1
          ring[2] = total + 1
          ring[3] = sec
        end
      end
    end
    if rslot then
      room_rec = E:_room_rec(app, room, ts)
      add_event(room_rec, rslot, ev, sec, keep_room[typ] or 0, slots, track_room_fields[typ], dmax)
    end
    -- One assignment each: a multiple assignment goes through temporaries (twice the VM
    -- instructions; the same below, in the dedupe and the rule loop).
    c_ev = ev; c_type = typ; c_ts = ts; c_sec = sec
    c_app = app; c_room = room; c_user = user; c_rec = rec
    c_room_rec = room_rec
    return rules
  end

  -- The state half of the current event's decisions, made after all its conditions ran (so none
  -- of them sees offences added by the same event) and before the next event (which sees them);
  -- the rest is for Engine:_act.
  local function decide()
    local n = #outcomes
    for k = n - pending + 1, n do
      local o = outcomes[k]
      if not o.error then
        local prior, off = offences_of(c_app, c_user, c_ts)
        -- Offences and cooldowns count in dry-run too, so a replay shows the ladder a live run would climb.
        local cool = c_rec[REC_COOL]
        if not cool then cool = {}; c_rec[REC_COOL] = cool end
        cool[o.rule.index] = c_ts + o.rule.cooldown
        if off then off.n, off.last = prior + 1, c_ts else off = { n = 1, last = c_ts } end
        E:_offenders(c_app):put(c_user, off) -- to the front of the recent offenders
        o.prior, o.type, o.ts, o.app, o.room, o.user = prior, c_type, c_ts, c_app, c_room, c_user
        made = made + 1
      end
    end
    pending = 0
  end

  -- Runs events[at_event..] (resuming at rule at_rule of the first one when it is not 0).
  local function run(events)
    local resume = at_rule
    at_rule = 0
    local steps, steps_first, steps_rest, cx, vw = budget, first_steps, rest_steps, ctx, view -- in registers
    for i = at_event, #events do
      at_event = i
      local rules
      local first = 1
      if resume > 0 then
        rules, first, resume = by_type[c_type], resume, 0
      else
        rules = ingest(events[i])
      end
      if rules then
        local ev, ts, cool = c_ev, c_ts, c_rec[REC_COOL]
        view_holder[1] = ev
        -- The memory budget covers the conditions of one event; engine allocations are outside it.
        arm()
        for k = first, #rules do
          local r = rules[k]
          if cool and ts < (cool[r.index] or ts) then -- (a rule that never acted here: no entry)
            st.cooldown = st.cooldown + 1
          else
            -- at_rule names the rule an error comes from; it stays set until engine code that
            -- could fail runs (below and after the loop).
            at_rule = k
            steps[1] = steps_first
            steps[2] = steps_rest
            local test = r.test
            if test(vw, cx) then
              -- Once more, noting the queries it makes: the decision's evidence. (Conditions
              -- see the same state both times; only reads happen in between.)
              recording, steps[1], steps[2] = true, steps_first, steps_rest
              test(vw, cx)
              recording = false
              at_rule = 0
              disarm()
              outcomes[#outcomes + 1] = { rule = r, ev = ev, evidence = noted }
              noted, pending = {}, pending + 1
              arm()
            end
          end
        end
        at_rule = 0
        disarm()
        if pending > 0 then decide() end
      end
    end
  end

  -- Runs a batch: returns decisions made, invalid events, the last invalid event's reason, and an
  -- error raised by the engine itself (not by rule code), if any.
  local function batch(events)
    made, invalid, reason = 0, 0, nil
    at_event, at_rule = 1, 0
    now_ts = E.now()
    runner.enter()
    local failure
    while true do
      local ok, err = runner.protect(run, events)
      if ok then break end
      local k = at_rule
      noted, recording = {}, false
      if k == 0 then
        -- The engine's own error, or an entry that is not an event (see event_problem).
        local why = event_problem(events[at_event])
        if not why then
          failure = err
          decide()
          break
        end
        invalid_event(why)
        at_event = at_event + 1
      else
        outcomes[#outcomes + 1] = { rule = by_type[c_type][k], ev = c_ev, error = err }
        pending, at_rule = pending + 1, k + 1
      end
    end
    runner.leave()
    st.events = st.events + (failure and at_event or #events) -- the failing one was seen too
    return made, invalid, reason, failure
  end

  -- The outcomes so far, handed over (callbacks acting on them may run another batch).
  local function take()
    local list = outcomes
    if #list > 0 then outcomes = {} end
    return list
  end

  -- Where the ring of event ids was last written (for Engine:snapshot).
  local function seen_at() return seen_pos end

  return ctx, batch, take, seen_at
end

-- A new record: its first REC_PREALLOC slots filled (so they are in the array part); counters
-- beyond those take a slot (in the hash part) only in the records that have them, so a record's
-- size follows what its user did, not how many kinds of events the engine counts.
function Engine:_new_rec(ts)
  local rec = { table_unpack(self.tmpl, 1, math_min(self.nslots, REC_PREALLOC)) }
  rec[REC_SEEN], rec[REC_ALLOW] = ts, self.allow_ver
  return rec
end

-- A counter's slot in every record from now on (false until counted; records made before read nil).
function Engine:_slot()
  local i = self.nslots + 1
  self.nslots, self.tmpl[i] = i, false
  return i
end

function Engine:_room_rec(app, room, ts)
  local rec = self.keys:get(app, room, ROOM, ts)
  if not rec then
    rec = self:_new_rec(ts)
    self.keys:put(app, room, ROOM, rec, ts)
  end
  return rec
end

function Engine:_emit(record)
  if self.audit then self.audit(record) end
end

function Engine:_rule_error(r, msg, ev)
  local st = self.st
  st.rule_errors = st.rule_errors + 1
  local n = (st.errors_by_rule[r.name] or 0) + 1
  st.errors_by_rule[r.name] = n
  if n > self.cfg.rule_error_reports then return end
  if not msg:find("^[^\n]-:%d+:") then msg = r.at .. ": " .. msg end
  local rec = { kind = "rule_error", run = self.run, time = iso_time(wall_clock()), rule = r.name, rule_at = r.at,
                error = msg, event_id = ev.id, event_type = ev.type }
  self:_emit(rec)
  if self.on_error then self.on_error(rec) end
end


-- Acts on a batch's outcomes, in order: decisions (audit, callbacks, the send queue) and rule errors.
function Engine:_act(list)
  for i = 1, #list do
    local o = list[i]
    if o.error then self:_rule_error(o.rule, o.error, o.ev) else self:_decision(o) end
  end
end

-- A decision's deterministic id (its audit field decision_id, the send journal's key): 32 hex digits
-- of the SHA-256 of its event id, rule name and target (app, room, user), each with its length. The
-- same event decided again by the same rule about the same user -- after a restore, replaying the
-- events since the snapshot -- gets the same id. An event without an id is named by the engine's
-- run and decision number instead (restored with the state, so the same after a restore too).
-- Without the C module (the Lua files alone), the id is that string itself.
local function decision_id_of(self, ev, rule, app, room, user)
  local id, key = ev.id
  if type(id) == "string" then key = "s" .. id
  elseif id ~= nil then key = string_format("n%.17g", id)
  else key = string_format("r%s#%d", self.run, self.next_decision) end
  local s = string_format("%d:%s%d:%s%d:%s%d:%s%d:%s", #key, key, #rule, rule, #app, app, #room, room, #user, user)
  return sha256 and sha256(s):sub(1, 32) or s
end

-- A decision from an outcome of the run (Engine:_make_hot): recorded, counted, queued unless dry.
function Engine:_decision(o)
  local r, ev, prior = o.rule, o.ev, o.prior
  local act, step = r.action, nil
  if act.kind == "escalate" then
    step = math_min(prior + 1, #act.steps)
    act = act.steps[step]
  end
  self.next_decision = self.next_decision + 1
  local dry = self.dry_run or r.dry_run
  local d = {
    kind = "decision", run = self.run, id = self.next_decision, decision_id = decision_id_of(self, ev, r.name, o.app,
    o.room, o.user), time = iso_time(wall_clock()), event_id = ev.id,
    event_ts = o.ts, event_type = o.type, rule = r.name, rule_at = r.at, evidence = json_array(o.evidence),
    action = act.kind, scope = act.kind == "ban_everywhere" and "app_user" or "room_user",
    app_id = o.app, room_id = o.room, user_id = o.user, duration = act.duration,
    audio = act.kind == "mute" and act.audio or nil, video = act.kind == "mute" and act.video or nil,
    step = step, offences = prior, dry_run = dry, attempts = 0,
    outcome = dry and "dry_run" or "queued",
  }
  local st = self.st
  st.decisions = st.decisions + 1
  st.by_rule[r.name] = st.by_rule[r.name] + 1
  st.by_action[act.kind] = (st.by_action[act.kind] or 0) + 1
  if dry then
    st.dry_run = st.dry_run + 1
    self:_count_outcome(d)
  else
    self.queue[#self.queue + 1] = d
  end
  self:_emit(d)
  if self.on_decision then self.on_decision(d) end
  return d
end

-- Processes one event. Returns the number of decisions it caused, or nil, reason for an invalid event.
function Engine:process(ev)
  local one = self._one
  one[1] = ev
  local made, invalid, reason, failure = self._batch(one)
  one[1] = nil
  self:_act(self._take())
  if failure then error(failure, 0) end
  if invalid > 0 then return nil, reason end
  return made
end

-- On LuaJIT the engine is compiled and, with many users, its time goes to cache misses on large
-- maps. A first pass over a batch looks up each event's id, record and counter and so has those
-- misses overlap rather than wait one after another; the second pass finds them in cache. (On
-- the PUC interpreters the extra pass costs more than it saves.)
local PREFETCH = rawget(_G, "jit") ~= nil

local function prefetch(self, events)
  local seen, young, track, ver, n = self.seen.map, self.keys.young, self.track, self.allow_ver, 0
  for i = 1, #events do
    local ev = events[i]
    if type(ev) == "table" then
      local id = ev.id
      if id ~= nil and id == id and seen[id] then n = n + 1 end
      local a = young[ev.app_id]
      local r = a and a[ev.room_id]
      local rec = r and r[ev.user_id]
      if rec and rec[REC_ALLOW] == ver then
        local ring = rec[track[ev.type] or REC_SEEN]
        if type(ring) == "table" and ring[1] == 0 then n = n + 1 end
      end
    end
  end
  return n -- used, so the compiler keeps the loads
end

-- Processes a list of events. Returns decisions, invalid count. Decisions and rule errors are acted
-- on (audit, callbacks, the send queue) after the whole list has been evaluated, in order.
function Engine:process_batch(events)
  if PREFETCH then prefetch(self, events) end
  local made, invalid, _, failure = self._batch(events)
  self:_act(self._take())
  if failure then error(failure, 0) end
  return made, invalid
end

-- Counts an input that never became an event (e.g. a line that is not JSON).
function Engine:note_invalid()
  self.st.events = self.st.events + 1
  self.st.invalid = self.st.invalid + 1
end


-- The counters stats() returns, in the order its tostring shows them.
local STATS_SHOWN = { "events", "ignored", "duplicates", "allowed", "invalid", "decisions", "dry_run", "queued",
  "waiting", "succeeded", "failed", "retried", "recovered", "resent", "bans_extended", "bans_already", "cooldown",
  "rule_errors", "keys", "keys_dropped" }

-- "{a=1, b=2}" for a map of names to counts, names sorted.
local function counts_text(t)
  local names = {}
  for k in pairs(t) do names[#names + 1] = tostring(k) end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = k .. "=" .. tostring(t[k]) end
  return "{" .. table.concat(names, ", ") .. "}"
end

-- stats(): a plain table of counters whose tostring is one line, `name=value` for each.
local Stats = { __name = "rtcadmin.policy.stats" }
function Stats.__tostring(st)
  local parts = {}
  for _, k in ipairs(STATS_SHOWN) do
    if st[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(st[k]) end
  end
  for _, k in ipairs({ "by_action", "by_rule", "errors_by_rule" }) do
    if type(st[k]) == "table" and next(st[k]) ~= nil then parts[#parts + 1] = k .. "=" .. counts_text(st[k]) end
  end
  return table.concat(parts, " ")
end

function Engine:stats()
  local st = {}
  for k, v in pairs(self.st) do st[k] = v end
  st.keys = self.keys:count()
  st.keys_dropped = self.keys.dropped
  st.waiting = #self.waiting
  st.queued = #self.queue
  return setmetatable(st, Stats)
end

-- "rtcadmin.policy{rules=4, events=143, decisions=24, ...}": what a REPL shows of an engine.
function Engine:__tostring()
  local st = self.st
  return string_format("rtcadmin.policy{rules=%d, events=%d, decisions=%d, queued=%d, waiting=%d, failed=%d%s}",
    #self.rules, st.events, st.decisions, #self.queue, #self.waiting, st.failed, self.dry_run and ", dry_run" or "")
end

policy.Engine = Engine
return policy
