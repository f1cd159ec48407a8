/* luaopen_rtcadmin: the module table, rtcadmin.sign, the client constructor and the default client. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "actions.h"
#include "batch.h"
#include "call.h"
#include "client_lua.h"
#include "errors.h"
#include "exchange.h"
#include "json.h"
#include "pattern.h"
#include "pack.h"
#include "redis_lua.h"
#include "response.h"

#define SIGNER_MT "rtcadmin.signer"
#define DEFAULT_CLIENT_KEY "rtcadmin.default_client"

static const char *const sign_fields[] = {"method", "host", "path", "query", "headers", "body", "access_key",
                                          "secret_key", "session_token", "region", "service", "x_date", NULL};

static const char *sign_string(lua_State *L, int t, const char *k, size_t *len, int required) {
    const char *s;
    size_t n;
    rtc_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required) rtc_argerror(L, "sign", "field '%s' is required", k);
        if (len) *len = 0;
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        rtc_argerror(L, "sign", "field '%s' must be a string, got %s", k, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &n);
    /* Only the body is taken with its length; a NUL elsewhere would silently cut what gets signed. */
    if (!len && strlen(s) != n) rtc_argerror(L, "sign", "field '%s' contains a NUL byte", k);
    if (len) *len = n;
    lua_pop(L, 1);
    return s;
}

/* A query value may be a string or a number; numbers are formatted and anchored in `anchor`. */
static void query_value(lua_State *L, int anchor, rtc_kv *kv, int vi) {
    long long k;
    char num[32];
    if (lua_type(L, vi) == LUA_TSTRING) {
        kv->value = lua_tolstring(L, vi, &kv->value_len);
        return;
    }
    if (lua_type(L, vi) != LUA_TNUMBER)
        rtc_argerror(L, "sign", "query value for '%s' must be a string or a number, got %s", kv->key,
                     luaL_typename(L, vi));
    if (rtc_integral(L, vi, &k))
        snprintf(num, sizeof num, "%lld", k);
    else
        snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, vi));
    lua_pushstring(L, num);
    kv->value = lua_tolstring(L, -1, &kv->value_len);
    lua_rawseti(L, anchor, (int)lua_rawlen(L, anchor) + 1);
}

/* query: an array of {key, value} pairs in order, or a {key = value} map (a list value repeats the key). */
static size_t sign_query(lua_State *L, int t, rtc_kv **out) {
    size_t n = 0, i = 0;
    int anchor, q;
    rtc_kv *kv;
    rtc_getfield(L, t, "query");
    q = lua_gettop(L);
    if (lua_isnil(L, q)) {
        *out = NULL;
        return 0;
    }
    if (!lua_istable(L, q)) rtc_argerror(L, "sign", "field 'query' must be a table");
    lua_newtable(L);
    anchor = lua_gettop(L);
    lua_rawgeti(L, q, 1);
    if (!lua_isnil(L, -1)) { /* array of pairs */
        lua_pop(L, 1);
        n = lua_rawlen(L, q);
        kv = lua_newuserdatauv(L, (n ? n : 1) * sizeof *kv, 0);
        lua_rawseti(L, anchor, (int)lua_rawlen(L, anchor) + 1);
        for (i = 0; i < n; i++) {
            lua_rawgeti(L, q, (int)i + 1);
            if (!lua_istable(L, -1)) rtc_argerror(L, "sign", "query[%d] must be a {key, value} pair", (int)i + 1);
            lua_rawgeti(L, -1, 1);
            if (lua_type(L, -1) != LUA_TSTRING) rtc_argerror(L, "sign", "query[%d][1] (key) must be a string", (int)i + 1);
            kv[i].key = lua_tolstring(L, -1, &kv[i].key_len);
            lua_rawgeti(L, -2, 2);
            query_value(L, anchor, &kv[i], lua_gettop(L));
            lua_pop(L, 3); /* pair, key, value: all still anchored by the query table or `anchor` */
        }
    } else { /* map */
        lua_pop(L, 1);
        lua_pushnil(L);
        while (lua_next(L, q)) {
            n += lua_istable(L, -1) ? lua_rawlen(L, -1) : 1;
            lua_pop(L, 1);
        }
        kv = lua_newuserdatauv(L, (n ? n : 1) * sizeof *kv, 0);
        lua_rawseti(L, anchor, (int)lua_rawlen(L, anchor) + 1);
        lua_pushnil(L);
        while (lua_next(L, q)) {
            if (lua_type(L, -2) != LUA_TSTRING) rtc_argerror(L, "sign", "query keys must be strings");
            if (lua_istable(L, -1)) {
                size_t j, m = lua_rawlen(L, -1);
                for (j = 1; j <= m; j++) {
                    kv[i].key = lua_tolstring(L, -2, &kv[i].key_len);
                    lua_rawgeti(L, -1, (int)j);
                    query_value(L, anchor, &kv[i], lua_gettop(L));
                    lua_pop(L, 1);
                    i++;
                }
            } else {
                kv[i].key = lua_tolstring(L, -2, &kv[i].key_len);
                query_value(L, anchor, &kv[i], lua_gettop(L));
                i++;
            }
            lua_pop(L, 1);
        }
        n = i;
    }
    *out = kv;
    /* leave query table and anchor on the stack */
    return n;
}

