/* rtcadmin.pattern_functions(budget, on_exhausted) -> {find =, match =, gmatch =, gsub =}
 *
 * string.find, string.match, string.gmatch and string.gsub as the Lua the module is built for has
 * them (arguments, results and errors alike), on the budgeted matcher of pattern_match.c: each call
 * counts its steps against budget[1] and calls on_exhausted when they are spent (step_meter.h), so
 * a pattern in rule code cannot run for minutes inside C.
 *
 * Steps beyond the matcher's own (pattern_match.c): a plain search (find with `plain`, or a
 * pattern without special characters) costs 1 + (subject bytes / 16) * (1 + sought bytes / 16),
 * charged before it starts; gsub one per replacement and one per 16 bytes of a replacement
 * string. */
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "pattern.h"
#include "rtcadmin.h"

/* Every function here, and gmatch's iterators, hold the budget table and on_exhausted as upvalues
 * 1 and 2. */
#define BUDGET lua_upvalueindex(1)
#define HANDLER lua_upvalueindex(2)

/* The differences between Lua versions around the matcher (pattern.h has the matcher's own). */
#if LUA_VERSION_NUM >= 502
/* A search that would start past the end finds nothing; 5.1 and LuaJIT start it at the end. */
#define PAT_START_PAST_END_FAILS 1
/* In a replacement string '%' must be followed by a digit or '%'; 5.1 and LuaJIT keep the byte. */
#define PAT_STRICT_REPLACEMENT 1
#elif !defined(PAT_LUAJIT)
/* Lua 5.1 looks for special characters (to search as plain text) only up to the first NUL. */
#define PAT_SPECIALS_UP_TO_NUL 1
#endif
#if LUA_VERSION_NUM >= 504
/* gmatch(s, pattern, init) */
#define PAT_GMATCH_INIT 1
#endif
/* gsub and gmatch pass over an empty match right where the previous match ended (Lua 5.3.3 and
 * later: no replacement "between" the two). Before, it counted and the search went on a byte later. */
#if LUA_VERSION_NUM >= 504
#define PAT_SKIP_EMPTY_AFTER_MATCH 1
#elif LUA_VERSION_NUM == 503
#define PAT_SKIP_EMPTY_AFTER_MATCH (LUA_VERSION_RELEASE[0] >= '3')
#else
#define PAT_SKIP_EMPTY_AFTER_MATCH 0
#endif

#define uchar(c) ((unsigned char)(c))

int pat_error(pat_state *st, const char *fmt, ...) {
    lua_State *L = st->meter.L;
    va_list ap;
    rtc_meter_write(&st->meter);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", lua_tostring(L, -1));
}

static void meter_begin(rtc_meter *m, lua_State *L) {
    m->L = L;
    m->budget = BUDGET;
    m->handler = HANDLER;
    rtc_meter_read(m);
}

#ifdef PAT_LUAJIT
/* LuaJIT's string library reads a position as a 32-bit integer: a number out of that range (NaN
 * included) becomes INT32_MIN. */
static lua_Integer opt_position(lua_State *L, int arg, lua_Integer def) {
    lua_Number d;
    if (lua_isnoneornil(L, arg)) return def;
    d = luaL_checknumber(L, arg);
    return d >= -2147483648.0 && d < 2147483648.0 ? (lua_Integer)(int32_t)d : INT32_MIN;
}
#else
#define opt_position luaL_optinteger
#endif

/* The 0-based offset where a search begins, for the Lua position in argument `arg` (default 1,
 * negative from the end): more than ls when it begins past the end. */
static size_t start_offset(lua_State *L, int arg, size_t ls) {
    lua_Integer init = opt_position(L, arg, 1);
    size_t off;
    if (init > 0)
        off = (size_t)init - 1;
    else if (init == 0 || init < -(lua_Integer)ls)
        off = 0;
    else
        off = (size_t)((lua_Integer)ls + init);
#ifndef PAT_START_PAST_END_FAILS
    if (off > ls) off = ls;
#endif
    return off;
}

