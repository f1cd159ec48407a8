/* Internal interfaces shared by the Lua-facing parts of rtcadmin.so. */
#ifndef RTCADMIN_H
#define RTCADMIN_H

#include <stddef.h>

#include "compat.h"
#include "limiter.h"
#include "signing.h"
#include "stats.h"
#include "transport.h"

#define RTCADMIN_VERSION "0.1.0"

#if defined(__GNUC__)
#define RTC_EXPORT __attribute__((visibility("default")))
#else
#define RTC_EXPORT
#endif
#define RTC_CLIENT_MT "rtcadmin.client"
#define RTC_ERROR_MT "rtcadmin.error"
#define RTC_META_MT "rtcadmin.meta"
/* Registry flag: this Lua state runs inside nginx (the limiter defaults to the host scope there). */
#define RTC_IN_NGINX_KEY "rtcadmin.in_nginx"
#define RTC_MAX_VERSION_OVERRIDES 16
#define RTC_MAX_QPS_OVERRIDES 32

typedef struct {
    char *action;
    char *version;
} rtc_version_override;

typedef struct {
    char *action;
    double qps;
} rtc_qps_override;

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
    rtc_qps_override qps[RTC_MAX_QPS_OVERRIDES];
    int nqps;
    double default_qps;  /* for Actions without a documented or configured limit */
    rtc_limiter *limiter; /* NULL: no pacing */
    int limiter_owned;   /* the host backend's mapping belongs to this client */
    double margin;       /* pacing interval = (1 + margin) / qps */
    unsigned char key_fp[8]; /* limiter key: a SHA-256 prefix of the access key, never the key */
    int retries;
    double retry_base, retry_cap, deadline;
    long concurrency;    /* connections for bulk calls */
    uint64_t rng;        /* xorshift state for backoff jitter */
    rtc_stats stats;
    rtc_signer *signer;
    rtc_transport *transport;
    long requests;      /* requests sent */
    long connections;   /* TCP/TLS connections opened */
    int closed;
    /* The method running on this client (its transport, statistics and signer in use), or NULL. While
     * it runs, Lua code it calls (a batch's progress callback, a finalizer, a metamethod) may not use
     * the client: every method but info and stats refuses, and close is put off until it returns. */
    const char *running;
    const char *running_via; /* how Lua code runs inside it, for the refusal's message */
    int close_pending;
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
/* rtc_check_client, and raises when one of the client's own methods is running (see `running`). */
rtc_client *rtc_check_idle_client(lua_State *L, int idx, const char *fname);
/* Runs body with every value on the stack as its arguments, protected, the client marked as running
 * `what` (Lua code reaches it `via` ...); then cleanup(ud) when given, whatever happened, then a close
 * put off meanwhile. Returns body's results, or raises its error again. */
int rtc_client_run(lua_State *L, rtc_client *c, const char *what, const char *via, lua_CFunction body,
                   void (*cleanup)(void *), void *ud);
const char *rtc_client_version(rtc_client *c, const char *action, const char *dflt);
/* Sends the call (for method fname) and pushes `result, meta` or `nil, err`; returns 2. */
int rtc_client_request(lua_State *L, rtc_client *c, const char *fname, const rtc_api_call *call);
void rtc_client_register(lua_State *L, const luaL_Reg *methods);
/* 1 if s is an Action name: 1 or more of A-Z a-z 0-9. */
int rtc_valid_action(const char *s);

/* request.c */
/* A signed request ready for the wire. `lines` holds the header lines (and so the signature): wiped. */
typedef struct {
    rtc_buf url;
    rtc_buf lines;
    size_t offsets[8];
    const char *hv[8];
    size_t nh;
    rtc_http_request http;
} rtc_wire_request;

typedef struct {
    int ok;
    int retryable;
    int throttled;
    char code[64];
} rtc_outcome;

void rtc_ensure_decoder(lua_State *L);
/* Signs the call with the current time. 0, or -1 with err. */
int rtc_wire_build(rtc_client *c, const rtc_api_call *call, rtc_wire_request *w, char *err, size_t errlen);
void rtc_wire_free(rtc_wire_request *w);
/* Milliseconds from now_ns to deadline_ns, at least 1: the most an attempt may take. */
long rtc_attempt_timeout_ms(int64_t deadline_ns, int64_t now_ns);
/* Turns a finished transfer into `result, meta` or `nil, err` on the stack; frees resp. */
rtc_outcome rtc_push_outcome(lua_State *L, rtc_client *c, const rtc_api_call *call, int transfer_rc,
                             rtc_http_response *resp, int attempt, double elapsed);
/* The metatable of `meta` (RTC_META_MT): a __tostring for the REPL and logs. */
void rtc_meta_register(lua_State *L);
/* Backoff before attempt `attempt + 1`: full jitter in [0, min(cap, base * 2^(attempt-1))]. */
double rtc_backoff(rtc_client *c, int attempt);
/* Reserves a send slot: 0 and *start_ns, or -1 when the limiter failed (message in err). */
int rtc_pace_reserve(rtc_client *c, const char *action, int64_t now_ns, int64_t deadline_ns, int64_t *start_ns,
                     char *err, size_t errlen);
/* True when a sender reaching its slot at now_ns is too late to use it: the slot must then be given up
 * and a new one reserved (docs/pacing.md, "late senders"). */
int rtc_pace_missed(const rtc_client *c, int64_t slot_ns, int64_t now_ns);
void rtc_push_simple_error(lua_State *L, rtc_client *c, const rtc_api_call *call, const char *code,
                           const char *message, int attempts);
double rtc_client_qps(rtc_client *c, const char *action);
int rtc_client_reserve_method(lua_State *L);
int rtc_client_stats_method(lua_State *L);

/* actions.c */
extern const luaL_Reg rtc_action_methods[];

/* batch.c */
/* Registry table: method name -> the method with upvalue true, which checks its arguments and returns
 * the call as a prepared table instead of sending it. */
#define RTC_PREPARERS_KEY "rtcadmin.preparers"
extern const luaL_Reg rtc_batch_methods[];
/* Points call into the prepared table at idx (which then anchors everything call uses). */
void rtc_call_load(lua_State *L, int idx, rtc_api_call *call);
int rtc_client_exchanges_method(lua_State *L);

/* exchange.c */
void rtc_exchange_push(lua_State *L, int client, int prepared);
int rtc_client_exchange_method(lua_State *L);
void rtc_batch_register(lua_State *L, const luaL_Reg *methods);

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

/* heap.c: rtcadmin.heap_budget, the memory ceiling behind the rule sandbox */
void rtc_heap_register(lua_State *L);
/* view.c: rtcadmin.view_index, the sandbox's read-only views of events */
void rtc_view_register(lua_State *L);

/* pattern.c: rtcadmin.pattern_functions, Lua's pattern functions on a step budget */
void rtc_pattern_register(lua_State *L);

/* Raises "rtcadmin.<fname>: <message>" at the caller's level. */
int rtc_argerror(lua_State *L, const char *fname, const char *fmt, ...);
/* Quotes an untrusted value for an error message: printable ASCII as is, the rest as \xNN, cut at 40. */
const char *rtc_quote(lua_State *L, const char *s, size_t n);

#endif
