-- Saving and restoring a policy engine's state: engine:snapshot() -> string, engine:restore(s) ->
-- true | nil, err. Its functions are engine methods (rtcadmin.policy installs them). See
-- docs/policy.md ("Saving and restoring state") and, for the encoding, docs/api.md ("Packing plain
-- data").
--
-- A snapshot is rtcadmin.pack of one table: what the engine remembers and what decides its future
-- decisions and actions (records and their counters, distinct values and cooldowns, offences, the
-- recent event ids, the bans it made, queued, retrying and failed decisions, its stats, its run id
-- and decision numbering, and which counters have which slot in a record). Rules are not in it:
-- they are code, loaded from their files; a snapshot names them, and cooldowns follow a rule by its
-- name. Restoring decodes the whole string and checks every part against the shape the engine
-- writes before anything of the engine changes, so a corrupt, truncated or foreign snapshot leaves
-- it as it was.
local store = require "rtcadmin.store"

local state = {}

local type, pairs, ipairs, tostring, next, getmetatable = type, pairs, ipairs, tostring, next, getmetatable
local string_format, math_max = string.format, math.max

local core
do
  local ok, m = pcall(require, "rtcadmin")
  if ok and type(m) == "table" and m.pack then core = m end
end

local FORMAT, VERSION = "rtcadmin.policy", 1
state.FORMAT, state.VERSION = FORMAT, VERSION

-- Engine options that shape the saved structures: a snapshot is restored only into an engine with
-- the same values.
local SHAPING = { "max_keys", "dedupe", "max_offenders", "slots", "distinct_max", "max_counters" }
-- The engine's counters (stats) saved as numbers, and its maps of them.
-- The maps among the engine's counters; by_outcome is false: snapshots made before it lack it.
local STAT_MAPS = { by_rule = true, by_action = true, errors_by_rule = true, by_outcome = false }

local REC_SEEN, REC_ALLOW, REC_COOL, REC_FIXED = store.REC_SEEN, store.REC_ALLOW, store.REC_COOL, store.REC_FIXED
local ROOM = store.ROOM

local Engine = state -- the methods below are the engine's

local function recent_out(r)
  return { map = r.map, ring = r.ring, pos = r.pos, dropped = r.dropped }
end

-- The engine's state as one string (rtcadmin.pack; docs/policy.md, "Saving and restoring state").
function Engine:snapshot()
  if not core then error("rtcadmin.policy: snapshot needs the rtcadmin C module (rtcadmin.pack)", 2) end
  local cfg, keys = self.cfg, self.keys
  local limits = {}
  for _, k in ipairs(SHAPING) do limits[k] = cfg[k] end
  local names = {}
  for i, r in ipairs(self.rules) do names[i] = r.name end
  local offenders = {}
  for app, g in pairs(self.offenders) do offenders[app] = recent_out(g) end
  return core.pack({
    format = FORMAT, version = VERSION, limits = limits, rules = names,
    run = self.run, next_decision = self.next_decision, allow_ver = self.allow_ver,
    max_window = self.max_window,
    counters = {
      nslots = self.nslots, ncounters = self.ncounters, track = self.track, track_room = self.track_room,
      keep = self.keep, keep_room = self.keep_room, fields = self.track_fields, room_fields = self.track_room_fields,
    },
    keys = { young = keys.young, old = keys.old, n = keys.n, old_n = keys.old_n, born = keys.born,
             dropped = keys.dropped },
    seen = { ring = self.seen.ring, pos = self._seen_pos() },
    offenders = offenders, bans = recent_out(self.bans),
    queue = self.queue, waiting = self.waiting, failures = self.failures,
    st = self.st,
  })
end

---------------------------------------------------------------------------------------------------
-- Checking a decoded snapshot. Each check raises a string naming the part that is wrong; restore
-- turns it into nil, "rtcadmin.policy: cannot restore: <what>".

local Bad = {}
local function bad(fmt, ...) error(setmetatable({ msg = string_format(fmt, ...) }, Bad), 0) end

local function is_int(v) return type(v) == "number" and v % 1 == 0 and v >= 0 and v < 2 ^ 53 end
local function is_num(v) return type(v) == "number" and v == v end -- (infinities are numbers here)
local function want_table(v, what)
  if type(v) ~= "table" then bad("%s is not a table", what) end
  return v
end
local function want_int(v, what)
  if not is_int(v) then bad("%s is not a whole number", what) end
  return v
end
local function want_num(v, what)
  if not is_num(v) then bad("%s is not a number", what) end
  return v
end

-- A record: [1] first seen, [2] allow-list version, [3] false or the cooldowns (rule index -> end),
-- then a slot per counter: false, nil or a counter, {[1] slots used, [2] events, [3] newest second,
-- [4] capacity, [5..] its ring; .d the distinct values by field}. The bulk of a snapshot: checked
-- as far as the engine relies on a part's type to find the next (the numbers of a counter's ring and
-- its distinct values are read as numbers and keys; checking each took longer than decoding).
local function check_rec(rec, nslots, nrules, slots)
  if type(rec) ~= "table" then bad("a record is not a table") end
  if type(rec[REC_SEEN]) ~= "number" or type(rec[REC_ALLOW]) ~= "number" then bad("a record's header is wrong") end
  local cool = rec[REC_COOL]
  if cool then
    if type(cool) ~= "table" then bad("a record's cooldowns are not a table") end
    for i, t in pairs(cool) do
      if type(i) ~= "number" or i < 1 or i > nrules or type(t) ~= "number" then bad("a record's cooldown is wrong") end
    end
  elseif cool ~= false then
    bad("a record's cooldowns are missing")
  end
  for k = REC_FIXED + 1, nslots do
    local ring = rec[k]
    if ring then
      if type(ring) ~= "table" then bad("a record's counter is not a table") end
      local n, total, newest, cap = ring[1], ring[2], ring[3], ring[4]
      if type(n) ~= "number" or type(total) ~= "number" or type(newest) ~= "number" or type(cap) ~= "number"
        or cap < 4 or cap > slots or cap % 1 ~= 0 or type(ring[cap + 4]) ~= "number" then
        bad("a counter's header is wrong")
      end
      local d = ring.d
      if d ~= nil and type(d) ~= "table" then bad("a counter's distinct values are not a table") end
    end
  end
