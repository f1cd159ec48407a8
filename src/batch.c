/* The bulk driver: many calls over several keep-alive connections (libcurl multi), each call's state
 * machine (call.c) paced, retried and timed like a single call's, results in input order. A call holds
 * a connection from its limiter slot until its answer; in a retry's backoff it holds none. */
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "client_lua.h"
#include "exchange.h"
#include "prepared.h"
#include "response.h"

typedef struct {
    rtc_api_call call;
    rtc_call k;
    int taken;         /* has had a connection */
    int done;
    int64_t wake;      /* in a backoff: when the next attempt is due; INT64_MAX while none is */
} batch_item;

typedef enum { SLOT_FREE, SLOT_WAITING, SLOT_ACTIVE } slot_state;

typedef struct {
    CURL *easy;
    slot_state state;
    int item;
    rtc_http_response resp;
    rtc_exchange x;
} batch_slot;

typedef struct {
    batch_item *items;
    batch_slot *slots;
    int nitems, nslots;
    long concurrency;
    rtc_client *c;
    CURLM *multi;        /* the client's, once the batch has started */
    /* While it runs: stack indices of results and progress (0: none), and its counts. */
    int results, progress, cursor, active, succeeded, failed;
    int64_t soonest;     /* the earliest time something is due (INT64_MAX: nothing but transfers) */
} batch_state;

/* Frees everything C-side: called when the batch ends (however it ends) and again by __gc, which then
 * finds nothing left. A transfer still under way is taken out of the multi handle first, which closes
 * its connection: left in the pool, an answer still on its way there would be read as the answer to
 * the next request sent on it. (The client's memory outlives this call even when the Lua state closes:
 * every finalizer runs before anything is freed.) */
static void batch_release(void *ud) {
    batch_state *b = ud;
    int i;
    for (i = 0; i < b->nslots; i++) {
        batch_slot *s = &b->slots[i];
        if (s->state == SLOT_ACTIVE) {
            if (b->multi && !b->c->closed) curl_multi_remove_handle(b->multi, s->easy);
            curl_slist_free_all(s->x.headers);
            s->x.headers = NULL;
        }
        if (s->easy) curl_easy_cleanup(s->easy);
        s->easy = NULL;
        if (s->state != SLOT_FREE) rtc_http_response_free(&s->resp);
        s->state = SLOT_FREE;
    }
    for (i = 0; i < b->nitems; i++) rtc_call_free(&b->items[i].k);
    free(b->slots);
    free(b->items);
    b->slots = NULL;
    b->items = NULL;
    b->nslots = b->nitems = 0;
    b->multi = NULL;
}

/* Only when the Lua state closes in the middle of a batch (os.exit(code, true) in progress). */
static int batch_gc(lua_State *L) {
    batch_release(lua_touserdata(L, 1));
    return 0;
}

/* Item i has ended: its `result, meta` or `nil, err`, on top, become results[i] ({ok, result, meta} or
 * {ok = false, err}), and progress hears of it. */
static void settle(lua_State *L, batch_state *b, int i) {
    batch_item *it = &b->items[i];
    it->done = 1;
    if (!it->k.answered) rtc_push_call_end(L, &it->k);
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, it->k.ok);
    lua_setfield(L, -2, "ok");
    if (it->k.ok) {
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "result");
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "meta");
        b->succeeded++;
    } else {
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "err");
        b->failed++;
    }
    lua_rawseti(L, b->results, i + 1);
    lua_pop(L, 2);
    if (b->progress) {
        lua_pushvalue(L, b->progress);
        lua_pushinteger(L, b->succeeded + b->failed);
        lua_pushinteger(L, b->nitems);
        lua_pushinteger(L, i + 1);
        lua_rawgeti(L, b->results, i + 1);
        lua_call(L, 4, 0); /* an error in the callback propagates; the batch state's __gc cleans up */
    }
}

static void due_at(batch_state *b, int64_t t) {
    if (t < b->soonest) b->soonest = t;
}

/* The next item to take a connection: the earliest due retry, else the next fresh one; -1 for none. */
static int next_item(batch_state *b, int64_t now) {
    int i, best = -1;
    for (i = 0; i < b->cursor; i++) {
        batch_item *it = &b->items[i];
        if (it->done || !it->taken || it->wake == INT64_MAX) continue;
        if (it->wake <= now && (best < 0 || it->wake < b->items[best].wake)) best = i;
        else if (it->wake > now) due_at(b, it->wake);
    }
    if (best >= 0) return best;
    if (b->cursor < b->nitems) return b->cursor++;
    return -1;
}

