/* The moderation surface: argument checks (raised before any traffic) and the API call each method
 * makes, sent by the blocking driver (request.c) or kept as a prepared call (prepared.c). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "actions.h"
#include "client_lua.h"
#include "json.h"
#include "prepared.h"
#include "request.h"

typedef struct {
    const char *s;
    size_t n;
} str;

int rtc_valid_id(const char *s, size_t n) {
    size_t i;
    if (n == 0 || n > RTC_ID_MAX) return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '@' || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int rtc_valid_app_id(const char *s, size_t n) {
    size_t i;
    if (n == 0 || n > RTC_ID_MAX) return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

/* Value at idx must be a string passing ok(); nil is allowed when !required. */
static str check_id_at(lua_State *L, int idx, const char *fname, const char *arg, int required, int is_app) {
    str r = {NULL, 0};
    int t = lua_type(L, idx);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        if (required) rtc_argerror(L, fname, "bad argument '%s': required, got nil", arg);
        return r;
    }
    if (t != LUA_TSTRING) rtc_argerror(L, fname, "bad argument '%s': expected a string, got %s", arg, lua_typename(L, t));
    r.s = lua_tolstring(L, idx, &r.n);
    if (is_app ? !rtc_valid_app_id(r.s, r.n) : !rtc_valid_id(r.s, r.n))
        rtc_argerror(L, fname, "bad argument '%s': %s, got %s", arg,
                     is_app ? "expected 1-128 printable ASCII characters without spaces"
                            : "expected 1-128 characters of A-Z a-z 0-9 @ . _ -",
                     rtc_quote(L, r.s, r.n));
    return r;
}

/* Rejects keys the method does not know: a typo must not silently widen a ban. */
static void check_fields(lua_State *L, int t, const char *fname, const char *const *allowed, const char *list) {
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int i, ok = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (i = 0; allowed[i]; i++)
                if (strcmp(lua_tostring(L, -1), allowed[i]) == 0) ok = 1;
        if (!ok) {
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
            rtc_argerror(L, fname, "unknown field %s (expected %s)", rtc_quote(L, k, strlen(k)), list);
        }
    }
}

static int table_arg(lua_State *L, const char *fname, const char *const *allowed, const char *list) {
    if (lua_type(L, 2) != LUA_TTABLE)
        rtc_argerror(L, fname, "expects a table {%s}, got %s", list, luaL_typename(L, 2));
    lua_settop(L, 2);
    check_fields(L, 2, fname, allowed, list);
    return 2;
}

static str field_id(lua_State *L, int t, const char *fname, const char *key, int required, int is_app) {
    str r;
    rtc_getfield(L, t, key);
    r = check_id_at(L, lua_gettop(L), fname, key, required, is_app);
    lua_pop(L, 1); /* the string stays anchored by the table */
    return r;
}

/* Integer seconds in {0} or [min, max]; -1 when absent and optional. */
static long long field_duration(lua_State *L, int t, const char *fname, int required, long long min, long long max) {
    long long v = 0;
    rtc_getfield(L, t, "duration");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required) rtc_argerror(L, fname, "bad argument 'duration': required (seconds; 0 = no lasting ban)");
        return -1;
    }
    if (!rtc_integral(L, -1, &v))
        rtc_argerror(L, fname, "bad argument 'duration': expected whole seconds, got %s",
                     lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1) : luaL_typename(L, -1));
    lua_pop(L, 1);
    if (v != 0 && (v < min || v > max))
        rtc_argerror(L, fname, "bad argument 'duration': must be 0 or between %lld and %lld seconds, got %lld", min,
                     max, v);
    return v;
}

/* -1 absent, 0 false, 1 true */
static int field_bool(lua_State *L, int t, const char *fname, const char *key) {
    int v;
    rtc_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return -1;
    }
    if (!lua_isboolean(L, -1))
        rtc_argerror(L, fname, "bad argument '%s': expected a boolean, got %s", key, luaL_typename(L, -1));
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static str field_ip(lua_State *L, int t, const char *fname) {
    str r = {NULL, 0};
    unsigned char addr[16];
    char tmp[64];
    rtc_getfield(L, t, "ip");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return r;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        rtc_argerror(L, fname, "bad argument 'ip': expected a string, got %s", luaL_typename(L, -1));
    r.s = lua_tolstring(L, -1, &r.n);
    if (r.n >= sizeof tmp || memchr(r.s, '\0', r.n)) r.n = sizeof tmp; /* forces the error below */
    if (r.n < sizeof tmp) memcpy(tmp, r.s, r.n + 1);
    if (r.n >= sizeof tmp || (inet_pton(AF_INET, tmp, addr) != 1 && inet_pton(AF_INET6, tmp, addr) != 1))
        rtc_argerror(L, fname, "bad argument 'ip': expected an IPv4 or IPv6 address, got %s",
                     rtc_quote(L, r.s, lua_rawlen(L, -1)));
    lua_pop(L, 1);
    return r;
}


