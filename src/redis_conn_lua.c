/* rtcadmin.redis: a blocking Redis connection for plain Lua (the CLI's producers and engines, tests),
 * on hiredis and opened as the limiter's C backend opens one (redis_conn.c); and rtcadmin.shard, the
 * fleet's shard of a room (docs/fleet.md). OpenResty code uses cosockets instead
 * (lua/rtcadmin/resp.lua): this connection would block an nginx worker.
 *
 *   local r = assert(rtcadmin.redis("redis://:pw@127.0.0.1:6379/2", {timeout = 2}))
 *   r:call("SET", "k", 1)                  --> "OK"
 *   r:pipeline{{"INCR", "k"}, {"GET", "k"}} --> {2, "2"}
 *   r:close()
 *
 * Replies: status and bulk strings -> strings, integers -> integers, arrays -> tables, a nil reply
 * -> nil (false inside a table: a table cannot hold nil), an error reply -> nil, err from call (an
 * error table in place inside a table). An I/O failure drops the connection and returns nil, err
 * (code ConnectionFailed or Timeout, retryable); the next call connects again. */
#include <stdio.h>
#include <string.h>

#include "errors.h"
#include "limiter.h"
#include "redis_conn.h"
#include "redis_lua.h"
#include "rtcadmin.h"

#define CONN_MT "rtcadmin.redis"
#define FNAME_MAX 32

typedef struct {
    rtc_redis_conn c;
    int64_t timeout_ns;
    int closed;
} conn_ud;

static const char *password_of(const conn_ud *u) { return u->c.url.password; }

/* Error replies whose condition passes: Redis still loading its data, a script running, a failover. */
static int retryable_reply(const char *s) {
    static const char *const codes[] = {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", NULL};
    int i;
    for (i = 0; codes[i]; i++)
        if (strncmp(s, codes[i], strlen(codes[i])) == 0 && (s[strlen(codes[i])] == ' ' || !s[strlen(codes[i])]))
            return 1;
    return 0;
}

/* Pushes an error table: action (the command), code, message ("Redis at host:port/db: ..."). */
static void push_err(lua_State *L, const conn_ud *u, const char *action, const char *code, const char *text,
                     int retryable) {
    rtc_error_info e;
    const char *pw = password_of(u);
    memset(&e, 0, sizeof e);
    e.action = action;
    e.code = code;
    lua_pushfstring(L, "Redis at %s: %s", u->c.url.where, text);
    e.message = lua_tostring(L, -1);
    rtc_push_error(L, &e, pw, pw ? strlen(pw) : 0);
    lua_pushboolean(L, retryable);
    lua_setfield(L, -2, "retryable");
    lua_remove(L, -2);
}

/* An error reply as an error table: its code is the reply's first word (ERR, WRONGTYPE, NOGROUP...). */
static void push_reply_err(lua_State *L, const conn_ud *u, const char *action, const char *s) {
    char code[48];
    size_t n = strcspn(s, " ");
    if (n >= sizeof code) n = sizeof code - 1;
    memcpy(code, s, n);
    code[n] = '\0';
    push_err(L, u, action, n ? code : "ERR", s, retryable_reply(s));
}

static void push_io_err(lua_State *L, const conn_ud *u, const char *action, const char *why) {
    int timeout = strstr(why, "timeout") != NULL;
    push_err(L, u, action, timeout ? "Timeout" : "ConnectionFailed", why, 1);
}

static void push_reply(lua_State *L, const conn_ud *u, const char *action, const redisReply *r, int nested) {
    size_t i;
    luaL_checkstack(L, 4, "Redis reply nested too deeply");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_ERROR:
        push_reply_err(L, u, action, r->str ? r->str : "ERR");
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (i = 0; i < r->elements; i++) {
            push_reply(L, u, action, r->element[i], 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default: /* NIL */
        if (nested) lua_pushboolean(L, 0);
        else lua_pushnil(L);
    }
}

static conn_ud *check_conn(lua_State *L, const char *fname) {
    conn_ud *u = luaL_testudata(L, 1, CONN_MT);
    if (!u) rtc_argerror(L, fname, "expects a connection from rtcadmin.redis (use ':')");
    if (u->closed) rtc_argerror(L, fname, "the connection is closed");
    return u;
}

/* The command's arguments at t[1..n] (t absolute) as strings anchored in table `anchor` (absolute):
 * fills argv and lens; raises on a value that is neither a string nor a number. */
static int load_args(lua_State *L, const char *fname, int t, int anchor, int *next, const char **argv, size_t *lens,
                     int n) {
    int i;
    for (i = 0; i < n; i++) {
        int ty;
        lua_rawgeti(L, t, i + 1);
        ty = lua_type(L, -1);
        if (ty == LUA_TNUMBER && lua_isinteger(L, -1)) {
            char num[32];
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
            lua_pop(L, 1);
            lua_pushstring(L, num);
        } else if (ty == LUA_TNUMBER) {
            char num[40];
            snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, -1));
            lua_pop(L, 1);
            lua_pushstring(L, num);
        } else if (ty != LUA_TSTRING) {
            return rtc_argerror(L, fname, "argument %d of the command must be a string or a number, got %s", i + 1,
                                lua_typename(L, ty));
        }
        argv[i] = lua_tolstring(L, -1, &lens[i]);
        lua_rawseti(L, anchor, (*next)++);
    }
    return 0;
}

