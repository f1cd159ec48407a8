-- Pacing, retries and bulk calls against the emulator's exact per-second QPS check.
local T = require "testlib"
local cjson = require "cjson"

local emu = T.emulator()
local APP = T.APP

-- Emulator arrival times of accepted and throttled KickUser requests since the last reset.
local function arrivals(action)
  local out = {}
  for _, r in ipairs(emu.control("GET", "/_emulator/requests?action=" .. action).requests) do
    out[#out + 1] = r
  end
  return out
end

local max_in_any_second = T.max_in_any_second

local function ids(n, prefix)
  local out = {}
  for i = 1, n do out[i] = (prefix or "u") .. i end
  return out
end

T.case("a burst of 200 kicks never trips the service's 60/s check, results in input order", function()
  emu.reset()
  local c = T.client(emu)
  local seen = 0
  local results, summary = c:kick_users(APP, "room1", ids(200), {
    progress = function(done, total) seen = seen + 1; T.eq(total, 200, "total") ; T.ok(done <= 200, "done") end,
  })
  T.eq(summary.succeeded, 200, "succeeded")
  T.eq(summary.failed, 0, "failed")
  T.eq(seen, 200, "progress calls")
  for i = 1, 200 do
    T.ok(results[i].ok, "item " .. i)
    T.eq(results[i].result.message, "success", "item " .. i .. " result")
  end
  local reqs = arrivals("KickUser")
  T.eq(#reqs, 200, "requests at the emulator")
  for _, r in ipairs(reqs) do T.eq(r.code, cjson.null, "no throttle") end
  T.ok(max_in_any_second(reqs) <= 60, "at most 60 in any second, got " .. max_in_any_second(reqs))
  T.ok(summary.elapsed < 200 / 60 * 1.05 + 0.5, "paced near the limit: " .. summary.elapsed .. " s")
  local st = c:stats().KickUser
  T.eq(st.sent, 200, "stats.sent")
  T.eq(st.succeeded, 200, "stats.succeeded")
  T.eq(st.throttled, 0, "stats.throttled")
  T.ok(st.waited > 0 and st.p50 > 0 and st.p99 >= st.p50, "stats timing fields")
  c:close()
end)

T.case("four independent processes sharing the host limiter stay within 60/s and use >= 90% of it", function()
  emu.reset()
  local dir = T.tmpdir()
  -- The margin is the jitter budget between our send times and the service's arrival times. Here
  -- the "service" is a Python emulator sharing two cores with four senders, whose connection threads
  -- read a request up to several ms after it was sent: 3 % (58.3/s, above the 90 % floor) keeps that
  -- jitter from bunching arrivals on a loaded machine; a sanitizer build, several times slower, 5 %.
  local margin = os.getenv("RTCADMIN_CHECKED_BUILD") and ", margin = 0.05" or ", margin = 0.03"
  local code = T.kicker(emu, string.format("{backend = 'host', dir = %q%s}", dir, margin), 60)
  local outs = T.spawn({ code, code, code, code }).wait()
  for i = 1, 4 do T.eq(outs[i], "60\t0\n", "process " .. i) end
  T.rmdir(dir)
  local reqs = arrivals("KickUser")
  T.eq(#reqs, 240, "requests at the emulator")
  for _, r in ipairs(reqs) do T.eq(r.code, cjson.null, "no throttle") end
  local worst = max_in_any_second(reqs)
  T.ok(worst <= 60, "at most 60 in any second, got " .. worst)
  local rate = (#reqs - 1) / (reqs[#reqs].t - reqs[1].t)
  T.ok(rate >= 54, string.format("aggregate rate %.1f/s >= 54/s", rate))
end)

T.case("each retryable fault is retried and then succeeds; meta.attempts tells", function()
  emu.reset()
  local c = T.client(emu, { retry_base = 0.01, timeout = 1 })
  local kinds = { "status500", "internal_error_200", "throttle", "html502", "drop", "reset_mid_body", "hang" }
  for _, kind in ipairs(kinds) do
    emu.faults { { action = "KickUser", kind = kind, count = 1 } }
    local res, meta = c:kick_user(APP, "room1", "alice")
    T.ok(res, kind .. ": succeeded after a retry, got " .. tostring(meta))
    T.eq(meta.attempts, 2, kind .. ": attempts")
  end
  local st = c:stats().KickUser
  T.eq(st.retries, 7, "stats.retries")
  T.eq(st.throttled, 1, "stats.throttled")
  T.eq(st.succeeded, 7, "stats.succeeded")
  c:close()
end)

T.case("retries stop at the retry count and report every attempt", function()
  emu.reset()
  local c = T.client(emu, { retries = 2, retry_base = 0.01 })
  emu.faults { { action = "KickUser", kind = "status500", count = 5 } }
  local res, err = c:kick_user(APP, "room1", "alice")
  T.eq(res, nil, "failed")
  T.eq(err.code, "InternalError", "code")
  T.eq(err.attempts, 3, "attempts")
  T.eq(#arrivals("KickUser"), 3, "requests sent")
  emu.control("DELETE", "/_emulator/faults")
  c:close()
end)

T.case("auth and parameter errors are never retried", function()
  emu.reset()
  local bad = T.client(emu, { secret_key = "V3JvbmdTZWNyZXQ=" })
  local _, err = bad:kick_user(APP, "room1", "alice")
  T.eq(err.code, "SignatureDoesNotMatch", "401 code")
  T.eq(err.attempts, 1, "401 attempts")
  local c = T.client(emu)
  _, err = c:kick_user("000000000000000000000000", "room1", "alice")
  T.eq(err.code, "InvalidParameter.NotExistAppId", "400 code")
  T.eq(err.attempts, 1, "400 attempts")
  T.eq(#arrivals("KickUser"), 2, "one request each")
end)

T.case("batch: every item comes back, in order, successes and failures alike", function()
  emu.reset()
  local c = T.client(emu, { retries = 0 })
  local calls = {
    { "kick_user", APP, "room1", "alice" },
    { "kick_user", "000000000000000000000000", "room1", "bob" },
    { "ban_user", { app_id = APP, room_id = "room1", user_id = "bob", duration = 60 } },
    { "online_users", APP, "lobby" },
    { "call", "NoSuchAction", "2020-12-01", {} },
    { "mute_user", { app_id = APP, room_id = "room1", user_id = "carol" } },
  }
  local results, summary = c:batch(calls)
  T.eq(#results, #calls, "one result per call")
  T.eq(summary.succeeded, 4, "succeeded")
  T.eq(summary.failed, 2, "failed")
  T.eq(results[1].meta.action, "KickUser", "1")
  T.eq(results[2].ok, false, "2 failed")
  T.eq(results[2].err.code, "InvalidParameter.NotExistAppId", "2 code")
  T.eq(results[3].result.Message, "success", "3")
  T.same(results[4].result.VisibleUserList, { "dave", "erin" }, "4")
  T.eq(results[5].err.code, "InvalidActionOrVersion", "5 code")
  T.eq(results[6].meta.action, "BanUserStream", "6")
  T.ok(emu.room(APP, "room1").banned_users.bob, "the ban took effect")
end)

T.case("batch validates every call before sending any", function()
  emu.reset()
  local c = T.client(emu)
  T.raises("rtcadmin.kick_user: bad argument 'user_id'", c.batch, c,
    { { "kick_user", APP, "room1", "ok" }, { "kick_user", APP, "room1", "not ok" } })
  T.raises("unknown method \"kick\"", c.batch, c, { { "kick", APP } })
  T.raises("rtcadmin.ban_users: unknown field \"duraton\"", c.ban_users, c,
    { app_id = APP, user_ids = { "a" }, duraton = 60 })
  T.eq(emu.stats().requests, 0, "nothing sent")
end)

T.case("ban_users bans each user; qps option slows an Action down", function()
  emu.reset()
  local c = T.client(emu, { qps = { BanRoomUser = 10 } })
  local results, summary = c:ban_users { app_id = APP, room_id = "room1", user_ids = { "alice", "bob", "carol" },
    duration = 120 }
  T.eq(summary.succeeded, 3, "succeeded")
  for i = 1, 3 do T.eq(results[i].result.Message, "success", "ban " .. i) end
  local reqs = arrivals("BanRoomUser")
  T.ok(reqs[3].t - reqs[1].t >= 0.19, "10/s pacing spreads 3 calls over >= 0.2 s")
  local room = emu.room(APP, "room1")
  T.ok(room.banned_users.alice and room.banned_users.bob and room.banned_users.carol, "all banned")
end)

T.case("reserve() hands out slots without sleeping: the event-loop entry", function()
  local c = T.client(emu, { qps = { SomeAction = 4 }, limiter = "none" })
  T.eq(c:reserve("SomeAction"), 0, "no limiter: no wait")
  c:close()
  c = T.client(emu, { qps = { SomeAction = 4 }, limiter = { backend = "process", margin = 0 } })
  local w1, w2, w3 = c:reserve("SomeAction"), c:reserve("SomeAction"), c:reserve("SomeAction")
  T.ok(w1 < 0.01, "first slot now")
  T.ok(math.abs(w2 - 0.25) < 0.02 and math.abs(w3 - 0.5) < 0.02, "then every 1/4 s: " .. w2 .. ", " .. w3)
  c:close()
end)

T.case("a call whose slot is past its deadline fails with DeadlineExceeded instead of hanging", function()
  emu.reset()
  local c = T.client(emu, { qps = { KickUser = 0.2 }, deadline = 1 })
  T.ok(c:kick_user(APP, "room1", "alice"), "first call")
  local res, err = c:kick_user(APP, "room1", "bob")
  T.eq(res, nil, "second call")
  T.eq(err.code, "DeadlineExceeded", "code")
  c:close()
end)

T.run(function() emu.stop() end)