static size_t sign_headers(lua_State *L, int t, rtc_kv **out) {
    size_t n = 0, i = 0;
    int h;
    rtc_kv *kv;
    rtc_getfield(L, t, "headers");
    h = lua_gettop(L);
    if (lua_isnil(L, h)) {
        *out = NULL;
        return 0;
    }
    if (!lua_istable(L, h)) rtc_argerror(L, "sign", "field 'headers' must be a table {Name = value}");
    lua_pushnil(L);
    while (lua_next(L, h)) {
        lua_pop(L, 1);
        n++;
    }
    kv = lua_newuserdatauv(L, (n ? n : 1) * sizeof *kv, 0);
    lua_pushnil(L);
    while (lua_next(L, h)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            rtc_argerror(L, "sign", "headers must map string names to string values");
        kv[i].key = lua_tolstring(L, -2, &kv[i].key_len);
        kv[i].value = lua_tolstring(L, -1, &kv[i].value_len);
        i++;
        lua_pop(L, 1);
    }
    *out = kv;
    return n;
}

static void setfield_str(lua_State *L, const char *k, const char *v, size_t n) {
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

/* rtcadmin.sign(req) -> headers to add, {canonical_request, string_to_sign, signed_headers} */
static int l_sign(lua_State *L) {
    rtc_signer **sp = luaL_checkudata(L, lua_upvalueindex(1), SIGNER_MT);
    rtc_sign_request sr;
    rtc_sign_result res;
    rtc_kv *q, *h;
    char err[256], now[RTC_XDATE_LEN + 1];
    int i;
    if (lua_type(L, 1) != LUA_TTABLE) rtc_argerror(L, "sign", "expects a table, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        int known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (i = 0; sign_fields[i]; i++)
                if (strcmp(lua_tostring(L, -1), sign_fields[i]) == 0) known = 1;
        if (!known) {
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
            rtc_argerror(L, "sign", "unknown field %s", rtc_quote(L, k, strlen(k)));
        }
    }
    memset(&sr, 0, sizeof sr);
    sr.method = sign_string(L, 1, "method", NULL, 1);
    sr.host = sign_string(L, 1, "host", NULL, 0);
    sr.path = sign_string(L, 1, "path", NULL, 0);
    sr.body = (const unsigned char *)sign_string(L, 1, "body", &sr.body_len, 0);
    sr.access_key = sign_string(L, 1, "access_key", NULL, 1);
    sr.secret_key = sign_string(L, 1, "secret_key", &sr.secret_len, 1);
    sr.session_token = sign_string(L, 1, "session_token", NULL, 0);
    sr.region = sign_string(L, 1, "region", NULL, 0);
    sr.service = sign_string(L, 1, "service", NULL, 0);
    sr.x_date = sign_string(L, 1, "x_date", NULL, 0);
    if (!sr.region) sr.region = "cn-north-1";
    if (!sr.service) sr.service = "rtc";
    if (!sr.x_date) {
        rtc_format_xdate((long long)time(NULL), now);
        sr.x_date = now;
    }
    sr.nquery = sign_query(L, 1, &q);
    sr.query = q;
    sr.nheaders = sign_headers(L, 1, &h);
    sr.headers = h;

    rtc_sign_result_init(&res);
    if (rtc_sign(*sp, &sr, &res, err, sizeof err)) {
        rtc_sign_result_free(&res);
        return rtc_argerror(L, "sign", "%s", err);
    }
    lua_createtable(L, 0, 5);
    setfield_str(L, "Authorization", res.authorization.data, res.authorization.len);
    setfield_str(L, "X-Date", res.x_date, RTC_XDATE_LEN);
    setfield_str(L, "X-Content-Sha256", res.content_sha256, 2 * RTC_SHA256_LEN);
    if (sr.session_token && *sr.session_token)
        setfield_str(L, "X-Security-Token", sr.session_token, strlen(sr.session_token));
    if (res.content_type_added)
        setfield_str(L, "Content-Type", RTC_DEFAULT_FORM_CONTENT_TYPE, strlen(RTC_DEFAULT_FORM_CONTENT_TYPE));
    lua_createtable(L, 0, 4);
    setfield_str(L, "canonical_request", res.canonical_request.data, res.canonical_request.len);
    setfield_str(L, "string_to_sign", res.string_to_sign.data, res.string_to_sign.len);
    setfield_str(L, "signed_headers", res.signed_headers.data, res.signed_headers.len);
    setfield_str(L, "host", res.host, strlen(res.host));
    rtc_sign_result_free(&res);
    return 2;
}

static int signer_gc(lua_State *L) {
    rtc_signer **sp = luaL_checkudata(L, 1, SIGNER_MT);
    rtc_signer_free(*sp);
    *sp = NULL;
    return 0;
}

static int l_client(lua_State *L) { return rtc_client_new(L); }

/* rtcadmin.sha256(s) -> lower-case hex digest (callback signatures, docs/callbacks.md). */
static int l_sha256(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[2 * RTC_SHA256_LEN + 1];
    if (rtc_sha256_hex(s, n, hex)) return luaL_error(L, "out of memory");
    lua_pushlstring(L, hex, 2 * RTC_SHA256_LEN);
    return 1;
}

/* rtcadmin.secure_equal(a, b) -> whether two strings are equal, in time that depends only on their
 * lengths (for comparing signatures and tokens). */
static int l_secure_equal(lua_State *L) {
    size_t an, bn;
    const char *a = luaL_checklstring(L, 1, &an), *b = luaL_checklstring(L, 2, &bn);
    lua_pushboolean(L, an == bn && CRYPTO_memcmp(a, b, an) == 0);
    return 1;
}

/* rtcadmin.sleep(seconds): sleeps on the monotonic clock, to the microsecond, for scripts that drive
 * exchanges themselves (os.execute("sleep") is a process start, milliseconds late: too late for a
 * limiter slot, see docs/pacing.md). Not for nginx, where ngx.sleep yields instead. */
static int l_sleep(lua_State *L) {
    lua_Number s = luaL_checknumber(L, 1);
    if (!(s >= 0 && s <= 86400)) return rtc_argerror(L, "sleep", "expects 0..86400 seconds");
    rtc_sleep_until(rtc_monotonic_ns() + (int64_t)(s * 1e9));
    return 0;
}

/* rtcadmin.time() -> seconds since 1970 on the wall clock, to the microsecond (os.time has whole
 * seconds): the time of audit records. */
static int l_time(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)(ts.tv_nsec / 1000) / 1e6);
    return 1;
}

