/* Shared by the libFuzzer harnesses: one Lua state per process with rtcadmin loaded (linked in, not
 * dlopen'd) and a client that never connects (its endpoint is a closed local port, limiter off). */
#ifndef RTCADMIN_FUZZ_LUA_H
#define RTCADMIN_FUZZ_LUA_H

#include <stdio.h>
#include <stdlib.h>

#include "client_lua.h"
#include "response.h"
#include "rtcadmin.h"

int luaopen_rtcadmin(lua_State *L);

/* A finding: print and abort so libFuzzer records the input. */
#define FUZZ_CHECK(cond, ...)                                          \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "invariant failed at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                              \
            fprintf(stderr, "\n");                                     \
            abort();                                                   \
        }                                                              \
    } while (0)

/* The state, with the client in the registry under "fuzz.client" and rtcadmin in package.loaded. */
static inline lua_State *fuzz_state(void) {
    static lua_State *L;
    if (L) return L;
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "rtcadmin", luaopen_rtcadmin, 0);
    lua_getfield(L, -1, "client");
    lua_createtable(L, 0, 5);
    lua_pushliteral(L, "AKLTfuzzAccessKey000001");
    lua_setfield(L, -2, "access_key");
    lua_pushliteral(L, "RnV6elNlY3JldEtleQ==");
    lua_setfield(L, -2, "secret_key");
    lua_pushliteral(L, "http://127.0.0.1:9");
    lua_setfield(L, -2, "endpoint");
    lua_pushliteral(L, "none");
    lua_setfield(L, -2, "limiter");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz setup: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.client");
    lua_settop(L, 0);
    return L;
}

static inline rtc_client *fuzz_client(lua_State *L) {
    rtc_client *c;
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.client");
    c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return c;
}

/* Loads the Lua checker file once (tests/fuzz/<name>.lua, which returns a function), then calls it
 * with the client and the input as a string. Anything it raises is a finding. */
static inline void fuzz_run_checker(const char *name, const uint8_t *data, size_t size) {
    lua_State *L = fuzz_state();
    lua_getfield(L, LUA_REGISTRYINDEX, name);
    if (lua_isnil(L, -1)) {
        char path[1024];
        lua_pop(L, 1);
        snprintf(path, sizeof path, "%s/%s.lua", FUZZ_DIR, name);
        if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
            fprintf(stderr, "fuzz checker %s: %s\n", path, lua_tostring(L, -1));
            abort();
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, name);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.client");
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
}

#endif