end

-- One generation of records: app -> room -> user (or ROOM) -> record. Returns how many.
local function check_generation(g, nslots, nrules, slots)
  local count = 0
  for app, rooms in pairs(want_table(g, "a generation of records")) do
    if type(app) ~= "string" or type(rooms) ~= "table" then bad("records: an app is wrong") end
    for room, users in pairs(rooms) do
      if type(room) ~= "string" or type(users) ~= "table" then bad("records: a room is wrong") end
      for user, rec in pairs(users) do
        if type(user) ~= "string" and user ~= ROOM then bad("records: a user is wrong") end
        check_rec(rec, nslots, nrules, slots)
        count = count + 1
      end
    end
  end
  return count
end

-- A recent set (store.recent_new): map key -> entry {at = ring position, ...}, ring position -> key.
local function check_recent(r, cap, what, entry_ok)
  want_table(r, what)
  local map, ring = want_table(r.map, what .. ".map"), want_table(r.ring, what .. ".ring")
  want_int(r.pos, what .. ".pos")
  want_int(r.dropped, what .. ".dropped")
  if r.pos > cap then bad("%s.pos is beyond its capacity", what) end
  for k, e in pairs(map) do
    if type(e) ~= "table" or not is_int(e.at) or e.at < 1 or e.at > cap or ring[e.at] ~= k or not entry_ok(e) then
      bad("%s: an entry is wrong", what)
    end
  end
  for i in pairs(ring) do
    if not is_int(i) or i < 1 or i > cap then bad("%s.ring is wrong", what) end
  end
