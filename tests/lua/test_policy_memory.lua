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
  local types = { "chat", "chat", "report", "join" }
  local samples = {}
  local USERS = 1000000
  for i = 1, USERS do
    -- Each user appears four times in a row (enough to trip the flood rule), every event has an id.
    local user = "u" .. i
    for k = 1, 4 do
      ev.type, ev.user_id, ev.ts, ev.id, ev.reporter = types[k] == "report" and "report" or "chat", user,
        i * 0.01, i * 4 + k, "r" .. k
      if k == 4 then ev.type = "join" end
      e:process(ev)
    end
    if i % 100000 == 0 then samples[#samples + 1] = heap_kb() end
  end
  local st = e:stats()
  T.eq(st.events, USERS * 4, "every event processed")
  T.ok(decisions > 0, "rules fired along the way")
  T.ok(st.keys <= 2 * MAX, "tracked keys capped: " .. st.keys)
  T.ok(st.keys_dropped >= USERS - 2 * MAX, "least recently seen keys dropped: " .. st.keys_dropped)
  -- Flat after warm-up: from 200k users on, the heap never exceeds the 200k sample by more than 25%.
  local warm = samples[2]
  for i = 3, #samples do
    T.ok(samples[i] <= warm * 1.25, string.format("heap at %dk users %.0f KiB vs %.0f KiB at 200k", i * 100,
      samples[i], warm))
  end
  T.ok(samples[#samples] < 256 * 1024, "under 256 MiB in all: " .. math.floor(samples[#samples]) .. " KiB")
end)

T.case("an active user's counters survive key pressure; idle ones expire with their windows", function()
  local got = 0
  local e = policy.new { dry_run = true, max_keys = 1000, on_decision = function() got = got + 1 end }
  assert(e:load(rules))
  local function chat(user, t) return e:process({ type = "chat", app_id = T.APP, room_id = "room1", user_id = user, ts = t }) end
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
