/* One API call on the wire: pacing, signing, sending, response handling, and retries. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rtcadmin.h"

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

double rtc_client_qps(rtc_client *c, const char *action) {
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
int rtc_pace_missed(const rtc_client *c, int64_t slot_ns, int64_t now_ns) {
    return c->limiter && now_ns - slot_ns > (int64_t)(c->margin * 0.5e9);
}

static uint64_t next_random(rtc_client *c) {
    uint64_t x = c->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 2685821657736338717ULL;
}

double rtc_backoff(rtc_client *c, int attempt) {
    double ceiling = c->retry_base * ldexp(1.0, attempt - 1);
    if (ceiling > c->retry_cap) ceiling = c->retry_cap;
    return ceiling * (double)(next_random(c) >> 11) / 9007199254740992.0;
}

void rtc_ensure_decoder(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    if (lua_isnil(L, -1)) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "cjson.safe");
        lua_call(L, 1, 1);
        lua_getfield(L, -1, "decode");
        if (!lua_isfunction(L, -1)) luaL_error(L, "rtcadmin: cjson.safe.decode is missing");
        lua_setfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
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

static rtc_outcome outcome_of(const rtc_error_info *e) {
    rtc_outcome o;
    memset(&o, 0, sizeof o);
    o.retryable = rtc_is_retryable(e->code, e->http_status);
    o.throttled = e->http_status == 429 || (e->code && (strncmp(e->code, "FlowLimitExceeded", 17) == 0 ||
                                                         strncmp(e->code, "AccountFlowLimitExceeded", 24) == 0));
    snprintf(o.code, sizeof o.code, "%s", e->code ? e->code : "UnknownError");
    return o;
}

void rtc_push_simple_error(lua_State *L, rtc_client *c, const rtc_api_call *call, const char *code,
                           const char *message, int attempts) {
    rtc_error_info info;
    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.code = code;
    info.message = message;
    info.attempts = attempts;
    lua_pushnil(L);
    rtc_push_error(L, &info, c->secret_key, c->secret_len);
}

static rtc_outcome push_failure(lua_State *L, rtc_client *c, int base, rtc_error_info *info) {
    rtc_outcome o = outcome_of(info);
    rtc_push_error(L, info, c->secret_key, c->secret_len);
    lua_replace(L, base + 1);
    lua_pushnil(L);
    lua_replace(L, base);
    lua_settop(L, base + 1);
    return o;
}

rtc_outcome rtc_push_outcome(lua_State *L, rtc_client *c, const rtc_api_call *call, int transfer_rc,
                             rtc_http_response *resp, int attempt, double elapsed) {
    rtc_error_info info;
    rtc_outcome o;
    char msg[256], ctype[sizeof resp->content_type];
    const char *request_id = NULL;
    long status = resp->status;
    int base = lua_gettop(L) + 1, doc, md, ok2xx;

    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.attempts = attempt;
    c->requests++;
    c->connections += resp->connects;
    lua_pushnil(L); /* base: result or nil */
    lua_pushnil(L); /* base + 1: meta or err */
    if (transfer_rc) {
        info.code = rtc_net_error_code(resp->error);
        info.message = resp->message;
        o = push_failure(L, c, base, &info);
        rtc_http_response_free(resp);
        return o;
    }
    memcpy(ctype, resp->content_type, sizeof ctype);
    lua_pushlstring(L, resp->body.data ? resp->body.data : "", resp->body.len);
    rtc_http_response_free(resp);
    info.http_status = status;
    ok2xx = status >= 200 && status < 300;

    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    lua_pushvalue(L, base + 2);
    lua_call(L, 1, 1);
    doc = lua_gettop(L);
    if (!lua_istable(L, doc)) {
        snprintf(msg, sizeof msg, "%s response is not a JSON object (Content-Type %s, %lu bytes)",
                 ok2xx ? "a successful" : "an error", *ctype ? ctype : "none", (unsigned long)lua_rawlen(L, base + 2));
        info.code = ok2xx ? "MalformedResponse" : "HTTPError";
        info.message = msg;
        return push_failure(L, c, base, &info);
    }
    lua_getfield(L, doc, "ResponseMetadata");
    md = lua_gettop(L);
    if (lua_istable(L, md)) {
        lua_getfield(L, md, "RequestId");
        request_id = lua_tostring(L, -1);
        lua_getfield(L, md, "Error");
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    /* Failure: a non-2xx status, or ResponseMetadata.Error whatever the status. */
    if (!ok2xx || lua_istable(L, -1)) {
        int et = lua_gettop(L);
        info.request_id = request_id;
        if (lua_istable(L, et)) {
            lua_getfield(L, et, "Code");
            info.code = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "UnknownError";
            lua_getfield(L, et, "Message");
            info.message = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            lua_getfield(L, et, "CodeN");
            info.code_n = lua_type(L, -1) == LUA_TNUMBER ? (long)lua_tointeger(L, -1) : 0;
        } else {
            snprintf(msg, sizeof msg, "HTTP %ld without an error description", status);
            info.code = "HTTPError";
            info.message = msg;
        }
        return push_failure(L, c, base, &info);
    }
    lua_getfield(L, doc, "Result");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_replace(L, base);
    lua_createtable(L, 0, 7);
    if (request_id) {
        lua_pushstring(L, request_id);
        lua_setfield(L, -2, "request_id");
    }
    lua_pushstring(L, call->action);
    lua_setfield(L, -2, "action");
    lua_pushstring(L, call->version);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "http_status");
    lua_pushinteger(L, attempt);
    lua_setfield(L, -2, "attempts");
    lua_pushnumber(L, (lua_Number)elapsed);
    lua_setfield(L, -2, "elapsed");
    luaL_getmetatable(L, RTC_META_MT);
    lua_setmetatable(L, -2);
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    memset(&o, 0, sizeof o);
    o.ok = 1;
    return o;
}

