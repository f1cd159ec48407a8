/* Prepared calls (prepared.c): a method's checked arguments kept as a Lua table, to be sent later by a
 * batch or an exchange. Each method is also registered as its preparer: the same C function with
 * upvalue true, which checks its arguments like the method and returns the prepared table. */
#ifndef RTCADMIN_PREPARED_H
#define RTCADMIN_PREPARED_H

#include "call.h"
#include "rtcadmin.h"

/* Whether the running method was called as a preparer. */
#define RTC_PREPARING(L) lua_toboolean((L), lua_upvalueindex(1))

/* Registers each method's preparer under its name. */
void rtc_prepared_register(lua_State *L, const luaL_Reg *methods);
/* Pushes the preparer of method `name` (a string at idx), or nil. */
void rtc_prepared_find(lua_State *L, int idx);
/* Pushes {action, version, get, body, params = {k1, v1, ...}} for the call. */
void rtc_prepared_push(lua_State *L, const rtc_api_call *call);
/* calls[i] = {"method", args...} -> prepared[i] for i = 1..n, the client at index 1; raises (as
 * rtcadmin.<fname>) on the first invalid call. */
void rtc_prepared_all(lua_State *L, int calls, int prepared, int n, const char *fname);
/* Points call into the prepared table at idx (which then anchors everything call uses). */
void rtc_prepared_load(lua_State *L, int idx, rtc_api_call *call);

#endif