/* Pushes capture i of the match [s, e): the whole match for i == 0 when there are no captures. */
static void push_capture(pat_state *st, int i, const char *s, const char *e) {
    lua_State *L = st->meter.L;
    const pat_capture *cap;
    if (i >= st->level) {
        if (i != 0) {
#if LUA_VERSION_NUM >= 503
            pat_error(st, "invalid capture index %%%d", i + 1);
#else
            pat_error(st, "invalid capture index"); /* 5.1 and 5.2 name no index here */
#endif
        }
        lua_pushlstring(L, s, (size_t)(e - s));
        return;
    }
    cap = &st->capture[i];
    if (cap->len == PAT_CAP_POSITION) {
        lua_pushinteger(L, (lua_Integer)(cap->init - st->src) + 1);
    } else if (cap->len == PAT_CAP_OPEN) {
        pat_error(st, "unfinished capture");
    } else {
        lua_pushlstring(L, cap->init, (size_t)cap->len);
    }
}

/* Pushes the captures (or the whole match when there are none and s is not NULL); returns how many. */
static int push_captures(pat_state *st, const char *s, const char *e) {
    int i, n = st->level == 0 && s ? 1 : st->level;
    luaL_checkstack(st->meter.L, n, "too many captures");
    for (i = 0; i < n; i++) push_capture(st, i, s, e);
    return n;
}

/* Whether find must treat the pattern as a pattern: it has one of Lua's special characters. */
static int has_specials(const char *p, size_t lp) {
    size_t i;
#ifdef PAT_SPECIALS_UP_TO_NUL
    lp = strlen(p);
#endif
    for (i = 0; i < lp; i++) {
        switch (p[i]) {
        case '^': case '$': case '*': case '+': case '?': case '.': case '(': case '[': case '%': case '-':
            return 1;
        }
    }
    return 0;
}

/* What a plain search costs, charged before it starts: one step, and one per 16 bytes of the
 * subject for every 16 bytes of the text sought (a bound on the bytes memchr and memcmp look at). */
static int64_t plain_cost(size_t ls, size_t lp) {
    uint64_t per_text = 1 + (lp >> 4), most = UINT64_C(1) << 60;
    uint64_t blocks = ls >> 4;
    return (int64_t)(blocks > most / per_text ? most : 1 + blocks * per_text);
}

/* The first occurrence of [p, p + lp) in [s, s + ls), or NULL. */
static const char *find_text(const char *s, size_t ls, const char *p, size_t lp) {
    const char *q = s, *last;
    if (lp == 0) return s;
    if (lp > ls) return NULL;
    last = s + (ls - lp); /* the last place it could start */
    while (q <= last) {
        const char *hit = memchr(q, uchar(*p), (size_t)(last - q) + 1);
        if (!hit) return NULL;
        if (memcmp(hit + 1, p + 1, lp - 1) == 0) return hit;
        q = hit + 1;
    }
    return NULL;
}

/* find (find != 0) and match */
static int find_or_match(lua_State *L, int find) {
    size_t ls, lp, init;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *start, *e;
    pat_state st;
    init = start_offset(L, 3, ls);
    if (init > ls) {
        lua_pushnil(L);
        return 1;
    }
    meter_begin(&st.meter, L);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        rtc_meter_charge(&st.meter, plain_cost(ls, lp));
        rtc_meter_write(&st.meter);
        start = find_text(s + init, ls - init, p, lp);
        if (!start) {
            lua_pushnil(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(start - s) + 1);
        lua_pushinteger(L, (lua_Integer)(start - s + lp));
        return 2;
    }
    if (lp > 0 && *p == '^') {
        pat_init(&st, s, ls, p + 1, lp - 1);
        start = s + init;
        e = pat_match_at(&st, start);
        if (!e) start = NULL;
    } else {
        pat_init(&st, s, ls, p, lp);
        start = pat_search(&st, s + init, &e);
    }
    rtc_meter_write(&st.meter);
    if (!start) {
        lua_pushnil(L);
        return 1;
    }
    if (!find) return push_captures(&st, start, e);
    lua_pushinteger(L, (lua_Integer)(start - s) + 1);
    lua_pushinteger(L, (lua_Integer)(e - s));
    return push_captures(&st, NULL, NULL) + 2;
}

static int l_find(lua_State *L) { return find_or_match(L, 1); }
static int l_match(lua_State *L) { return find_or_match(L, 0); }

/* The first match at `from` or later. With skip_empty, an empty match at `from` does not count: it
 * would sit right where the previous match ended. */
