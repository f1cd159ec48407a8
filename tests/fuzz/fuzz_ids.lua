-- ID validation (src/actions.c) through the methods' own argument checks (their preparers validate and
-- build the call without sending it). The input is split into AppId, RoomId, UserId and an IP. Every
-- accepted call holds IDs the documented rules allow, in a body that decodes to exactly them; every
-- call whose IDs the rules allow is accepted; refusals are one-line argument errors.
local cjson = require "cjson.safe"
local preparers = debug.getregistry()["rtcadmin.preparers"]

local function id_ok(s) return #s >= 1 and #s <= 128 and not s:find("[^A-Za-z0-9@._%-]") end
local function app_ok(s) return #s >= 1 and #s <= 128 and not s:find("[^\33-\126]") end

local function split(data)
  local out, pos = {}, 1
  for i = 1, 4 do
    local n = data:byte(pos) or 0
    if n > 200 then n = n * 2 end -- reach past the 128 limit now and then
    out[i] = data:sub(pos + 1, pos + n)
    pos = pos + 1 + n
  end
  return out
end

local function refused(fname, ok, err)
  if ok then return false end
  local msg = tostring(err)
  if not msg:find("rtcadmin%." .. fname .. ": ") or msg:find("\n") then
    error("INVARIANT: " .. fname .. " raised something else: " .. msg)
  end
  return true
end

return function(client, data)
  local p = split(data)
  local app, room, user, ip = p[1], p[2], p[3], p[4]
  local valid = app_ok(app) and id_ok(room) and id_ok(user)

  local ok, call = pcall(preparers.kick_user, client, app, room, user)
  if refused("kick_user", ok, call) then
    if valid then error("INVARIANT: kick_user refused valid IDs " .. ("%q %q %q"):format(app, room, user)) end
  else
    if not valid then error("INVARIANT: kick_user accepted " .. ("%q %q %q"):format(app, room, user)) end
    local body = cjson.decode(call.body)
    if not body or body.AppId ~= app or body.RoomId ~= room or body.UserId ~= user then
      error("INVARIANT: kick_user body " .. tostring(call.body))
    end
  end

  ok, call = pcall(preparers.online_users, client, app, room)
  if refused("online_users", ok, call) then
    if app_ok(app) and id_ok(room) then error("INVARIANT: online_users refused valid IDs") end
  elseif not (app_ok(app) and id_ok(room)) or call.params[2] ~= app or call.params[4] ~= room then
    error("INVARIANT: online_users accepted or mangled " .. ("%q %q"):format(app, room))
  end

  ok, call = pcall(preparers.ban_user, client, { app_id = app, user_id = user, ip = ip, duration = 60 })
  if not refused("ban_user", ok, call) then
    local body = cjson.decode(call.body)
    if not (app_ok(app) and id_ok(user)) or not body or body.IP ~= ip or body.UserId ~= user then
      error("INVARIANT: ban_user accepted or mangled " .. ("%q %q %q"):format(app, user, ip))
    end
  end
end
