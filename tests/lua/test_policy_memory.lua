-- Bounded memory: a million distinct users through the engine. Counters, dedupe ids and offenders
-- are capped (two generations of max_keys each), so the heap after a full collection stays flat
-- once the caps are reached, whatever the number of users.
local T = require "testlib"
local policy = require "rtcadmin.policy"

local dir = T.tmpdir()
local rules = T.write_file(dir .. "/rules.lua", [[
rule "flood" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) > 3 end, action = kick }
rule "reported" { on = "report", when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 2 end,
                  action = escalate { kick, ban(600) } }
rule "wave" { on = "join", when = function(ev, ctx) return ctx:count("join", 10, "room") > 1000000 end, action = kick }
]])

local function heap_kb()
  collectgarbage()
  return collectgarbage("count")
end

T.case("a million users: tracked keys are capped and the heap stays flat after warm-up", function()
  local MAX = 20000
  local decisions = 0
  local e = policy.new { dry_run = true, max_keys = MAX, dedupe = MAX, max_offenders = MAX,
                         on_decision = function() decisions = decisions + 1 end }
  assert(e:load(rules))
  local ev = { app_id = T.APP, room_id = "room1" }
  local samples = {}
  local USERS = 1000000
  for i = 1, USERS do
    -- Two events per user, each with its own id; one user in 100 floods (four chats) or is
    -- reported by two people, so decisions and offences are tracked too.
    local user = "u" .. i
    local n = 2
    if i % 100 == 0 then n = 4 end
    for k = 1, n do
      ev.type = (i % 200 == 0 and k <= 2) and "report" or "chat"
      ev.user_id, ev.ts, ev.id, ev.reporter = user, i * 0.001, i * 4 + k, "r" .. k
      e:process(ev)
    end
    if i % 25000 == 0 then samples[#samples + 1] = heap_kb() end
  end
  local st = e:stats()
  T.eq(st.events, USERS * 2 + USERS / 100 * 2, "every event processed")
  T.eq(decisions, USERS / 100, "every flooder and every reported user")
  T.ok(st.keys <= 2 * MAX, "tracked keys capped: " .. st.keys)
  T.ok(st.keys_dropped >= USERS - 2 * MAX, "least recently seen keys dropped: " .. st.keys_dropped)
  -- Flat after warm-up: the generations fill and rotate, so the heap oscillates within a bound; the
  -- highest heap over the last 400k users is no higher than over the 400k before them (+15%).
  local function max_of(from, to)
    local m = 0
    for i = from, to do m = math.max(m, samples[i]) end
    return m
  end
  local early, late = max_of(9, 24), max_of(25, 40)
  T.ok(late <= early * 1.15, string.format("heap max %.0f KiB (600k-1M users) vs %.0f KiB (200k-600k)", late, early))
  T.ok(samples[#samples] < 128 * 1024, "under 128 MiB in all: " .. math.floor(samples[#samples]) .. " KiB")
end)

T.case("an active user's counters survive key pressure; idle ones expire with their windows", function()
  local got = 0
  local e = policy.new { dry_run = true, max_keys = 1000, on_decision = function() got = got + 1 end }
  assert(e:load(rules))
  local function chat(user, t)
    return e:process({ type = "chat", app_id = T.APP, room_id = "room1", user_id = user, ts = t })
  end
  -- "loud" chats every 500 other users; 20 000 others come and go between its chats.
  for round = 1, 3 do
    chat("loud", round)
    for i = 1, 500 do chat("other" .. round .. "-" .. i, round) end
  end
  T.eq(chat("loud", 4), 1, "its four chats in 10 s were all counted")
  -- Time alone retires a generation: after 2 windows (and cooldowns) without new keys... the next
  -- new key rotates the young generation out.
  local before = e:stats().keys
  chat("late1", 1000)
  chat("late2", 2000)
  T.ok(e:stats().keys < before, "idle keys dropped by time: " .. e:stats().keys .. " < " .. before)
end)

T.run(function() os.execute("rm -rf " .. T.shell_quote(dir)) end)
