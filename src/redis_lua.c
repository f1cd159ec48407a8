/* rtcadmin.parse_redis_url and rtcadmin.redis_fallback: the Redis limiter's URL parser and fallback
 * decision (redis_url.c, redis_fallback.c) for the OpenResty limiter, lua/rtcadmin/redis_limiter.lua,
 * which keeps only the cosocket I/O. Times are CLOCK_MONOTONIC, read here: the host table's clock. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rtcadmin.h"
#include "redis_common.h"
#include "redis_lua.h"

#define FALLBACK_MT "rtcadmin.redis_fallback"
#define TURN_MT "rtcadmin.redis_fallback.turn"

typedef struct {
    rtc_fb_turn t;
    int reported;                 /* an outcome was given: a second one would count twice */
} turn_ud;

static void set_string(lua_State *L, const char *k, const char *v) {
    if (!v) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void set_integer(lua_State *L, const char *k, long long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* rtcadmin.parse_redis_url(url) -> {host, port, db, user, password, where} or nil, err. The error
 * never quotes the user or the password. */
static int l_parse_redis_url(lua_State *L) {
    rtc_redis_url u;
    char err[256];
    if (lua_type(L, 1) != LUA_TSTRING) {
        lua_pushnil(L);
        lua_pushliteral(L, "url must be a string");
        return 2;
    }
    if (rtc_redis_url_parse(lua_tostring(L, 1), &u, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    /* (Only running out of memory raises below, and would leave the copies to the allocator unwiped.) */
    lua_createtable(L, 0, 6);
    set_string(L, "host", u.host);
    set_integer(L, "port", u.port);
    set_integer(L, "db", u.db);
    set_string(L, "user", u.user);
    set_string(L, "password", u.password);
    set_string(L, "where", u.where);
    rtc_redis_url_free(&u);
    return 1;
}

static rtc_fallback **check_fallback(lua_State *L) {
    rtc_fallback **fp = luaL_checkudata(L, 1, FALLBACK_MT);
    if (!*fp) luaL_error(L, "rtcadmin.redis_fallback: used after it was freed");
    return fp;
}

static double opt_seconds(lua_State *L, int t, const char *k, double dflt, double min, double max) {
    double v = dflt;
    rtc_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) rtc_argerror(L, "redis_fallback", "'%s' must be a number", k);
        v = (double)lua_tonumber(L, -1);
        if (!(v >= min && v <= max)) rtc_argerror(L, "redis_fallback", "'%s' must be between %g and %g", k, min, max);
    }
    lua_pop(L, 1);
    return v;
}

static const char *opt_text(lua_State *L, int t, const char *k) {
    const char *s = NULL;
    rtc_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) rtc_argerror(L, "redis_fallback", "'%s' must be a string", k);
        s = lua_tostring(L, -1);
    }
    lua_pop(L, 1); /* still anchored by the options table */
    return s;
}

/* rtcadmin.redis_fallback{server = "host:port/db", timeout = 0.25, reprobe = 1, fallback_share = 0.5,
 * fallback = "host" | "error", dir = nil} -> the decision, with the host table in dir. */
static int l_redis_fallback(lua_State *L) {
    rtc_fallback_opts o;
    rtc_fallback **fp;
    const char *fallback;
    char err[256];
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(&o, 0, sizeof o);
    o.where = opt_text(L, 1, "server");
    if (!o.where) rtc_argerror(L, "redis_fallback", "'server' (host:port/db) is required");
    o.dir = opt_text(L, 1, "dir");
    o.timeout = opt_seconds(L, 1, "timeout", 0.25, 0.001, 60);
    o.reprobe = opt_seconds(L, 1, "reprobe", 1, 0.01, 3600);
    o.share = opt_seconds(L, 1, "fallback_share", 0.5, 0.01, 1);
    fallback = opt_text(L, 1, "fallback");
    if (fallback && strcmp(fallback, "host") != 0 && strcmp(fallback, "error") != 0)
        rtc_argerror(L, "redis_fallback", "'fallback' must be \"host\" or \"error\"");
    o.fail = fallback && strcmp(fallback, "error") == 0;
    fp = lua_newuserdatauv(L, sizeof *fp, 0);
    *fp = NULL;
    luaL_getmetatable(L, FALLBACK_MT);
    lua_setmetatable(L, -2);
    *fp = rtc_fallback_new(&o, err, sizeof err);
    if (!*fp) rtc_argerror(L, "redis_fallback", "%s", err);
    return 1;
}

