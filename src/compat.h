/* The one place that bridges Lua 5.1 (and LuaJIT), 5.2, 5.3 and 5.4. */
#ifndef RTCADMIN_COMPAT_H
#define RTCADMIN_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen((L), (i))
#endif

/* PUC Lua 5.1 only: LuaJIT 2.1 already has these 5.2 functions (and defines luaL_newlib). */
#if LUA_VERSION_NUM < 502 && !defined(luaL_newlib)
#define luaL_newlib(L, l) (lua_newtable(L), luaL_register((L), NULL, (l)))
static inline void rtc_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
    int i;
    for (; l->name; l++) {
        for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define luaL_setfuncs rtc_setfuncs
static inline void *rtc_testudata(lua_State *L, int i, const char *tname) {
    void *p = lua_touserdata(L, i);
    if (p && lua_getmetatable(L, i)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2)) p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#define luaL_testudata rtc_testudata
#endif

#if LUA_VERSION_NUM < 503
static inline int rtc_isinteger(lua_State *L, int i) {
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER) return 0;
    n = lua_tonumber(L, i);
    return n == (lua_Number)(long long)n;
}
#define lua_isinteger rtc_isinteger
#endif

#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))
#endif

/* One Lua value (a table) attached to a userdata: uservalue 1 in 5.4, the uservalue in 5.2/5.3, the
 * environment in 5.1. Pops the table. */
#if LUA_VERSION_NUM >= 504
#define rtc_setuservalue(L, i) ((void)lua_setiuservalue((L), (i), 1))
#elif LUA_VERSION_NUM >= 502
#define rtc_setuservalue(L, i) lua_setuservalue((L), (i))
#else
#define rtc_setuservalue(L, i) ((void)lua_setfenv((L), (i)))
#endif

#if LUA_VERSION_NUM < 502
static inline int rtc_absindex(lua_State *L, int i) {
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex rtc_absindex
#endif

/* t[k] without metamethods: option and argument tables are read as plain tables. A value an __index
 * made up is anchored nowhere once popped, so a string pointer kept from it would dangle (and the
 * metamethod would run Lua code in the middle of a method). Pushes the value; returns its type. */
static inline int rtc_getfield(lua_State *L, int t, const char *k) {
    t = lua_absindex(L, t);
    lua_pushstring(L, k);
    lua_rawget(L, t);
    return lua_type(L, -1);
}

/* Integral number as long long; 0 when not integral (check lua_isinteger or rtc_integral first). */
static inline int rtc_integral(lua_State *L, int i, long long *out) {
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER) return 0;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, i)) {
        *out = (long long)lua_tointeger(L, i);
        return 1;
    }
#endif
    n = lua_tonumber(L, i);
    if (n != n || n < -9007199254740992.0 || n > 9007199254740992.0 || n != (lua_Number)(long long)n) return 0;
    *out = (long long)n;
    return 1;
}

#endif