/* Inside nginx (the ngx API is loaded) the Lua layer rtcadmin.nginx takes over the methods, so
 * calls in cosocket-capable phases go out through nginx's own non-blocking I/O. */
static void install_nginx_layer(lua_State *L, int module) {
    lua_getglobal(L, "ngx");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, -1, "get_phase");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 2);
        return;
    }
    lua_pop(L, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, RTC_IN_NGINX_KEY);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rtcadmin.nginx");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "install");
    lua_pushvalue(L, module);
    luaL_getmetatable(L, RTC_CLIENT_MT);
    lua_getfield(L, -1, "__index");
    lua_replace(L, -2);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
}

/* rtcadmin.config(opts) -> the new default client; rtcadmin.config() -> the current one (made lazily). */
static int l_config(lua_State *L) {
    if (lua_isnoneornil(L, 1)) {
        lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_CLIENT_KEY);
        if (!lua_isnil(L, -1)) {
            rtc_client *c = luaL_testudata(L, -1, RTC_CLIENT_MT);
            if (c && !c->closed) return 1;
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    rtc_client_new(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, DEFAULT_CLIENT_KEY);
    return 1;
}

/* rtcadmin.valid_id(s) -> whether s is a RoomId / UserId the API takes (actions.c checks the same). */
static int l_valid_id(lua_State *L) {
    size_t n = 0;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    lua_pushboolean(L, s && rtc_valid_id(s, n));
    return 1;
}

/* rtcadmin.valid_app_id(s) -> whether s is an AppId the methods take. */
static int l_valid_app_id(lua_State *L) {
    size_t n = 0;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    lua_pushboolean(L, s && rtc_valid_app_id(s, n));
    return 1;
}

/* rtcadmin.pace_late(late_seconds, margin) -> whether a sender that reaches its limiter slot this late
 * must give it up and reserve another (the rule every C driver follows; docs/pacing.md). */
static int l_pace_late(lua_State *L) {
    lua_pushboolean(L, rtc_pace_late((double)luaL_checknumber(L, 2), (int64_t)(luaL_checknumber(L, 1) * 1e9)));
    return 1;
}

static void set_range(lua_State *L, const char *name, int min, int max, int zero_ok) {
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, min);
    lua_setfield(L, -2, "min");
    lua_pushinteger(L, max);
    lua_setfield(L, -2, "max");
    lua_pushboolean(L, zero_ok);
    lua_setfield(L, -2, "zero");
    lua_setfield(L, -2, name);
}

