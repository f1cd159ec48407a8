/* Error objects: plain tables with code, message, http_status, request_id, retryable and a readable __tostring. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "call.h"
#include "errors.h"
#include "json.h"

static void setstr(lua_State *L, const char *k, const char *v) {
    if (!v) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void setint(lua_State *L, const char *k, long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* Adds s with control characters and invalid UTF-8 written as \xNN: a server's text must not split a
 * log line or carry raw bytes into one. */
static void add_clean(luaL_Buffer *b, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (c >= 0x80 && i + len <= n && rtc_utf8_valid(s + i, len)) {
            luaL_addlstring(b, s + i, len);
            i += len;
        } else if (c >= 0x20 && c != 0x7f && c < 0x80) {
            luaL_addchar(b, (char)c);
            i++;
        } else {
            char x[5];
            snprintf(x, sizeof x, "\\x%02X", c);
            luaL_addstring(b, x);
            i++;
        }
    }
}

/* Sets t[k] to v cleaned, with every occurrence of `redact` (a secret a server or proxy reflected) masked. */
static void setclean(lua_State *L, const char *k, const char *v, const char *redact, size_t redact_len) {
    luaL_Buffer b;
    const char *hit;
    if (!v) return;
    luaL_buffinit(L, &b);
    if (redact && redact_len >= 4) {
        while ((hit = strstr(v, redact)) != NULL) {
            add_clean(&b, v, (size_t)(hit - v));
            luaL_addstring(&b, "****");
            v = hit + redact_len;
        }
    }
    add_clean(&b, v, strlen(v));
    luaL_pushresult(&b);
    lua_setfield(L, -2, k);
}

void rtc_push_error(lua_State *L, const rtc_error_info *e, const char *redact, size_t redact_len) {
    lua_createtable(L, 0, 10);
    setclean(L, "code", e->code ? e->code : "UnknownError", redact, redact_len);
    setclean(L, "message", e->message ? e->message : "", redact, redact_len);
    setint(L, "http_status", e->http_status);
    setclean(L, "request_id", e->request_id, redact, redact_len);
    lua_pushboolean(L, rtc_is_retryable(e->code, e->http_status));
    lua_setfield(L, -2, "retryable");
    setstr(L, "action", e->action);
    setstr(L, "version", e->version);
    if (e->code_n) setint(L, "code_n", e->code_n);
    setint(L, "attempts", e->attempts);
    luaL_getmetatable(L, RTC_ERROR_MT);
    lua_setmetatable(L, -2);
}

static const char *field(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    return lua_tostring(L, -1); /* popped by the caller's settop */
}

/* "KickUser failed: SignatureDoesNotMatch (HTTP 401): <message> [request <id>]" */
static int error_tostring(lua_State *L) {
    const char *action, *code, *message, *rid;
    lua_Integer status;
    luaL_Buffer b;
    luaL_checktype(L, 1, LUA_TTABLE);
    action = field(L, 1, "action");
    code = field(L, 1, "code");
    message = field(L, 1, "message");
    rid = field(L, 1, "request_id");
    lua_getfield(L, 1, "http_status");
    status = lua_tointeger(L, -1);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, action ? action : "request");
    luaL_addstring(&b, " failed: ");
    luaL_addstring(&b, code ? code : "UnknownError");
    if (status) {
        char s[32];
        snprintf(s, sizeof s, " (HTTP %ld)", (long)status);
        luaL_addstring(&b, s);
    }
    if (message && *message) {
        luaL_addstring(&b, ": ");
        luaL_addstring(&b, message);
    }
    if (rid && *rid) {
        luaL_addstring(&b, " [request ");
        luaL_addstring(&b, rid);
        luaL_addstring(&b, "]");
    }
    luaL_pushresult(&b);
    return 1;
}

void rtc_error_register(lua_State *L) {
    if (luaL_newmetatable(L, RTC_ERROR_MT)) {
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushstring(L, "rtcadmin.error");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

const char *rtc_quote(lua_State *L, const char *s, size_t n) {
    luaL_Buffer b;
    size_t i, shown = n > 40 ? 40 : n;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            luaL_addchar(&b, (char)c);
        } else {
            char x[5];
            snprintf(x, sizeof x, "\\x%02X", c);
            luaL_addstring(&b, x);
        }
    }
    luaL_addchar(&b, '"');
    if (shown < n) luaL_addstring(&b, "...");
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

int rtc_argerror(lua_State *L, const char *fname, const char *fmt, ...) {
    char msg[512];
    lua_Debug ar;
    int level, found = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Point at the nearest Lua caller, also when reached through a module-level forwarder. */
    for (level = 1; level < 8 && lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "Sl", &ar);
        if (ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            found = 1;
            break;
        }
    }
    if (!found) lua_pushliteral(L, "");
    lua_pushfstring(L, "rtcadmin.%s: %s", fname, msg);
    lua_concat(L, 2);
    return lua_error(L);
}
