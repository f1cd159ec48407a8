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

-- Sends `calls` (client:batch entries) through client:batch with `opts`, then extends the bans
-- that were there already: for each ban_user call whose result says so, the extension
-- (UpdateBanRoomUserRule with the call's duration) goes out in one follow-up batch, unless
-- `keep(i)` (optional) says the existing ban already ends later. Returns client:batch's results,
-- where each ban_user result that succeeded also has `ban`:
--   "new"       BanRoomUser made the ban;
--   "extended"  the target was banned already and the extension succeeded: `extend` is its
--               result {ok = true, result, meta};
--   "already"   the target was banned already and `keep(i)` said that ban ends later (or it is an
--               IP ban, which has no update): nothing more was sent.
-- A failed extension makes the ban's result a failure: {ok = false, err = the extension's error,
-- meta = BanRoomUser's meta, ban = "extend"}. Raises what client:batch raises (bad arguments are
-- found in the first batch, before anything is sent).
function bans.batch(client, calls, opts, keep)
  local results = client:batch(calls, opts)
  local more, at = {}, {}
  for i, r in ipairs(results) do
    local call = calls[i]
    if r.ok and call[1] == "ban_user" then
      local ext = bans.already(r.result) and bans.extend_call(call[2])
      if not bans.already(r.result) then
        r.ban = "new"
      elseif not ext or (keep and keep(i)) then
        r.ban = "already"
      else
        more[#more + 1], at[#more + 1] = ext, i
      end
    end
  end
  if #more == 0 then return results end
  local extended = client:batch(more)
  for k, e in ipairs(extended) do
    local r = results[at[k]]
    if e.ok then
      r.ban, r.extend = "extended", e
    else
      r.ok, r.err, r.ban = false, e.err, "extend"
    end
  end
  return results
end

return bans
