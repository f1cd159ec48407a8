/* rtcadmin.pack(value) -> string, rtcadmin.unpack(string) -> value: plain Lua data (nil, booleans,
 * numbers, strings, tables) as a compact string with a checksum; the policy engine's saved state
 * (docs/policy.md, "Saving and restoring state"; the format is described in docs/api.md).
 *
 * A value is one tag byte and what follows it:
 *   0x00 nil, 0x01 false, 0x02 true
 *   0x03 integer: zigzag LEB128 varint          0x80-0xff: the integer 0..127
 *   0x04 float: 8 bytes IEEE-754, little endian
 *   0x05 string: varint length, the bytes       0x40-0x7f: a string of 0..63 bytes, the bytes
 *   0x06 table: varint n, varint m, n values (t[1..n], nil for a hole), m key/value pairs
 * A table is written where it is met: one reached twice is written twice (and read back as two
 * tables), and a cycle is an error. (A map of the tables and strings written before, for back
 * references, took a third of the time of packing a policy engine's state, which shares nothing.)
 * Integers and floats are kept apart where Lua has both (5.3+); on 5.1 and LuaJIT a whole number of
 * magnitude up to 2^53 is written as an integer. Metatables are not written.
 *
 * Reading trusts nothing: the checksum first, then every length against what is left of the input,
 * and the elements a table announces against the bytes left (each takes at least one), so no input
 * makes it allocate much more than its own size; nesting is limited to PACK_MAX_DEPTH. Errors in
 * the data are returned (nil, err), never raised. */
#include "pack.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rtcadmin.h"

#define PACK_MAX_DEPTH 100
#define PACKER_MT "rtcadmin.packer"

enum {
    T_NIL = 0x00, T_FALSE = 0x01, T_TRUE = 0x02, T_INT = 0x03, T_FLOAT = 0x04, T_STRING = 0x05, T_TABLE = 0x06,
    T_SHORT_STRING = 0x40, T_SMALL_INT = 0x80
};
#define SHORT_STRING_MAX 63

/* ---------------------------------------------------------------------------------------------- */
/* CRC-32, eight bytes a step (slicing-by-8); the tables are made once. */