/* The command name for messages (at most FNAME_MAX - 1 bytes). */
static void command_name(char *out, const char *s, size_t len) {
    size_t n = len < FNAME_MAX - 1 ? len : FNAME_MAX - 1, i;
    for (i = 0; i < n; i++) out[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i] - 32) : s[i];
    out[n] = '\0';
}

/* Opens the connection if it is not; 0, or pushes nil, err and returns 2. */
static int ensure_open(lua_State *L, conn_ud *u, const char *action) {
    char why[256];
    int rc;
    if (u->c.ctx) return 0;
    rc = rtc_redis_open(&u->c, rtc_monotonic_ns() + u->timeout_ns, why, sizeof why);
    if (rc == 0) return 0;
    lua_pushnil(L);
    if (rc == RTC_REDIS_REFUSED) push_err(L, u, action, "RedisRefused", why, 0);
    else push_io_err(L, u, action, why);
    return 2;
}

/* conn:call(cmd, ...) -> reply, or nil, err */
static int conn_call(lua_State *L) {
    conn_ud *u = check_conn(L, "redis:call");
    int n = lua_gettop(L) - 1, next = 1;
    const char **argv;
    size_t *lens;
    char name[FNAME_MAX], why[256];
    redisReply *rep;
    if (n < 1) return rtc_argerror(L, "redis:call", "expects a command, e.g. conn:call(\"GET\", key)");
    argv = lua_newuserdatauv(L, (size_t)n * sizeof *argv, 0);
    lens = lua_newuserdatauv(L, (size_t)n * sizeof *lens, 0);
    lua_createtable(L, n, 0); /* the arguments, anchored */
    {
        int t = lua_gettop(L), args, i;
        lua_createtable(L, n, 0);
        args = lua_gettop(L);
        for (i = 0; i < n; i++) {
            lua_pushvalue(L, i + 2);
            lua_rawseti(L, args, i + 1);
        }
        load_args(L, "redis:call", args, t, &next, argv, lens, n);
    }
    command_name(name, argv[0], lens[0]);
    if (ensure_open(L, u, name)) return 2;
    rep = rtc_redis_command(&u->c, rtc_monotonic_ns() + u->timeout_ns, n, argv, lens, why, sizeof why);
    if (!rep) {
        lua_pushnil(L);
        push_io_err(L, u, name, why);
        return 2;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        push_reply_err(L, u, name, rep->str ? rep->str : "ERR");
        freeReplyObject(rep);
        return 2;
    }
    /* (Only running out of memory raises while converting: the reply would then leak.) */
    push_reply(L, u, name, rep, 0);
    freeReplyObject(rep);
    return 1;
}

/* conn:pipeline{{cmd, ...}, ...} -> {reply, ...} (nil replies false, error replies error tables), or
 * nil, err when the connection failed (then none of the replies is known). */
static int conn_pipeline(lua_State *L) {
    conn_ud *u = check_conn(L, "redis:pipeline");
    int ncmds, i, total = 0, next = 1, anchor;
    int *argcs;
    const char ***argvs;
    size_t **lensv;
    redisReply **out;
    char why[256], name[FNAME_MAX];
    if (lua_type(L, 2) != LUA_TTABLE) return rtc_argerror(L, "redis:pipeline", "expects a list of commands");
    ncmds = (int)lua_rawlen(L, 2);
    lua_settop(L, 2);
    lua_createtable(L, 0, 0);
    if (ncmds == 0) return 1;
    for (i = 1; i <= ncmds; i++) {
        int len;
        lua_rawgeti(L, 2, i);
        if (lua_type(L, -1) != LUA_TTABLE || (len = (int)lua_rawlen(L, -1)) < 1)
            return rtc_argerror(L, "redis:pipeline", "command %d must be a non-empty list", i);
        total += len;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    argcs = lua_newuserdatauv(L, (size_t)ncmds * sizeof *argcs, 0);
    argvs = lua_newuserdatauv(L, (size_t)ncmds * sizeof *argvs, 0);
    lensv = lua_newuserdatauv(L, (size_t)ncmds * sizeof *lensv, 0);
    {
        const char **argv = lua_newuserdatauv(L, (size_t)total * sizeof *argv, 0);
        size_t *lens = lua_newuserdatauv(L, (size_t)total * sizeof *lens, 0);
        lua_createtable(L, total, 0);
        anchor = lua_gettop(L);
        for (i = 0; i < ncmds; i++) {
            lua_rawgeti(L, 2, i + 1);
            argcs[i] = (int)lua_rawlen(L, -1);
            argvs[i] = argv;
            lensv[i] = lens;
            load_args(L, "redis:pipeline", lua_gettop(L), anchor, &next, argv, lens, argcs[i]);
            lua_pop(L, 1);
            argv += argcs[i];
            lens += argcs[i];
        }
    }
    out = lua_newuserdatauv(L, (size_t)ncmds * sizeof *out, 0);
    if (ensure_open(L, u, "pipeline")) return 2;
    if (rtc_redis_pipeline(&u->c, rtc_monotonic_ns() + u->timeout_ns, ncmds, argcs,
                           (const char *const *const *)argvs, (const size_t *const *)lensv, out, why, sizeof why)) {
        lua_pushnil(L);
        push_io_err(L, u, "pipeline", why);
        return 2;
    }
    lua_createtable(L, ncmds, 0);
    for (i = 0; i < ncmds; i++) {
        command_name(name, argvs[i][0], lensv[i][0]);
        push_reply(L, u, name, out[i], 1);
        lua_rawseti(L, -2, i + 1);
        freeReplyObject(out[i]);
        out[i] = NULL;
    }
    return 1;
}

static void conn_free(conn_ud *u) {
    rtc_redis_drop(&u->c);
    rtc_redis_url_free(&u->c.url);
    u->closed = 1;
}

/* conn:close(): also __gc and __close; a second close does nothing. */
static int conn_close(lua_State *L) {
    conn_ud *u = luaL_testudata(L, 1, CONN_MT);
    if (!u) return rtc_argerror(L, "redis:close", "expects a connection from rtcadmin.redis (use ':')");
    if (!u->closed) conn_free(u);
    return 0;
}

/* conn:where() -> "host:port/db" (never the credentials) */
static int conn_where(lua_State *L) {
    conn_ud *u = luaL_testudata(L, 1, CONN_MT);
    if (!u) return rtc_argerror(L, "redis:where", "expects a connection from rtcadmin.redis (use ':')");
    lua_pushstring(L, u->closed ? "closed" : u->c.url.where);
    return 1;
}

static int conn_tostring(lua_State *L) {
    conn_ud *u = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "rtcadmin.redis(%s)", u->closed ? "closed" : u->c.url.where);
    return 1;
}

