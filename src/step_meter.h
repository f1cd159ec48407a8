/* A step budget kept in a Lua table, for C code that works on behalf of budgeted Lua code (the
 * sandbox's rule conditions: see lua/rtcadmin/sandbox.lua).
 *
 * budget[1] is the allowance: how many steps may still be taken before on_exhausted is called (a
 * number; 2^53 or more, math.huge included, means unlimited). The C code counts down a copy and
 * writes it back whenever Lua code may run or see it: before calling a Lua function, before raising
 * an error and when it returns. After a Lua function returns it reads budget[1] again, so the
 * countdown woven into rule code and this one draw on the same allowance. When the allowance is
 * spent it writes budget[1] = -1 and calls on_exhausted(), which normally raises; if it returns,
 * budget[1] is read again as the new allowance (the sandbox's step() refills it that way). */
#ifndef RTCADMIN_STEP_METER_H
#define RTCADMIN_STEP_METER_H

#include <stdint.h>

#include "compat.h"

typedef struct {
    lua_State *L;
    int budget;    /* stack index (or upvalue index) of the budget table */
    int handler;   /* stack index (or upvalue index) of on_exhausted */
    int unlimited; /* budget[1] was 2^53 or more: nothing is written back */
    int64_t left;  /* steps that may still be taken */
} rtc_meter;

/* Starts counting from budget[1] (also after a Lua function has run). */
void rtc_meter_read(rtc_meter *m);
/* Writes what is left to budget[1] (nothing when unlimited). */
void rtc_meter_write(const rtc_meter *m);
/* Called when m->left has gone below 0: on_exhausted until the steps taken are covered. */
void rtc_meter_overdrawn(rtc_meter *m);

static inline void rtc_meter_charge(rtc_meter *m, int64_t steps) {
    m->left -= steps;
    if (m->left < 0) rtc_meter_overdrawn(m);
}

#endif