typedef struct {
    rtc_client *c;
    const rtc_api_call *call;
    rtc_http_response resp; /* the attempt's: freed again when the call ends, should it raise midway */
} request_args;

static void request_done(void *ud) { rtc_http_response_free(&((request_args *)ud)->resp); }

/* Blocking path: wait for a slot, sign, send; retry transient failures with capped, jittered backoff
 * until retries or the deadline run out. Every attempt takes a limiter slot and is signed afresh.
 * Runs as the client's running method (rtc_client_run): its last argument is a request_args. */
static int request_body(lua_State *L) {
    request_args *a = lua_touserdata(L, lua_gettop(L));
    rtc_client *c = a->c;
    const rtc_api_call *call = a->call;
    int64_t deadline = rtc_monotonic_ns() + (int64_t)(c->deadline * 1e9);
    rtc_action_stats *st = rtc_stats_for(&c->stats, call->action);
    int attempt;
    char err[256];

    rtc_ensure_decoder(L); /* before any C allocation: it may raise */
    for (attempt = 1;; attempt++) {
        rtc_wire_request w;
        rtc_http_response *resp = &a->resp;
        rtc_outcome o;
        int64_t now = rtc_monotonic_ns(), start, t0;
        int rc;

        if (rtc_pace_reserve(c, call->action, now, deadline, &start, err, sizeof err)) {
            rtc_push_simple_error(L, c, call, "LimiterError", err, attempt - 1);
            rtc_stats_outcome(st, "LimiterError");
            return 2;
        }
        if (start > deadline) {
            rtc_push_simple_error(L, c, call, "DeadlineExceeded",
                                  "the rate limit leaves no slot before the call's deadline", attempt - 1);
            rtc_stats_outcome(st, "DeadlineExceeded");
            return 2;
        }
        if (start > now) rtc_sleep_until(start);
        if (rtc_pace_missed(c, start, rtc_monotonic_ns())) { /* woke too late for this slot: take another */
            rtc_stats_missed_slot(st);
            attempt--;
            continue;
        }
        if (rtc_wire_build(c, call, &w, err, sizeof err)) return luaL_error(L, "rtcadmin: cannot sign %s: %s", call->action, err);
        rtc_http_response_init(resp);
        t0 = rtc_monotonic_ns();
        w.http.timeout_ms = rtc_attempt_timeout_ms(deadline, t0); /* an attempt never outlives the call */
        rc = rtc_transport_perform(c->transport, &w.http, resp);
        rtc_wire_free(&w);
        o = rtc_push_outcome(L, c, call, rc, resp, attempt, (double)(rtc_monotonic_ns() - t0) / 1e9);
        rtc_stats_attempt(st, attempt, (double)(start > now ? start - now : 0) / 1e9,
                          (double)(rtc_monotonic_ns() - t0) / 1e9, o.throttled);
        if (o.ok || !o.retryable || attempt > c->retries) {
            rtc_stats_outcome(st, o.ok ? NULL : o.code);
            return 2;
        }
        {
            int64_t wake = rtc_monotonic_ns() + (int64_t)(rtc_backoff(c, attempt) * 1e9);
            if (wake >= deadline) {
                rtc_stats_outcome(st, o.code);
                return 2;
            }
            lua_pop(L, 2);
            rtc_sleep_until(wake);
        }
    }
}