/* 1. Every free connection takes the next item due. */
static void assign_connections(lua_State *L, batch_state *b, int64_t now) {
    int i, item;
    for (i = 0; i < b->nslots; i++) {
        batch_slot *s = &b->slots[i];
        if (s->state != SLOT_FREE) continue;
        if ((item = next_item(b, now)) < 0) break;
        if (!s->easy && !(s->easy = rtc_transport_easy_new())) luaL_error(L, "out of memory");
        b->items[item].taken = 1;
        b->items[item].wake = INT64_MAX;
        s->item = item;
        s->state = SLOT_WAITING;
    }
}

/* 2. Each connection's item steps: waits for its slot, starts its transfer, or has ended unsent. */
static void advance_items(lua_State *L, batch_state *b) {
    int i;
    for (i = 0; i < b->nslots; i++) {
        batch_slot *s = &b->slots[i];
        batch_item *it;
        if (s->state != SLOT_WAITING) continue;
        it = &b->items[s->item];
        switch (rtc_call_step(&it->k, rtc_monotonic_ns())) {
        case RTC_CALL_WAIT:
            due_at(b, it->k.until);
            break;
        case RTC_CALL_SEND:
            rtc_http_response_init(&s->resp);
            s->state = SLOT_ACTIVE;
            if (rtc_exchange_setup(b->c->transport, &s->x, s->easy, &it->k.wire.http, &s->resp) ||
                curl_multi_add_handle(b->multi, s->easy) != CURLM_OK)
                luaL_error(L, "rtcadmin.batch: cannot start a transfer");
            b->active++;
            break;
        case RTC_CALL_DONE:
            s->state = SLOT_FREE;
            settle(L, b, s->item);
            break;
        case RTC_CALL_ERROR:
            luaL_error(L, "rtcadmin: cannot sign %s: %s", it->call.action, it->k.message);
        }
    }
}

static batch_slot *slot_of(batch_state *b, CURL *easy) {
    int i;
    for (i = 0; i < b->nslots; i++)
        if (b->slots[i].easy == easy && b->slots[i].state == SLOT_ACTIVE) return &b->slots[i];
    return NULL;
}

/* 3. Finished transfers are answered: their items end, or go back to wait out a retry's backoff. */
static void collect_answers(lua_State *L, batch_state *b) {
    CURLMsg *m;
    int still, msgs;
    curl_multi_perform(b->multi, &still);
    while ((m = curl_multi_info_read(b->multi, &msgs)) != NULL) {
        batch_slot *s;
        batch_item *it;
        rtc_answer ans;
        int64_t now;
        int rc;
        if (m->msg != CURLMSG_DONE || !(s = slot_of(b, m->easy_handle))) continue;
        curl_multi_remove_handle(b->multi, s->easy);
        b->active--;
        rc = rtc_exchange_finish(&s->x, m->data.result);
        it = &b->items[s->item];
        now = rtc_monotonic_ns();
        rtc_call_sent(&it->k);
        s->state = SLOT_FREE;
        ans = rtc_push_response(L, b->c, &it->call, rc, &s->resp, it->k.attempt, rtc_call_elapsed(&it->k, now));
        if (rtc_call_answer(&it->k, &ans, now) == RTC_CALL_DONE) {
            settle(L, b, s->item);
        } else {
            it->wake = it->k.until;
            lua_pop(L, 2);
        }
    }
}

/* 4. Sleeps until a transfer moves or the next item is due (at most 100 ms while transfers run). */
static void wait_for_work(batch_state *b) {
    int64_t now = rtc_monotonic_ns();
    int timeout_ms = 100;
    if (b->soonest != INT64_MAX) {
        int64_t ms = (b->soonest - now + 999999) / 1000000;
        timeout_ms = ms < 0 ? 0 : ms > 100 ? 100 : (int)ms;
    }
    if (b->active) curl_multi_poll(b->multi, NULL, 0, timeout_ms, NULL);
    else if (b->soonest != INT64_MAX && b->soonest > now) rtc_sleep_until(b->soonest);
}

/* The batch's C side for n prepared calls: items, connections, the client's multi handle. */
static void setup(lua_State *L, batch_state *b, int prepared, int n) {
    int i;
    long concurrency = b->concurrency > n ? (n ? n : 1) : b->concurrency;
    b->items = calloc((size_t)(n ? n : 1), sizeof *b->items);
    b->slots = calloc((size_t)concurrency, sizeof *b->slots);
    if (!b->items || !b->slots) luaL_error(L, "out of memory");
    b->nslots = (int)concurrency;
    for (i = 0; i < n; i++) {
        batch_item *it = &b->items[i];
        lua_rawgeti(L, prepared, i + 1);
        rtc_prepared_load(L, lua_gettop(L), &it->call); /* anchored in `prepared` for the whole batch */
        lua_pop(L, 1);
        rtc_call_init(&it->k, b->c, &it->call);
        it->wake = INT64_MAX;
        b->nitems = i + 1;
    }
    b->multi = rtc_transport_multi(b->c->transport, concurrency);
    if (!b->multi) luaL_error(L, "out of memory");
}

