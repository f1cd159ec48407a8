/* The Redis limiter's shared pieces for Lua (redis_lua.c). */
#ifndef RTCADMIN_REDIS_LUA_H
#define RTCADMIN_REDIS_LUA_H

#include "compat.h"

/* rtcadmin.parse_redis_url and rtcadmin.redis_fallback, set in the module table at the top of the stack. */
void rtc_redis_register(lua_State *L);
/* rtcadmin.redis and rtcadmin.shard (redis_conn_lua.c), set the same way. */
void rtc_redis_conn_register(lua_State *L);

#endif
