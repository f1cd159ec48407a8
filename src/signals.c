/* rtcadmin.catch_signals and rtcadmin.caught_signal: a long-running command (`rtcadmin run --from`)
 * finishes its batch and stops cleanly on SIGTERM or SIGINT instead of dying in the middle of it.
 * The handler only records the signal; the Lua loop looks between batches. The flag is the one piece
 * of process-wide state a signal handler needs; the handlers are installed once (pthread_once). */
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "redis_lua.h"

static volatile sig_atomic_t caught = 0;
static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void on_signal(int sig) { caught = sig; }

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* rtcadmin.catch_signals(): from now on SIGTERM and SIGINT are recorded, not fatal. */
static int l_catch_signals(lua_State *L) {
    (void)L;
    pthread_once(&installed, install);
    return 0;
}

/* rtcadmin.caught_signal() -> "SIGTERM" | "SIGINT" | nil: the last signal caught. */
static int l_caught_signal(lua_State *L) {
    int sig = caught;
    if (sig == SIGTERM) lua_pushliteral(L, "SIGTERM");
    else if (sig == SIGINT) lua_pushliteral(L, "SIGINT");
    else lua_pushnil(L);
    return 1;
}

void rtc_signals_register(lua_State *L) {
    lua_pushcfunction(L, l_catch_signals);
    lua_setfield(L, -2, "catch_signals");
    lua_pushcfunction(L, l_caught_signal);
    lua_setfield(L, -2, "caught_signal");
}
