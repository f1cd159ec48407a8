/* The call engine: one API call from its first limiter slot to its outcome (call.h). Every driver
 * (blocking, libcurl multi, Lua exchange) runs its calls through here, so pacing, signing, the retry
 * and deadline rules and the statistics exist once. No Lua and no I/O; the time comes from the driver,
 * except after a limiter reservation (see RTC_CALL_RESERVE). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "call.h"

/* Documented per-account limits (requests per second) of the RTC OpenAPI. */
static const struct {
    const char *action;
    double qps;
} documented_qps[] = {
    {"KickUser", 60},          {"BanRoomUser", 40},         {"UpdateBanRoomUserRule", 20},
    {"BanUserStream", 60},     {"UnbanUserStream", 60},     {"GetRoomOnlineUsers", 40},
    {"DismissRoom", 60},       {"LimitTokenPrivilege", 40}, {"ListRoomInfo", 10},
    {"ListUserInfo", 10},
};

double rtc_client_qps(const rtc_client *c, const char *action) {
    size_t i;
    for (i = 0; i < (size_t)c->nqps; i++)
        if (strcmp(c->qps[i].action, action) == 0) return c->qps[i].qps;
    for (i = 0; i < sizeof documented_qps / sizeof *documented_qps; i++)
        if (strcmp(documented_qps[i].action, action) == 0) return documented_qps[i].qps;
    return c->default_qps;
}

int rtc_pace_reserve(rtc_client *c, const char *action, int64_t now_ns, int64_t deadline_ns, int64_t *start_ns,
                     char *err, size_t errlen) {
    int64_t interval;
    if (!c->limiter) {
        *start_ns = now_ns;
        return 0;
    }
    /* Rounded up: a truncated interval would fit qps + 1 sends into some second. */
    interval = (int64_t)ceil((1.0 + c->margin) * 1e9 / rtc_client_qps(c, action));
    return c->limiter->ops->reserve(c->limiter, c->key_fp, action, interval, now_ns, deadline_ns, start_ns, err,
                                    errlen);
}

/* Slots are `interval = (1 + margin) / qps` apart, so a sender may start up to `margin` seconds after
 * its slot and one second of sends still holds at most `qps` of them. Half of that is given to the
 * sender's wake-up lateness, half is kept for jitter between sending and the service's arrival times. */
int rtc_pace_late(double margin, int64_t late_ns) { return late_ns > (int64_t)(margin * 0.5e9); }

static uint64_t next_random(rtc_client *c) {
    uint64_t x = c->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 2685821657736338717ULL;
}