static uint32_t crc_tables[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    uint32_t i, c;
    int k, s;
    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tables[0][i] = c;
    }
    for (i = 0; i < 256; i++)
        for (s = 1; s < 8; s++) crc_tables[s][i] = (crc_tables[s - 1][i] >> 8) ^ crc_tables[0][crc_tables[s - 1][i] & 0xff];
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t rtc_crc32(uint32_t crc, const void *data, size_t n) {
    const unsigned char *p = data;
    const uint32_t(*t)[256] = (const uint32_t(*)[256])crc_tables;
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n >= 8) {
        uint32_t one = le32(p) ^ crc, two = le32(p + 4);
        crc = t[7][one & 0xff] ^ t[6][(one >> 8) & 0xff] ^ t[5][(one >> 16) & 0xff] ^ t[4][one >> 24] ^
              t[3][two & 0xff] ^ t[2][(two >> 8) & 0xff] ^ t[1][(two >> 16) & 0xff] ^ t[0][two >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writing. The packer lives in a userdata whose __gc frees its buffers, so an error raised midway
 * (a function in the data, running out of memory) leaks nothing. */

typedef struct {
    unsigned char *data;
    size_t len, cap;
    /* The tables being written, outermost first: a table met again among them is a cycle. */
    const void *open[PACK_MAX_DEPTH];
} packer;

static void packer_free(packer *p) {
    free(p->data);
    p->data = NULL;
    p->len = p->cap = 0;
}

static int packer_gc(lua_State *L) {
    packer_free(luaL_checkudata(L, 1, PACKER_MT));
    return 0;
}

static void reserve(lua_State *L, packer *p, size_t extra) {
    size_t cap;
    unsigned char *d;
    if (extra <= p->cap - p->len) return;
    cap = p->cap ? p->cap : 4096;
    while (cap - p->len < extra) {
        if (cap > SIZE_MAX / 2) luaL_error(L, "rtcadmin.pack: out of memory");
        cap *= 2;
    }
    d = realloc(p->data, cap);
    if (!d) luaL_error(L, "rtcadmin.pack: out of memory");
    p->data = d;
    p->cap = cap;
}

static void put1(lua_State *L, packer *p, unsigned c) {
    reserve(L, p, 1);
    p->data[p->len++] = (unsigned char)c;
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void varint_at(unsigned char *d, uint64_t v) {
    while (v >= 0x80) {
        *d++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *d = (unsigned char)v;
}

static void putvar(lua_State *L, packer *p, uint64_t v) {
    size_t n = varint_len(v);
    reserve(L, p, n);
    varint_at(p->data + p->len, v);
    p->len += n;
}

static void putbytes(lua_State *L, packer *p, const void *s, size_t n) {
    reserve(L, p, n);
    if (n) memcpy(p->data + p->len, s, n);
    p->len += n;
}

static void put_int(lua_State *L, packer *p, int64_t v) {
    uint64_t u = (uint64_t)v;
    if (v >= 0 && v < 0x80) {
        put1(L, p, T_SMALL_INT | (unsigned)v);
        return;
    }
    put1(L, p, T_INT);
    putvar(L, p, (u << 1) ^ (0 - (u >> 63)));
}

static void put_float(lua_State *L, packer *p, double d) {
    unsigned char b[9];
    uint64_t u;
    int i;
    memcpy(&u, &d, sizeof u);
    b[0] = T_FLOAT;
    for (i = 0; i < 8; i++) b[1 + i] = (unsigned char)(u >> (8 * i));
    putbytes(L, p, b, sizeof b);
}

static void pack_number(lua_State *L, packer *p, int idx) {
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        put_int(L, p, (int64_t)lua_tointeger(L, idx));
        return;
    }
    put_float(L, p, (double)lua_tonumber(L, idx));
#else
    double d = (double)lua_tonumber(L, idx);
    if (d == floor(d) && fabs(d) <= 9007199254740992.0 && !(d == 0 && signbit(d)))
        put_int(L, p, (int64_t)d);
    else
        put_float(L, p, d);
#endif
}

/* Whether the key at idx is an integer in 1..n (an element of the array part written). */
static int array_key(lua_State *L, int idx, size_t n) {
    lua_Number d;
    if (lua_type(L, idx) != LUA_TNUMBER) return 0;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        return i >= 1 && (uint64_t)i <= (uint64_t)n;
    }
#endif
    d = lua_tonumber(L, idx);
    return d >= 1 && d <= (lua_Number)n && d == floor(d);
}

static void pack_value(lua_State *L, packer *p, int idx, int depth);

static void pack_table(lua_State *L, packer *p, int idx, int depth) {
    size_t n = lua_rawlen(L, idx), i, at, m = 0, w;
    const void *self = lua_topointer(L, idx);
    int k;
    if (depth >= PACK_MAX_DEPTH)
        luaL_error(L, "rtcadmin.pack: tables nested deeper than %d levels", PACK_MAX_DEPTH);
    for (k = 0; k < depth; k++)
        if (p->open[k] == self) luaL_error(L, "rtcadmin.pack: a table contains itself (cycles cannot be packed)");
    p->open[depth] = self;
    if (!lua_checkstack(L, 4)) luaL_error(L, "rtcadmin.pack: out of stack");
    put1(L, p, T_TABLE);
    putvar(L, p, n);
    at = p->len;
    put1(L, p, 0); /* the number of pairs, filled in below */
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i);
        pack_value(L, p, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (!array_key(L, -2, n)) {
            pack_value(L, p, lua_gettop(L) - 1, depth + 1);
            pack_value(L, p, lua_gettop(L), depth + 1);
            m++;
        }
        lua_pop(L, 1);
    }
    w = varint_len(m);
    if (w > 1) { /* more than 127 pairs: make room for the longer count */
        reserve(L, p, w - 1);
        memmove(p->data + at + w, p->data + at + 1, p->len - at - 1);
        p->len += w - 1;
    }
    varint_at(p->data + at, m);
}

static void pack_value(lua_State *L, packer *p, int idx, int depth) {
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put1(L, p, T_NIL); break;
    case LUA_TBOOLEAN: put1(L, p, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER: pack_number(L, p, idx); break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (n <= SHORT_STRING_MAX) {
            put1(L, p, T_SHORT_STRING | (unsigned)n);
        } else {
            put1(L, p, T_STRING);
            putvar(L, p, n);
        }
        putbytes(L, p, s, n);
        break;
    }
    case LUA_TTABLE: pack_table(L, p, idx, depth); break;
    default: luaL_error(L, "rtcadmin.pack: cannot pack a %s (plain data only)", luaL_typename(L, idx));
    }
}

