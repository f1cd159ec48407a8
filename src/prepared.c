/* Prepared calls: what a batch or an exchange sends later, checked now. A method called through its
 * preparer (the same C function with upvalue true) returns its call as a table instead of sending it;
 * the table anchors every string the call uses while it is under way. */
#include <string.h>

#include "prepared.h"

#define PREPARERS_KEY "rtcadmin.preparers" /* registry: method name -> preparer */

void rtc_prepared_register(lua_State *L, const luaL_Reg *methods) {
    lua_getfield(L, LUA_REGISTRYINDEX, PREPARERS_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, PREPARERS_KEY);
    }
    for (; methods->name; methods++) {
        lua_pushboolean(L, 1);
        lua_pushcclosure(L, methods->func, 1);
        lua_setfield(L, -2, methods->name);
    }
    lua_pop(L, 1);
}

void rtc_prepared_find(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, PREPARERS_KEY);
    lua_pushvalue(L, idx);
    lua_rawget(L, -2);
    lua_remove(L, -2);
}

void rtc_prepared_push(lua_State *L, const rtc_api_call *call) {
    size_t i;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, call->action);
    lua_setfield(L, -2, "action");
    lua_pushstring(L, call->version);
    lua_setfield(L, -2, "version");
    lua_pushboolean(L, call->is_get);
    lua_setfield(L, -2, "get");
    if (call->body) {
        lua_pushlstring(L, call->body, call->body_len);
        lua_setfield(L, -2, "body");
    }
    lua_createtable(L, (int)call->nparams * 2, 0);
    for (i = 0; i < call->nparams; i++) {
        lua_pushlstring(L, call->params[i].key, call->params[i].key_len);
        lua_rawseti(L, -2, (int)(2 * i + 1));
        lua_pushlstring(L, call->params[i].value, call->params[i].value_len);
        lua_rawseti(L, -2, (int)(2 * i + 2));
    }
    lua_setfield(L, -2, "params");
}

void rtc_prepared_all(lua_State *L, int calls, int prepared, int n, const char *fname) {
    int i, j, len;
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, calls, i);
        if (!lua_istable(L, -1))
            rtc_argerror(L, fname, "calls[%d] must be a table {\"method\", args...}, got %s", i, luaL_typename(L, -1));
        lua_rawgeti(L, -1, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            rtc_argerror(L, fname, "calls[%d][1] must be a method name such as \"kick_user\"", i);
        rtc_prepared_find(L, -1);
        lua_remove(L, -2);
        if (!lua_isfunction(L, -1)) {
            lua_rawgeti(L, -2, 1);
            rtc_argerror(L, fname, "calls[%d]: unknown method %s", i, rtc_quote(L, lua_tostring(L, -1), lua_rawlen(L, -1)));
        }
        lua_pushvalue(L, 1); /* the client */
        len = (int)lua_rawlen(L, -3);
        luaL_checkstack(L, len + 4, "too many arguments in a batch call");
        for (j = 2; j <= len; j++) lua_rawgeti(L, -(j + 1), j); /* the call's table sits below fn, self, args */
        lua_call(L, len, 1);
        lua_rawseti(L, prepared, i);
        lua_pop(L, 1);
    }
}

void rtc_prepared_load(lua_State *L, int idx, rtc_api_call *call) {
    size_t k, n;
    rtc_kv *kv;
    lua_pushvalue(L, idx);
    lua_getfield(L, -1, "action");
    call->action = lua_tostring(L, -1);
    lua_getfield(L, -2, "version");
    call->version = lua_tostring(L, -1);
    lua_getfield(L, -3, "get");
    call->is_get = lua_toboolean(L, -1);
    lua_getfield(L, -4, "body");
    call->body = lua_tolstring(L, -1, &call->body_len);
    lua_getfield(L, -5, "params");
    n = lua_rawlen(L, -1) / 2;
    kv = lua_newuserdatauv(L, (n ? n : 1) * sizeof *kv, 0);
    lua_setfield(L, -7, "kv"); /* anchored by the prepared table */
    for (k = 0; k < n; k++) {
        lua_rawgeti(L, -1, (int)(2 * k + 1));
        kv[k].key = lua_tolstring(L, -1, &kv[k].key_len);
        lua_rawgeti(L, -2, (int)(2 * k + 2));
        kv[k].value = lua_tolstring(L, -1, &kv[k].value_len);
        lua_pop(L, 2);
    }
    call->params = kv;
    call->nparams = n;
    lua_pop(L, 6);
}
