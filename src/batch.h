/* The bulk driver (batch.c): many calls over several connections (libcurl multi). */
#ifndef RTCADMIN_BATCH_H
#define RTCADMIN_BATCH_H

#include "rtcadmin.h"

/* batch, kick_users, ban_users (also rtcadmin.METHODS.bulk). */
extern const luaL_Reg rtc_batch_methods[];
/* Adds the bulk methods and client:exchanges to every client. */
void rtc_batch_register(lua_State *L);

#endif