/* rtcadmin.redis(url [, {timeout = seconds}]) -> conn, or nil, err when it cannot connect (or Redis
 * refused AUTH, SELECT or PING). A malformed URL or option raises before any traffic. */
static int l_redis(lua_State *L) {
    conn_ud *u;
    char err[256];
    double timeout = 2;
    if (lua_type(L, 1) != LUA_TSTRING) return rtc_argerror(L, "redis", "url must be a string (redis://...)");
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE) return rtc_argerror(L, "redis", "options must be a table {timeout = s}");
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "timeout") != 0)
                return rtc_argerror(L, "redis", "unknown option (expected timeout)");
            lua_pop(L, 1);
        }
        rtc_getfield(L, 2, "timeout");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0.001 && lua_tonumber(L, -1) <= 3600))
                return rtc_argerror(L, "redis", "timeout must be a number of seconds from 0.001 to 3600");
            timeout = (double)lua_tonumber(L, -1);
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    u->closed = 1; /* until the URL is read: __gc then has nothing to free */
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    if (rtc_redis_url_parse(lua_tostring(L, 1), &u->c.url, err, sizeof err))
        return rtc_argerror(L, "redis", "%s", err);
    u->closed = 0;
    u->timeout_ns = (int64_t)(timeout * 1e9);
    if (ensure_open(L, u, "connect")) {
        conn_free(u);
        return 2;
    }
    return 1;
}

/* 32-bit FNV-1a over app_id, a zero byte, room_id: the same number on every Lua and every host. */
static uint32_t fnv1a(uint32_t h, const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* rtcadmin.shard(app_id, room_id, n) -> 0 .. n-1 */
static int l_shard(lua_State *L) {
    size_t la, lr;
    const char *a, *r;
    lua_Integer n;
    uint32_t h;
    if (lua_type(L, 1) != LUA_TSTRING || lua_type(L, 2) != LUA_TSTRING)
        return rtc_argerror(L, "shard", "app_id and room_id must be strings");
    a = lua_tolstring(L, 1, &la);
    r = lua_tolstring(L, 2, &lr);
    if (lua_type(L, 3) != LUA_TNUMBER || !lua_isinteger(L, 3) || lua_tointeger(L, 3) < 1 ||
        lua_tointeger(L, 3) > 65536)
        return rtc_argerror(L, "shard", "n must be a whole number from 1 to 65536");
    n = lua_tointeger(L, 3);
    h = fnv1a(2166136261u, a, la);
    h = fnv1a(h, "", 1);
    h = fnv1a(h, r, lr);
    lua_pushinteger(L, (lua_Integer)(h % (uint32_t)n));
    return 1;
}

void rtc_redis_conn_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"call", conn_call},
                                       {"pipeline", conn_pipeline},
                                       {"close", conn_close},
                                       {"where", conn_where},
                                       {NULL, NULL}};
    if (luaL_newmetatable(L, CONN_MT)) {
        lua_pushcfunction(L, conn_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, conn_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, conn_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_redis);
    lua_setfield(L, -2, "redis");
    lua_pushcfunction(L, l_shard);
    lua_setfield(L, -2, "shard");
}
