-- Kick one user out of a room and show the room before and after.
--
--   lua5.4 examples/kick.lua APP_ID ROOM_ID USER_ID
--
-- Credentials come from VOLC_ACCESSKEY/VOLC_SECRETKEY or ~/.volc/config; RTCADMIN_ENDPOINT points
-- it at another endpoint (the bundled emulator, a proxy). Against the real service set nothing else.
local rtcadmin = require "rtcadmin"

local app_id, room_id, user_id = arg[1], arg[2], arg[3]
if not (app_id and room_id and user_id) then
  io.stderr:write("usage: lua5.4 examples/kick.lua APP_ID ROOM_ID USER_ID\n")
  os.exit(2)
end

local client = rtcadmin.config() -- the default client, from the environment
print(tostring(client))

local function show_room(label)
  local room, err = client:online_users(app_id, room_id)
  if not room then
    print(label .. ": " .. tostring(err))
    return
  end
  print(string.format("%-7s %s/%s: %d online: %s", label, app_id, room_id, room.TotalUser or 0,
    table.concat(room.VisibleUserList or {}, ", ")))
end

show_room("before")
local result, meta = client:kick_user(app_id, room_id, user_id)
if not result then
  print("kick failed: " .. tostring(meta)) -- on failure the second value is the error
  os.exit(1)
end
print(string.format("kicked  %s: %s (request %s, %.1f ms)", user_id, tostring(result.message), meta.request_id,
  meta.elapsed * 1000))
show_room("after")
client:close()