static int l_pack(lua_State *L) {
    packer *p;
    size_t payload;
    int i;
    uint32_t crc;
    unsigned char *h;
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    p = lua_newuserdatauv(L, sizeof *p, 0);
    p->data = NULL;
    p->len = p->cap = 0;
    luaL_getmetatable(L, PACKER_MT);
    lua_setmetatable(L, -2);
    reserve(L, p, RTC_PACK_HEADER);
    p->len = RTC_PACK_HEADER;
    pack_value(L, p, 1, 0);
    payload = p->len - RTC_PACK_HEADER;
    h = p->data;
    memcpy(h, RTC_PACK_MAGIC, 4);
    h[4] = RTC_PACK_VERSION;
    h[5] = LUA_VERSION_NUM >= 503 ? 1 : 0; /* flags: bit 0, written where integers are a subtype */
    for (i = 0; i < 8; i++) h[6 + i] = (unsigned char)((uint64_t)payload >> (8 * i));
    crc = rtc_crc32(0, p->data, p->len);
    reserve(L, p, RTC_PACK_TRAILER);
    for (i = 0; i < 4; i++) p->data[p->len++] = (unsigned char)(crc >> (8 * i));
    lua_pushlstring(L, (const char *)p->data, p->len);
    packer_free(p);
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Reading. */

typedef struct {
    const unsigned char *start, *p, *end;
    size_t pending; /* bytes the tables being read still need at least (one per element) */
} reader;

static int bad(lua_State *L, const reader *r, const char *what) {
    return luaL_error(L, "rtcadmin.unpack: %s at byte %d", what, (int)(r->p - r->start));
}

static uint64_t getvar(lua_State *L, reader *r) {
    uint64_t v = 0;
    int shift = 0;
    for (;;) {
        unsigned c;
        if (r->p >= r->end) bad(L, r, "truncated number");
        c = *r->p++;
        if (shift == 63 && c > 1) bad(L, r, "number out of range");
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
        shift += 7;
        if (shift > 63) bad(L, r, "number out of range");
    }
}

static void push_int(lua_State *L, int64_t v) {
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)v);
#else
    lua_pushnumber(L, (lua_Number)v);
#endif
}

static size_t left(const reader *r) { return (size_t)(r->end - r->p); }

static void read_value(lua_State *L, reader *r, int depth);

static void read_table(lua_State *L, reader *r, int depth) {
    uint64_t n, m, i;
    int t;
    if (depth >= PACK_MAX_DEPTH) bad(L, r, "tables nested too deep");
    n = getvar(L, r);
    m = getvar(L, r);
    /* Each element takes at least one byte, each pair two: what is announced must fit in what is
     * left, besides what the enclosing tables still need. */
    if (n > left(r) || m > left(r) / 2 || n + 2 * m > left(r) || r->pending > left(r) - n - 2 * m || n > INT_MAX ||
        m > INT_MAX)
        bad(L, r, "table larger than the data");
    if (!lua_checkstack(L, 4)) luaL_error(L, "rtcadmin.unpack: out of stack");
    r->pending += n + 2 * m;
    lua_createtable(L, (int)n, (int)m);
    t = lua_gettop(L);
    for (i = 1; i <= n; i++) {
        r->pending--;
        read_value(L, r, depth + 1);
        if (lua_isnil(L, -1))
            lua_pop(L, 1);
        else
            lua_rawseti(L, t, (lua_Integer)i);
    }
    for (i = 0; i < m; i++) {
        r->pending -= 2;
        read_value(L, r, depth + 1);
        if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1)))
            bad(L, r, "nil or NaN table key");
        read_value(L, r, depth + 1);
        lua_rawset(L, t);
    }
}

static void read_string(lua_State *L, reader *r, size_t n) {
    if (n > left(r)) bad(L, r, "truncated string");
    lua_pushlstring(L, (const char *)r->p, n);
    r->p += n;
}

