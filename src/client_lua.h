/* The client object in Lua (client.c): options, credentials, close, info, stats, reserve, and the
 * rule that a client runs one of its methods at a time. Other files add their methods to it. */
#ifndef RTCADMIN_CLIENT_LUA_H
#define RTCADMIN_CLIENT_LUA_H

#include "client.h"
#include "rtcadmin.h"

#define RTC_CLIENT_MT "rtcadmin.client"
/* Registry flag: this Lua state runs inside nginx (the limiter defaults to the host scope there). */
#define RTC_IN_NGINX_KEY "rtcadmin.in_nginx"

int rtc_client_new(lua_State *L);               /* opts table at index 1 -> client userdata */
rtc_client *rtc_check_client(lua_State *L, int idx, const char *fname);
/* rtc_check_client, and raises when one of the client's own methods is running (see `running`). */
rtc_client *rtc_check_idle_client(lua_State *L, int idx, const char *fname);
/* Runs body with every value on the stack as its arguments, protected, the client marked as running
 * `what` (Lua code reaches it `via` ...); then cleanup(ud) when given, whatever happened, then a close
 * put off meanwhile. Returns body's results, or raises its error again. */
int rtc_client_run(lua_State *L, rtc_client *c, const char *what, const char *via, lua_CFunction body,
                   void (*cleanup)(void *), void *ud);
const char *rtc_client_version(rtc_client *c, const char *action, const char *dflt);
/* 1 if s is an Action name: 1 or more of A-Z a-z 0-9. */
int rtc_valid_action(const char *s);
/* Creates the client's metatable with the client's own methods (close, info, reserve, stats). */
void rtc_client_register(lua_State *L);
/* Adds methods to every client (the method table of RTC_CLIENT_MT). */
void rtc_client_add_methods(lua_State *L, const luaL_Reg *methods);

#endif
