/* Internal interfaces shared by the Lua-facing parts of rtcadmin.so. */
#ifndef RTCADMIN_H
#define RTCADMIN_H

#include <stddef.h>

#include "compat.h"
#include "signing.h"
#include "transport.h"

#define RTCADMIN_VERSION "0.1.0"

#if defined(__GNUC__)
#define RTC_EXPORT __attribute__((visibility("default")))
#else
#define RTC_EXPORT
#endif
#define RTC_CLIENT_MT "rtcadmin.client"
#define RTC_ERROR_MT "rtcadmin.error"
#define RTC_MAX_VERSION_OVERRIDES 16

typedef struct {
    char *action;
    char *version;
} rtc_version_override;

typedef struct rtc_client {
    char *access_key;
    char *secret_key;
    size_t secret_len;
    char *session_token;
    const char *credential_source; /* static string: where the keys came from */
    char *region;
    char *service;
    char *base_url;     /* scheme://host[:port], no trailing slash */
    char *host_header;  /* Host as sent and signed */
    double timeout;
    double connect_timeout;
    char *ca_file;
    char *proxy;
    char *user_agent;
    rtc_version_override versions[RTC_MAX_VERSION_OVERRIDES];
    int nversions;
    rtc_signer *signer;
    rtc_transport *transport;
    long requests;      /* requests sent */
    long connections;   /* TCP/TLS connections opened */
    int closed;
} rtc_client;

/* One API call after validation: Action/Version, then GET query parameters or a POST JSON body. */
typedef struct {
    const char *action;
    const char *version;
    int is_get;
    const rtc_kv *params;
    size_t nparams;
    const char *body;
    size_t body_len;
} rtc_api_call;

/* client.c */
int rtc_client_new(lua_State *L);               /* opts table at index 1 -> client userdata */
rtc_client *rtc_check_client(lua_State *L, int idx, const char *fname);
const char *rtc_client_version(rtc_client *c, const char *action, const char *dflt);
/* Sends the call and pushes `result, meta` or `nil, err`; returns 2. */
int rtc_client_request(lua_State *L, rtc_client *c, const rtc_api_call *call);
void rtc_client_register(lua_State *L, const luaL_Reg *methods);

/* actions.c */
extern const luaL_Reg rtc_action_methods[];

/* errors.c */
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

int rtc_is_retryable(const char *code, long http_status);
/* Pushes an error table (metatable RTC_ERROR_MT); `redact`, if given, is scrubbed from the message. */
void rtc_push_error(lua_State *L, const rtc_error_info *e, const char *redact, size_t redact_len);
void rtc_error_register(lua_State *L);

/* Raises "rtcadmin.<fname>: <message>" at the caller's level. */
int rtc_argerror(lua_State *L, const char *fname, const char *fmt, ...);
/* Quotes an untrusted value for an error message: printable ASCII as is, the rest as \xNN, cut at 40. */
const char *rtc_quote(lua_State *L, const char *s, size_t n);

#endif
