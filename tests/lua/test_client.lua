-- Every client method against the emulator over real sockets, with its visible effect on room state.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator()
local APP = T.APP
local client = T.client(emu)

local function fresh()
  emu.reset()
  return client
end

local function near(value, expected, slack, what)
  T.ok(type(value) == "number" and math.abs(value - expected) <= slack,
    string.format("%s: %s not within %d of %d", what, tostring(value), slack, expected))
end

T.case("kick_user removes the user and returns Result and meta", function()
  local c = fresh()
  local res, meta = c:kick_user(APP, "room1", "alice")
  T.ok(res, "result")
  T.eq(res.message, "success", "Result.message (2020-12-01 casing)")
  T.eq(meta.action, "KickUser", "meta.action")
  T.eq(meta.version, "2020-12-01", "meta.version")
  T.eq(meta.http_status, 200, "meta.http_status")
  T.eq(meta.attempts, 1, "meta.attempts")
  T.match(meta.request_id, "^%d%d%d%d%d%d%d%d%d%d%d%d%d%d%x+$", "meta.request_id")
  T.ok(type(meta.elapsed) == "number" and meta.elapsed >= 0, "meta.elapsed")
  local room = emu.room(APP, "room1")
  T.ok(not T.contains(room.users, "alice"), "alice is gone")
  T.ok(T.contains(room.users, "bob"), "bob stays")
end)

T.case("ban_user room+user bans that user from that room for the duration", function()
  local c = fresh()
  local res, meta = c:ban_user { app_id = APP, room_id = "room1", user_id = "bob", duration = 600 }
  T.eq(res.Message, "success", "Result.Message (2023-11-01 casing)")
  T.eq(meta.version, "2023-11-01", "version")
  local room = emu.room(APP, "room1")
  T.ok(not T.contains(room.users, "bob"), "bob was kicked")
  near(room.banned_users.bob, os.time() + 600, 5, "ban expiry")
  T.eq(emu.join(APP, "room1", "bob").joined, false, "bob cannot rejoin room1")
  T.eq(emu.join(APP, "lobby", "bob").joined, true, "bob may join another room")
  local again = c:ban_user { app_id = APP, room_id = "room1", user_id = "bob", duration = 600 }
  T.eq(again.Message, "User has been banned", "repeating an active ban succeeds")
end)