/* The batch itself, run by batch_run as the client's running method. Arguments: the client, calls,
 * opts, the batch state, progress (or nil); every call is checked before anything is sent. */
static int batch_body(lua_State *L) {
    batch_state *b = lua_touserdata(L, 4);
    int prepared, n = (int)lua_rawlen(L, 2);
    int64_t t_begin = rtc_monotonic_ns();

    lua_createtable(L, n, 0);
    prepared = lua_gettop(L);
    rtc_prepared_all(L, 2, prepared, n, "batch");
    lua_createtable(L, n, 0);
    b->results = lua_gettop(L);
    b->progress = lua_isnil(L, 5) ? 0 : 5;
    rtc_ensure_decoder(L);
    setup(L, b, prepared, n);

    while (b->succeeded + b->failed < n) {
        b->soonest = INT64_MAX;
        assign_connections(L, b, rtc_monotonic_ns());
        advance_items(L, b);
        collect_answers(L, b);
        if (b->succeeded + b->failed < n) wait_for_work(b);
    }
    lua_pushvalue(L, b->results);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, b->succeeded);
    lua_setfield(L, -2, "succeeded");
    lua_pushinteger(L, b->failed);
    lua_setfield(L, -2, "failed");
    lua_pushnumber(L, (lua_Number)(rtc_monotonic_ns() - t_begin) / 1e9);
    lua_setfield(L, -2, "elapsed");
    return 2;
}

/* opts {progress = fn, concurrency = n} at index 3 -> the concurrency; progress into index 5. */
static long batch_options(lua_State *L, long concurrency) {
    if (lua_isnil(L, 3)) return concurrency;
    if (!lua_istable(L, 3)) rtc_argerror(L, "batch", "opts must be a table {progress = fn, concurrency = n}");
    lua_pushnil(L);
    while (lua_next(L, 3)) { /* a misspelt option must not be ignored */
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        lua_pop(L, 1);
        if (strcmp(k, "progress") != 0 && strcmp(k, "concurrency") != 0)
            rtc_argerror(L, "batch", "unknown option %s in opts (progress, concurrency)", rtc_quote(L, k, strlen(k)));
    }
    rtc_getfield(L, 3, "concurrency");
    if (!lua_isnil(L, -1)) {
        long long v = 0;
        if (!rtc_integral(L, -1, &v) || v < 1 || v > 64)
            rtc_argerror(L, "batch", "opts.concurrency must be a whole number from 1 to 64");
        concurrency = (long)v;
    }
    lua_pop(L, 1);
    rtc_getfield(L, 3, "progress");
    if (!lua_isfunction(L, -1) && !lua_isnil(L, -1)) rtc_argerror(L, "batch", "opts.progress must be a function");
    lua_replace(L, 5);
    return concurrency;
}

/* Through client:exchanges(): the list of exchanges, one per call, instead of sending them. */
static int push_exchanges(lua_State *L) {
    int i, n = (int)lua_rawlen(L, 2);
    lua_createtable(L, n, 0);
    rtc_prepared_all(L, 2, lua_gettop(L), n, "batch");
    lua_createtable(L, n, 0);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        rtc_exchange_push(L, 1, -1);
        lua_rawseti(L, -3, i);
        lua_pop(L, 1);
    }
    return 1;
}