/* rtcadmin.LIMITS: what the API takes, as the methods check it. ban and mute are ForbiddenInterval
 * ranges in whole seconds (zero: whether 0 is taken too, and means "until lifted"); id_max is the
 * longest RoomId, UserId or AppId. */
static void push_limits(lua_State *L) {
    lua_createtable(L, 0, 3);
    set_range(L, "ban", RTC_BAN_MIN, RTC_BAN_MAX, 0);
    set_range(L, "mute", RTC_MUTE_MIN, RTC_MUTE_MAX, 1);
    lua_pushinteger(L, RTC_ID_MAX);
    lua_setfield(L, -2, "id_max");
}

/* rtcadmin.LATENCY_BUCKETS: the upper bounds (seconds) of client:stats()'s latency histogram. */
static void push_buckets(lua_State *L) {
    int i;
    lua_createtable(L, RTC_STATS_BUCKETS, 0);
    for (i = 0; i < RTC_STATS_BUCKETS; i++) {
        lua_pushnumber(L, (lua_Number)rtc_stats_bounds[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/* rtcadmin.CODES: the error codes the module makes itself (the service's own come in its answers),
 * name -> name: the transport's (transport.c) and the call engine's (call.h). */
static void push_codes(lua_State *L) {
    static const char *const engine[] = {RTC_CODE_DEADLINE, RTC_CODE_LIMITER, RTC_CODE_MALFORMED, RTC_CODE_HTTP,
                                         RTC_CODE_UNKNOWN, NULL};
    int i;
    lua_createtable(L, 0, 16);
    for (i = RTC_NET_DNS; i <= RTC_NET_OTHER; i++) {
        lua_pushstring(L, rtc_net_error_code((rtc_net_error)i));
        lua_pushvalue(L, -1);
        lua_rawset(L, -3);
    }
    for (i = 0; engine[i]; i++) {
        lua_pushstring(L, engine[i]);
        lua_pushvalue(L, -1);
        lua_rawset(L, -3);
    }
}

static void push_names(lua_State *L, const luaL_Reg *methods) {
    int i;
    lua_newtable(L);
    for (i = 0; methods[i].name; i++) {
        lua_pushstring(L, methods[i].name);
        lua_rawseti(L, -2, i + 1);
    }
}

/* rtcadmin.METHODS = {single = {"kick_user", ...}, bulk = {"batch", ...}}: the client methods that call
 * the API, one at a time or many (the nginx layer wraps exactly these). */
static void push_methods(lua_State *L) {
    lua_createtable(L, 0, 2);
    push_names(L, rtc_action_methods);
    lua_setfield(L, -2, "single");
    push_names(L, rtc_batch_methods);
    lua_setfield(L, -2, "bulk");
}

/* rtcadmin.kick_user(...) == rtcadmin.config():kick_user(...) */
static int forward_to_default(lua_State *L) {
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcfunction(L, l_config);
    lua_call(L, 0, 1);
    for (int i = 1; i <= n; i++) lua_pushvalue(L, i);
    lua_call(L, n + 1, LUA_MULTRET);
    return lua_gettop(L) - n;
}

RTC_EXPORT int luaopen_rtcadmin(lua_State *L) {
    static const luaL_Reg fns[] = {{"client", l_client},
                                   {"config", l_config},
                                   {"sha256", l_sha256},
                                   {"secure_equal", l_secure_equal},
                                   {"sleep", l_sleep},
                                   {"time", l_time},
                                   {"valid_id", l_valid_id},
                                   {"valid_app_id", l_valid_app_id},
                                   {"pace_late", l_pace_late},
                                   {NULL, NULL}};
    rtc_signer **sp;
    int i;

    rtc_error_register(L);
    rtc_meta_register(L);
    rtc_client_register(L);
    rtc_actions_register(L);
    rtc_batch_register(L);
    rtc_exchange_register(L);

    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);

    /* The signer behind rtcadmin.sign is an upvalue: per Lua state, freed with it. */
    sp = lua_newuserdatauv(L, sizeof *sp, 0);
    *sp = NULL;
    if (luaL_newmetatable(L, SIGNER_MT)) {
        lua_pushcfunction(L, signer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    *sp = rtc_signer_new();
    if (!*sp) return luaL_error(L, "rtcadmin: out of memory");
    lua_pushcclosure(L, l_sign, 1);
    lua_setfield(L, -2, "sign");

    for (i = 0; rtc_action_methods[i].name; i++) {
        lua_pushcfunction(L, rtc_action_methods[i].func);
        lua_pushcclosure(L, forward_to_default, 1);
        lua_setfield(L, -2, rtc_action_methods[i].name);
    }
    for (i = 0; rtc_batch_methods[i].name; i++) {
        lua_pushcfunction(L, rtc_batch_methods[i].func);
        lua_pushcclosure(L, forward_to_default, 1);
        lua_setfield(L, -2, rtc_batch_methods[i].name);
    }
    rtc_heap_register(L);
    rtc_view_register(L);
    rtc_json_register(L);
    rtc_pack_register(L);
    rtc_cli_io_register(L);
    rtc_pattern_register(L);
    rtc_redis_register(L);
    push_methods(L);
    lua_setfield(L, -2, "METHODS");
    push_limits(L);
    lua_setfield(L, -2, "LIMITS");
    push_codes(L);
    lua_setfield(L, -2, "CODES");
    push_buckets(L);
    lua_setfield(L, -2, "LATENCY_BUCKETS");
    lua_pushliteral(L, RTCADMIN_VERSION);
    lua_setfield(L, -2, "_VERSION");
    install_nginx_layer(L, lua_gettop(L));
    return 1;
}