T.case("ban_user scopes: whole room, user everywhere, IP", function()
  local c = fresh()
  T.ok(c:ban_user { app_id = APP, room_id = "lobby", duration = 60 }, "room ban")
  local st = emu.state().apps[APP]
  T.eq(#st.rooms.lobby.users, 0, "lobby emptied")
  T.ok(st.rooms.lobby.banned_until, "lobby banned")
  T.eq(emu.join(APP, "lobby", "zed").joined, false, "nobody joins a banned room")

  T.ok(c:ban_user { app_id = APP, user_id = "carol", duration = 120 }, "app-wide user ban")
  st = emu.state().apps[APP]
  near(st.user_bans.carol, os.time() + 120, 5, "user ban expiry")
  T.eq(emu.join(APP, "room1", "carol").joined, false, "carol banned everywhere")

  T.eq(emu.join(APP, "room1", "mallory", { ip = "203.0.113.7" }).joined, true, "mallory joins")
  T.ok(c:ban_user { app_id = APP, ip = "203.0.113.7", duration = 300 }, "IP ban")
  st = emu.state().apps[APP]
  T.ok(st.ip_bans["203.0.113.7"], "IP banned")
  T.ok(not T.contains(st.rooms.room1.users, "mallory"), "mallory kicked by IP")

  T.ok(c:ban_user { app_id = APP, room_id = "room1", user_id = "alice", duration = 0 }, "duration 0 kicks")
  st = emu.state().apps[APP]
  T.ok(not T.contains(st.rooms.room1.users, "alice"), "alice kicked")
  T.eq(st.rooms.room1.banned_users.alice, nil, "no lasting ban")
end)

T.case("unban_user lifts a ban; update_ban changes its length", function()
  local c = fresh()
  T.ok(c:ban_user { app_id = APP, room_id = "room1", user_id = "bob", duration = 600 })
  local res, meta = c:update_ban { app_id = APP, room_id = "room1", user_id = "bob", duration = 3600 }
  T.eq(res.Message, "success", "update result")
  T.eq(meta.action, "UpdateBanRoomUserRule", "update action")
  near(emu.room(APP, "room1").banned_users.bob, os.time() + 3600, 5, "new expiry")
  res, meta = c:unban_user { app_id = APP, room_id = "room1", user_id = "bob" }
  T.eq(res.Message, "success", "unban result")
  T.eq(meta.action, "UpdateBanRoomUserRule", "unban action")
  T.eq(emu.room(APP, "room1").banned_users.bob, nil, "ban lifted")
  T.eq(emu.join(APP, "room1", "bob").joined, true, "bob rejoins")
end)

T.case("mute_user / unmute_user ban and restore streams", function()
  local c = fresh()
  local res, meta = c:mute_user { app_id = APP, room_id = "room1", user_id = "carol", duration = 600 }
  T.eq(res.Message, "success", "mute result")
  T.eq(meta.action, "BanUserStream", "mute action")
  local m = emu.room(APP, "room1").muted.carol
  near(m.audio, os.time() + 600, 5, "audio muted")
  near(m.video, os.time() + 600, 5, "video muted")

  T.ok(c:mute_user { app_id = APP, room_id = "room1", user_id = "bob", audio = true })
  m = emu.room(APP, "room1").muted.bob
  T.eq(m.audio, 0, "bob's audio muted until unmuted")
  T.eq(m.video, nil, "bob's video untouched")

  res, meta = c:unmute_user { app_id = APP, room_id = "room1", user_id = "carol", video = true }
  T.eq(res.Message, "success", "unmute result")
  T.eq(meta.action, "UnbanUserStream", "unmute action")
  m = emu.room(APP, "room1").muted.carol
  T.ok(m and m.audio, "carol's audio still muted")
  T.eq(m.video, nil, "carol's video restored")
  T.ok(c:unmute_user { app_id = APP, room_id = "room1", user_id = "carol" })
  T.eq(emu.room(APP, "room1").muted.carol, nil, "carol fully restored")
end)

T.case("online_users lists who is in the room (a GET)", function()
  local c = fresh()
  emu.join(APP, "room1", "ghost", { invisible = true })
  local res, meta = c:online_users(APP, "room1")
  T.eq(meta.action, "GetRoomOnlineUsers", "action")
  T.eq(res.RoomExists, true, "RoomExists")
  T.same(res.VisibleUserList, { "alice", "bob", "carol" }, "VisibleUserList")
  T.same(res.InvisibleUserList, { "ghost" }, "InvisibleUserList")
  T.eq(res.TotalUser, 4, "TotalUser")
  local none = c:online_users(APP, "no-such-room")
  T.eq(none.RoomExists, false, "missing room")
end)

T.case("call() reaches any Action, by POST body or GET query", function()
  local c = fresh()
  local res, meta = c:call("DismissRoom", "2020-12-01", { AppId = APP, RoomId = "lobby" })
  T.eq(res.message, "success", "DismissRoom")
  T.eq(meta.action, "DismissRoom", "meta.action")
  T.eq(#emu.room(APP, "lobby").users, 0, "lobby dismissed")
  res = c:call("GetRoomOnlineUsers", "2023-08-01", { AppId = APP, RoomId = "room1" }, { method = "GET" })
  T.eq(res.TotalUser, 3, "GET through call")
  local r2, err = c:call("NoSuchAction", "2020-12-01", {})
  T.eq(r2, nil, "unknown action fails")
  T.eq(err.code, "InvalidActionOrVersion", "code")
  T.eq(err.http_status, 404, "status")
end)

T.case("versions option switches an Action to another API version", function()
  emu.reset()
  local c = T.client(emu, { versions = { BanRoomUser = "2020-12-01" } })
  local res, meta = c:ban_user { app_id = APP, room_id = "room1", user_id = "bob", duration = 60 }
  T.eq(meta.version, "2020-12-01", "version used")
  T.eq(res.message, "success", "2020-12-01 Result casing")
  c:close()
end)

T.case("temporary (STS) credentials sign and send X-Security-Token", function()
  emu.reset()
  local c = T.client(emu, { access_key = T.STS_AK, secret_key = T.STS_SK, session_token = T.STS_TOKEN })
  local res = c:kick_user(APP, "room1", "alice")
  T.eq(res and res.message, "success", "kick with STS")
  T.match(tostring(c), "session_token=yes", "tostring shows a token is set")
  T.no_match(tostring(c), T.STS_TOKEN, "tostring hides the token")
  c:close()
end)

T.case("100 sequential calls reuse one keep-alive connection", function()
  emu.reset()
  emu.config { qps_enabled = false }
  local c = T.client(emu)
  local before = emu.stats().connections
  for i = 1, 100 do
    local res = c:kick_user(APP, "room1", "user" .. i)
    T.ok(res, "call " .. i)
  end
  -- Each control call is one curl connection; the second stats call is the only other one.
  T.eq(emu.stats().connections - before, 1 + 1, "connections the emulator accepted")
  T.eq(c:info().connections, 1, "connections the client opened")
  T.eq(c:info().requests, 100, "requests sent")
  emu.config { qps_enabled = true }
  c:close()
end)

T.case("module-level functions use the default client from rtcadmin.config", function()
  emu.reset()
  local c = rtcadmin.config { access_key = T.AK, secret_key = T.SK, endpoint = emu.url }
  T.eq(rtcadmin.config(), c, "config() returns the default client")
  local res = rtcadmin.kick_user(APP, "room1", "alice")
  T.eq(res.message, "success", "rtcadmin.kick_user")
  T.eq(rtcadmin.online_users(APP, "room1").TotalUser, 2, "rtcadmin.online_users")
  T.ok(rtcadmin.ban_user { app_id = APP, user_id = "bob", duration = 60 }, "rtcadmin.ban_user")
  T.eq(c:info().requests, 3, "all went through the default client")
end)

-- Runs a Lua snippet in a child process with extra environment; returns its output.
local function child(env, code)
  local lua = arg[-1] or "lua5.4"
  local prefix = ""
  for k, v in pairs(env) do prefix = prefix .. k .. "=" .. T.shell_quote(v) .. " " end
  local p = assert(io.popen(prefix .. T.shell_quote(lua) .. " -e " .. T.shell_quote(code) .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local probe = [[
  local r = require "rtcadmin"
  local c = r.config()
  local res, err = c:kick_user("661e2ebb5ffd4b0e8d3f6b1d", "room1", "alice")
  print(c:info().credential_source, c:info().endpoint, res and res.message or tostring(err))
]]

T.case("credentials and endpoint from VOLC_* and RTCADMIN_ENDPOINT", function()
  emu.reset()
  local out = child({ VOLC_ACCESSKEY = T.AK, VOLC_SECRETKEY = T.SK, RTCADMIN_ENDPOINT = emu.url }, probe)
  T.eq(out, "environment\t" .. emu.url .. "\tsuccess\n", "child output")
end)

T.case("credentials from ~/.volc/config when the environment has none", function()
  emu.reset()
  local home = os.tmpname()
  os.remove(home)
  assert(os.execute("mkdir -p " .. T.shell_quote(home .. "/.volc")))
  local f = assert(io.open(home .. "/.volc/config", "w"))
  f:write(string.format('{"ak": "%s", "sk": "%s"}', T.AK, T.SK))
  f:close()
  local out = child({ HOME = home, RTCADMIN_ENDPOINT = emu.url, VOLC_ACCESSKEY = "", VOLC_SECRETKEY = "" }, probe)
  os.execute("rm -rf " .. T.shell_quote(home))
  T.eq(out, "~/.volc/config\t" .. emu.url .. "\tsuccess\n", "child output")
end)

T.case("explicit options win over the environment", function()
  local out = child({ VOLC_ACCESSKEY = "AKLTenvironment", VOLC_SECRETKEY = "envsecret", RTCADMIN_ENDPOINT = emu.url },
    [[local c = require("rtcadmin").client{access_key = "AKLTfromoptions", secret_key = "x",
                                           endpoint = "http://127.0.0.1:9"}
      print(c:info().credential_source, c:info().endpoint)]])
  T.eq(out, "options\thttp://127.0.0.1:9\n", "child output")
end)

T.case("no credentials anywhere is a clear error at client creation", function()
  local home = os.tmpname()
  local out = child({ HOME = home, VOLC_ACCESSKEY = "", VOLC_SECRETKEY = "" },
    [[print(pcall(require("rtcadmin").client, {}))]])
  T.match(out, "^false\t.*rtcadmin.client: no credentials", "error")
end)

T.case("requiring the module reads nothing and connects nowhere", function()
  local out = child({ HOME = "/nonexistent", VOLC_ACCESSKEY = "", RTCADMIN_ENDPOINT = "not a url" },
    [[local r = require "rtcadmin"; print(type(r.kick_user), r._VERSION ~= nil)]])
  T.eq(out, "function\ttrue\n", "require succeeds with a broken environment")
end)

T.case("tostring masks the access key and never shows the secret", function()
  local c = T.client(emu)
  local s = tostring(c)
  T.match(s, "^rtcadmin%.client{", "prefix")
  T.match(s, 'access_key="AKLT%*%*%*%*ey01"', "masked key")
  T.no_match(s, T.AK, "full access key")
  T.no_match(s, T.SK, "secret")
  T.match(s, 'endpoint="' .. T.literal(emu.url) .. '"', "endpoint")
  c:close()
  T.eq(tostring(c), "rtcadmin.client (closed)", "closed")
end)

T.case("close is idempotent, __gc after close is harmless, closed clients refuse work", function()
  local c = T.client(emu)
  c:close()
  c:close()
  T.raises("the client is closed", c.kick_user, c, APP, "room1", "alice")
  c = nil -- luacheck: ignore
  collectgarbage()
  collectgarbage()
end)

T.case("__close releases the client at the end of a scope (Lua 5.4)", function()
  if _VERSION ~= "Lua 5.4" then return end
  local chunk = assert(load([[
    local T, emu = ...
    local kept
    do
      local c <close> = T.client(emu)
      kept = c
    end
    return tostring(kept)
  ]]))
  T.eq(chunk(T, emu), "rtcadmin.client (closed)", "closed at scope end")
end)

T.case("meta prints as one line: action, version, status, request, attempts, seconds (calls and batches)", function()
  local c = fresh()
  local _, meta = c:kick_user(APP, "room1", "alice")
  local line = "^KickUser 2020%-12%-01 200 request=" .. T.literal(meta.request_id) .. " attempts=1 %d+%.%d%d%ds$"
  T.match(tostring(meta), line, "tostring(meta)")
  local results = c:batch({ { "ban_user", { app_id = APP, room_id = "room1", user_id = "bob", duration = 600 } } })
  T.match(tostring(results[1].meta), "^BanRoomUser 2023%-11%-01 200 request=%d+%x+ attempts=1 %d+%.%d%d%ds$",
    "a batch's meta")
  -- It shows the fields as they are: a caller's changes, absent ones left out.
  meta.request_id, meta.elapsed, meta.attempts = nil, nil, "many"
  T.eq(tostring(meta), "KickUser 2020-12-01 200", "absent and odd fields left out")
  T.eq(meta.action, "KickUser", "still a plain table to read")
  local n = 0
  for _ in pairs(meta) do n = n + 1 end
  T.eq(n, 4, "and to iterate")
end)

T.run(function() emu.stop() end)
