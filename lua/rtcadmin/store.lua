-- The policy engine's bounded state: recent sets, records in two generations, and the windowed
-- counters kept in records. Plain data structures, no Lua sandbox and no I/O; the engine's
-- per-event path (rtcadmin.policy) reads and writes them directly for speed. See docs/policy.md
-- ("Bounded memory").
local store = {}

local type, pairs, setmetatable = type, pairs, setmetatable
local math_min, string_sub = math.min, string.sub

-- A distinct value longer than this is kept as its first DISTINCT_KEEP bytes and its length.
local DISTINCT_KEEP = 128

-- The most recent `cap` keys: a map and the ring that retires them, oldest first, with no
-- generations to look through (one lookup for a key that is not there, which is the usual case).
-- Putting a key again moves it to the front: its entry (a table) records its ring position, so
-- the older position retires nothing. (The event ids seen, a plain set, have a ring of their own
-- in the engine's per-event path.)
local Recent = {}
Recent.__index = Recent

local function recent_new(cap)
  return setmetatable({ map = {}, ring = {}, pos = 0, cap = cap, dropped = 0 }, Recent)
end

-- Puts `k` with entry `e` (a table: its field `at` is set to its ring position).
function Recent:put(k, e)
  local ring, map = self.ring, self.map
  local pos = self.pos % self.cap + 1
  local retired = ring[pos]
  if retired ~= nil then
    local old = map[retired]
    if old and old.at == pos then map[retired] = nil; self.dropped = self.dropped + 1 end
  end
  e.at = pos
  ring[pos], map[k], self.pos = k, e, pos
end

-- Records: a bounded map of (app, room, user) keys with approximate LRU eviction and no per-access
-- bookkeeping, in two generations. New keys go into the young generation; when it holds `cap`
-- keys, or is older than `ttl` seconds, it becomes the old one and the previous old generation is
-- dropped. A hit in the old generation moves the key to the young one. So at most 2*cap keys are
-- held, and a key survives as long as it is seen at least once per generation. Keys are nested maps
-- app -> room -> user -> value, so a lookup builds no string (the event's strings are looked up as
-- they are). A room's own record sits under the key ROOM, which no user id (a string) can equal.
local ROOM = 0
local Gen3 = {}
Gen3.__index = Gen3

local function gen3_new(cap, ttl)
  return setmetatable({ young = {}, old = {}, n = 0, cap = cap, ttl = ttl, born = nil, dropped = 0, old_n = 0 }, Gen3)
end

function Gen3:rotate(now)
  self.dropped = self.dropped + self.old_n
  self.old, self.young, self.old_n, self.n, self.born = self.young, {}, self.n, 0, now
end

function Gen3:count() return self.n + self.old_n end

function Gen3:get(app, room, user, now)
  local a = self.young[app]
  local r = a and a[room]
  local v = r and r[user]
  if v ~= nil then return v end
  return self:promote(app, room, user, now)
end

-- A key from the old generation, moved to the young one (nil if it is not there).
function Gen3:promote(app, room, user, now)
  local a = self.old[app]
  local r = a and a[room]
  local v = r and r[user]
  if v ~= nil then
    r[user] = nil
    self.old_n = self.old_n - 1
    self:put(app, room, user, v, now)
  end
  return v
end

function Gen3:put(app, room, user, v, now)
  local born = self.born
  if born == nil then self.born = now
  elseif self.n >= self.cap or (self.ttl and now - born > self.ttl) then self:rotate(now) end
  local young = self.young
  local a = young[app]
  if not a then a = {}; young[app] = a end
  local r = a[room]
  if not r then r = {}; a[room] = r end
  r[user] = v
  self.n = self.n + 1
end

---------------------------------------------------------------------------------------------------
-- Records and counters. A record (per (room, user), or per room) is one array: [1] the second it
-- was first seen, [2] the allow-list version it was last checked against, [3] its cooldowns (false,
-- or rule index -> the time the cooldown ends: only actioned users have one), then a slot per
-- counted event type (its counter), numbered by the engine as counters appear. Small arrays, so an
-- event touches few cache lines: with many users much of an event's time is waiting for memory.
--
-- A counter: the seconds that had events (a burst within one second takes one slot) and a running
-- total; count(window) = total minus the events before the first slot inside the window. A slot is
-- one number, second * 2^16 + (events before it mod 2^16), so a count saturates at 65535 per window.
-- Layout: [1] slots used so far, [2] events, [3] newest second, [4] capacity, [5..] a ring of
-- slots. The ring starts with 4 slots and doubles, up to `slots`, only when the slot it would
-- overwrite is still inside the longest window counted for that type: a user with a few events a
-- minute keeps 8 numbers. Windows have one-second resolution; an event older than the newest one in
-- its counter counts at the newest one's second. Seconds are whole numbers, math.floor of the time
-- taken once per event (an integer on 5.3+, where `%` on a float is a slow call to fmod). ctx:count
-- reads a counter.
local SLOT = 65536
local REC_SEEN, REC_ALLOW, REC_COOL, REC_FIXED = 1, 2, 3, 3
local function ring_new() return { 0, 0, -math.huge, 4, 0, 0, 0, 0 } end

-- Distinct values per counter and field: value -> the last second it was seen (at most `cap`).
-- NaN cannot be a key (and is distinct from itself); a long string is kept by its head and length.
local function distinct_add(ring, field, value, sec, cap)
  if value ~= value then return end
  if type(value) == "string" and #value > DISTINCT_KEEP then
    value = string_sub(value, 1, DISTINCT_KEEP) .. "#" .. #value
  end
  local d = ring.d
  if not d then d = {}; ring.d = d end
  local m = d[field]
  if not m then m = { n = 0, seen = {} }; d[field] = m end
  local seen = m.seen
  local old = seen[value]
  if old == nil then
    if m.n >= cap then -- forget the value seen longest ago
      local victim, vsec = nil, math.huge
      for v, s in pairs(seen) do if s < vsec then victim, vsec = v, s end end
      seen[victim] = nil
      m.n = m.n - 1
    end
    m.n = m.n + 1
    seen[value] = sec
  elseif sec > old then
    seen[value] = sec
  end
end

local function distinct_count(ring, field, window, sec)
  local m = ring.d and ring.d[field]
  if not m then return 0 end
  local cutoff, c = sec - window, 0
  for _, s in pairs(m.seen) do
    if s > cutoff then c = c + 1 end
  end
  return c
end

-- Counts an event of second `sec` in a record's counter at `slot`, and its fields for
-- ctx:distinct. `keep` is the longest window counted for the event's type.
local function add_event(rec, slot, ev, sec, keep, slots, fields, dmax)
  local ring = rec[slot]
  if not ring then ring = ring_new(); rec[slot] = ring end
  local n, total = ring[1], ring[2]
  if sec > ring[3] then
    local cap = ring[4]
    if n >= cap and cap < slots and ring[n % cap + 5] >= (sec - keep) * SLOT then
      -- The oldest slot (the one to overwrite) is still needed: grow. Fill the new entries first
      -- so they stay in the array part, then renumber the live slots 0 .. cap-1, oldest first.
      local ncap, live = math_min(cap * 2, slots), {}
      for j = n - cap, n - 1 do live[#live + 1] = ring[j % cap + 5] end
      for i = cap + 5, ncap + 4 do ring[i] = 0 end
      for k = 1, cap do ring[k + 4] = live[k] end
      n, ring[4], cap = cap, ncap, ncap
    end
    ring[n % cap + 5] = sec * SLOT + total % SLOT
    ring[1] = n + 1
    ring[3] = sec
  end
  ring[2] = total + 1
  if fields then
    for i = 1, #fields do
      local f = fields[i]
      local v = ev[f]
      if type(v) == "string" or type(v) == "number" then distinct_add(ring, f, v, sec, dmax) end
    end
  end
end

store.recent_new, store.gen3_new, store.ROOM = recent_new, gen3_new, ROOM
store.SLOT, store.REC_SEEN, store.REC_ALLOW, store.REC_COOL, store.REC_FIXED = SLOT, REC_SEEN, REC_ALLOW, REC_COOL,
  REC_FIXED
store.ring_new, store.distinct_add, store.distinct_count, store.add_event = ring_new, distinct_add, distinct_count,
  add_event

return store
