/* An attempt's answer as Lua values (response.c): `result, meta` or `nil, err`, and the rtc_answer the
 * call engine decides with. Shared by the three drivers. */
#ifndef RTCADMIN_RESPONSE_H
#define RTCADMIN_RESPONSE_H

#include "call.h"
#include "rtcadmin.h"

#define RTC_META_MT "rtcadmin.meta"

/* Loads cjson.safe's decode into the registry (may raise: call it before any C allocation). */
void rtc_ensure_decoder(lua_State *L);
/* Turns a finished transfer into `result, meta` or `nil, err` on the stack; frees resp. */
rtc_answer rtc_push_response(lua_State *L, const rtc_client *c, const rtc_api_call *call, int transfer_rc,
                             rtc_http_response *resp, int attempt, double elapsed);
/* Pushes `nil, err` for a call that ended without an answer (code, message). */
void rtc_push_failure(lua_State *L, const rtc_client *c, const rtc_api_call *call, const char *code,
                      const char *message, int attempts);
/* Pushes what a finished call returns when its last answer is not already on the stack. */
void rtc_push_call_end(lua_State *L, const rtc_call *k);
/* The metatable of `meta` (RTC_META_MT): a __tostring for the REPL and logs. */
void rtc_meta_register(lua_State *L);

#endif