end
local function offence_ok(e) return is_int(e.n) and is_num(e.last) end
local function ban_ok(e) return is_num(e.ends) end

-- A decision kept for sending or listed as failed: the fields the outbox reads.
local DECISION_STRINGS = { "action", "app_id", "user_id", "rule", "outcome" }
local function check_decision(d, what)
  if type(d) ~= "table" or d.kind ~= "decision" then bad("%s: not a decision", what) end
  for _, f in ipairs(DECISION_STRINGS) do
    if type(d[f]) ~= "string" then bad("%s: a decision's %s is wrong", what, f) end
  end
  if d.action ~= "kick" and d.action ~= "ban" and d.action ~= "ban_everywhere" and d.action ~= "mute" then
    bad("%s: unknown action", what)
  end
  if d.action ~= "ban_everywhere" and type(d.room_id) ~= "string" then
    bad("%s: a decision's room_id is wrong", what)
  end
  if d.duration ~= nil and not is_num(d.duration) then bad("%s: a decision's duration is wrong", what) end
  if not is_int(d.attempts) then bad("%s: a decision's attempts are wrong", what) end
  if d.evidence ~= nil and type(d.evidence) ~= "table" then bad("%s: a decision's evidence is wrong", what) end
  if d.error ~= nil and type(d.error) ~= "table" then bad("%s: a decision's error is wrong", what) end