static const char *next_match(pat_state *st, const char *from, int skip_empty, const char **e) {
    if (skip_empty) {
        const char *end = pat_match_at(st, from);
        if (end && end != from) {
            *e = end;
            return from;
        }
        if (from == st->src_end) return NULL;
        from++;
    }
    return pat_search(st, from, e);
}

/* A gmatch iterator's subject, pattern and where it goes on. The iterator also holds the subject
 * and the pattern themselves, which keeps their bytes where they are. On PUC Lua the iterator is
 * a C closure of gmatch_next with upvalues budget, on_exhausted, subject, pattern and this state;
 * on LuaJIT a Lua closure that calls gmatch_next(state, subject, pattern), see JIT_GLUE. */
#ifdef PAT_LUAJIT
#define GMATCH_STATE 1
#else
#define GMATCH_STATE lua_upvalueindex(5)
#endif
typedef struct {
    const char *s, *p;
    size_t ls, lp;
    size_t pos;      /* offset of the next search */
    int after_match; /* pos is where the previous match ended */
} gmatch_state;

static int gmatch_next(lua_State *L) {
    gmatch_state *gm = lua_touserdata(L, GMATCH_STATE);
    const char *s = gm->s, *start, *e;
    pat_state st;
    if (gm->pos > gm->ls) return 0;
    meter_begin(&st.meter, L);
    pat_init(&st, s, gm->ls, gm->p, gm->lp); /* no anchor: a leading '^' is a literal here */
    start = next_match(&st, s + gm->pos, PAT_SKIP_EMPTY_AFTER_MATCH && gm->after_match, &e);
    rtc_meter_write(&st.meter);
    if (!start) return 0;
    gm->after_match = 1;
    /* Without the skip, an empty match moves the next search on by a byte. */
    gm->pos = (size_t)(e - s) + (!PAT_SKIP_EMPTY_AFTER_MATCH && e == start);
    return push_captures(&st, start, e);
}

static int l_gmatch(lua_State *L) {
    size_t ls, lp, pos = 0;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    gmatch_state *gm;
#ifdef PAT_GMATCH_INIT
    pos = start_offset(L, 3, ls);
#endif
    lua_settop(L, 2);
    gm = lua_newuserdatauv(L, sizeof *gm, 0);
    gm->s = s;
    gm->ls = ls;
    gm->p = p;
    gm->lp = lp;
    gm->pos = pos;
    gm->after_match = 0;
#ifdef PAT_LUAJIT
    lua_pushvalue(L, lua_upvalueindex(3)); /* the glue's iterator maker */
    lua_insert(L, 1);
    lua_insert(L, 2);
    lua_call(L, 3, 1);
#else
    lua_pushvalue(L, BUDGET);
    lua_insert(L, 1);
    lua_pushvalue(L, HANDLER);
    lua_insert(L, 2);
    lua_pushcclosure(L, gmatch_next, 5);
#endif
    return 1;
}

#if defined(PAT_LUAJIT) || LUA_VERSION_NUM < 502
/* luaL_optint there: the integer cut to 32 bits, wrapping */
static lua_Integer max_replacements(lua_State *L, size_t ls) {
    uint32_t low = (uint32_t)((uint64_t)luaL_optinteger(L, 4, (lua_Integer)ls + 1) & 0xffffffffu);
    return low < 0x80000000u ? (lua_Integer)low : -(lua_Integer)(0x100000000u - (uint64_t)low);
}
#elif LUA_VERSION_NUM == 502
/* A size_t there: a negative count is a huge one. */
static lua_Integer max_replacements(lua_State *L, size_t ls) {
    lua_Integer n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    return n < 0 ? (lua_Integer)(~(size_t)0 >> 1) : n;
}
#else
static lua_Integer max_replacements(lua_State *L, size_t ls) { return luaL_optinteger(L, 4, (lua_Integer)ls + 1); }
#endif

/* Appends the replacement string (argument 3) for the match [s, e): %0-%9 are the match and its
 * captures, %% is '%'. */
