/* Error objects (errors.c): the tables `nil, err` returns, with a readable __tostring. */
#ifndef RTCADMIN_ERRORS_H
#define RTCADMIN_ERRORS_H

#include "rtcadmin.h"

#define RTC_ERROR_MT "rtcadmin.error"

typedef struct {
    const char *action;
    const char *version;
    const char *code;
    const char *message;
    long code_n;          /* 0 when absent */
    long http_status;     /* 0 for transport failures */
    const char *request_id;
    int attempts;
} rtc_error_info;

/* Pushes an error table (metatable RTC_ERROR_MT); `redact`, if given, is scrubbed from the message. */
void rtc_push_error(lua_State *L, const rtc_error_info *e, const char *redact, size_t redact_len);
void rtc_error_register(lua_State *L);

#endif
