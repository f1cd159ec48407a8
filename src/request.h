/* The blocking driver (request.c): one call, sent and retried before the method returns. */
#ifndef RTCADMIN_REQUEST_H
#define RTCADMIN_REQUEST_H

#include "call.h"
#include "rtcadmin.h"

/* Sends the call (for method fname) and pushes `result, meta` or `nil, err`; returns 2. */
int rtc_client_request(lua_State *L, rtc_client *c, const char *fname, const rtc_api_call *call);

#endif
