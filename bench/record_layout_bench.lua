-- Two layouts of the policy engine's per-user state, compared on the lookups one event makes with
-- many users (the answer behind the engine's layout; see RESULTS.md section 6):
--
--   record  room map -> user -> record (an array) -> the event type's counter (a table of its own)
--   type    type -> room map -> user -> a record per (room, user, type) holding the counter inline
--
--   lua5.4 bench/record_layout_bench.lua record|type [users=100000] [events=3000000]
--
-- One layout per run, so each process holds only its own layout's tables (what else the machine is
-- doing moves the numbers: run both several times, interleaved).
local LAYOUT = arg[1] or "record"
local USERS = tonumber(arg[2]) or 100000
local EVENTS = tonumber(arg[3]) or 3000000
local TYPES = 3

local seed = 12345
local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end

local function ring() return { 0, 0, -math.huge, 4, 0, 0, 0, 0 } end

local by_record, by_type = {}, {}
for t = 1, TYPES do by_type[t] = {} end
local keys = {}
for u = 1, USERS do
  local room, user = "room" .. (u % 20), "user" .. u
  local r = by_record[room]
  if not r then r = {}; by_record[room] = r end
  if LAYOUT == "record" then
    local rec = { 0, 0, false }
    for t = 1, TYPES do rec[3 + t] = ring() end
    r[user] = rec
  else
    for t = 1, TYPES do
      local rt = by_type[t][room]
      if not rt then rt = {}; by_type[t][room] = rt end
      rt[user] = { 0, 0, false, 0, 0, -math.huge, 4, 0, 0, 0, 0 }
    end
  end
  keys[u] = { room, user }
end
-- The events' (room, user) pairs, in two arrays read in order (as a batch of events would be).
local rooms, users = {}, {}
for i = 1, 200000 do
  local k = keys[rand(USERS)]
  rooms[i], users[i] = k[1], k[2]
end

-- One event: find its record and counter (`c`, whose entries start after `b`), count it, read the
-- record's allow-list slot. Both layouts run this same loop; only the lookup differs.
local function run()
  local acc, record = 0, LAYOUT == "record"
  for i = 1, EVENTS do
    local j = (i - 1) % 200000 + 1
    local rec, c, b
    if record then
      rec = by_record[rooms[j]][users[j]]
      c, b = rec[4 + i % TYPES], 0
    else
      rec = by_type[1 + i % TYPES][rooms[j]][users[j]]
      c, b = rec, 3
    end
    local n = c[b + 1] + 1
    c[b + 1] = n
    c[b + n % 4 + 5] = n
    acc = acc + c[b + 2] + rec[2]
  end
  return acc
end

local t0 = os.clock()
run()
print(string.format("%-6s %d users: %.0f ns per event", LAYOUT, USERS, (os.clock() - t0) / EVENTS * 1e9))