static void add_replacement_string(pat_state *st, luaL_Buffer *b, const char *s, const char *e) {
    size_t l;
    const char *r = lua_tolstring(st->meter.L, 3, &l), *end = r + l;
    rtc_meter_charge(&st->meter, (int64_t)(l >> 4));
    while (r < end) {
        const char *pct = memchr(r, '%', (size_t)(end - r));
        int c;
        if (!pct) {
            luaL_addlstring(b, r, (size_t)(end - r));
            return;
        }
        luaL_addlstring(b, r, (size_t)(pct - r));
        c = pct + 1 < end ? uchar(pct[1]) : 0; /* a '%' at the end meets the string's closing NUL */
        if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (c >= '1' && c <= '9') {
            push_capture(st, c - '1', s, e);
            luaL_addvalue(b); /* a position capture is a number: added as its text */
        } else {
#ifdef PAT_STRICT_REPLACEMENT
            if (c != '%') pat_error(st, "invalid use of '%c' in replacement string", '%');
#endif
            luaL_addchar(b, (char)c);
        }
        r = pct + 2;
    }
}

/* Appends the replacement for the match [s, e) by the string, table or function in argument 3;
 * false or nil from a table or function keeps the match. Lua code that runs meanwhile (the
 * function, a table's __index) sees the budget and may spend from it. */
static void add_replacement(pat_state *st, luaL_Buffer *b, const char *s, const char *e, int tr) {
    lua_State *L = st->meter.L;
    rtc_meter_charge(&st->meter, 1);
    if (tr == LUA_TFUNCTION) {
        int n;
        lua_pushvalue(L, 3);
        n = push_captures(st, s, e);
        rtc_meter_write(&st->meter);
        lua_call(L, n, 1);
        rtc_meter_read(&st->meter);
    } else if (tr == LUA_TTABLE) {
        push_capture(st, 0, s, e);
        if (lua_getmetatable(L, 3)) {
            lua_pop(L, 1);
            rtc_meter_write(&st->meter);
            lua_gettable(L, 3);
            rtc_meter_read(&st->meter);
        } else {
            lua_rawget(L, 3);
        }
    } else {
        add_replacement_string(st, b, s, e);
        return;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        pat_error(st, "invalid replacement value (a %s)", luaL_typename(L, -1));
    } else {
        luaL_addvalue(b);
    }
}

static int l_gsub(lua_State *L) {
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max = max_replacements(L, ls), n = 0;
    int anchor = lp > 0 && *p == '^', after_match = 0;
    const char *cur = src;
    pat_state st;
    luaL_Buffer b;
#if LUA_VERSION_NUM >= 504
    luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                     "string/function/table");
#else
    luaL_argcheck(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                  "string/function/table expected");
#endif
    luaL_buffinit(L, &b);
    meter_begin(&st.meter, L);
    pat_init(&st, src, ls, p + anchor, lp - (size_t)anchor);
    while (n < max) {
        const char *start, *e;
        if (anchor) {
            e = pat_match_at(&st, cur);
            start = e ? cur : NULL;
        } else {
            start = next_match(&st, cur, PAT_SKIP_EMPTY_AFTER_MATCH && after_match, &e);
        }
        if (!start) break;
        luaL_addlstring(&b, cur, (size_t)(start - cur));
        n++;
        add_replacement(&st, &b, start, e, tr);
        after_match = 1;
        cur = e;
        if (!PAT_SKIP_EMPTY_AFTER_MATCH && e == start) { /* the byte after an empty match stays */
            if (start == st.src_end) break;
            luaL_addchar(&b, *start);
            cur = start + 1;
        }
        if (anchor) break;
    }
    luaL_addlstring(&b, cur, (size_t)(st.src_end - cur));
    rtc_meter_write(&st.meter);
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

/* Pushes a C closure of f with the budget table and on_exhausted (stack slots 1 and 2). */
static void push_metered(lua_State *L, lua_CFunction f) {
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, f, 2);
}

#ifdef PAT_LUAJIT
/* LuaJIT compiles a plain string.find into its traces, and specializes a loop's trace to the
 * iterator it calls: with a new C closure per gmatch call, every call would leave the trace and
 * compile another side trace, until LuaJIT gives up on the loop. So on LuaJIT find is this Lua
 * function, which sends plain searches to the stock string.find and charges the budget here, and
 * gmatch's iterators are Lua closures of one prototype calling one C function. Every call into C
 * or the stock find is a tail call, so errors name the caller's position as the stock ones do. */
