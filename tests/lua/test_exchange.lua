-- client:exchange outside nginx: the sans-I/O state machine driven by this file, with curl moving
-- the bytes to the emulator. It must pace, sign, classify and retry like the blocking path.
local T = require "testlib"
local cjson = require "cjson"

local emu = T.emulator()
local APP = T.APP

-- Sends an exchange's request with curl; returns the response table step() expects.
local function send(w)
  local url = w.scheme .. "://" .. w.host .. ":" .. w.port .. w.path
  local cmd = { T.plain_env .. "curl -s --max-time", tostring(w.timeout), "-X", w.method,
    "-o - -w '\\n%{http_code} %{content_type}'" }
  for _, h in ipairs(w.headers) do cmd[#cmd + 1] = "-H " .. T.shell_quote(h) end
  if w.method ~= "GET" then cmd[#cmd + 1] = "--data-binary " .. T.shell_quote(w.body) end
  cmd[#cmd + 1] = T.shell_quote(url)
  local p = assert(io.popen(table.concat(cmd, " ")))
  local out = p:read("*a")
  p:close()
  local body, status, ctype = out:match("^(.*)\n(%d+) ?(.*)$")
  if not status or status == "000" then return { error = "ConnectionFailed", message = "curl: no response" } end
  return { status = tonumber(status), body = body, content_type = ctype }
end

-- Drives x to the end; returns result/meta (or nil/err) and the list of step kinds seen.
local function drive(x, transport)
  local kinds, response = {}, nil
  while true do
    local kind, a, b = x:step(response)
    kinds[#kinds + 1] = kind
    response = nil
    if kind == "wait" then
      T.ok(type(a) == "number" and a >= 0, "wait seconds")
      T.sleep(a)
    elseif kind == "send" then
      response = (transport or send)(a)
    else
      return a, b, kinds
    end
  end
end

T.case("an exchange kicks like kick_user: one send, the same result and meta", function()
  emu.reset()
  local c = T.client(emu, { limiter = "none" })
  local x = c:exchange("kick_user", APP, "room1", "alice")
  T.match(tostring(x), "^rtcadmin%.exchange{KickUser, attempt 1, reserve}$", "tostring")
  local res, meta, kinds = drive(x)
  T.same(kinds, { "send", "done" }, "steps")
  T.eq(res.message, "success", "Result")
  T.eq(meta.action, "KickUser", "meta.action")
  T.eq(meta.attempts, 1, "meta.attempts")
  T.eq(meta.http_status, 200, "meta.http_status")
  T.ok(not T.contains(emu.room(APP, "room1").users, "alice"), "alice was kicked")
  T.eq(c:stats().KickUser.succeeded, 1, "stats")
  T.eq(c:info().requests, 1, "info.requests")
end)

T.case("the request is signed: a wrong secret gets SignatureDoesNotMatch, not retried", function()
  emu.reset()
  local c = T.client(emu, { secret_key = "wrong-secret", limiter = "none" })
  local res, err, kinds = drive(c:exchange("kick_user", APP, "room1", "alice"))
  T.eq(res, nil, "no result")
  T.eq(err.code, "SignatureDoesNotMatch", "code")
  T.eq(err.retryable, false, "retryable")
  T.same(kinds, { "send", "done" }, "one attempt")
  T.no_match(tostring(err), "wrong-secret", "error text")
end)

T.case("a 500 is retried after a backoff wait and then succeeds", function()
  emu.reset()
  emu.faults { { action = "KickUser", kind = "status500", count = 1 } }
  local c = T.client(emu, { limiter = "none", retry_base = 0.05 })
  local res, meta, kinds = drive(c:exchange("kick_user", APP, "room1", "bob"))
  T.ok(res, "succeeded")
  T.eq(meta.attempts, 2, "attempts")
  T.same(kinds, { "send", "wait", "send", "done" }, "steps")
  T.eq(c:stats().KickUser.retries, 1, "stats.retries")
end)

T.case("transport failures reported by the driver go through the retry policy", function()
  emu.reset()
  local c = T.client(emu, { limiter = "none", retry_base = 0.01, retries = 2 })
  local sends = 0
  local res, err = drive(c:exchange("kick_user", APP, "room1", "alice"), function()
    sends = sends + 1
    return { error = "Timeout", message = "read timed out" }
  end)
  T.eq(res, nil, "failed")
  T.eq(sends, 3, "1 + 2 retries")
  T.eq(err.code, "Timeout", "code")
  T.eq(err.http_status, 0, "http_status")
  T.eq(err.retryable, true, "retryable")
  T.eq(err.attempts, 3, "attempts")
end)

T.case("pacing: the second exchange waits for its limiter slot", function()
  emu.reset()
  local c = T.client(emu, { qps = { KickUser = 4 }, access_key = T.AK2, secret_key = T.SK2 })
  local _, _, k1 = drive(c:exchange("kick_user", APP, "room1", "alice"))
  local x = c:exchange("kick_user", APP, "room1", "bob")
  local kind, seconds = x:step()
  T.eq(kind, "wait", "second call waits")
  -- What is left of the 0.25 s interval after driving the first call; a sanitizer build drives slowly.
  local floor = os.getenv("RTCADMIN_CHECKED_BUILD") and 0 or 0.1
  T.ok(seconds > floor and seconds <= 0.26, "about a quarter second, got " .. seconds)
  T.eq(k1[1], "send", "the first did not")
  T.eq(x:step(), "wait", "an early step waits again")
end)

T.case("a driver back too late for its slot gets a new slot, never a stale send", function()
  emu.reset()
  -- 2/s and the default 1% margin: slots 0.505 s apart; a slot may be used up to 5 ms late.
  local c = T.client(emu, { qps = { KickUser = 2 }, access_key = T.AK2, secret_key = T.SK2 })
  drive(c:exchange("kick_user", APP, "room1", "alice"))
  local x = c:exchange("kick_user", APP, "room1", "bob")
  local kind, seconds = x:step()
  T.eq(kind, "wait", "second call waits for its slot")
  T.sleep(seconds + 0.2) -- the driver oversleeps by 200 ms
  local again, more = x:step()
  T.eq(again, "wait", "the stale slot is not used")
  T.ok(more > 0.1 and more <= 0.31, "the new slot is one interval after the stale one, got " .. more)
  T.ok(c:stats().KickUser.missed_slots >= 1, "stats count the missed slot")
  local res = drive(x)
  T.eq(res.message, "success", "then it is sent")
  T.eq(emu.stats().requests, 2, "two requests reached the emulator")
end)

T.case("bad arguments raise at exchange creation, before any request", function()
  emu.reset()
  local c = T.client(emu)
  T.raises("rtcadmin%.kick_user: bad argument 'user_id'", c.exchange, c, "kick_user", APP, "room1", "bad user")
  T.raises("rtcadmin%.ban_user: unknown field \"oops\"", c.exchange, c, "ban_user",
    { app_id = APP, user_id = "u", duration = 60, oops = true })
  T.raises("rtcadmin%.exchange: unknown method \"nope\"", c.exchange, c, "nope")
  T.raises("rtcadmin%.kick_user: bad argument 'user_id'", c.exchanges, c, "kick_users", APP, "room1",
    { "ok", "no way" })
  T.raises("rtcadmin%.exchanges: unknown bulk method", c.exchanges, c, "kick_user", APP, "room1", "x")
  T.eq(emu.stats().requests, 0, "no request")
end)

T.case("exchanges: one per call of a bulk method, in order", function()
  emu.reset()
  local c = T.client(emu, { limiter = "none" })
  local list = c:exchanges("kick_users", APP, "room1", { "alice", "bob" })
  T.eq(#list, 2, "two exchanges")
  for _, x in ipairs(list) do T.ok(drive(x), "kicked") end
  local users = emu.room(APP, "room1").users
  T.ok(not T.contains(users, "alice") and not T.contains(users, "bob"), "both gone")
  list = c:exchanges("batch", { { "mute_user", { app_id = APP, room_id = "room1", user_id = "carol" } },
                                { "online_users", APP, "room1" } })
  local _, meta = drive(list[1])
  T.eq(meta.action, "BanUserStream", "first is the mute")
  local res = drive(list[2])
  T.ok(res.RoomExists, "second is the GET")
end)

T.case("misuse of step raises", function()
  emu.reset()
  local c = T.client(emu, { limiter = "none" })
  local x = c:exchange("kick_user", APP, "room1", "alice")
  local kind, w = x:step()
  T.eq(kind, "send", "send")
  T.raises("expects the response to the request it sent", x.step, x)
  T.eq(x:step(send(w)), "done", "done")
  T.raises("the exchange has finished", x.step, x)
  local y = c:exchange("kick_user", APP, "room1", "bob")
  c:close()
  T.raises("the client is closed", y.step, y)
end)

T.case("the request table carries what a driver needs and no secret", function()
  local c = T.client(emu, { limiter = "none", timeout = 3 })
  local _, w = c:exchange("online_users", APP, "room1"):step()
  T.eq(w.method, "GET", "method")
  T.eq(w.scheme, "http", "scheme")
  T.eq(w.host, "127.0.0.1", "host")
  T.eq(w.port, tonumber(emu.url:match(":(%d+)$")), "port")
  T.match(w.path, "^/%?Action=GetRoomOnlineUsers&Version=2023%-11%-01&AppId=", "path")
  T.eq(w.timeout, 3, "timeout")
  T.eq(w.max_body, 1024 * 1024, "max_body")
  local auth
  for _, h in ipairs(w.headers) do
    if h:match("^Authorization: ") then auth = h end
  end
  T.match(auth, "^Authorization: HMAC%-SHA256 Credential=" .. T.AK, "signed")
  T.no_match(cjson.encode(w), T.SK, "request table")
end)

T.case("an exchange's meta prints like a call's", function()
  emu.reset()
  local c = T.client(emu, { limiter = "none" })
  local _, meta = drive(c:exchange("kick_user", APP, "room1", "alice"))
  T.match(tostring(meta), "^KickUser 2020%-12%-01 200 request=%d+%x+ attempts=1 %d+%.%d%d%ds$", "tostring(meta)")
end)

T.run(function() emu.stop() end)
