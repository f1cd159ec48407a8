-- A short tour of the client for memory checkers (valgrind, the sanitizer build): every method, a
-- service error, a transport failure, an injected fault, a batch, signing, and clients released by
-- close(), by __gc and by closing the Lua state (T.run closes it); the re-entry paths of test_reentry.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator()

T.case("every method, errors and faults, a batch, signing, close and __gc", function()
  local c = T.client(emu, { retries = 0 })
  T.ok(c:kick_user(T.APP, "room1", "alice"), "kick_user")
  T.ok(c:online_users(T.APP, "room1"), "online_users")
  T.ok(c:ban_user { app_id = T.APP, room_id = "room1", user_id = "bob", duration = 60 }, "ban_user")
  T.ok(c:update_ban { app_id = T.APP, room_id = "room1", user_id = "bob", duration = 120 }, "update_ban")
  T.ok(c:unban_user { app_id = T.APP, room_id = "room1", user_id = "bob" }, "unban_user")
  T.ok(c:mute_user { app_id = T.APP, room_id = "room1", user_id = "carol", audio = true, duration = 60 }, "mute")
  T.ok(c:unmute_user { app_id = T.APP, room_id = "room1", user_id = "carol", audio = true }, "unmute")
  T.ok(c:call("DismissRoom", "2020-12-01", { AppId = T.APP, RoomId = "lobby" }), "call")
  emu.faults { { action = "KickUser", kind = "status500" }, { action = "KickUser", kind = "malformed" } }
  local _, err = c:kick_user(T.APP, "room1", "x")
  T.eq(err.code, "InternalError", "status500")
  _, err = c:kick_user(T.APP, "room1", "x")
  T.eq(err.code, "MalformedResponse", "malformed")
  T.match(tostring(err), "^KickUser failed", "tostring(err)")
  local results, summary = c:kick_users(T.APP, "room1", { "u1", "u2", "u3", "u4", "u5" })
  T.eq(#results, 5, "batch results")
  T.eq(summary.succeeded, 5, "batch succeeded")
  T.ok(c:stats().KickUser, "stats")
  T.match(tostring(c), "^rtcadmin.client{", "tostring(client)")
  T.ok(pcall(c.kick_user, c, T.APP, "room1", "bad id") == false, "a bad argument raises")
  c:close()

  local wrong = T.client(emu, { secret_key = "V3JvbmdTZWNyZXQ=", retries = 0 })
  _, err = wrong:kick_user(T.APP, "room1", "alice")
  T.eq(err.code, "SignatureDoesNotMatch", "wrong secret")
  local refused = T.client(emu, { endpoint = "http://127.0.0.1:1", retries = 0 })
  _, err = refused:kick_user(T.APP, "room1", "alice")
  T.eq(err.code, "ConnectionFailed", "refused")
  wrong, refused = nil, nil -- luacheck: ignore
  collectgarbage()
  collectgarbage()

  local h = rtcadmin.sign { method = "POST", host = "rtc.volcengineapi.com", access_key = "AKLTx", secret_key = "s",
    query = { Action = "KickUser", Version = "2020-12-01" }, body = "{}" }
  T.match(h.Authorization, "^HMAC%-SHA256 Credential=AKLTx/", "sign")
  rtcadmin.config { access_key = T.AK, secret_key = T.SK, endpoint = emu.url }
  T.ok(rtcadmin.kick_user(T.APP, "room1", "dave"), "module-level call on the default client")
end)

T.case("re-entry: close and batch inside progress, an error from progress, a step after close", function()
  local c = T.client(emu, { retries = 0, limiter = "none" })
  local refused
  local results = c:kick_users(T.APP, "room1", { "r1", "r2", "r3" }, { concurrency = 2, progress = function(done)
    if done == 1 then
      refused = select(2, pcall(c.batch, c, { { "kick_user", T.APP, "room1", "inner" } }))
      c:close() -- put off until the batch returns
      collectgarbage()
    end
  end })
  T.eq(#results, 3, "every item answered")
  T.match(refused, "called from inside this client's batch", "the inner batch raised")
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed after the batch")

  c = T.client(emu, { retries = 0, limiter = "none" })
  local x = c:exchange("kick_user", T.APP, "room1", "s1")
  T.ok(not pcall(c.kick_users, c, T.APP, "room1", { "e1", "e2", "e3", "e4" }, { progress = function()
    error("stop")
  end }), "an error from progress ends the batch")
  T.ok(c:kick_users(T.APP, "room1", { "a1", "a2" }), "the next batch")
  c:close()
  T.ok(not pcall(x.step, x), "a step after close raises")
end)

T.case("the Redis limiter's URL parser and fallback decision, as the OpenResty limiter drives them", function()
  local u = rtcadmin.parse_redis_url("redis://ops:p%40ss@[::1]:6380/2")
  T.eq(u.password, "p@ss", "password")
  T.eq(u.where, "[::1]:6380/2", "where")
  local ok, err = rtcadmin.parse_redis_url("redis://:secret@host:99999")
  T.eq(ok, nil, "bad port")
  T.no_match(err, "secret", "message")
  local dir = T.tmpdir()
  local d = rtcadmin.redis_fallback { server = "127.0.0.1:6379/0", dir = dir, timeout = 0.01, reprobe = 0.01 }
  local key = string.rep("ab", 8)
  local turn = d:begin(key, "KickUser", 0.01)
  T.ok(d:answered(turn, 0), "an answer")
  turn = d:begin(key, "KickUser", 0.01)
  local wait, _, note = d:failed(turn, "cannot connect: Connection refused", false)
  T.ok(wait and note, "a failure: a host slot and a line")
  T.ok(not pcall(d.failed, d, turn, "again"), "a turn reports once")
  rtcadmin.sleep(0.02)
  turn = d:begin(key, "KickUser", 0.01)
  T.ok(d:answered(turn, 0), "the probe")
  T.eq(d:status().active, "redis", "back")
  d = nil -- luacheck: ignore
  collectgarbage()
  T.rmdir(dir)
end)

local kept = T.client(emu) -- released when the state closes
T.ok(kept, "a client left for the state's close")

T.run(function() emu.stop() end)
