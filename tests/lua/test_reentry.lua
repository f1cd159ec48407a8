-- Re-entry: Lua code that one of a client's own methods runs (a batch's progress callback, a finalizer,
-- a debug hook, a metamethod of an exchange's response) cannot pull the client's transport from under that method.
-- Every method but info and stats refuses with a clear error, close() waits until the method returns,
-- an error from progress stops the batch's transfers at once, and a closed client's exchanges refuse
-- to step. Each scenario that used to crash or hang runs here against the real module and emulator.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator("--no-qps")
local APP = T.APP
local USERS = { "u1", "u2", "u3", "u4", "u5", "u6" }
local IN_BATCH = "its progress callback, a finalizer or a hook"
local AT_LINE = "^[^\n]*test_reentry%.lua:%d+: " -- an error message pointing at this file's line
local OK_BODY = '{"ResponseMetadata":{"RequestId":"r1","Action":"KickUser"},"Result":{"message":"success"}}'

local function client(overrides)
  local opts = { limiter = "none", retries = 0 }
  for k, v in pairs(overrides or {}) do opts[k] = v end
  return T.client(emu, opts)
end

-- The refusal of method `fname` while the client runs `running`, as a pattern.
local function refusal(fname, running, via)
  return T.literal(("rtcadmin.%s: called from inside this client's %s (from %s); call it after %s returns")
    :format(fname, running, via, running))
end

