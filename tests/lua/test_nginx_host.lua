-- One policy engine per nginx host (rtcadmin.host) in a real nginx with four workers, against the
-- emulator: a room's threshold fires on its N-th event whatever worker each callback reached, the
-- engine's memory survives `nginx -s reload`, a stop and start with a state file, and a worker
-- killed with SIGKILL in the middle of a raid, and no accepted callback's action is lost or sent
-- twice.
local T = require "testlib"
local cjson = require "cjson"

local emu = T.emulator()
local CB_SECRET = "CallbackSecret-42"

-- nginx with the host engine (T.host_nginx: the example's shape) with these rules and state file; a
-- host limiter of its own.
local function start_nginx(rules, state_file)
  local dir = T.tmpdir()
  local ng = T.host_nginx {
    emu = emu, secret = CB_SECRET, rules = rules,
    client = string.format("retry_base = 0.05, limiter = { backend = 'host', dir = %q }", dir),
    host = string.format("state_file = %s, save_every = 0.2, lease = 1",
      state_file and string.format("%q", state_file) or "nil"),
  }
  local stop = ng.stop
  function ng.stop()
    stop()
    T.rmdir(dir)
  end
  return ng
end

-- Posts a signed RTC callback of `etype` about `user` in `room`: status, body.
local function post(ng, etype, room, user)
  return T.http("POST", ng.url .. "/callback", T.signed_callback(CB_SECRET, etype, room, user),
    { "Content-Type: application/json" })
end

local function accepted(ng, etype, room, user)
  local status, body = post(ng, etype, room, user)
  T.eq(status, 200, "callback answered 200: " .. tostring(body))
end

local function requests(action)
  return emu.control("GET", "/_emulator/requests?action=" .. action).requests
end

-- The engine's audit records in the error log (only the decisions with `kind`).
local function audit_records(ng, kind)
  local out = {}
  for json in ng.log():gmatch("rtcadmin audit ({[^\n]*})") do
    local r = cjson.decode(json)
    if not kind or r.kind == kind then out[#out + 1] = r end
  end
  return out
end

-- The rule, action, duration and step of the last decision in the log.
local function last_decision(ng)
  local d = audit_records(ng, "decision")
  d = d[#d] or {}
  return { d.rule, d.action, d.duration, d.step }
end

-- Waits until `cond()` is true (or `seconds` pass); returns its last value.
local function wait_for(cond, seconds)
  local deadline = T.now() + (seconds or 10)
  local v = cond()
  while not v and T.now() < deadline do
    T.sleep(0.05)
    v = cond()
  end
  return v
end

-- Waits until a worker runs the engine and the queue is empty (every stored event decided).
local function drained(ng)
  return wait_for(function()
    local s = ng.status()
    return s.holder_pid and s.decided_seq == s.last_seq and s
  end, 15)
end

T.case("four workers, one engine: a threshold of 20 fires on the 20th chat of a room, 19 fire nothing", function()
  emu.reset()
  local ng = start_nginx([[
rule "chat-20" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 10) >= 20 end,
                 action = kick, cooldown = 600 }
]])
  T.ok(wait_for(function() return ng.status().holder_pid end), "a worker took the engine")
  -- One user, 20 chats over separate connections (curl per request: any of the four workers).
  for _ = 1, 19 do accepted(ng, "chat", "room1", "flooder") end
  T.ok(drained(ng), "19 events decided")
  T.sleep(0.3)
  T.eq(#requests("KickUser"), 0, "19 chats: no kick")
  accepted(ng, "chat", "room1", "flooder")
  T.ok(wait_for(function() return #requests("KickUser") >= 1 end), "the 20th chat kicks")
  -- Two rooms interleaved: 20 each for two users, 19 for a third.
  for _ = 1, 20 do
    accepted(ng, "chat", "room1", "ann")
    accepted(ng, "chat", "room2", "ben")
    accepted(ng, "chat", "room2", "cid")
  end
  accepted(ng, "chat", "room2", "ben")
  T.ok(drained(ng), "all decided")
  T.sleep(0.5)
  local kicks = requests("KickUser")
  local per = {}
  for _, r in ipairs(kicks) do per[r.RoomId .. "/" .. r.UserId] = (per[r.RoomId .. "/" .. r.UserId] or 0) + 1 end
  T.same(per, { ["room1/flooder"] = 1, ["room1/ann"] = 1, ["room2/ben"] = 1, ["room2/cid"] = 1 },
    "one kick per user who reached 20, in the right room")
  ng.stop()
end)

T.case("escalation survives nginx -s reload, and a stop and start with state_file", function()
  emu.reset()
  local state_dir = T.tmpdir()
  local state_file = state_dir .. "/engine.state"
  local rules = [[
rule "chat-ladder" { on = "chat", when = function(ev, ctx) return ctx:count("chat", 600) >= 4 end,
                     action = escalate { kick, ban(minutes(10)), ban(hours(1)) }, cooldown = 1 }
]]
  local ng = start_nginx(rules, state_file)
  T.ok(wait_for(function() return ng.status().holder_pid end), "a worker took the engine")
  for _ = 1, 4 do accepted(ng, "chat", "room1", "mallory") end
  T.ok(wait_for(function() return #requests("KickUser") == 1 end), "step 1: kick")
  local before = ng.status().holder_pid

  os.execute("kill -HUP " .. ng.master_pid())
  T.ok(wait_for(function()
    local s = ng.status()
    return s.holder_pid and s.holder_pid ~= before
  end, 15), "after the reload a new worker runs the engine")
  T.sleep(1.1) -- past the cooldown
  accepted(ng, "chat", "room1", "mallory")
  T.ok(wait_for(function() return #requests("BanRoomUser") == 1 end), "step 2 after the reload: a ban")
  T.same(last_decision(ng), { "chat-ladder", "ban", 600, 2 }, "the ladder's second step: 10 minutes")

  -- A stop (the shared dict is gone) and a start: the state file carries the memory.
  ng.stop()
  T.ok(io.open(state_file), "the state file is written")
  ng = start_nginx(rules, state_file)
  T.ok(wait_for(function() return ng.status().holder_pid end), "the new nginx runs the engine")
  T.sleep(1.1)
  accepted(ng, "chat", "room1", "mallory")
  T.ok(wait_for(function() return #requests("UpdateBanRoomUserRule") + #requests("BanRoomUser") >= 3 end),
    "step 3 after the restart")
  T.same(last_decision(ng), { "chat-ladder", "ban", 3600, 3 }, "the third step, an hour's ban")
  local ids, n = {}, 0
  for _, d in ipairs(audit_records(ng, "decision")) do
    if not ids[d.run .. ":" .. d.id] then n = n + 1 end
    ids[d.run .. ":" .. d.id] = true
  end
  T.eq(n, 1, "the restarted nginx made one decision")
  ng.stop()
  T.rmdir(state_dir)
end)

T.case("SIGKILL of the engine's worker mid-raid: every accepted callback acted on, none twice", function()
  emu.reset()
  local ng = start_nginx([[
rule "kick-all" { on = "chat", when = function() return true end, action = kick }
]])
  T.ok(wait_for(function() return ng.status().holder_pid end), "a worker took the engine")
  local accepted_users, killed = {}, nil
  for i = 1, 200 do
    local user = string.format("raider_%03d", i)
    if i == 100 then
      killed = ng.status().holder_pid
      os.execute("kill -9 " .. killed)
    end
    -- A callback that reached the dying worker gets no answer: RTC delivers it again.
    for _ = 1, 3 do
      local status = post(ng, "chat", "room1", user)
      if status == 200 then accepted_users[#accepted_users + 1] = user break end
    end
  end
  T.eq(#accepted_users, 200, "every callback accepted (first try or redelivered)")
  local s = wait_for(function()
    local st = ng.status()
    return st.holder_pid and st.holder_pid ~= killed and st.decided_seq == st.last_seq and st
  end, 20)
  T.ok(s, "another worker took the engine over and decided the queue")
  T.ok(wait_for(function() return #requests("KickUser") >= 200 end, 20), "200 kicks at the emulator")
  T.sleep(0.5)
  local per = {}
  for _, r in ipairs(requests("KickUser")) do per[r.UserId] = (per[r.UserId] or 0) + 1 end
  local resent = {}
  for _, r in ipairs(audit_records(ng)) do if r.resent then resent[r.user_id] = true end end
  for _, user in ipairs(accepted_users) do
    T.ok(per[user] == 1 or (per[user] == 2 and resent[user]),
      user .. " kicked once (twice only when its request was in flight at the kill): " .. tostring(per[user]))
  end
  T.match(ng.log(), "worker process %d+ exited on signal 9", "the worker was killed")
  local takeovers = {}
  for from in ng.log():gmatch("runs the engine from event (%d+)") do takeovers[#takeovers + 1] = tonumber(from) end
  T.eq(#takeovers, 2, "the engine was taken over once")
  T.ok(takeovers[2] > 1, "the new holder went on from the saved state (event " .. tostring(takeovers[2]) .. ")")
  local recovered = 0
  for _, r in ipairs(audit_records(ng)) do if r.recovered then recovered = recovered + 1 end end
  local n_resent = 0
  for _ in pairs(resent) do n_resent = n_resent + 1 end
  print(string.format("# takeover from event %d; %d decisions found sent in the journal, %d resent",
    takeovers[2], recovered, n_resent))
  -- The metrics' engine counters (host:counters()) hold each event and decision once: the new holder
  -- decided the events after the checkpoint again, and those the old one had counted are not counted
  -- twice.
  local c, events, decisions = ng.counters()
  T.eq(events, s.last_seq, "every stored event counted once")
  T.eq(c.policy.events.decided, s.last_seq, "each one decided")
  T.eq(decisions, s.last_seq, "one decision each, counted once")
  -- (A decision the old holder counted is not counted again as recovered; one it sent but had not
  -- counted yet when it was killed is.)
  T.ok((c.policy.decisions["kick-all"].kick.recovered or 0) <= recovered, "recovered at most as the audit says")
  ng.stop()
end)

T.case("RTC's join and leave events reach rules as join and leave, RTC's name in ev.rtc_type", function()
  emu.reset()
  local ng = start_nginx([[
rule "invisible-rejoin" {
  on = "join",
  when = function(ev, ctx)
    local joins, leaves = ctx:count("join", 60), ctx:count("leave", 60) -- counters start when first asked
    return ev.rtc_type == "InvisibleUserJoinRoom" and joins >= 2 and leaves >= 1
  end,
  action = kick,
}
]])
  T.ok(wait_for(function() return ng.status().holder_pid end), "a worker took the engine")
  accepted(ng, "UserJoinRoom", "room1", "ghost")
  accepted(ng, "UserLeaveRoom", "room1", "ghost")
  accepted(ng, "InvisibleUserJoinRoom", "room1", "ghost")
  accepted(ng, "InvisibleUserJoinRoom", "room1", "spook") -- one join only: no kick
  T.ok(wait_for(function() return #requests("KickUser") >= 1 end), "kicked:\n" .. ng.log())
  T.ok(drained(ng), "all decided")
  T.sleep(0.3)
  local kicks = requests("KickUser")
  T.eq(#kicks, 1, "one kick")
  T.eq(kicks[1].UserId, "ghost", "the user who joined twice")
  local d = audit_records(ng, "decision")
  T.eq(d[1] and d[1].event_type, "join", "the audit names the rule type")
  ng.stop()
end)

T.run()
