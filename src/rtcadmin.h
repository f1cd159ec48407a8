/* What every Lua binding of rtcadmin.so shares: the export macro, the version, and the argument
 * errors. Each object has its own header (client_lua.h, request.h, batch.h, exchange.h, ...); the
 * Lua-free core has its own too (call.h, client.h, limiter.h, signing.h, transport.h, ...). */
#ifndef RTCADMIN_H
#define RTCADMIN_H

#include <stddef.h>

#include "compat.h"

#define RTCADMIN_VERSION "0.1.0"

#if defined(__GNUC__)
#define RTC_EXPORT __attribute__((visibility("default")))
#else
#define RTC_EXPORT
#endif

/* Raises "rtcadmin.<fname>: <message>" at the caller's level. */
int rtc_argerror(lua_State *L, const char *fname, const char *fmt, ...);
/* Quotes an untrusted value for an error message: printable ASCII as is, the rest as \xNN, cut at 40. */
const char *rtc_quote(lua_State *L, const char *s, size_t n);

/* Small parts of the module table, each registered by its own file: */
/* heap.c: rtcadmin.heap_budget, the memory ceiling behind the rule sandbox */
void rtc_heap_register(lua_State *L);
/* view.c: rtcadmin.view_index, the sandbox's read-only views of events */
void rtc_view_register(lua_State *L);
/* pattern.c: rtcadmin.pattern_functions, Lua's pattern functions on a step budget */
void rtc_pattern_register(lua_State *L);

#endif
