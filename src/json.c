#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 32
/* The registry key of the metatable that marks a table as a JSON array (rtcadmin.json_array). */
#define JSON_ARRAY_MT "rtcadmin.json_array"

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

/* How values are written: request bodies refuse what the API could misread; output (audit
 * records, --json lines, HTTP answers) writes every plain value, so a record is never lost to a
 * number or a byte it holds. */
typedef struct {
    int output; /* NaN and infinities as null, invalid UTF-8 replaced, marked arrays as arrays */
    char *err;
    size_t errlen;
} json_mode;

/* Appends s[0..n) (valid UTF-8) escaped, without quotes. */
static void json_run(rtc_buf *b, const char *s, size_t n) {
    size_t at = b->len;
    rtc_json_string(b, s, n);
    if (b->oom) return;
    memmove(b->data + at, b->data + at + 1, b->len - at - 2);
    b->len -= 2;
    b->data[b->len] = '\0';
}

/* A string for output: each byte that does not start a valid UTF-8 sequence becomes U+FFFD. */
static int json_string_lossy(rtc_buf *b, const char *s, size_t n) {
    size_t i = 0, start = 0;
    rtc_buf_addc(b, '"');
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (c >= 0x80 && (i + len > n || !rtc_utf8_valid(s + i, len))) {
            json_run(b, s + start, i - start);
            rtc_buf_adds(b, "\\ufffd");
            start = ++i;
            continue;
        }
        i += len;
    }
    json_run(b, s + start, n - start);
    return rtc_buf_addc(b, '"');
}

/* The shortest of %.15g, %.16g, %.17g that reads back as the same double: 1764064847.6, not
 * 1764064847.5999999. */
static int json_number_short(rtc_buf *b, double v) {
    char tmp[40];
    int prec;
    for (prec = 15; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    if (prec == 17) snprintf(tmp, sizeof tmp, "%.17g", v);
    return rtc_buf_adds(b, tmp);
}

static int key_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int encode(lua_State *L, int idx, rtc_buf *b, int depth, json_mode *m);

/* Whether the table at idx carries the array marker. */
static int marked_array(lua_State *L, int idx) {
    int marked;
    if (!lua_getmetatable(L, idx)) return 0;
    luaL_getmetatable(L, JSON_ARRAY_MT);
    marked = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return marked;
}

static int encode_table(lua_State *L, int idx, rtc_buf *b, int depth, json_mode *m) {
    size_t n = 0, count = 0, nstrings = 0, i;
    int is_array = 1;
    long long k;
    const char **keys;
    char *err = m->err;
    size_t errlen = m->errlen;
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
    if ((count && is_array && n == count) || (count == 0 && m->output && marked_array(L, idx))) {
        rtc_buf_addc(b, '[');
        for (i = 1; i <= n; i++) {
            if (i > 1) rtc_buf_addc(b, ',');
            lua_rawgeti(L, idx, (int)i);
            if (encode(L, lua_gettop(L), b, depth + 1, m)) return -1;
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
        if (i) rtc_buf_addc(b, ',');
        if (!rtc_utf8_valid(keys[i], kl)) {
            if (!m->output) {
                snprintf(err, errlen, "table key is not valid UTF-8");
                free(keys);
                return -1;
            }
            json_string_lossy(b, keys[i], kl);
        } else {
            rtc_json_string(b, keys[i], kl);
        }
        rtc_buf_addc(b, ':');
        if (encode(L, lua_gettop(L), b, depth + 1, m)) {
            size_t el = strlen(err);
            if (!strstr(err, " (in key ")) snprintf(err + el, errlen - el, " (in key \"%.40s\")", keys[i]);
            free(keys);
            return -1;
        }
        lua_pop(L, 1);
    }
    free(keys);
    return rtc_buf_addc(b, '}');
}

static int encode(lua_State *L, int idx, rtc_buf *b, int depth, json_mode *m) {
    long long k;
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return rtc_buf_adds(b, "null");
    case LUA_TBOOLEAN: return rtc_buf_adds(b, lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TNUMBER:
        if (rtc_integral(L, idx, &k)) return rtc_buf_addf(b, "%lld", k);
        if (!isfinite((double)lua_tonumber(L, idx))) {
            if (m->output) return rtc_buf_adds(b, "null");
            snprintf(m->err, m->errlen, "NaN and infinity cannot be sent as JSON");
            return -1;
        }
        if (m->output) return json_number_short(b, (double)lua_tonumber(L, idx));
        return rtc_buf_addf(b, "%.17g", (double)lua_tonumber(L, idx));
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        if (!rtc_utf8_valid(s, n)) {
            if (m->output) return json_string_lossy(b, s, n);
            snprintf(m->err, m->errlen, "string is not valid UTF-8");
            return -1;
        }
        return rtc_json_string(b, s, n);
    case LUA_TTABLE:
        if (!lua_checkstack(L, 4)) {
            snprintf(m->err, m->errlen, "Lua stack exhausted");
            return -1;
        }
        return encode_table(L, idx, b, depth, m);
    case LUA_TLIGHTUSERDATA: /* lua-cjson's null */
        if (m->output && lua_touserdata(L, idx) == NULL) return rtc_buf_adds(b, "null");
        /* fall through */
    default:
        snprintf(m->err, m->errlen, "a %s cannot be %s as JSON", luaL_typename(L, idx), m->output ? "written" : "sent");
        return -1;
    }
}

static int json_encode_mode(lua_State *L, int idx, rtc_buf *b, char *err, size_t errlen, int output) {
    json_mode m;
    int top = lua_gettop(L), rc;
    if (idx < 0) idx = top + idx + 1;
    err[0] = '\0';
    m.output = output;
    m.err = err;
    m.errlen = errlen;
    rc = encode(L, idx, b, 0, &m);
    lua_settop(L, top);
    if (rc == 0 && b->oom) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    return rc;
}

int rtc_json_encode(lua_State *L, int idx, rtc_buf *b, char *err, size_t errlen) {
    return json_encode_mode(L, idx, b, err, errlen, 0);
}

/* rtcadmin.json_encode(value) -> JSON text: the module's one writer of JSON output. */
static int l_json_encode(lua_State *L) {
    rtc_buf b;
    char err[160];
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    rtc_buf_init(&b);
    if (json_encode_mode(L, 1, &b, err, sizeof err, 1)) {
        rtc_buf_free(&b);
        return luaL_error(L, "rtcadmin.json_encode: %s", err);
    }
    lua_pushlstring(L, b.data, b.len);
    rtc_buf_free(&b);
    return 1;
}

/* rtcadmin.json_array(t?) -> t (a new table when absent), marked to be written as a JSON array
 * also when empty. */
static int l_json_array(lua_State *L) {
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_getmetatable(L, JSON_ARRAY_MT);
    lua_setmetatable(L, 1);
    return 1;
}

void rtc_json_register(lua_State *L) {
    luaL_newmetatable(L, JSON_ARRAY_MT);
    lua_pushliteral(L, "rtcadmin.json_array");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_json_encode);
    lua_setfield(L, -2, "json_encode");
    lua_pushcfunction(L, l_json_array);
    lua_setfield(L, -2, "json_array");
}