/* The client at index 1. A method that sends refuses to run inside one of the client's own methods; a
 * preparer is what a running batch (or exchange) calls to check its calls. */
static rtc_client *method_client(lua_State *L, const char *fname) {
    return RTC_PREPARING(L) ? rtc_check_client(L, 1, fname) : rtc_check_idle_client(L, 1, fname);
}

/* Sends the call, or, for a method called through its preparer, returns it as a prepared table
 * {action, version, get, body, params = {k1, v1, ...}} to be sent later. */
static int rtc_dispatch(lua_State *L, rtc_client *c, const char *fname, const rtc_api_call *call) {
    if (!RTC_PREPARING(L)) return rtc_client_request(L, c, fname, call);
    rtc_prepared_push(L, call);
    return 1;
}

/* Bodies are written in a fixed key order, straight from validated values. */
typedef struct {
    rtc_buf b;
    int n;
} body;

static void body_key(body *w, const char *k) {
    rtc_buf_adds(&w->b, w->n++ ? ",\"" : "{\"");
    rtc_buf_adds(&w->b, k);
    rtc_buf_adds(&w->b, "\":");
}

static void body_str(body *w, const char *k, str v) {
    if (!v.s) return;
    body_key(w, k);
    rtc_json_string(&w->b, v.s, v.n);
}

static void body_int(body *w, const char *k, long long v) {
    body_key(w, k);
    rtc_buf_addf(&w->b, "%lld", v);
}

static void body_bool(body *w, const char *k, int v) {
    body_key(w, k);
    rtc_buf_adds(&w->b, v ? "true" : "false");
}

/* Sends a POST whose body w holds; frees it first so a raised error cannot leak it. */
static int post(lua_State *L, rtc_client *c, const char *fname, const char *action, const char *version, body *w) {
    rtc_api_call call;
    rtc_buf_addc(&w->b, '}');
    if (w->b.oom) {
        rtc_buf_free(&w->b);
        return luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, w->b.data, w->b.len);
    rtc_buf_free(&w->b);
    memset(&call, 0, sizeof call);
    call.action = action;
    call.version = rtc_client_version(c, action, version);
    call.body = lua_tolstring(L, -1, &call.body_len);
    return rtc_dispatch(L, c, fname, &call);
}

static void body_init(body *w) {
    rtc_buf_init(&w->b);
    w->n = 0;
}

/* client:kick_user(app_id, room_id, user_id) -> KickUser 2020-12-01 */
static int m_kick_user(lua_State *L) {
    rtc_client *c = method_client(L, "kick_user");
    str app = check_id_at(L, 2, "kick_user", "app_id", 1, 1);
    str room = check_id_at(L, 3, "kick_user", "room_id", 1, 0);
    str user = check_id_at(L, 4, "kick_user", "user_id", 1, 0);
    body w;
    body_init(&w);
    body_str(&w, "AppId", app);
    body_str(&w, "RoomId", room);
    body_str(&w, "UserId", user);
    return post(L, c, "kick_user", "KickUser", "2020-12-01", &w);
}

/* client:ban_user{app_id, room_id?, user_id?, ip?, duration} -> BanRoomUser 2023-11-01 */
static int m_ban_user(lua_State *L) {
    static const char *const f[] = {"app_id", "room_id", "user_id", "ip", "duration", NULL};
    rtc_client *c = method_client(L, "ban_user");
    int t = table_arg(L, "ban_user", f, "app_id, room_id, user_id, ip, duration");
    str app = field_id(L, t, "ban_user", "app_id", 1, 1);
    str room = field_id(L, t, "ban_user", "room_id", 0, 0);
    str user = field_id(L, t, "ban_user", "user_id", 0, 0);
    str ip = field_ip(L, t, "ban_user");
    long long d = field_duration(L, t, "ban_user", 1, RTC_BAN_MIN, RTC_BAN_MAX);
    body w;
    if (!room.s && !user.s && !ip.s)
        rtc_argerror(L, "ban_user", "give at least one of room_id, user_id, ip (the ban's scope)");
    body_init(&w);
    body_str(&w, "AppId", app);
    body_str(&w, "RoomId", room);
    body_str(&w, "UserId", user);
    body_str(&w, "IP", ip);
    body_int(&w, "ForbiddenInterval", d);
    return post(L, c, "ban_user", "BanRoomUser", "2023-11-01", &w);
}

