#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 32

int rtc_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str, *end = s + n;
    while (s < end) {
        unsigned c = *s;
        size_t len, i;
        unsigned cp;
        if (c < 0x80) { s++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return 0;
        if ((size_t)(end - s) < len) return 0;
        for (i = 1; i < len; i++) {
            if ((s[i] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        s += len;
    }
    return 1;
}

int rtc_json_string(rtc_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;
    rtc_buf_addc(b, '"');
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        rtc_buf_add(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
            u[6] = '\0';
            esc = u;
        }
        rtc_buf_adds(b, esc);
    }
    rtc_buf_add(b, s + run, n - run);
    return rtc_buf_addc(b, '"');
}

static int key_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int encode(lua_State *L, int idx, rtc_buf *b, int depth, char *err, size_t errlen);

static int encode_table(lua_State *L, int idx, rtc_buf *b, int depth, char *err, size_t errlen) {
    size_t n = 0, count = 0, nstrings = 0, i;
    int is_array = 1;
    long long k;
    const char **keys;
    if (depth > JSON_MAX_DEPTH) {
        snprintf(err, errlen, "tables nested deeper than %d (or a cycle)", JSON_MAX_DEPTH);
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (!rtc_integral(L, -1, &k) || k < 1) is_array = 0;
        else if ((size_t)k > n) n = (size_t)k;
        if (lua_type(L, -1) == LUA_TSTRING) {
            nstrings++;
            if (strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1)) {
                lua_pop(L, 1);
                snprintf(err, errlen, "table key contains a NUL byte");
                return -1;
            }
        }
    }
    if (count && is_array && n == count) {
        rtc_buf_addc(b, '[');
        for (i = 1; i <= n; i++) {
            if (i > 1) rtc_buf_addc(b, ',');
            lua_rawgeti(L, idx, (int)i);
            if (encode(L, lua_gettop(L), b, depth + 1, err, errlen)) return -1;
            lua_pop(L, 1);
        }
        return rtc_buf_addc(b, ']');
    }
    if (count && is_array) {
        snprintf(err, errlen, "sparse array (keys are not exactly 1..n)");
        return -1;
    }
    if (nstrings != count) {
        snprintf(err, errlen, "table keys must be all strings or an array 1..n");
        return -1;
    }
    /* Objects are written with sorted keys so a body is the same bytes every time. */
    keys = malloc((count ? count : 1) * sizeof *keys);
    if (!keys) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        keys[i++] = lua_tostring(L, -1); /* anchored by the table itself */
    }
    qsort(keys, count, sizeof *keys, key_cmp);
    rtc_buf_addc(b, '{');
    for (i = 0; i < count; i++) {
        size_t kl;
        lua_pushstring(L, keys[i]);
        lua_rawget(L, idx);
        lua_pushstring(L, keys[i]);
        lua_tolstring(L, -1, &kl);
        lua_pop(L, 1);
        if (!rtc_utf8_valid(keys[i], kl)) {
            snprintf(err, errlen, "table key is not valid UTF-8");
            free(keys);
            return -1;
        }
        if (i) rtc_buf_addc(b, ',');
        rtc_json_string(b, keys[i], kl);
        rtc_buf_addc(b, ':');
        if (encode(L, lua_gettop(L), b, depth + 1, err, errlen)) {
            size_t el = strlen(err);
            snprintf(err + el, errlen - el, " (in key \"%.40s\")", keys[i]);
            free(keys);
            return -1;
        }
        lua_pop(L, 1);
    }
    free(keys);
    return rtc_buf_addc(b, '}');
}

static int encode(lua_State *L, int idx, rtc_buf *b, int depth, char *err, size_t errlen) {
    long long k;
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return rtc_buf_adds(b, "null");
    case LUA_TBOOLEAN: return rtc_buf_adds(b, lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TNUMBER:
        if (rtc_integral(L, idx, &k)) return rtc_buf_addf(b, "%lld", k);
        if (!isfinite((double)lua_tonumber(L, idx))) {
            snprintf(err, errlen, "NaN and infinity cannot be sent as JSON");
            return -1;
        }
        return rtc_buf_addf(b, "%.17g", (double)lua_tonumber(L, idx));
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        if (!rtc_utf8_valid(s, n)) {
            snprintf(err, errlen, "string is not valid UTF-8");
            return -1;
        }
        return rtc_json_string(b, s, n);
    case LUA_TTABLE:
        if (!lua_checkstack(L, 4)) {
            snprintf(err, errlen, "Lua stack exhausted");
            return -1;
        }
        return encode_table(L, idx, b, depth, err, errlen);
    default:
        snprintf(err, errlen, "a %s cannot be sent as JSON", luaL_typename(L, idx));
        return -1;
    }
}

int rtc_json_encode(lua_State *L, int idx, rtc_buf *b, char *err, size_t errlen) {
    int top = lua_gettop(L), rc;
    if (idx < 0) idx = top + idx + 1;
    err[0] = '\0';
    rc = encode(L, idx, b, 0, err, errlen);
    lua_settop(L, top);
    if (rc == 0 && b->oom) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    return rc;
}
