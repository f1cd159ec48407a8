/* One API call as a state machine, in plain C (no Lua, no I/O): pacing through the
 * limiter, signing each attempt, classifying answers, retries with jittered backoff, the deadline and
 * the statistics. A driver moves it along: rtc_call_step says what to do next at time `now`, the
 * driver does it (sleeps, sends) and reports the answer with rtc_call_answer. The drivers are
 * request.c (blocking), batch.c (libcurl multi) and exchange.c (Lua-driven, sans I/O): they decide
 * nothing about a call themselves. See docs/architecture.md. */
#ifndef RTCADMIN_CALL_H
#define RTCADMIN_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "client.h"
#include "signing.h"
#include "stats.h"
#include "transport.h"

/* Error codes of calls that end without an answer from the service (the transport's are in
 * transport.c, the service's come from its responses). */
#define RTC_CODE_DEADLINE "DeadlineExceeded"
#define RTC_CODE_LIMITER "LimiterError"
#define RTC_CODE_MALFORMED "MalformedResponse"
#define RTC_CODE_HTTP "HTTPError"
#define RTC_CODE_UNKNOWN "UnknownError"
#define RTC_DEADLINE_MESSAGE "the rate limit leaves no slot before the call's deadline"

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

/* A signed request ready for the wire. `lines` holds the header lines (and so the signature): wiped. */
typedef struct {
    rtc_buf url;
    rtc_buf lines;
    size_t offsets[8];
    const char *hv[8];
    size_t nh;
    rtc_http_request http;
} rtc_wire_request;

/* What the driver read from an attempt's answer (the response reader fills it; see response.c). */
typedef struct {
    int ok;               /* a success: the call is done */
    long http_status;     /* 0 when no HTTP answer came (a transport failure) */
    long connects;        /* new connections the attempt opened */
    char code[64];        /* the failure's code (the service's, a transport's, MalformedResponse, ...) */
} rtc_answer;

typedef enum {
    RTC_CALL_WAIT,  /* step again at `until` (a limiter slot or a retry backoff) */
    RTC_CALL_SEND,  /* send `wire`, then rtc_call_answer */
    RTC_CALL_DONE,  /* finished: `answered` says whether with the last attempt's answer */
    RTC_CALL_ERROR  /* the request could not be signed (`message`): a programming or memory error */
} rtc_call_next;

typedef enum { RTC_CALL_START, RTC_CALL_RESERVE, RTC_CALL_SLOT, RTC_CALL_SENT, RTC_CALL_BACKOFF, RTC_CALL_END } rtc_call_state;

typedef struct {
    rtc_client *c;
    const rtc_api_call *call;
    rtc_action_stats *stats;
    rtc_call_state state;
    int attempt;           /* the attempt under way, from 1 */
    int64_t deadline;      /* the first step's time + the client's deadline */
    int64_t asked;         /* when the attempt's slot was reserved */
    int64_t slot;          /* the attempt's send slot */
    int64_t sent;          /* when the attempt was sent */
    int64_t until;         /* RTC_CALL_WAIT: when to step again */
    rtc_wire_request wire; /* RTC_CALL_SEND: the signed request, until rtc_call_sent */
    int has_wire;
    /* RTC_CALL_DONE */
    int ok;
    int answered;          /* 1: ended with the last answer (the driver has its result or error);
                            * 0: ended before sending, with `code` and `message` */
    int attempts;          /* attempts sent */
    char code[64];
    char message[256];
} rtc_call;

/* A call of client c; `call` and its strings must outlive it. */
void rtc_call_init(rtc_call *k, rtc_client *c, const rtc_api_call *call);
/* What to do next at `now` (from the start, after a wait, or after a backoff). */
rtc_call_next rtc_call_step(rtc_call *k, int64_t now);
/* The request sent at the last RTC_CALL_SEND has left (its buffers may go): wipes and frees them. */
void rtc_call_sent(rtc_call *k);
/* The answer to the request sent: RTC_CALL_DONE, or RTC_CALL_WAIT until the retry's backoff ends. */
rtc_call_next rtc_call_answer(rtc_call *k, const rtc_answer *a, int64_t now);
/* Ends a call whose send slot the driver could not get (a driver that paces elsewhere): nothing was
 * sent for this attempt. RTC_CALL_DONE. */
rtc_call_next rtc_call_refuse(rtc_call *k, const char *code, const char *message);
/* Seconds since the last attempt was sent. */
double rtc_call_elapsed(const rtc_call *k, int64_t now);
/* Frees what a call that is given up still holds (a signed request not sent). */
void rtc_call_free(rtc_call *k);

/* The parts, for the drivers and the client's other methods: */
/* Whether an answer with this code and status is worth another attempt. */
int rtc_is_retryable(const char *code, long http_status);
/* The limit (requests per second) the client paces the Action at. */
double rtc_client_qps(const rtc_client *c, const char *action);
/* Reserves a send slot: 0 and *start_ns, or -1 when the limiter failed (message in err). */
int rtc_pace_reserve(rtc_client *c, const char *action, int64_t now_ns, int64_t deadline_ns, int64_t *start_ns,
                     char *err, size_t errlen);
/* True when a sender reaching its slot `late_ns` after it is too late to use it, with the pacing margin
 * `margin`: the slot must then be given up and a new one reserved (docs/pacing.md, "late senders"). */
int rtc_pace_late(double margin, int64_t late_ns);
/* Signs the call with the current time. 0, or -1 with err. */
int rtc_wire_build(rtc_client *c, const rtc_api_call *call, rtc_wire_request *w, char *err, size_t errlen);
void rtc_wire_free(rtc_wire_request *w);
/* Milliseconds from now_ns to deadline_ns, at least 1: the most an attempt may take. */
long rtc_attempt_timeout_ms(int64_t deadline_ns, int64_t now_ns);

#endif