int rtc_client_request(lua_State *L, rtc_client *c, const char *fname, const rtc_api_call *call) {
    request_args a;
    a.c = c;
    a.call = call; /* its strings stay anchored by the values on the stack */
    rtc_http_response_init(&a.resp);
    lua_pushlightuserdata(L, &a);
    return rtc_client_run(L, c, fname, "a finalizer or a hook", request_body, request_done, &a);
}

/* client:reserve(action) -> seconds to wait before sending: the non-blocking entry for event loops.
 * The slot is taken; the caller sleeps its own way (ngx.sleep) and then sends. */
int rtc_client_reserve_method(lua_State *L) {
    rtc_client *c = rtc_check_idle_client(L, 1, "reserve");
    size_t n = 0;
    const char *action = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    int64_t now = rtc_monotonic_ns(), start;
    char err[256];
    if (!action || n > 64 || strlen(action) != n || !rtc_valid_action(action))
        return rtc_argerror(L, "reserve", "bad argument 'action': expected an Action name such as \"KickUser\"");
    if (rtc_pace_reserve(c, action, now, now + (int64_t)(c->deadline * 1e9), &start, err, sizeof err))
        return luaL_error(L, "rtcadmin.reserve: %s", err);
    lua_pushnumber(L, (lua_Number)(start - now) / 1e9);
    return 1;
}

/* client:stats() -> {Action = {sent, succeeded, failed, failures, retries, throttled, waited, p50, p99}} */
int rtc_client_stats_method(lua_State *L) {
    rtc_client *c = rtc_check_client(L, 1, "stats");
    rtc_stats_push(L, &c->stats);
    return 1;
}

/* "KickUser 2020-12-01 200 request=<id> attempts=1 0.012s": the fields as they are now (a caller may
 * have changed them), each left out when absent or of another type. */
static int meta_tostring(lua_State *L) {
    static const char *const keys[] = {"action", "version", "http_status", "request_id", "attempts", "elapsed"};
    static const char *const labels[] = {"", "", "", "request=", "attempts=", ""};
    static const int numeric[] = {0, 0, 1, 0, 1, 1};
    char nums[6][48];
    const char *parts[6];
    luaL_Buffer b;
    int i, n = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    for (i = 0; i < 6; i++) { /* every value on the stack before the buffer uses it */
        lua_getfield(L, 1, keys[i]);
        parts[i] = NULL;
        if (numeric[i] && lua_type(L, -1) == LUA_TNUMBER) {
            snprintf(nums[i], sizeof nums[i], i == 5 ? "%.3fs" : "%.0f", (double)lua_tonumber(L, -1));
            parts[i] = nums[i];
        } else if (!numeric[i] && lua_type(L, -1) == LUA_TSTRING) {
            parts[i] = lua_tostring(L, -1);
        }
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < 6; i++) {
        if (!parts[i]) continue;
        if (n++) luaL_addchar(&b, ' ');
        luaL_addstring(&b, labels[i]);
        luaL_addstring(&b, parts[i]);
    }
    luaL_pushresult(&b);
    return 1;
}

void rtc_meta_register(lua_State *L) {
    if (luaL_newmetatable(L, RTC_META_MT)) {
        lua_pushcfunction(L, meta_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushstring(L, RTC_META_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}
