/* rtcadmin.view_index: the __index of the rule sandbox's read-only views of events.
 *
 * Conditions read an event through a view (an empty table or userdata whose metatable refuses
 * writes); a table inside the event is handed out as a view of its own. That takes an __index
 * function rather than the event itself as __index, and on the PUC interpreters a Lua function
 * called as a metamethod re-enters the VM: a C function costs a fraction of that on every field a
 * condition reads. */
#include "compat.h"
#include "rtcadmin.h"

/* index(view, key): holder[1][key], or wrap(value) when that is a table. Upvalues: the holder
 * (a table whose [1] is the table shown) and wrap (a function making a table's view). */
static int view_index(lua_State *L) {
    lua_rawgeti(L, lua_upvalueindex(1), 1);
    lua_pushvalue(L, 2);
    lua_gettable(L, -2);
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_insert(L, -2);
        lua_call(L, 1, 1);
    }
    return 1;
}

/* rtcadmin.view_index(holder, wrap) -> index */
static int l_view_index(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_pushcclosure(L, view_index, 2);
    return 1;
}

void rtc_view_register(lua_State *L) {
    lua_pushcfunction(L, l_view_index);
    lua_setfield(L, -2, "view_index");
}
