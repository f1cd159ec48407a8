/* The sans-I/O driver: a call's state machine (call.c) stepped by Lua code that does its own waiting
 * and I/O (nginx cosockets, any event loop). The caller drives it with x:step(response) and gets back
 * what to do next: "wait" seconds (a limiter slot or a retry backoff), "send" a signed request, or
 * "done" with the same `result, meta` / `nil, err` as a blocking call. Everything else about the call
 * is the engine's, as for the blocking and bulk drivers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_lua.h"
#include "exchange.h"
#include "prepared.h"
#include "response.h"

#define EXCHANGE_MT "rtcadmin.exchange"

/* By the engine's state: what tostring(x) shows. */
static const char *const state_names[] = {"reserve", "reserve", "slot", "sent", "backoff", "done"};

typedef struct {
    rtc_client *c;       /* kept alive by the uservalue {client, prepared} */
    rtc_api_call call;   /* points into the prepared table */
    rtc_call k;
    rtc_http_response resp; /* the response being read: freed again after each step, should it raise */
} exchange;

/* After each step, however it ended: nothing of the attempt's is left in C memory. */
static void step_done(void *ud) {
    exchange *x = ud;
    rtc_call_sent(&x->k);
    rtc_http_response_free(&x->resp);
}

static exchange *check_exchange(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, EXCHANGE_MT);
}

/* Pushes "wait", seconds until t_ns (at least 0). */
static int push_wait(lua_State *L, int64_t t_ns, int64_t now) {
    lua_pushliteral(L, "wait");
    lua_pushnumber(L, (lua_Number)(t_ns > now ? t_ns - now : 0) / 1e9);
    return 2;
}

/* The call has ended: "done", then its `result, meta` or `nil, err` (on the stack already when it
 * ended with an answer). */
static int push_done(lua_State *L, exchange *x) {
    if (!x->k.answered) rtc_push_call_end(L, &x->k);
    lua_pushliteral(L, "done");
    lua_insert(L, -3);
    return 3;
}

static void set_str(lua_State *L, const char *k, const char *v, size_t n) {
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}