static int update_rule(lua_State *L, const char *fname, int unban) {
    static const char *const f_unban[] = {"app_id", "room_id", "user_id", NULL};
    static const char *const f_update[] = {"app_id", "room_id", "user_id", "duration", NULL};
    rtc_client *c = method_client(L, fname);
    int t = table_arg(L, fname, unban ? f_unban : f_update,
                      unban ? "app_id, room_id, user_id" : "app_id, room_id, user_id, duration");
    str app = field_id(L, t, fname, "app_id", 1, 1);
    str room = field_id(L, t, fname, "room_id", 0, 0);
    str user = field_id(L, t, fname, "user_id", 0, 0);
    long long d = unban ? 0 : field_duration(L, t, fname, 1, RTC_BAN_MIN, RTC_BAN_MAX);
    body w;
    if (!room.s && !user.s) rtc_argerror(L, fname, "give room_id, user_id or both (the ban's scope)");
    body_init(&w);
    body_str(&w, "AppId", app);
    body_str(&w, "RoomId", room);
    body_str(&w, "UserId", user);
    body_int(&w, "ForbiddenInterval", d);
    return post(L, c, fname, "UpdateBanRoomUserRule", "2023-11-01", &w);
}

/* client:unban_user{app_id, room_id?, user_id?} -> UpdateBanRoomUserRule, ForbiddenInterval 0 */
static int m_unban_user(lua_State *L) { return update_rule(L, "unban_user", 1); }

/* client:update_ban{app_id, room_id?, user_id?, duration} -> UpdateBanRoomUserRule */
static int m_update_ban(lua_State *L) { return update_rule(L, "update_ban", 0); }

/* audio/video: both absent means both; otherwise an absent one means false. */
static void stream_flags(lua_State *L, int t, const char *fname, int *audio, int *video) {
    *audio = field_bool(L, t, fname, "audio");
    *video = field_bool(L, t, fname, "video");
    if (*audio < 0 && *video < 0) *audio = *video = 1;
    if (*audio < 0) *audio = 0;
    if (*video < 0) *video = 0;
    if (!*audio && !*video) rtc_argerror(L, fname, "audio and video are both false: nothing to do");
}

static int stream_rule(lua_State *L, const char *fname, int mute) {
    static const char *const f_mute[] = {"app_id", "room_id", "user_id", "audio", "video", "duration", NULL};
    static const char *const f_unmute[] = {"app_id", "room_id", "user_id", "audio", "video", NULL};
    rtc_client *c = method_client(L, fname);
    int t = table_arg(L, fname, mute ? f_mute : f_unmute,
                      mute ? "app_id, room_id, user_id, audio, video, duration" : "app_id, room_id, user_id, audio, video");
    str app = field_id(L, t, fname, "app_id", 1, 1);
    str room = field_id(L, t, fname, "room_id", 1, 0);
    str user = field_id(L, t, fname, "user_id", 1, 0);
    int audio, video;
    long long d = mute ? field_duration(L, t, fname, 0, RTC_MUTE_MIN, RTC_MUTE_MAX) : -1;
    body w;
    stream_flags(L, t, fname, &audio, &video);
    body_init(&w);
    body_str(&w, "AppId", app);
    body_str(&w, "RoomId", room);
    body_str(&w, "UserId", user);
    body_bool(&w, "Audio", audio);
    body_bool(&w, "Video", video);
    if (d >= 0) body_int(&w, "ForbiddenInterval", d);
    return post(L, c, fname, mute ? "BanUserStream" : "UnbanUserStream", "2023-11-01", &w);
}

/* client:mute_user{app_id, room_id, user_id, audio?, video?, duration?} -> BanUserStream 2023-11-01 */
static int m_mute_user(lua_State *L) { return stream_rule(L, "mute_user", 1); }

/* client:unmute_user{app_id, room_id, user_id, audio?, video?} -> UnbanUserStream 2023-11-01 */
static int m_unmute_user(lua_State *L) { return stream_rule(L, "unmute_user", 0); }

/* client:online_users(app_id, room_id) -> GET GetRoomOnlineUsers 2023-11-01 */
static int m_online_users(lua_State *L) {
    rtc_client *c = method_client(L, "online_users");
    str app = check_id_at(L, 2, "online_users", "app_id", 1, 1);
    str room = check_id_at(L, 3, "online_users", "room_id", 1, 0);
    rtc_kv q[2];
    rtc_api_call call;
    q[0].key = "AppId";
    q[0].key_len = 5;
    q[0].value = app.s;
    q[0].value_len = app.n;
    q[1].key = "RoomId";
    q[1].key_len = 6;
    q[1].value = room.s;
    q[1].value_len = room.n;
    memset(&call, 0, sizeof call);
    call.action = "GetRoomOnlineUsers";
    call.version = rtc_client_version(c, call.action, "2023-11-01");
    call.is_get = 1;
    call.params = q;
    call.nparams = 2;
    return rtc_dispatch(L, c, "online_users", &call);
}

