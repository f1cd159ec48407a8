-- Bans that last what they say. BanRoomUser leaves an existing ban as it is and answers "User has
-- been banned" (or "Room has been banned"), so a ban for a target that is already banned changes
-- nothing by itself: the longer ban is made with UpdateBanRoomUserRule, which sets the ban to
-- `duration` seconds from now (absolute, so sending it again is harmless). The policy engine and
-- `rtcadmin ban` both go through here.
local bans = {}

-- Whether a BanRoomUser Result says the target was banned already (and so was left as it was).
function bans.already(result)
  if type(result) ~= "table" then return false end
  local m = result.Message or result.message -- 2023-11-01 / 2020-12-01
  return m == "User has been banned" or m == "Room has been banned"
end

-- The call that extends the ban a ban_user call with `args` asked for: {"update_ban", args}, as a
-- client:batch entry. (IP bans have no update: nil for those.)
function bans.extend_call(args)
  if args.ip ~= nil and args.user_id == nil and args.room_id == nil then return nil end
  return { "update_ban", { app_id = args.app_id, room_id = args.room_id, user_id = args.user_id,
                           duration = args.duration } }
end

return bans