/* Backoff before attempt `attempt + 1`: full jitter in [0, min(cap, base * 2^(attempt-1))]. */
static double backoff(rtc_client *c, int attempt) {
    double ceiling = c->retry_base * ldexp(1.0, attempt - 1);
    if (ceiling > c->retry_cap) ceiling = c->retry_cap;
    return ceiling * (double)(next_random(c) >> 11) / 9007199254740992.0;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int rtc_is_retryable(const char *code, long http_status) {
    static const char *const transient[] = {"FlowLimitExceeded", "AccountFlowLimitExceeded", "InternalError",
                                            "InternalServiceTimeout", "FailToConnect", "ServiceUnavailable",
                                            "ConnectionFailed", "ConnectionReset", "Timeout", "DNSFailure"};
    size_t i;
    if (http_status == 429 || http_status >= 500) return 1;
    if (!code) return 0;
    for (i = 0; i < sizeof transient / sizeof *transient; i++)
        if (starts_with(code, transient[i])) return 1;
    return 0;
}

static int is_throttle(const char *code, long http_status) {
    return http_status == 429 || starts_with(code, "FlowLimitExceeded") || starts_with(code, "AccountFlowLimitExceeded");
}

/* `?k=v&...` in the given order with the canonical encoding (servers decode and re-canonicalise). */
static void build_url(rtc_buf *url, const char *base, const rtc_kv *q, size_t n) {
    size_t i;
    rtc_buf_adds(url, base);
    rtc_buf_adds(url, "/?");
    for (i = 0; i < n; i++) {
        if (i) rtc_buf_addc(url, '&');
        rtc_uri_encode(url, q[i].key, q[i].key_len, 0);
        rtc_buf_addc(url, '=');
        rtc_uri_encode(url, q[i].value, q[i].value_len, 0);
    }
}

static void add_line(rtc_wire_request *w, const char *name, const char *value) {
    w->offsets[w->nh++] = w->lines.len;
    rtc_buf_addf(&w->lines, "%s: %s", name, value);
    rtc_buf_addc(&w->lines, '\0');
}

int rtc_wire_build(rtc_client *c, const rtc_api_call *call, rtc_wire_request *w, char *err, size_t errlen) {
    rtc_kv q[64], hdrs[2];
    rtc_sign_request sr;
    rtc_sign_result res;
    char xdate[RTC_XDATE_LEN + 1];
    size_t i, nq = call->nparams + 2;
    int rc;

    memset(w, 0, sizeof *w);
    rtc_buf_init(&w->url);
    rtc_buf_init(&w->lines);
    if (nq > sizeof q / sizeof *q) {
        snprintf(err, errlen, "too many query parameters (at most %d)", (int)(sizeof q / sizeof *q) - 2);
        return -1;
    }
    q[0].key = "Action", q[0].key_len = 6, q[0].value = call->action, q[0].value_len = strlen(call->action);
    q[1].key = "Version", q[1].key_len = 7, q[1].value = call->version, q[1].value_len = strlen(call->version);
    for (i = 0; i < call->nparams; i++) q[i + 2] = call->params[i];
    hdrs[0].key = "Host", hdrs[0].key_len = 4, hdrs[0].value = c->host_header;
    hdrs[0].value_len = strlen(c->host_header);
    hdrs[1].key = "Content-Type", hdrs[1].key_len = 12, hdrs[1].value = "application/json", hdrs[1].value_len = 16;

    memset(&sr, 0, sizeof sr);
    sr.method = call->is_get ? "GET" : "POST";
    sr.path = "/";
    sr.query = q;
    sr.nquery = nq;
    sr.headers = hdrs;
    sr.nheaders = call->is_get ? 1 : 2;
    sr.body = (const unsigned char *)call->body;
    sr.body_len = call->is_get ? 0 : call->body_len;
    sr.access_key = c->access_key;
    sr.secret_key = c->secret_key;
    sr.secret_len = c->secret_len;
    sr.session_token = c->session_token;
    sr.region = c->region;
    sr.service = c->service;
    rtc_format_xdate((long long)time(NULL), xdate);
    sr.x_date = xdate;

    rtc_sign_result_init(&res);
    rc = rtc_sign(c->signer, &sr, &res, err, errlen);
    if (rc == 0) {
        build_url(&w->url, c->base_url, q, nq);
        add_line(w, "Host", c->host_header);
        if (!call->is_get) add_line(w, "Content-Type", "application/json");
        add_line(w, "Accept", "application/json");
        add_line(w, "X-Date", res.x_date);
        add_line(w, "X-Content-Sha256", res.content_sha256);
        add_line(w, "Authorization", res.authorization.data);
        if (c->session_token) add_line(w, "X-Security-Token", c->session_token);
        if (w->url.oom || w->lines.oom) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    rtc_sign_result_free(&res);
    if (rc) {
        rtc_wire_free(w);
        return -1;
    }
    for (i = 0; i < w->nh; i++) w->hv[i] = w->lines.data + w->offsets[i];
    w->http.method = sr.method;
    w->http.url = w->url.data;
    w->http.headers = w->hv;
    w->http.nheaders = w->nh;
    w->http.body = call->body;
    w->http.body_len = sr.body_len;
    return 0;
}

long rtc_attempt_timeout_ms(int64_t deadline_ns, int64_t now_ns) {
    int64_t left = (deadline_ns - now_ns + 999999) / 1000000;
    return left < 1 ? 1 : left > 0x7fffffff ? 0x7fffffff : (long)left;
}

void rtc_wire_free(rtc_wire_request *w) {
    rtc_buf_free(&w->url);
    rtc_buf_free_secure(&w->lines);
}

void rtc_call_init(rtc_call *k, rtc_client *c, const rtc_api_call *call) {
    memset(k, 0, sizeof *k);
    k->c = c;
    k->call = call;
    k->state = RTC_CALL_START;
    k->attempt = 1;
}

/* The call ends: its outcome counted once, whichever way it ended. */
static rtc_call_next finish(rtc_call *k, int ok, int answered, const char *code, const char *message) {
    k->state = RTC_CALL_END;
    k->ok = ok;
    k->answered = answered;
    k->attempts = answered ? k->attempt : k->attempt - 1;
    snprintf(k->code, sizeof k->code, "%s", ok ? "" : code);
    snprintf(k->message, sizeof k->message, "%s", message ? message : "");
    rtc_stats_outcome(k->stats, ok ? NULL : k->code);
    return RTC_CALL_DONE;
}

static rtc_call_next wait_until(rtc_call *k, int64_t t) {
    k->until = t;
    return RTC_CALL_WAIT;
}

rtc_call_next rtc_call_step(rtc_call *k, int64_t now) {
    rtc_client *c = k->c;
    char err[256];
    for (;;) {
        switch (k->state) {
        case RTC_CALL_START: /* the deadline counts from the call's first step */
            k->stats = rtc_stats_for(&c->stats, k->call->action);
            k->deadline = now + (int64_t)(c->deadline * 1e9);
            k->state = RTC_CALL_RESERVE;
            break;
        case RTC_CALL_BACKOFF:
            if (now < k->until) return wait_until(k, k->until);
            k->attempt++;
            k->state = RTC_CALL_RESERVE;
            break;
        case RTC_CALL_RESERVE: /* every attempt takes a slot, and only one before the deadline */
            if (rtc_pace_reserve(c, k->call->action, now, k->deadline, &k->slot, err, sizeof err))
                return finish(k, 0, 0, RTC_CODE_LIMITER, err);
            if (k->slot > k->deadline) return finish(k, 0, 0, RTC_CODE_DEADLINE, RTC_DEADLINE_MESSAGE);
            k->asked = now;
            k->state = RTC_CALL_SLOT;
            /* A reservation may take a round trip (Redis, and its timeouts while Redis is away): the
             * slot is judged by the clock after it, or a slot missed meanwhile would be used late. */
            now = rtc_monotonic_ns();
            break;
        case RTC_CALL_SLOT:
            if (now < k->slot) return wait_until(k, k->slot);
            if (c->limiter && rtc_pace_late(c->margin, now - k->slot)) { /* too late for this slot: another */
                rtc_stats_missed_slot(k->stats);
                k->state = RTC_CALL_RESERVE;
                break;
            }
            if (rtc_wire_build(c, k->call, &k->wire, k->message, sizeof k->message)) return RTC_CALL_ERROR;
            k->has_wire = 1;
            k->wire.http.timeout_ms = rtc_attempt_timeout_ms(k->deadline, now); /* never outlives the call */
            k->sent = now;
            k->state = RTC_CALL_SENT;
            return RTC_CALL_SEND;
        case RTC_CALL_SENT: /* the driver steps before it answers: nothing to do but wait for it */
        case RTC_CALL_END:
            return k->state == RTC_CALL_END ? RTC_CALL_DONE : wait_until(k, now);
        }
    }
}

void rtc_call_sent(rtc_call *k) {
    if (!k->has_wire) return;
    rtc_wire_free(&k->wire);
    k->has_wire = 0;
}

rtc_call_next rtc_call_answer(rtc_call *k, const rtc_answer *a, int64_t now) {
    rtc_client *c = k->c;
    int retryable = !a->ok && rtc_is_retryable(a->code, a->http_status);
    int64_t wake;
    rtc_call_sent(k);
    c->requests++;
    c->connections += a->connects;
    rtc_stats_attempt(k->stats, k->attempt, (double)(k->slot - k->asked) / 1e9, rtc_call_elapsed(k, now),
                      !a->ok && is_throttle(a->code, a->http_status));
    if (a->ok || !retryable || k->attempt > c->retries) return finish(k, a->ok, 1, a->code, NULL);
    wake = now + (int64_t)(backoff(c, k->attempt) * 1e9);
    if (wake >= k->deadline) return finish(k, 0, 1, a->code, NULL); /* no retry past the deadline */
    k->state = RTC_CALL_BACKOFF;
    return wait_until(k, wake);
}

rtc_call_next rtc_call_refuse(rtc_call *k, const char *code, const char *message) {
    rtc_call_sent(k);
    return finish(k, 0, 0, code, message);
}

double rtc_call_elapsed(const rtc_call *k, int64_t now) { return (double)(now - k->sent) / 1e9; }

void rtc_call_free(rtc_call *k) { rtc_call_sent(k); }