end
local function check_decisions(list, what, retrying)
  want_table(list, what)
  for i = 1, #list do
    local d = list[i]
    check_decision(d, what)
    if retrying and not is_num(d.next_retry_at) then bad("%s: a decision's next_retry_at is wrong", what) end
  end
  if next(list, #list > 0 and #list or nil) ~= nil then bad("%s is not a list", what) end
end

local function check_map_of(t, what, key_type, value_ok)
  for k, v in pairs(want_table(t, what)) do
    if type(k) ~= key_type or not value_ok(v) then bad("%s is wrong", what) end
  end
end
local function is_slot_of(nslots) return function(v) return is_int(v) and v > REC_FIXED and v <= nslots end end
local function is_window(v) return is_num(v) and v >= 0 end

-- The counter registrations: event type -> slot, -> longest window kept, -> the fields counted.
local function check_counters(c, limits)
  want_table(c, "counters")
  local nslots = want_int(c.nslots, "counters.nslots")
  if nslots < REC_FIXED then bad("counters.nslots is too small") end
  local ncounters = want_int(c.ncounters, "counters.ncounters")
  if ncounters > limits.max_counters then bad("counters.ncounters is over max_counters") end
  local slot_ok = is_slot_of(nslots)
  check_map_of(c.track, "counters.track", "string", slot_ok)
  check_map_of(c.track_room, "counters.track_room", "string", slot_ok)
  check_map_of(c.keep, "counters.keep", "string", is_window)
  check_map_of(c.keep_room, "counters.keep_room", "string", is_window)
  for _, name in ipairs({ "fields", "room_fields" }) do
    for t, fields in pairs(want_table(c[name], "counters." .. name)) do
      if type(t) ~= "string" or type(fields) ~= "table" then bad("counters.%s is wrong", name) end
      for k, v in pairs(fields) do
        local list_entry = is_int(k) and k >= 1 and k <= #fields and type(v) == "string"
        local set_entry = type(k) == "string" and v == true
        if not (list_entry or set_entry) then bad("counters.%s is wrong", name) end
      end
    end
  end
  return nslots
end

local function check_snapshot(s, self)
  want_table(s, "the snapshot")
  if s.format ~= FORMAT then bad("not a policy engine snapshot") end
  if s.version ~= VERSION then
    bad("snapshot format version %s, this rtcadmin reads version %d", tostring(s.version), VERSION)
  end
  local limits = want_table(s.limits, "limits")
  for _, k in ipairs(SHAPING) do
    if limits[k] ~= self.cfg[k] then
      bad("the snapshot was made with %s = %s, this engine has %s = %s (they must be the same)", k,
        tostring(limits[k]), k, tostring(self.cfg[k]))
    end
  end
  local names = want_table(s.rules, "rules")
  for i = 1, #names do if type(names[i]) ~= "string" then bad("rules is not a list of names") end end
  if type(s.run) ~= "string" or s.run == "" then bad("run is not a string") end
  want_int(s.next_decision, "next_decision")
  want_int(s.allow_ver, "allow_ver")
  want_num(s.max_window, "max_window")
  local nslots = check_counters(s.counters, limits)
  local keys = want_table(s.keys, "keys")
  for _, f in ipairs({ "n", "old_n", "dropped" }) do want_int(keys[f], "keys." .. f) end
  if keys.born ~= nil then want_num(keys.born, "keys.born") end
  if check_generation(keys.young, nslots, #names, limits.slots) ~= keys.n then
    bad("keys.n does not match the records")
  end
  if check_generation(keys.old, nslots, #names, limits.slots) ~= keys.old_n then
    bad("keys.old_n does not match the records")
  end
  local seen = want_table(s.seen, "seen")
  local ring = want_table(seen.ring, "seen.ring")
  want_int(seen.pos, "seen.pos")
  if seen.pos > limits.dedupe or #ring > limits.dedupe or next(ring, #ring > 0 and #ring or nil) ~= nil then
    bad("seen is wrong")
  end
  for i = 1, #ring do
    local id = ring[i]
    if type(id) ~= "string" and not (type(id) == "number" and id % 1 == 0) then bad("seen: an event id is wrong") end
  end
  for app, g in pairs(want_table(s.offenders, "offenders")) do
    if type(app) ~= "string" then bad("offenders: an app is wrong") end
    check_recent(g, limits.max_offenders, "offenders", offence_ok)
  end
  check_recent(s.bans, limits.max_offenders, "bans", ban_ok)
  check_decisions(s.queue, "queue")
  check_decisions(s.waiting, "waiting", true)
  check_decisions(s.failures, "failures")
  local st = want_table(s.st, "st")
  for k, v in pairs(st) do
    if type(k) ~= "string" then bad("st is wrong") end
    if STAT_MAPS[k] ~= nil then check_map_of(v, "st." .. k, "string", is_int)
    elseif not is_int(v) then bad("st.%s is not a whole number", k) end
  end
  for k, required in pairs(STAT_MAPS) do
    if required then want_table(st[k], "st." .. k) end
  end
end

---------------------------------------------------------------------------------------------------
-- Restoring.

-- Cooldowns are kept by rule index: moved to this engine's index of the rule with the same name
-- (those of rules it does not have are dropped). Nothing to do when the rules are the same.
local function cooldown_map(names, rules)
  local here, same = {}, #names == #rules
  for i, r in ipairs(rules) do here[r.name] = i end
  local map = {}
  for i, name in ipairs(names) do
    map[i] = here[name] or false
    if map[i] ~= i then same = false end
  end
  return not same and map or nil
end

local function remap_cooldowns(g, map)
  for _, rooms in pairs(g) do
    for _, users in pairs(rooms) do
      for _, rec in pairs(users) do
        local cool = rec[REC_COOL]
        if cool then
          local moved = {}
          for i, t in pairs(cool) do
            local j = map[i]
            if j then moved[j] = t end
          end
          rec[REC_COOL] = next(moved) ~= nil and moved or false
        end
      end
    end
  end
end

-- Pauses the collector if it runs (Lua 5.2+ and LuaJIT can tell; 5.1 is left as it is).
local function gc_pause()
  local ok, running = pcall(collectgarbage, "isrunning")
  if ok and running then collectgarbage("stop") return true end
  return false
end
local function gc_resume(paused)
  if paused then collectgarbage("restart") end
end

local function recent_in(r, cap)
  local g = store.recent_new(cap)
  g.map, g.ring, g.pos, g.dropped = r.map, r.ring, r.pos, r.dropped
  return g
end

-- Restores a snapshot (engine:snapshot(), of an engine with the same options that shape its state)
-- into this engine, whose rules are loaded: true, or nil, err with the engine unchanged.
function Engine:restore(s)
  if type(s) ~= "string" then error("rtcadmin.policy: restore expects a snapshot string, got " .. type(s), 2) end
  if not core then error("rtcadmin.policy: restore needs the rtcadmin C module (rtcadmin.unpack)", 2) end
  -- The collector is paused while the snapshot is decoded and checked: everything made is kept, and
  -- a collection in the middle would only walk the heap again (a third of the time, with 100k users).
  local paused = gc_pause()
  local t, err = core.unpack(s)
  local ok, why = true, nil
  if not err then ok, why = pcall(check_snapshot, t, self) end
  if err or not ok then gc_resume(paused) end
  if err then return nil, "rtcadmin.policy: cannot restore: " .. tostring(err):gsub("^rtcadmin%.unpack: ", "") end
  if not ok then
    if getmetatable(why) ~= Bad then error(why, 0) end
    return nil, "rtcadmin.policy: cannot restore: " .. why.msg
  end

  -- Everything checked: from here on nothing fails.
  local map = cooldown_map(t.rules, self.rules)
  if map then
    remap_cooldowns(t.keys.young, map)
    remap_cooldowns(t.keys.old, map)
  end
  local c = t.counters
  self.nslots, self.ncounters = c.nslots, c.ncounters
  local tmpl = { 0, 0, false }
  for i = REC_FIXED + 1, c.nslots do tmpl[i] = false end
  self.tmpl = tmpl
  self.track, self.track_room, self.keep, self.keep_room = c.track, c.track_room, c.keep, c.keep_room
  self.track_fields, self.track_room_fields = c.fields, c.room_fields
  self.max_window = t.max_window
  local keys = store.gen3_new(self.cfg.max_keys, math_max(t.max_window, self.max_cooldown or 0))
  local k = t.keys
  keys.young, keys.old, keys.n, keys.old_n, keys.born, keys.dropped = k.young, k.old, k.n, k.old_n, k.born, k.dropped
  self.keys = keys
  -- Records keep the allow-list version they were checked against: a version above both engines'
  -- has every record checked again against this engine's allow-list (the same verdicts when the list
  -- is the same).
  self.allow_ver = math_max(self.allow_ver, t.allow_ver) + 1
  local seen_map = {}
  for _, id in ipairs(t.seen.ring) do seen_map[id] = true end
  self.seen = { map = seen_map, ring = t.seen.ring, pos = t.seen.pos }
  local offenders = {}
  for app, g in pairs(t.offenders) do offenders[app] = recent_in(g, self.cfg.max_offenders) end
  self.offenders = offenders
  self.bans = recent_in(t.bans, self.cfg.max_offenders)
  local json_array = core.json_array
  for _, list in ipairs({ t.queue, t.waiting, t.failures }) do
    for _, d in ipairs(list) do
      if d.evidence then json_array(d.evidence) end
    end
  end
  self.queue, self.waiting, self.failures = t.queue, t.waiting, t.failures
  -- The stats as saved (counters this engine has and the snapshot lacks start at 0), with a count
  -- for each rule of this engine.
  local st = {}
  for name in pairs(self.st) do
    if STAT_MAPS[name] == nil then st[name] = 0 else st[name] = {} end
  end
  for name, v in pairs(t.st) do st[name] = v end
  for _, r in ipairs(self.rules) do
    if st.by_rule[r.name] == nil then st.by_rule[r.name] = 0 end
  end
  self.st = st
  self.run, self.next_decision = t.run, t.next_decision
  -- The per-event closures hold the tables above in locals: made again over the restored ones.
  self.ctx, self._batch, self._take, self._seen_pos = self:_make_hot()
  gc_resume(paused)
  return true
end

return state