static int name_ok(const char *s, size_t n, int version) {
    size_t i;
    if (n == 0 || n > 64) return 0;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (version ? !((ch >= '0' && ch <= '9') || ch == '-')
                    : !((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')))
            return 0;
    }
    return 1;
}

/* GET parameters: a flat table of strings, numbers and booleans (written as true/false). */
static size_t get_params(lua_State *L, int t, rtc_kv **out) {
    size_t n = 0, i = 0;
    rtc_kv *q;
    int anchor;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    q = lua_newuserdatauv(L, (n ? n : 1) * sizeof *q, 0);
    lua_createtable(L, (int)n, 0); /* anchors the converted values */
    anchor = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int vt = lua_type(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING)
            rtc_argerror(L, "call", "GET parameters must have string keys");
        if (vt == LUA_TBOOLEAN) {
            lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
        } else if (vt == LUA_TNUMBER) {
            long long k;
            char num[32];
            if (rtc_integral(L, -1, &k))
                snprintf(num, sizeof num, "%lld", k);
            else
                snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, -1));
            lua_pushstring(L, num);
        } else if (vt == LUA_TSTRING) {
            lua_pushvalue(L, -1);
        } else {
            rtc_argerror(L, "call", "GET parameter '%s' must be a string, number or boolean, got %s",
                         lua_tostring(L, -2), lua_typename(L, vt));
        }
        q[i].key = lua_tolstring(L, -3, &q[i].key_len);
        q[i].value = lua_tolstring(L, -1, &q[i].value_len);
        if (memchr(q[i].key, '\0', q[i].key_len) || memchr(q[i].value, '\0', q[i].value_len))
            rtc_argerror(L, "call", "GET parameter '%s' contains a NUL byte", q[i].key);
        lua_rawseti(L, anchor, (int)(i + 1));
        lua_pop(L, 1);
        i++;
    }
    *out = q;
    return n;
}

/* client:call(action, version, params?, {method = "POST"|"GET"}?) for any other Action. */
static int m_call(lua_State *L) {
    rtc_client *c = method_client(L, "call");
    size_t an = 0, vn = 0;
    const char *action = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &an) : NULL;
    const char *version = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &vn) : NULL;
    const char *method = "POST";
    rtc_api_call call;
    if (!action || !name_ok(action, an, 0))
        rtc_argerror(L, "call", "bad argument 'action': expected an Action name such as \"DismissRoom\"");
    if (!version || !name_ok(version, vn, 1))
        rtc_argerror(L, "call", "bad argument 'version': expected a version such as \"2020-12-01\"");
    if (!lua_isnoneornil(L, 4) && !lua_istable(L, 4))
        rtc_argerror(L, "call", "bad argument 'params': expected a table, got %s", luaL_typename(L, 4));
    if (!lua_isnoneornil(L, 5)) {
        static const char *const f[] = {"method", NULL};
        if (!lua_istable(L, 5)) rtc_argerror(L, "call", "bad argument 'opts': expected a table {method = ...}");
        check_fields(L, 5, "call", f, "method");
        rtc_getfield(L, 5, "method");
        if (!lua_isnil(L, -1)) {
            const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (!m || (strcmp(m, "GET") != 0 && strcmp(m, "POST") != 0))
                rtc_argerror(L, "call", "bad argument 'opts.method': expected \"GET\" or \"POST\"");
            method = strcmp(m, "GET") == 0 ? "GET" : "POST"; /* opts is not kept on the stack */
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 4);
    if (lua_isnil(L, 4)) {
        lua_newtable(L);
        lua_replace(L, 4);
    }
    memset(&call, 0, sizeof call);
    call.action = action;
    call.version = version;
    if (strcmp(method, "GET") == 0) {
        rtc_kv *q;
        call.is_get = 1;
        call.nparams = get_params(L, 4, &q);
        call.params = q;
    } else {
        rtc_buf b;
        char err[256];
        rtc_buf_init(&b);
        if (rtc_json_encode(L, 4, &b, err, sizeof err)) {
            rtc_buf_free(&b);
            return rtc_argerror(L, "call", "bad argument 'params': %s", err);
        }
        lua_pushlstring(L, b.data, b.len);
        rtc_buf_free(&b);
        call.body = lua_tolstring(L, -1, &call.body_len);
    }
    return rtc_dispatch(L, c, "call", &call);
}

const luaL_Reg rtc_action_methods[] = {
    {"kick_user", m_kick_user},     {"ban_user", m_ban_user},       {"unban_user", m_unban_user},
    {"update_ban", m_update_ban},   {"mute_user", m_mute_user},     {"unmute_user", m_unmute_user},
    {"online_users", m_online_users}, {"call", m_call},             {NULL, NULL}};

void rtc_actions_register(lua_State *L) {
    rtc_client_add_methods(L, rtc_action_methods);
    rtc_prepared_register(L, rtc_action_methods);
}
