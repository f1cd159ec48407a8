-- Policy engine throughput: events per second through rtcadmin.policy with 10 rules over 100k
-- distinct users on one core, and the heap (peak and after warm-up). From the repository root:
--
--   LUA_CPATH='build/?.so;;' LUA_PATH='lua/?.lua;;' lua5.4 bench/policy_bench.lua [events=3000000] [users=100000]
--     [warmup=0] [baselines=1]
--
-- Baselines in the same run: the same events through an engine with no rules (ingest only: dedupe,
-- allow-list, key lookup), and through a bare Lua loop that touches each event once. `warmup`
-- events go through the engine untimed first; `baselines` 0 skips the baselines (for
-- bench/policy_instructions.sh, which counts the instructions of the engine alone).
local policy = require "rtcadmin.policy"

local EVENTS = tonumber(arg[1]) or 3000000
local USERS = tonumber(arg[2]) or 100000
local WARMUP = tonumber(arg[3]) or 0
local BASELINES = arg[4] ~= "0"
local BATCH = 1000

local RULES = [[
allow { roles = { "host", "moderator" } }
allow { patterns = { "^svc%-" } }
rule "flood"      { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) > 20 end, action = kick }
rule "flood-long" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 60) > 60 end, action = ban(600) }
rule "links"      { on = "chat", when = function(ev, ctx) return ev.link == true and ctx:count("chat", 30) > 10 end,
                    action = mute(600, { audio = true }) }
rule "wave"       { on = "join", when = function(ev, ctx) return ctx:count("join", 10, "room") > 100000 end,
                    action = kick }
rule "rejoin"     { on = "join", when = function(ev, ctx) return ctx:count("join", 60) > 8 end, action = ban(300) }
rule "leave-join" { on = "leave", when = function(ev, ctx) return ctx:count("leave", 60) > 8 end, action = kick }
rule "reported"   { on = "report", when = function(ev, ctx) return ctx:distinct("report", "reporter", 300) >= 3 end,
                    action = escalate { kick, ban(600), ban(86400) } }
rule "loud"       { on = "stream", when = function(ev, ctx) return ev.loud == true and ctx:count("stream", 30) >= 5 end,
                    action = mute(300, { audio = true }) }
rule "cams"       { on = "stream",
                    when = function(ev, ctx) return ev.kind == "video" and ctx:count("stream", 10) > 30 end,
                    action = mute(300, { video = true }) }
rule "repeat"     { on = "chat", when = function(ev, ctx) return ctx:offences() > 2 and ctx:count("chat", 5) > 3 end,
                    action = ban_everywhere(3600) }
]]

-- A pool of distinct event tables (mixed types over USERS users in 20 rooms), replayed with rising ts.
local POOL = 200000
local types = { "chat", "chat", "chat", "chat", "join", "leave", "report", "stream", "stream", "chat" }
local pool = {}
local seed = 12345
-- Park-Miller: the products stay below 2^53, so the sequence is the same on every Lua (LuaJIT's
-- numbers are doubles, where a larger multiplier would lose bits and repeat a few thousand users).
local function rand(n) seed = (seed * 16807) % 2147483647; return seed % n + 1 end
for i = 1, POOL do
  local t = types[rand(#types)]
  local u = rand(USERS)
  pool[i] = { type = t, app_id = "661e2ebb5ffd4b0e8d3f6b1d", room_id = "room" .. (u % 20), user_id = "user" .. u,
              reporter = t == "report" and ("r" .. rand(5)) or nil, loud = t == "stream" and rand(4) == 1 or nil,
              kind = t == "stream" and (rand(2) == 1 and "video" or "audio") or nil,
              link = t == "chat" and rand(8) == 1 }
end

local function clock() return os.clock() end

-- Runs `count` events (ts rising 10 000 events per second of event time) through fn(batch),
-- going on from `at` ({n, ts}: the events and the time so far) when given.
local function drive(fn, count, sample, at)
  at = at or { n = 0, ts = 1700000000 }
  local batch = {}
  local peak = 0
  local t0 = clock()
  local n, ts = at.n, at.ts
  local stop = n + count
  while n < stop do
    for i = 1, BATCH do
      local ev = pool[(n + i - 1) % POOL + 1]
      ts = ts + 0.0001
      ev.ts, ev.id = ts, n + i
      batch[i] = ev
    end
    fn(batch)
    n = n + BATCH
    if sample then
      local kb = collectgarbage("count")
      if kb > peak then peak = kb end
      if n % 500000 == 0 then
        local pause = clock()
        collectgarbage()
        sample(n, collectgarbage("count"))
        t0 = t0 + (clock() - pause) -- the full collections for the samples are not the engine's time
      end
    end
  end
  at.n, at.ts = n, ts
  return count / (clock() - t0), peak
end

local function engine(with_rules)
  local e = policy.new { dry_run = true }
  if with_rules then assert(e:load_source(RULES, "bench_rules.lua")) end
  return e
end

collectgarbage()
local base_kb = collectgarbage("count")
print(string.format("events %d, users %d, pool %d, batch %d, warm-up %d, %s", EVENTS, USERS, POOL, BATCH, WARMUP,
  rawget(_G, "jit") and jit.version or _VERSION))

local e = engine(true)
local decisions = 0
e.on_decision = function() decisions = decisions + 1 end
local samples = {}
local at = { n = 0, ts = 1700000000 }
local function through_engine(b) e:process_batch(b) end
if WARMUP > 0 then drive(through_engine, WARMUP, nil, at) end
local rate, peak = drive(through_engine, EVENTS, function(n, kb) samples[#samples + 1] = { n, kb } end, at)
local st = e:stats()
print(string.format("ten_rules_events_per_s %.0f", rate))
print(string.format("decisions %d, rule_errors %d, tracked_keys %d", decisions, st.rule_errors, st.keys))
print(string.format("heap_before_kib %.0f", base_kb))
print(string.format("heap_peak_kib %.0f (largest collectgarbage('count') seen, garbage included, every %d events)",
  peak, BATCH))
for _, s in ipairs(samples) do print(string.format("heap_live_at %d %.0f", s[1], s[2])) end
collectgarbage()
print(string.format("heap_after_full_gc_kib %.0f", collectgarbage("count")))

if not BASELINES then return end
-- The baselines run after the engine, so the JIT compiles the engine in a fresh process as a
-- deployment would (LuaJIT specialises traces to the paths seen first).
e = nil -- luacheck: ignore
collectgarbage()
local touched = 0
local bare = drive(function(b) for i = 1, #b do if b[i].type == "chat" then touched = touched + 1 end end end, EVENTS)
print(string.format("bare_loop_events_per_s %.0f", bare))

local e0 = engine(false)
local ingest = drive(function(b) e0:process_batch(b) end, EVENTS)
print(string.format("no_rules_events_per_s %.0f", ingest))
