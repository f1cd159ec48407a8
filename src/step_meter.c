/* The step budget shared with rule code (step_meter.h). */
#include "step_meter.h"

/* Any allowance from 2^53 on counts as unlimited: a countdown in a Lua float stops changing there. */
#define UNLIMITED_FROM 9007199254740992.0
/* What an unlimited meter counts down from: more steps than any call takes. */
#define UNLIMITED_LEFT (INT64_C(1) << 62)

void rtc_meter_read(rtc_meter *m) {
    lua_State *L = m->L;
    lua_Number n;
#if LUA_VERSION_NUM >= 503
    if (lua_rawgeti(L, m->budget, 1) != LUA_TNUMBER)
#else
    lua_rawgeti(L, m->budget, 1);
    if (lua_type(L, -1) != LUA_TNUMBER)
#endif
        luaL_error(L, "rtcadmin pattern functions: budget[1] must be a number, got %s", luaL_typename(L, -1));
    n = lua_tonumber(L, -1);
    lua_pop(L, 1);
    m->unlimited = n >= UNLIMITED_FROM;
    /* A negative allowance (or NaN) is none: the next step calls on_exhausted. */
    m->left = m->unlimited ? UNLIMITED_LEFT : n > 0 ? (int64_t)n : 0;
}

void rtc_meter_write(const rtc_meter *m) {
    if (m->unlimited) return;
    lua_pushinteger(m->L, (lua_Integer)m->left);
    lua_rawseti(m->L, m->budget, 1);
}

/* The steps taken beyond the allowance are a debt. Each call of on_exhausted that returns allows
 * the step that made it, and what it refills pays the rest; while the debt is not paid, it is
 * called again, once per step, like the check woven into rule code. */
void rtc_meter_overdrawn(rtc_meter *m) {
    int64_t debt = -m->left;
    for (;;) {
        lua_pushinteger(m->L, -1);
        lua_rawseti(m->L, m->budget, 1);
        lua_pushvalue(m->L, m->handler);
        lua_call(m->L, 0, 0);
        rtc_meter_read(m);
        debt--;
        if (m->left >= debt) {
            m->left -= debt;
            return;
        }
        debt -= m->left;
    }
}