static const char JIT_GLUE[] =
    "local c_find, c_next, s_find, rshift, budget, charge = ...\n"
    "local type = type\n"
    "-- pattern -> whether it holds no special character (for the last few hundred patterns)\n"
    "local literal, known = {}, 0\n"
    "local function is_literal(p)\n"
    "  local v = literal[p]\n"
    "  if v == nil then\n"
    "    v = not s_find(p, '[%^%$%*%+%?%.%(%[%%%-]')\n"
    "    if known >= 256 then literal, known = {}, 0 end\n"
    "    literal[p], known = v, known + 1\n"
    "  end\n"
    "  return v\n"
    "end\n"
    "local function find(...)\n"
    "  local s, p, _, plain = ...\n"
    "  local tp = type(p)\n"
    "  if plain or (tp == 'string' and is_literal(p)) then\n"
    "    local n, m = type(s) == 'string' and #s or 16, tp == 'string' and #p or 16\n"
    "    local cost = 1 + rshift(n, 4) * (1 + rshift(m, 4))\n"
    "    local left = budget[1]\n"
    "    if not (type(left) == 'number' and left >= 9007199254740992) then\n"
    "      local rest = type(left) == 'number' and left - left % 1 - cost\n"
    "      if rest and rest >= 0 then budget[1] = rest else charge(cost) end\n"
    "    end\n"
    "    return s_find(...)\n"
    "  end\n"
    "  return c_find(...)\n"
    "end\n"
    "local function iterator(state, s, p) return function() return c_next(state, s, p) end end\n"
    "return find, iterator\n";

/* charge(steps): the glue's plain find when the budget does not cover it. */
static int l_charge(lua_State *L) {
    lua_Number steps = luaL_checknumber(L, 1);
    rtc_meter m;
    meter_begin(&m, L);
    rtc_meter_charge(&m, steps < 1e18 ? (int64_t)steps : INT64_C(1000000000000000000));
    rtc_meter_write(&m);
    return 0;
}

/* Pushes package.loaded[lib][name] (the library as loaded, whatever the globals hold now). */
static void push_library_function(lua_State *L, const char *lib, const char *name) {
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, lib);
    if (!lua_istable(L, -1)) luaL_error(L, "rtcadmin.pattern_functions: the %s library is not loaded", lib);
    lua_getfield(L, -1, name);
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* Sets t.find and t.gmatch (t at stack slot 3) from the glue. */
static void set_jit_functions(lua_State *L) {
    if (luaL_loadbuffer(L, JIT_GLUE, sizeof JIT_GLUE - 1, "=rtcadmin.pattern_functions"))
        lua_error(L);
    push_metered(L, l_find);
    push_metered(L, gmatch_next);
    push_library_function(L, "string", "find");
    push_library_function(L, "bit", "rshift");
    lua_pushvalue(L, 1);
    push_metered(L, l_charge);
    lua_call(L, 6, 2);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, l_gmatch, 3);
    lua_setfield(L, 3, "gmatch");
    lua_pop(L, 1);
    lua_setfield(L, 3, "find");
}
#endif

/* rtcadmin.pattern_functions(budget, on_exhausted) */
static int l_pattern_functions(lua_State *L) {
    if (lua_type(L, 1) != LUA_TTABLE)
        rtc_argerror(L, "pattern_functions", "budget must be a table, got %s", luaL_typename(L, 1));
    if (lua_type(L, 2) != LUA_TFUNCTION)
        rtc_argerror(L, "pattern_functions", "on_exhausted must be a function, got %s", luaL_typename(L, 2));
    lua_settop(L, 2);
    lua_createtable(L, 0, 4);
    push_metered(L, l_match);
    lua_setfield(L, 3, "match");
    push_metered(L, l_gsub);
    lua_setfield(L, 3, "gsub");
#ifdef PAT_LUAJIT
    set_jit_functions(L);
#else
    push_metered(L, l_find);
    lua_setfield(L, 3, "find");
    push_metered(L, l_gmatch);
    lua_setfield(L, 3, "gmatch");
#endif
    return 1;
}

void rtc_pattern_register(lua_State *L) {
    lua_pushcfunction(L, l_pattern_functions);
    lua_setfield(L, -2, "pattern_functions");
}