static int fallback_gc(lua_State *L) {
    rtc_fallback **fp = luaL_checkudata(L, 1, FALLBACK_MT);
    rtc_fallback_free(*fp);
    *fp = NULL;
    return 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Pushes what a decided turn gives the driver: wait seconds, or nil and the reason; and the line to
 * log when the turn changed the state. */
static int push_outcome(lua_State *L, rtc_fb_result rc, const rtc_fb_turn *t, const rtc_fb_text *out) {
    if (rc == RTC_FB_FAIL) {
        lua_pushnil(L);
        lua_pushstring(L, out->err);
    } else {
        int64_t left = t->start_ns - rtc_monotonic_ns();
        lua_pushnumber(L, left > 0 ? (lua_Number)left / 1e9 : 0);
        lua_pushnil(L);
    }
    if (!out->note[0]) return 2;
    lua_pushstring(L, out->note);
    return 3;
}

/* d:begin(key_id, action, interval [, deadline_in]) -> wait | nil, err (decided without Redis), or
 * turn, interval_us, not_before_us, budget: run the script with those arguments (strings of
 * microseconds) within budget seconds, then report the outcome with d:answered or d:failed. */
static int fallback_begin(lua_State *L) {
    rtc_fallback **fp = check_fallback(L);
    size_t n, i;
    const char *key_id = luaL_checklstring(L, 2, &n);
    const char *action = luaL_checkstring(L, 3);
    lua_Number interval = luaL_checknumber(L, 4), deadline_in = luaL_optnumber(L, 5, -1);
    unsigned char key[8];
    int64_t now = rtc_monotonic_ns(), deadline = INT64_MAX;
    rtc_fb_text out;
    rtc_fb_result rc;
    turn_ud *u;
    char us[32];
    if (n != 16) return luaL_argerror(L, 2, "expected 16 lowercase hex digits (the access key's fingerprint)");
    for (i = 0; i < 16; i++) {
        int v = hexval((unsigned char)key_id[i]);
        if (v < 0) return luaL_argerror(L, 2, "expected 16 lowercase hex digits (the access key's fingerprint)");
        key[i / 2] = (unsigned char)(i % 2 ? key[i / 2] | v : v << 4);
    }
    if (!(interval > 0 && interval <= 86400)) return luaL_argerror(L, 4, "interval must be in (0, 86400] seconds");
    if (!lua_isnoneornil(L, 5)) deadline = now + (deadline_in > 0 ? (int64_t)(fmin(deadline_in, 86400) * 1e9) : 0);
    u = lua_newuserdatauv(L, sizeof *u, 0);
    u->reported = 0;
    luaL_getmetatable(L, TURN_MT);
    lua_setmetatable(L, -2);
    rc = rtc_fallback_begin(*fp, &u->t, key, action, (int64_t)ceil(interval * 1e9), now, deadline, &out);
    if (rc != RTC_FB_ASK) return push_outcome(L, rc, &u->t, &out);
    snprintf(us, sizeof us, "%lld", (long long)((u->t.interval_ns + 999) / 1000));
    lua_pushstring(L, us);
    snprintf(us, sizeof us, "%lld", (long long)((u->t.not_before_ns + 999) / 1000));
    lua_pushstring(L, us);
    lua_pushnumber(L, (lua_Number)(u->t.end_ns - now) / 1e9);
    return 4;
}

static turn_ud *check_turn(lua_State *L) {
    turn_ud *u = luaL_checkudata(L, 2, TURN_MT);
    if (u->reported) luaL_argerror(L, 2, "this turn's outcome was reported already");
    u->reported = 1;
    return u;
}

/* d:answered(turn, wait_us): Redis gave the slot wait_us after now -> wait, nil [, note]. */
static int fallback_answered(lua_State *L) {
    rtc_fallback **fp = check_fallback(L);
    turn_ud *u = check_turn(L);
    lua_Number wait_us = luaL_checknumber(L, 3);
    rtc_fb_text out;
    rtc_fb_result rc;
    if (!(wait_us >= 0 && wait_us <= 86400e6)) return luaL_argerror(L, 3, "expected 0..86400e6 microseconds");
    rc = rtc_fallback_answered(*fp, &u->t, rtc_monotonic_ns(), (int64_t)wait_us * 1000, &out);
    return push_outcome(L, rc, &u->t, &out);
}

/* d:failed(turn, why, refused): the round trip failed (refused: the connection setup was answered
 * with an error) -> wait, nil [, note] on the fallback, or nil, err [, note]. */
static int fallback_failed(lua_State *L) {
    rtc_fallback **fp = check_fallback(L);
    turn_ud *u = check_turn(L);
    const char *why = luaL_checkstring(L, 3);
    rtc_fb_text out;
    rtc_fb_result rc = rtc_fallback_failed(*fp, &u->t, rtc_monotonic_ns(), why, lua_toboolean(L, 4), &out);
    return push_outcome(L, rc, &u->t, &out);
}

/* d:status() -> {backend = "redis", active, server, fallbacks, recoveries, errors, last_error} */
static int fallback_status(lua_State *L) {
    rtc_fallback **fp = check_fallback(L);
    rtc_limiter_status st;
    rtc_fallback_status(*fp, &st);
    lua_createtable(L, 0, 7);
    set_string(L, "backend", "redis");
    set_string(L, "active", st.active);
    set_string(L, "server", st.server);
    set_integer(L, "fallbacks", st.fallbacks);
    set_integer(L, "recoveries", st.recoveries);
    set_integer(L, "errors", st.errors);
    set_string(L, "last_error", st.last_error);
    return 1;
}

void rtc_redis_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"begin", fallback_begin},
                                       {"answered", fallback_answered},
                                       {"failed", fallback_failed},
                                       {"status", fallback_status},
                                       {NULL, NULL}};
    if (luaL_newmetatable(L, FALLBACK_MT)) {
        lua_pushcfunction(L, fallback_gc);
        lua_setfield(L, -2, "__gc");
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newmetatable(L, TURN_MT);
    lua_pop(L, 1);
    lua_pushcfunction(L, l_parse_redis_url);
    lua_setfield(L, -2, "parse_redis_url");
    lua_pushcfunction(L, l_redis_fallback);
    lua_setfield(L, -2, "redis_fallback");
    rtc_redis_conn_register(L);
}