/* client:batch(calls, {progress = fn, concurrency = n}?) -> results, summary */
static int batch_run(lua_State *L) {
    rtc_client *c = rtc_check_idle_client(L, 1, "batch");
    batch_state *b;
    long concurrency;

    if (!lua_istable(L, 2)) rtc_argerror(L, "batch", "expects a list of calls, got %s", luaL_typename(L, 2));
    lua_settop(L, 3);
    lua_pushnil(L); /* 4: the batch state */
    lua_pushnil(L); /* 5: progress */
    concurrency = batch_options(L, c->concurrency);
    if (RTC_PREPARING(L)) return push_exchanges(L);

    b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    b->concurrency = concurrency;
    b->c = c;
    lua_newtable(L);
    lua_pushcfunction(L, batch_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_replace(L, 4);
    /* Protected: however the batch ends (an error from progress included) its transfers are stopped and
     * its memory freed before the error goes on, and the client is free for its next call. */
    return rtc_client_run(L, c, "batch", "its progress callback, a finalizer or a hook", batch_body, batch_release,
                          b);
}

/* client:kick_users(app_id, room_id, user_ids, opts?) -> results, summary */
static int kick_users(lua_State *L) {
    int i, n;
    rtc_check_idle_client(L, 1, "kick_users");
    if (!lua_istable(L, 4)) rtc_argerror(L, "kick_users", "bad argument 'user_ids': expected a list of user IDs");
    n = (int)lua_rawlen(L, 4);
    lua_settop(L, 5);
    lua_pushvalue(L, lua_upvalueindex(1)); /* the exchanges mode carries through */
    lua_pushcclosure(L, batch_run, 1);
    lua_pushvalue(L, 1);
    lua_createtable(L, n, 0);
    for (i = 1; i <= n; i++) {
        lua_createtable(L, 4, 0);
        lua_pushliteral(L, "kick_user");
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, 2);
        lua_rawseti(L, -2, 2);
        lua_pushvalue(L, 3);
        lua_rawseti(L, -2, 3);
        lua_rawgeti(L, 4, i);
        lua_rawseti(L, -2, 4);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, 5);
    lua_call(L, 3, 2);
    return 2;
}

/* client:ban_users{app_id, room_id?, user_ids, duration}, opts? -> results, summary */
static int ban_users(lua_State *L) {
    static const char *const fields[] = {"app_id", "room_id", "duration", NULL};
    int i, n, f;
    rtc_check_idle_client(L, 1, "ban_users");
    if (!lua_istable(L, 2)) rtc_argerror(L, "ban_users", "expects a table {app_id, room_id?, user_ids, duration}");
    lua_settop(L, 3);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        lua_pop(L, 1);
        if (strcmp(k, "user_ids") != 0 && strcmp(k, "app_id") != 0 && strcmp(k, "room_id") != 0 &&
            strcmp(k, "duration") != 0)
            rtc_argerror(L, "ban_users", "unknown field %s (expected app_id, room_id, user_ids, duration)",
                         rtc_quote(L, k, strlen(k)));
    }
    rtc_getfield(L, 2, "user_ids");
    if (!lua_istable(L, -1)) rtc_argerror(L, "ban_users", "bad argument 'user_ids': expected a list of user IDs");
    n = (int)lua_rawlen(L, -1);
    lua_pushvalue(L, lua_upvalueindex(1)); /* the exchanges mode carries through */
    lua_pushcclosure(L, batch_run, 1);
    lua_pushvalue(L, 1);
    lua_createtable(L, n, 0);
    for (i = 1; i <= n; i++) {
        lua_createtable(L, 2, 0);
        lua_pushliteral(L, "ban_user");
        lua_rawseti(L, -2, 1);
        lua_createtable(L, 0, 4);
        for (f = 0; fields[f]; f++) {
            rtc_getfield(L, 2, fields[f]);
            lua_setfield(L, -2, fields[f]);
        }
        lua_rawgeti(L, 4, i);
        lua_setfield(L, -2, "user_id");
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, 3);
    lua_call(L, 3, 2);
    return 2;
}

/* client:exchanges(method, args...) -> one exchange per call of batch, kick_users or ban_users, every
 * argument checked before anything is returned. */
static int client_exchanges(lua_State *L) {
    int n = lua_gettop(L), i;
    const luaL_Reg *m;
    const char *name;
    rtc_check_idle_client(L, 1, "exchanges");
    name = luaL_checkstring(L, 2);
    for (m = rtc_batch_methods; m->name; m++)
        if (strcmp(m->name, name) == 0) break;
    if (!m->name)
        return rtc_argerror(L, "exchanges", "unknown bulk method %s (batch, kick_users, ban_users)",
                            rtc_quote(L, name, lua_rawlen(L, 2)));
    lua_pushboolean(L, 1);
    lua_pushcclosure(L, m->func, 1);
    lua_pushvalue(L, 1);
    for (i = 3; i <= n; i++) lua_pushvalue(L, i);
    lua_call(L, n - 1, 1);
    return 1;
}

const luaL_Reg rtc_batch_methods[] = {
    {"batch", batch_run}, {"kick_users", kick_users}, {"ban_users", ban_users}, {NULL, NULL}};

void rtc_batch_register(lua_State *L) {
    static const luaL_Reg more[] = {{"exchanges", client_exchanges}, {NULL, NULL}};
    rtc_client_add_methods(L, rtc_batch_methods);
    rtc_client_add_methods(L, more);
}
