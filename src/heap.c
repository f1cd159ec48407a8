/* rtcadmin.heap_budget, heap_budgeter: accounting of the Lua heap and an optional ceiling on its
 * growth.
 *
 * The policy engine runs moderators' rule code in a sandbox. An instruction budget (checks woven
 * into rule code) stops loops, but one instruction can allocate gigabytes (`s = s .. s`,
 * string.rep), so memory has to be refused where it is allocated: this wraps the state's
 * allocator, counts the bytes in use, and while a budget is armed refuses any growth beyond it.
 * Lua turns the refusal into a catchable "not enough memory" error after an emergency collection.
 * Shrinks and frees are never refused (Lua assumes they cannot fail). */
#include "compat.h"
#include "rtcadmin.h"

#define HEAP_GUARD_MT "rtcadmin.heap_guard"
#define HEAP_GUARD_ANCHOR "rtcadmin.heap_guard.anchor"

typedef struct {
    lua_Alloc base;
    void *base_ud;
    size_t used;  /* bytes the state holds, as its allocator sees them */
    size_t limit; /* 0: no ceiling */
} heap_guard;

static void *guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    heap_guard *g = ud;
    size_t old = ptr ? osize : 0; /* for a new block osize is the object's type, not a size */
    void *p;
    if (nsize > old && g->limit && g->used + (nsize - old) > g->limit) return NULL;
    p = g->base(g->base_ud, ptr, osize, nsize);
    if (p || nsize == 0) g->used = (g->used > old ? g->used - old : 0) + nsize;
    return p;
}

/* Runs when the state closes (the anchor lives in the registry): hand the allocator back first,
 * so the frees that follow never touch the guard. */
static int guard_gc(lua_State *L) {
    heap_guard **gp = luaL_checkudata(L, 1, HEAP_GUARD_MT);
    heap_guard *g = *gp;
    void *ud;
    if (!g) return 0;
    *gp = NULL;
    if (lua_getallocf(L, &ud) == guard_alloc && ud == g) lua_setallocf(L, g->base, g->base_ud);
    g->base(g->base_ud, g, sizeof *g, 0);
    return 0;
}

static heap_guard *guard_get(lua_State *L) {
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    heap_guard **gp, *g;
    if (f == guard_alloc) return ud;
    gp = lua_newuserdatauv(L, sizeof *gp, 0);
    *gp = NULL;
    if (luaL_newmetatable(L, HEAP_GUARD_MT)) {
        lua_pushcfunction(L, guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    g = f(ud, NULL, 0, sizeof *g);
    if (!g) luaL_error(L, "rtcadmin.heap_budget: out of memory");
    g->base = f;
    g->base_ud = ud;
    g->limit = 0;
    g->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    *gp = g;
    lua_setfield(L, LUA_REGISTRYINDEX, HEAP_GUARD_ANCHOR); /* anchors it until the state closes */
    lua_setallocf(L, guard_alloc, g);
    return g;
}

/* From now on the heap may grow by at most `bytes`; 0 lifts the ceiling. */
static void guard_limit(heap_guard *g, size_t bytes) {
    g->limit = bytes ? g->used + bytes : 0;
}

/* rtcadmin.heap_budget(bytes) -> bytes in use. From now on the heap may grow by at most `bytes`;
 * 0 or nil lifts the ceiling. */
static int l_heap_budget(lua_State *L) {
    lua_Integer budget = luaL_optinteger(L, 1, 0);
    heap_guard *g;
    luaL_argcheck(L, budget >= 0, 1, "rtcadmin.heap_budget: expected bytes >= 0");
    g = guard_get(L);
    guard_limit(g, (size_t)budget);
    lua_pushinteger(L, (lua_Integer)g->used);
    return 1;
}

/* rtcadmin.heap_budgeter(bytes) -> arm, lift: heap_budget(bytes) and heap_budget(0) as two
 * functions of no arguments, for a caller that sets and lifts the same budget around every call
 * into rule code (the policy engine does, twice per event): they skip the argument checks and the
 * allocator lookup. */
typedef struct {
    heap_guard *g; /* lives as long as the state */
    size_t bytes;
} heap_switch;

static int l_heap_arm(lua_State *L) {
    heap_switch *s = lua_touserdata(L, lua_upvalueindex(1));
    guard_limit(s->g, s->bytes);
    return 0;
}

static int l_heap_lift(lua_State *L) {
    heap_switch *s = lua_touserdata(L, lua_upvalueindex(1));
    guard_limit(s->g, 0);
    return 0;
}

static int l_heap_budgeter(lua_State *L) {
    lua_Integer bytes = luaL_checkinteger(L, 1);
    heap_switch *s;
    luaL_argcheck(L, bytes > 0, 1, "rtcadmin.heap_budgeter: expected bytes > 0");
    s = lua_newuserdatauv(L, sizeof *s, 0);
    s->g = guard_get(L);
    s->bytes = (size_t)bytes;
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_heap_arm, 1);
    lua_insert(L, -2);
    lua_pushcclosure(L, l_heap_lift, 1);
    return 2;
}

void rtc_heap_register(lua_State *L) {
    lua_pushcfunction(L, l_heap_budget);
    lua_setfield(L, -2, "heap_budget");
    lua_pushcfunction(L, l_heap_budgeter);
    lua_setfield(L, -2, "heap_budgeter");
}
