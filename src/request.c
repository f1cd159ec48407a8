/* The blocking driver: runs one call's state machine (call.c) to its end before the method returns,
 * sleeping through its waits and sending over the client's keep-alive connection. */
#include <string.h>

#include "client_lua.h"
#include "request.h"
#include "response.h"

typedef struct {
    rtc_client *c;
    const rtc_api_call *call;
    rtc_call k;
    rtc_http_response resp; /* the attempt's: freed again when the call ends, should it raise midway */
} request_args;

static void request_done(void *ud) {
    request_args *a = ud;
    rtc_call_free(&a->k);
    rtc_http_response_free(&a->resp);
}

/* Runs as the client's running method (rtc_client_run): its last argument is a request_args. */
static int request_body(lua_State *L) {
    request_args *a = lua_touserdata(L, lua_gettop(L));
    rtc_call *k = &a->k;
    rtc_call_next next;

    rtc_ensure_decoder(L); /* before any C allocation: it may raise */
    rtc_call_init(k, a->c, a->call);
    next = rtc_call_step(k, rtc_monotonic_ns());
    for (;;) {
        switch (next) {
        case RTC_CALL_WAIT:
            rtc_sleep_until(k->until);
            next = rtc_call_step(k, rtc_monotonic_ns());
            break;
        case RTC_CALL_SEND: {
            rtc_answer ans;
            int64_t now;
            int rc;
            rtc_http_response_init(&a->resp);
            rc = rtc_transport_perform(a->c->transport, &k->wire.http, &a->resp);
            now = rtc_monotonic_ns();
            rtc_call_sent(k);
            ans = rtc_push_response(L, a->c, k->call, rc, &a->resp, k->attempt, rtc_call_elapsed(k, now));
            next = rtc_call_answer(k, &ans, now);
            if (next != RTC_CALL_DONE) lua_pop(L, 2); /* a retry follows */
            break;
        }
        case RTC_CALL_DONE:
            if (!k->answered) rtc_push_call_end(L, k);
            return 2;
        case RTC_CALL_ERROR:
            return luaL_error(L, "rtcadmin: cannot sign %s: %s", k->call->action, k->message);
        }
    }
}

int rtc_client_request(lua_State *L, rtc_client *c, const char *fname, const rtc_api_call *call) {
    request_args a;
    a.c = c;
    a.call = call; /* its strings stay anchored by the values on the stack */
    memset(&a.k, 0, sizeof a.k);
    rtc_http_response_init(&a.resp);
    lua_pushlightuserdata(L, &a);
    return rtc_client_run(L, c, fname, "a finalizer or a hook", request_body, request_done, &a);
}
