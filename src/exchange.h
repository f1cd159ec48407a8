/* The sans-I/O driver (exchange.c): a call stepped by Lua code that does its own waiting and I/O. */
#ifndef RTCADMIN_EXCHANGE_H
#define RTCADMIN_EXCHANGE_H

#include "rtcadmin.h"

/* Pushes a new exchange for the prepared call at `prepared` of the client at `client`. */
void rtc_exchange_push(lua_State *L, int client, int prepared);
/* Adds client:exchange and the exchange's metatable. */
void rtc_exchange_register(lua_State *L);

#endif