/* The signed request as a table: where to connect and what to write. */
static int push_send(lua_State *L, exchange *x, int64_t now) {
    rtc_client *c = x->c;
    const rtc_wire_request *w = &x->k.wire;
    const char *auth = strstr(c->base_url, "://") + 3, *host = auth, *port = NULL, *p;
    size_t hostlen, i, baselen = strlen(c->base_url);
    int https = strncmp(c->base_url, "https", 5) == 0;

    if (*auth == '[') { /* [IPv6]:port */
        host = auth + 1;
        p = strchr(host, ']');
        hostlen = (size_t)(p - host);
        if (p[1] == ':') port = p + 2;
    } else {
        p = strchr(auth, ':');
        hostlen = p ? (size_t)(p - auth) : strlen(auth);
        if (p) port = p + 1;
    }
    lua_pushliteral(L, "send");
    lua_createtable(L, 0, 14);
    lua_pushstring(L, w->http.method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, https ? "https" : "http");
    lua_setfield(L, -2, "scheme");
    set_str(L, "host", host, hostlen);
    set_str(L, "server_name", host, hostlen);
    lua_pushinteger(L, port ? (lua_Integer)atoi(port) : https ? 443 : 80);
    lua_setfield(L, -2, "port");
    lua_pushfstring(L, "rtcadmin:%s", c->base_url);
    lua_setfield(L, -2, "pool");
    set_str(L, "path", w->url.data + baselen, w->url.len - baselen);
    lua_createtable(L, (int)w->nh + 1, 0);
    for (i = 0; i < w->nh; i++) {
        lua_pushstring(L, w->hv[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushfstring(L, "User-Agent: %s", c->user_agent);
    lua_rawseti(L, -2, (int)w->nh + 1);
    lua_setfield(L, -2, "headers");
    set_str(L, "body", w->http.body ? w->http.body : "", w->http.body_len);
    {
        /* As in the blocking path: an attempt never outlives the call's deadline. */
        double left = (double)w->http.timeout_ms / 1000.0;
        set_num(L, "timeout", left < c->timeout ? left : c->timeout);
        set_num(L, "connect_timeout", left < c->connect_timeout ? left : c->connect_timeout);
    }
    lua_pushinteger(L, RTC_MAX_RESPONSE_BYTES);
    lua_setfield(L, -2, "max_body");
    if (c->proxy) set_str(L, "proxy", c->proxy, strlen(c->proxy));
    if (c->ca_file) set_str(L, "ca_file", c->ca_file, strlen(c->ca_file));
    set_str(L, "action", x->call.action, strlen(x->call.action));
    lua_pushinteger(L, x->k.attempt);
    lua_setfield(L, -2, "attempt");
    /* For a driver that paces elsewhere (rtcadmin.nginx with a Redis limiter): the schedule's key
     * (a SHA-256 prefix of the access key, as the C backends use it), the limit, the time left. */
    {
        char key_id[17];
        rtc_hex(c->key_fp, sizeof c->key_fp, key_id);
        set_str(L, "key_id", key_id, 16);
    }
    set_num(L, "qps", rtc_client_qps(c, x->call.action));
    set_num(L, "deadline_in", (double)(x->k.deadline - now) / 1e9);
    rtc_call_sent(&x->k); /* the signed lines are wiped: the table holds the only copy */
    return 2;
}

/* The caller's response table -> rtc_http_response. Returns the transfer rc (0: an HTTP answer). */
static int read_response(lua_State *L, int t, rtc_http_response *r) {
    const char *s;
    size_t n;
    int e;
    lua_getfield(L, t, "error");
    if (!lua_isnil(L, -1)) {
        const char *code = luaL_checkstring(L, -1);
        r->error = RTC_NET_OTHER;
        for (e = RTC_NET_DNS; e <= RTC_NET_OTHER; e++)
            if (strcmp(code, rtc_net_error_code((rtc_net_error)e)) == 0) r->error = (rtc_net_error)e;
        lua_getfield(L, t, "message");
        snprintf(r->message, sizeof r->message, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : code);
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 1);
    /* Every field is read before the body is copied: a metamethod that raises cannot leak the copy. */
    lua_getfield(L, t, "status");
    if (!lua_isnumber(L, -1)) rtc_argerror(L, "exchange.step", "the response needs a numeric 'status' or an 'error'");
    lua_getfield(L, t, "content_type");
    lua_getfield(L, t, "new_connection");
    lua_getfield(L, t, "body");
    s = lua_tolstring(L, -1, &n);
    r->status = (long)lua_tointeger(L, -4);
    if (lua_isstring(L, -3)) snprintf(r->content_type, sizeof r->content_type, "%s", lua_tostring(L, -3));
    r->connects = lua_toboolean(L, -2) ? 1 : 0;
    if (s && (rtc_buf_add(&r->body, s, n) || r->body.oom)) return luaL_error(L, "out of memory"); /* step_done frees */
    lua_pop(L, 4);
    return 0;
}

/* The answer to the request sent: the response table at index 2. */
static int step_answer(lua_State *L, exchange *x, int64_t now) {
    rtc_answer ans;
    char err[256];
    int rc;
    if (!lua_istable(L, 2))
        return rtc_argerror(L, "exchange.step", "expects the response to the request it sent, got %s",
                            luaL_typename(L, 2));
    /* A driver that paces elsewhere reports that its limiter gave no slot: nothing was sent. */
    lua_getfield(L, 2, "error");
    if (lua_isstring(L, -1) && (strcmp(lua_tostring(L, -1), RTC_CODE_LIMITER) == 0 ||
                                strcmp(lua_tostring(L, -1), RTC_CODE_DEADLINE) == 0)) {
        char code[64];
        snprintf(code, sizeof code, "%s", lua_tostring(L, -1));
        lua_getfield(L, 2, "message");
        snprintf(err, sizeof err, "%s", lua_isstring(L, -1)                     ? lua_tostring(L, -1)
                                        : strcmp(code, RTC_CODE_DEADLINE) == 0 ? RTC_DEADLINE_MESSAGE
                                                                               : code);
        rtc_call_refuse(&x->k, code, err);
        return push_done(L, x);
    }
    lua_pop(L, 1);
    rtc_http_response_init(&x->resp);
    rc = read_response(L, 2, &x->resp);
    lua_settop(L, 1);
    ans = rtc_push_response(L, x->c, &x->call, rc, &x->resp, x->k.attempt, rtc_call_elapsed(&x->k, now));
    if (rtc_call_answer(&x->k, &ans, now) == RTC_CALL_DONE) return push_done(L, x);
    lua_pop(L, 2); /* a retry follows, after its backoff */
    return push_wait(L, x->k.until, now);
}

/* One step; runs as the client's running method (see exchange_step). */
static int step_body(lua_State *L) {
    exchange *x = lua_touserdata(L, 1);
    int64_t now = rtc_monotonic_ns();
    if (x->k.state == RTC_CALL_SENT) return step_answer(L, x, now);
    switch (rtc_call_step(&x->k, now)) {
    case RTC_CALL_WAIT:
        return push_wait(L, x->k.until, now);
    case RTC_CALL_SEND:
        return push_send(L, x, now);
    case RTC_CALL_DONE:
        return push_done(L, x);
    case RTC_CALL_ERROR:
        break;
    }
    return luaL_error(L, "rtcadmin: cannot sign %s: %s", x->call.action, x->k.message);
}

/* x:step(response?) -> "wait", seconds | "send", request | "done", result, meta | "done", nil, err */
static int exchange_step(lua_State *L) {
    exchange *x = check_exchange(L, 1);
    rtc_client *c = x->c;
    if (c->closed)
        return rtc_argerror(L, "exchange.step", "the client is closed (client:close() ends its exchanges too)");
    if (x->k.state == RTC_CALL_END) return rtc_argerror(L, "exchange.step", "the exchange has finished");
    lua_settop(L, 2); /* rtc_client_run refuses a step from inside one of the client's own methods */
    return rtc_client_run(L, c, "exchange.step", "a metamethod of the response, a finalizer or a hook", step_body,
                          step_done, x);
}

static int exchange_tostring(lua_State *L) {
    exchange *x = check_exchange(L, 1);
    lua_pushfstring(L, "rtcadmin.exchange{%s, attempt %d, %s}", x->call.action, x->k.attempt,
                    state_names[x->k.state]);
    return 1;
}

void rtc_exchange_push(lua_State *L, int client, int prepared) {
    rtc_client *c = rtc_check_client(L, client, "exchange");
    exchange *x;
    client = lua_absindex(L, client);
    prepared = lua_absindex(L, prepared);
    rtc_ensure_decoder(L);
    x = lua_newuserdatauv(L, sizeof *x, 1);
    memset(x, 0, sizeof *x);
    rtc_http_response_init(&x->resp);
    luaL_getmetatable(L, EXCHANGE_MT);
    lua_setmetatable(L, -2);
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, client);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, prepared);
    lua_rawseti(L, -2, 2);
    rtc_setuservalue(L, -2);
    rtc_prepared_load(L, prepared, &x->call);
    x->c = c;
    rtc_call_init(&x->k, c, &x->call); /* the deadline counts from the first step */
}

/* client:exchange(method, args...) -> a sans-I/O exchange for one call, arguments checked now. */
static int client_exchange(lua_State *L) {
    int n = lua_gettop(L);
    rtc_check_idle_client(L, 1, "exchange");
    luaL_checkstring(L, 2);
    rtc_prepared_find(L, 2);
    if (!lua_isfunction(L, -1))
        return rtc_argerror(L, "exchange", "unknown method %s", rtc_quote(L, lua_tostring(L, 2), lua_rawlen(L, 2)));
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
    lua_call(L, n - 1, 1);
    rtc_exchange_push(L, 1, -1);
    return 1;
}

void rtc_exchange_register(lua_State *L) {
    static const luaL_Reg client_methods[] = {{"exchange", client_exchange}, {NULL, NULL}};
    static const luaL_Reg methods[] = {{"step", exchange_step}, {NULL, NULL}};
    if (luaL_newmetatable(L, EXCHANGE_MT)) {
        lua_pushcfunction(L, exchange_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "rtcadmin.exchange");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    rtc_client_add_methods(L, client_methods);
}