static void read_value(lua_State *L, reader *r, int depth) {
    unsigned c;
    if (r->p >= r->end) bad(L, r, "truncated value");
    c = *r->p++;
    if (c >= T_SMALL_INT) {
        push_int(L, (int64_t)(c & 0x7f));
        return;
    }
    if (c >= T_SHORT_STRING) {
        read_string(L, r, c & SHORT_STRING_MAX);
        return;
    }
    switch (c) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT: {
        uint64_t z = getvar(L, r);
        push_int(L, (int64_t)((z >> 1) ^ (0 - (z & 1))));
        break;
    }
    case T_FLOAT: {
        uint64_t u = 0;
        double d;
        int i;
        if (left(r) < 8) bad(L, r, "truncated number");
        for (i = 0; i < 8; i++) u |= (uint64_t)r->p[i] << (8 * i);
        r->p += 8;
        memcpy(&d, &u, sizeof d);
        lua_pushnumber(L, (lua_Number)d);
        break;
    }
    case T_STRING: {
        uint64_t len = getvar(L, r);
        if (len > (uint64_t)left(r)) bad(L, r, "truncated string");
        read_string(L, r, (size_t)len);
        break;
    }
    case T_TABLE: read_table(L, r, depth); break;
    default: r->p--; bad(L, r, "unknown tag");
    }
}

static int unpack_protected(lua_State *L) {
    size_t n, payload = 0;
    const unsigned char *s = (const unsigned char *)lua_tolstring(L, 1, &n);
    reader r;
    int i;
    if (n > (size_t)INT_MAX) return luaL_error(L, "rtcadmin.unpack: %s", "more than 2 GiB of data");
    if (n < 4 || memcmp(s, RTC_PACK_MAGIC, 4) != 0)
        return luaL_error(L, "rtcadmin.unpack: not packed data (no %s header)", RTC_PACK_MAGIC);
    if (n < RTC_PACK_HEADER + RTC_PACK_TRAILER)
        return luaL_error(L, "rtcadmin.unpack: truncated: %d bytes", (int)n);
    if (s[4] != RTC_PACK_VERSION)
        return luaL_error(L, "rtcadmin.unpack: format version %d, this rtcadmin reads version %d", (int)s[4],
                          RTC_PACK_VERSION);
    if (s[5] & ~RTC_PACK_FLAGS_KNOWN) return luaL_error(L, "rtcadmin.unpack: unknown flags %d", (int)s[5]);
    for (i = 7; i >= 0; i--) {
        if (payload > (SIZE_MAX >> 8)) return luaL_error(L, "rtcadmin.unpack: truncated: bad length");
        payload = (payload << 8) | s[6 + i];
    }
    if (payload != n - RTC_PACK_HEADER - RTC_PACK_TRAILER) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: %zu bytes, the header says %.0f",
                 payload > n - RTC_PACK_HEADER - RTC_PACK_TRAILER ? "truncated" : "wrong length", n,
                 (double)payload + RTC_PACK_HEADER + RTC_PACK_TRAILER);
        return luaL_error(L, "rtcadmin.unpack: %s", msg);
    }
    if (rtc_crc32(0, s, n - RTC_PACK_TRAILER) != le32(s + n - RTC_PACK_TRAILER))
        return luaL_error(L, "rtcadmin.unpack: checksum mismatch: the data is corrupt");
    lua_settop(L, 1);
    r.start = s;
    r.p = s + RTC_PACK_HEADER;
    r.end = s + n - RTC_PACK_TRAILER;
    r.pending = 0;
    read_value(L, &r, 0);
    if (r.p != r.end) return bad(L, &r, "trailing bytes after the value");
    return 1;
}

/* rtcadmin.unpack(s) -> value, or nil, err when s is not packed data (corrupt, truncated, another
 * format or version): what is wrong with the data is a runtime failure, reported, never raised. */
static int l_unpack(lua_State *L) {
    luaL_checktype(L, 1, LUA_TSTRING);
    lua_settop(L, 1);
    lua_pushcfunction(L, unpack_protected);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            lua_pushliteral(L, "rtcadmin.unpack: cannot read the data");
        }
        return 2;
    }
    return 1;
}

void rtc_pack_register(lua_State *L) {
    if (luaL_newmetatable(L, PACKER_MT)) {
        lua_pushcfunction(L, packer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_pack);
    lua_setfield(L, -2, "pack");
    lua_pushcfunction(L, l_unpack);
    lua_setfield(L, -2, "unpack");
}