-- Every item answered, in input order, each a success.
local function all_ok(results, summary, n)
  T.eq(#results, n, "results")
  for i = 1, n do
    T.ok(results[i] and results[i].ok, "item " .. i .. ": " .. tostring(results[i] and results[i].err))
  end
  T.eq(summary.succeeded, n, "summary.succeeded")
  T.eq(summary.failed, 0, "summary.failed")
end

local function requests() return emu.stats().requests end

local function open_fds()
  local p = assert(io.popen("ls /proc/" .. T.pid() .. "/fd"))
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

T.case("close() in progress, then collectgarbage: put off until the batch returns, every item answered", function()
  emu.reset()
  local before = requests()
  local c = client()
  local inside = {}
  local results, summary = c:kick_users(APP, "room1", USERS, { concurrency = 3, progress = function(done)
    if done == 2 then
      c:close()
      c:close() -- idempotent
      collectgarbage()
      collectgarbage()
      inside.endpoint = c:info().endpoint -- released only when the batch returns
      inside.tostring = tostring(c)
    end
  end })
  all_ok(results, summary, #USERS)
  T.eq(inside.endpoint, emu.url, "info() inside progress, after close()")
  T.match(inside.tostring, "^rtcadmin%.client{", "tostring inside progress, after close()")
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed once the batch returned")
  T.raises(T.literal("rtcadmin.kick_user: the client is closed"), c.kick_user, c, APP, "room1", "alice")
  T.eq(requests() - before, #USERS, "requests the emulator saw")
end)

T.case("__close in progress (Lua 5.4) is put off like close()", function()
  if _VERSION ~= "Lua 5.4" then return end
  local c = client()
  local run = assert(load([[
    local c, users, app = ...
    return c:kick_users(app, "room1", users, { concurrency = 2, progress = function(done)
      if done == 1 then local scoped <close> = c end
    end })
  ]]))
  local results, summary = run(c, USERS, APP)
  all_ok(results, summary, #USERS)
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed once the batch returned")
end)

T.case("a client referenced only by its running batch survives collectgarbage in progress", function()
  local calls = 0
  local results, summary = client():kick_users(APP, "room1", USERS, { concurrency = 2, progress = function()
    calls = calls + 1
    collectgarbage()
    collectgarbage()
  end })
  all_ok(results, summary, #USERS)
  T.eq(calls, #USERS, "progress calls")
end)

T.case("batch inside progress is refused; the outer batch completes (in a child process first: no hang)", function()
  local code = ([[
    local c = require("rtcadmin").client { access_key = %q, secret_key = %q, endpoint = %q, limiter = "none" }
    local refused = {}
    local results, summary = c:kick_users(%q, "room1", { "n1", "n2", "n3" }, { progress = function()
      local ok, err = pcall(c.batch, c, { { "kick_user", %q, "room1", "inner" } })
      refused[#refused + 1] = ok and "the inner batch ran" or err
    end })
    print(#results, summary.succeeded, summary.failed)
    for _, m in ipairs(refused) do print(m) end
  ]]):format(T.AK, T.SK, emu.url, APP, APP)
  local out, status, took = T.child(code, 30)
  T.eq(status, 0, ("exit status after %.1f s (137: killed, the batch hung); output:\n%s"):format(took, tostring(out)))
  local lines = {}
  for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
  T.eq(lines[1], "3\t3\t0", "results, succeeded, failed")
  T.eq(#lines, 4, "lines:\n" .. out)
  for i = 2, 4 do T.match(lines[i], refusal("batch", "batch", IN_BATCH), "the inner batch's error") end

  -- The same in this process (where the sanitizers and valgrind watch), now that it cannot hang.
  local c = client()
  local errs = {}
  local results, summary = c:batch({ { "kick_user", APP, "room1", "o1" }, { "kick_user", APP, "room1", "o2" } },
    { progress = function()
      local ok, err = pcall(c.batch, c, { { "kick_user", APP, "room1", "inner" } })
      errs[#errs + 1] = { ok, err }
    end })
  all_ok(results, summary, 2)
  for _, e in ipairs(errs) do
    T.eq(e[1], false, "the inner batch raised")
    T.match(e[2], AT_LINE .. refusal("batch", "batch", IN_BATCH), "message at the caller's line")
  end
  T.ok(c:kick_user(APP, "room1", "after"), "the client works after the batch")
end)

-- Every method that sends, prepares a send or takes a limiter slot, with valid arguments.
local METHODS = {
  { "kick_user", APP, "room1", "x" },
  { "ban_user", { app_id = APP, room_id = "room1", user_id = "x", duration = 60 } },
  { "unban_user", { app_id = APP, room_id = "room1", user_id = "x" } },
  { "update_ban", { app_id = APP, room_id = "room1", user_id = "x", duration = 60 } },
  { "mute_user", { app_id = APP, room_id = "room1", user_id = "x" } },
  { "unmute_user", { app_id = APP, room_id = "room1", user_id = "x" } },
  { "online_users", APP, "room1" },
  { "call", "DismissRoom", "2020-12-01", { AppId = APP, RoomId = "lobby" } },
  { "batch", { { "kick_user", APP, "room1", "x" } } },
  { "kick_users", APP, "room1", { "x" } },
  { "ban_users", { app_id = APP, user_ids = { "x" }, duration = 60 } },
  { "exchange", "kick_user", APP, "room1", "x" },
  { "exchanges", "kick_users", APP, "room1", { "x" } },
  { "reserve", "KickUser" },
}

T.case("every other method from inside progress raises; info and stats answer; other clients work", function()
  emu.reset()
  local before = requests()
  local c = client()
  local other = client()
  local early = c:exchange("kick_user", APP, "room1", "bob") -- made before the batch, stepped inside it
  local seen = {}
  local results, summary = c:kick_users(APP, "room1", { "p1", "p2" }, { progress = function(done)
    if done > 1 then return end
    for _, m in ipairs(METHODS) do
      local ok, err = pcall(c[m[1]], c, T.unpack(m, 2))
      seen[#seen + 1] = { m[1], ok, err }
    end
    local ok, err = pcall(early.step, early)
    seen[#seen + 1] = { "exchange.step", ok, err }
    seen.info = c:info().requests
    seen.stats = c:stats().KickUser.sent
    seen.tostring = tostring(c)
    seen.other = other:kick_user(APP, "room1", "carol")
  end })
  all_ok(results, summary, 2)
  T.eq(#seen, #METHODS + 1, "methods tried")
  for _, s in ipairs(seen) do
    T.eq(s[2], false, s[1] .. " raised")
    T.match(s[3], AT_LINE .. refusal(s[1], "batch", IN_BATCH), s[1] .. "'s message")
    T.no_secrets({}, s[3])
  end
  T.ok(seen.info >= 1, "info() inside progress")
  T.ok(seen.stats >= 1, "stats() inside progress")
  T.match(seen.tostring, "^rtcadmin%.client{", "tostring inside progress")
  T.ok(seen.other, "another client's call inside progress")
  T.eq(requests() - before, 2 + 1, "requests: the batch's two and the other client's one")
  local kind = early:step()
  T.eq(kind, "send", "the early exchange steps after the batch")
  T.ok(c:kick_user(APP, "room1", "after"), "the client works after the batch")
end)

T.case("the module-level functions refuse while the default client runs a batch", function()
  local d = rtcadmin.config { access_key = T.AK, secret_key = T.SK, endpoint = emu.url, limiter = "none" }
  local err
  local results, summary = d:kick_users(APP, "room1", { "m1" }, { progress = function()
    err = select(2, pcall(rtcadmin.kick_user, APP, "room1", "x"))
  end })
  all_ok(results, summary, 1)
  T.match(err, refusal("kick_user", "batch", IN_BATCH), "rtcadmin.kick_user's error")
  T.ok(rtcadmin.kick_user(APP, "room1", "m2"), "rtcadmin.kick_user after the batch")
end)

T.case("an error raised in progress ends the batch at once: transfers stopped, nothing left open", function()
  emu.reset()
  collectgarbage() -- the earlier cases' clients, and their connections, go first
  collectgarbage()
  local base = open_fds()
  local c = client { concurrency = 8 }
  T.ok(c:kick_user(APP, "room1", "warm"), "a first call")
  local warm, warm_summary = c:kick_users(APP, "room1", { "warm" }) -- makes the multi handle (and its wake-up pair)
  all_ok(warm, warm_summary, 1)
  local eight = { "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8" }
  for round = 1, 3 do
    -- Seven answers take 3 s: the eighth finishes first and its progress call raises.
    emu.faults { { action = "KickUser", kind = "latency:3000", count = 7 } }
    local boom = { "boom" } -- a table as the error value: it must come out unchanged
    local calls = 0
    collectgarbage("stop") -- the batch's own __gc must not be what stops the transfers
    local open_before = open_fds()
    local t0 = T.now()
    local ok, err = pcall(c.kick_users, c, APP, "room1", eight, { progress = function()
      calls = calls + 1
      error(boom)
    end })
    local took, open_after = T.now() - t0, open_fds()
    collectgarbage("restart")
    T.eq(ok, false, "round " .. round .. ": the batch raised")
    T.eq(err, boom, "round " .. round .. ": the error value")
    T.eq(calls, 1, "progress calls")
    T.ok(took < 2.5, ("round %d: returned after %.2f s, before the slow answers"):format(round, took))
    -- The finished transfer's connection stays in the pool; the seven in flight are closed now.
    T.ok(open_after <= open_before + 1, ("round %d: %d descriptors after the error, %d before the batch")
      :format(round, open_after, open_before))
    local results, summary = c:kick_users(APP, "room1", USERS)
    all_ok(results, summary, #USERS)
    T.ok(c:kick_user(APP, "room1", "single"), "a single call after the error")
  end
  c:close()
  collectgarbage()
  T.eq(open_fds(), base, "descriptors once the client is closed")
end)

T.case("an exchange stepped after client:close() raises a clear error, wherever it stood", function()
  local c = client()
  local fresh = c:exchange("kick_user", APP, "room1", "alice")
  local sent = c:exchange("kick_user", APP, "room1", "bob")
  T.eq((sent:step()), "send", "the second exchange has a request out")
  c:close()
  collectgarbage()
  collectgarbage()
  local closed = T.literal("rtcadmin.exchange.step: the client is closed (client:close() ends its exchanges too)")
  T.raises(closed, fresh.step, fresh)
  T.raises(closed, sent.step, sent, { status = 200, body = OK_BODY })
  T.match(tostring(sent), "^rtcadmin%.exchange{KickUser, attempt 1, sent}$", "tostring")

  -- An exchange keeps its client alive: one whose client is referenced nowhere else still runs.
  local x = client():exchange("kick_user", APP, "room1", "carol")
  collectgarbage()
  collectgarbage()
  T.eq((x:step()), "send", "step")
  local kind, res = x:step { status = 200, body = OK_BODY }
  T.eq(kind, "done", "done")
  T.eq(res.message, "success", "result")
end)

T.case("a metamethod of a response, run during step, cannot use the client; its close() waits", function()
  local c = client()
  local x = c:exchange("kick_user", APP, "room1", "alice")
  T.eq((x:step()), "send", "step")
  local refused
  local response = setmetatable({ status = 200, body = OK_BODY }, { __index = function()
    refused = refused or select(2, pcall(c.kick_user, c, APP, "room1", "x"))
    c:close()
  end })
  local kind, res = x:step(response)
  T.eq(kind, "done", "the step finished")
  T.eq(res.message, "success", "with its result")
  T.match(refused, refusal("kick_user", "exchange.step", "a metamethod of the response, a finalizer or a hook"),
    "refusal")
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed once the step returned")

  -- An error from the metamethod leaves the exchange where it was and the client free.
  local c2 = client()
  local y = c2:exchange("kick_user", APP, "room1", "bob")
  T.eq((y:step()), "send", "step")
  T.raises("nope", y.step, y, setmetatable({}, { __index = function() error("nope") end }))
  T.eq(c2:reserve("KickUser"), 0, "the client is not left running")
  T.eq((y:step { status = 200, body = OK_BODY }), "done", "the exchange goes on")
end)

T.case("Lua code run during a single call (a debug hook) cannot use the client; its close() waits", function()
  local c = client()
  local events = {}
  -- A call hook runs Lua code at every function call, also those the module makes from C while the
  -- call runs (the JSON decoder, the body it runs protected): as a finalizer could at any allocation.
  debug.sethook(function()
    local ok, err = pcall(c.reserve, c, "KickUser")
    events[#events + 1] = ok and "idle" or err
    if not ok then c:close() end
  end, "c")
  local ok, res = pcall(c.online_users, c, APP, "room1")
  debug.sethook()
  T.ok(ok and res and res.RoomExists, "the call answered: " .. tostring(res))
  local inside = 0
  for _, e in ipairs(events) do
    if e ~= "idle" and not e:find("the client is closed", 1, true) then
      T.match(e, refusal("reserve", "online_users", "a finalizer or a hook"), "reserve inside the call")
      inside = inside + 1
    end
  end
  T.ok(inside >= 1, "hook calls inside the call: " .. inside .. " of " .. #events)
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed once the call returned")
end)

T.case("argument and option tables are read as plain tables: an __index never runs inside a method", function()
  -- It would run Lua code in the middle of the method, and a string it made up would be anchored
  -- nowhere once read (this one collects garbage and answers with fresh strings: a use-after-free).
  local calls = 0
  local function proxy(t)
    return setmetatable(t, { __index = function(_, k)
      calls = calls + 1
      collectgarbage()
      return table.concat { k == "app_id" and APP or k == "method" and "GET" or "", "" }
    end })
  end
  local c = client()
  T.raises(T.literal("rtcadmin.ban_user: bad argument 'app_id': required, got nil"), c.ban_user, c,
    proxy { user_id = "u1", duration = 60 })
  T.raises(T.literal("rtcadmin.mute_user: bad argument 'app_id': required, got nil"), c.mute_user, c,
    proxy { room_id = "room1", user_id = "u1" })
  T.raises(T.literal("rtcadmin.ban_user: bad argument 'app_id': required, got nil"), c.batch, c,
    { { "ban_user", proxy { user_id = "u1", duration = 60 } } }, proxy {})
  local res = c:call("GetRoomOnlineUsers", "2023-11-01", { AppId = APP, RoomId = "room1" }, proxy {})
  T.eq(res, nil, "opts.method from __index is not read: a POST, which this GET-only Action refuses")
  local d = rtcadmin.client(proxy { access_key = T.AK, secret_key = T.SK, endpoint = emu.url })
  T.eq(d:info().timeout, 5, "an option from __index is not read")
  T.raises(T.literal("rtcadmin.sign: field 'access_key' is required"), rtcadmin.sign, proxy { method = "GET" })
  T.eq(calls, 0, "__index calls")
end)

T.case("the Lua state closed in the middle of a batch (os.exit(0, true) in progress): no crash, no leak", function()
  local code = ([[
    local c = require("rtcadmin").client { access_key = %q, secret_key = %q, endpoint = %q, limiter = "none" }
    c:kick_users(%q, "room1", { "x1", "x2", "x3", "x4" }, { concurrency = 2, progress = function()
      print("closing the state")
      io.stdout:flush()
      os.exit(0, true)
    end })
    print("not reached")
  ]]):format(T.AK, T.SK, emu.url, APP)
  local out, status = T.child(code, 30)
  T.eq(status, 0, "exit status; output:\n" .. tostring(out))
  T.eq(out, "closing the state\n", "output")
end)

T.run(function() emu.stop() end)
