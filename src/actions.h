/* The moderation methods (actions.c): argument checks and the API call each makes; the limits of the
 * API they check against, which the module exports (rtcadmin.LIMITS, rtcadmin.valid_id). */
#ifndef RTCADMIN_ACTIONS_H
#define RTCADMIN_ACTIONS_H

#include "rtcadmin.h"

#define RTC_ID_MAX 128       /* RoomId / UserId: 1-128 characters of A-Z a-z 0-9 @ . _ - */
#define RTC_BAN_MIN 10       /* BanRoomUser / UpdateBanRoomUserRule ForbiddenInterval: {0} or [10, 604800] */
#define RTC_BAN_MAX 604800
#define RTC_MUTE_MIN 60      /* BanUserStream ForbiddenInterval: {0} or [60, 259200] */
#define RTC_MUTE_MAX 259200

/* kick_user, ban_user, ... call (also rtcadmin.METHODS.single). */
extern const luaL_Reg rtc_action_methods[];
/* Adds the methods (and their preparers) to every client. */
void rtc_actions_register(lua_State *L);
/* 1 if s[0..n) is a RoomId / UserId: 1-128 characters of A-Z a-z 0-9 @ . _ - */
int rtc_valid_id(const char *s, size_t n);
/* 1 if s[0..n) is an AppId, which is opaque: 1-128 printable ASCII characters, no spaces. */
int rtc_valid_app_id(const char *s, size_t n);

#endif
