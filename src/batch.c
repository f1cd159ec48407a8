/* Bulk moderation: many calls over several keep-alive connections (libcurl multi), paced by the
 * limiter, retried like single calls, answered in input order. */
#include <stdlib.h>
#include <string.h>

#include "rtcadmin.h"

typedef struct {
    rtc_api_call call;
    int attempts;
    int64_t first_ns;  /* when the first attempt started: the item's deadline counts from here */
    int64_t wake_ns;   /* earliest time for the next attempt (backoff); INT64_MAX while none is due */
    int done;
} batch_item;

typedef enum { SLOT_FREE, SLOT_WAITING, SLOT_ACTIVE } slot_state;

typedef struct {
    CURL *easy;
    slot_state state;
    int item;
    int64_t reserved_at;
    int64_t send_at;     /* limiter slot */
    int64_t started;
    rtc_wire_request wire;
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
        if (s->state != SLOT_FREE) {
            rtc_wire_free(&s->wire);
            rtc_http_response_free(&s->resp);
        }
        s->state = SLOT_FREE;
    }
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

/* Registers, for each method, a preparer: the same C function with upvalue true, which validates its
 * arguments like the method and returns the call instead of sending it. */
void rtc_batch_register(lua_State *L, const luaL_Reg *methods) {
    lua_newtable(L);
    for (; methods->name; methods++) {
        lua_pushboolean(L, 1);
        lua_pushcclosure(L, methods->func, 1);
        lua_setfield(L, -2, methods->name);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, RTC_PREPARERS_KEY);
}

/* calls[i] = {"method", args...} -> prepared[i]; raises on the first invalid call, before any traffic. */
static void prepare_all(lua_State *L, int calls, int prepared, int n) {
    int i, j, len;
    lua_getfield(L, LUA_REGISTRYINDEX, RTC_PREPARERS_KEY);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, calls, i);
        if (!lua_istable(L, -1))
            rtc_argerror(L, "batch", "calls[%d] must be a table {\"method\", args...}, got %s", i, luaL_typename(L, -1));
        lua_rawgeti(L, -1, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            rtc_argerror(L, "batch", "calls[%d][1] must be a method name such as \"kick_user\"", i);
        lua_rawget(L, -3);
        if (!lua_isfunction(L, -1)) {
            lua_rawgeti(L, -2, 1);
            rtc_argerror(L, "batch", "calls[%d]: unknown method %s", i, rtc_quote(L, lua_tostring(L, -1), lua_rawlen(L, -1)));
        }
        lua_pushvalue(L, 1); /* the client */
        len = (int)lua_rawlen(L, -3);
        luaL_checkstack(L, len + 4, "too many arguments in a batch call");
        for (j = 2; j <= len; j++) lua_rawgeti(L, -(j + 1), j); /* the call's table sits below fn, self, args */
        lua_call(L, len, 1);
        lua_rawseti(L, prepared, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

void rtc_call_load(lua_State *L, int idx, rtc_api_call *call) {
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

/* Points item->call into prepared[i + 1] (anchored in `prepared` for the whole batch). */
static void load_item(lua_State *L, int prepared, int i, batch_item *item) {
    lua_rawgeti(L, prepared, i + 1);
    rtc_call_load(L, lua_gettop(L), &item->call);
    lua_pop(L, 1);
}

/* Pops `result, meta` or `nil, err` into results[i] ({ok, result, meta} or {ok = false, err}) and
 * reports progress. */
static void settle(lua_State *L, rtc_client *c, batch_state *b, int results, int progress, int i, int *succeeded,
                   int *failed, const rtc_outcome *o) {
    b->items[i].done = 1;
    rtc_stats_outcome(rtc_stats_for(&c->stats, b->items[i].call.action), o->ok ? NULL : o->code);
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, o->ok);
    lua_setfield(L, -2, "ok");
    if (o->ok) {
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "result");
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "meta");
        (*succeeded)++;
    } else {
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "err");
        (*failed)++;
    }
    lua_rawseti(L, results, i + 1);
    lua_pop(L, 2);
    if (progress) {
        lua_pushvalue(L, progress);
        lua_pushinteger(L, *succeeded + *failed);
        lua_pushinteger(L, b->nitems);
        lua_pushinteger(L, i + 1);
        lua_rawgeti(L, results, i + 1);
        lua_call(L, 4, 0); /* an error in the callback propagates; the batch state's __gc cleans up */
    }
}

/* The limiter could not give item i a slot: it ends with LimiterError (err) and nothing is sent. */
static void settle_limiter_error(lua_State *L, rtc_client *c, batch_state *b, int results, int progress, int i,
                                 int *succeeded, int *failed, const char *err) {
    rtc_outcome o;
    memset(&o, 0, sizeof o);
    snprintf(o.code, sizeof o.code, "LimiterError");
    rtc_push_simple_error(L, c, &b->items[i].call, "LimiterError", err, b->items[i].attempts);
    settle(L, c, b, results, progress, i, succeeded, failed, &o);
}

/* Finds the next item to start: the earliest due retry, else the next fresh one. */
static int next_item(batch_state *b, int *cursor, int64_t now, int64_t *soonest) {
    int i, best = -1;
    for (i = 0; i < *cursor; i++) {
        batch_item *it = &b->items[i];
        if (it->done || it->attempts == 0 || it->wake_ns == INT64_MAX) continue;
        if (it->wake_ns <= now && (best < 0 || it->wake_ns < b->items[best].wake_ns)) best = i;
        else if (it->wake_ns > now && it->wake_ns < *soonest) *soonest = it->wake_ns;
    }
    if (best >= 0) return best;
    if (*cursor < b->nitems) return (*cursor)++;
    return -1;
}

/* The batch itself, run by batch_run as the client's running method. Arguments: the client, calls,
 * opts, the batch state, progress (or nil); every call is checked before anything is sent. */
static int batch_body(lua_State *L) {
    rtc_client *c = lua_touserdata(L, 1);
    batch_state *b = lua_touserdata(L, 4);
    CURLM *multi;
    int calls = 2, prepared, results, progress = lua_isnil(L, 5) ? 0 : 5, n, i, cursor = 0, active = 0,
        succeeded = 0, failed = 0;
    long concurrency = b->concurrency;
    int64_t t_begin = rtc_monotonic_ns();
    char err[256];

    n = (int)lua_rawlen(L, calls);
    lua_createtable(L, n, 0);
    prepared = lua_gettop(L);
    prepare_all(L, calls, prepared, n);
    lua_createtable(L, n, 0);
    results = lua_gettop(L);
    rtc_ensure_decoder(L);

    b->items = calloc((size_t)(n ? n : 1), sizeof *b->items);
    if (concurrency > n) concurrency = n ? n : 1;
    b->slots = calloc((size_t)concurrency, sizeof *b->slots);
    if (!b->items || !b->slots) return luaL_error(L, "out of memory");
    b->nitems = n;
    b->nslots = (int)concurrency;
    for (i = 0; i < n; i++) load_item(L, prepared, i, &b->items[i]);
    multi = b->multi = rtc_transport_multi(c->transport, concurrency);
    if (!multi) return luaL_error(L, "out of memory");

    while (succeeded + failed < n) {
        int64_t now = rtc_monotonic_ns(), soonest = INT64_MAX;
        int still, msgs;
        CURLMsg *m;
        /* Fill free slots: take a limiter slot for each item as a connection becomes free. */
        for (i = 0; i < b->nslots; i++) {
            batch_slot *s = &b->slots[i];
            int item;
            if (s->state != SLOT_FREE) continue;
            item = next_item(b, &cursor, now, &soonest);
            if (item < 0) break;
            if (!s->easy && !(s->easy = rtc_transport_easy_new())) return luaL_error(L, "out of memory");
            if (b->items[item].attempts++ == 0) b->items[item].first_ns = now;
            b->items[item].wake_ns = INT64_MAX;
            if (rtc_pace_reserve(c, b->items[item].call.action, now,
                                 b->items[item].first_ns + (int64_t)(c->deadline * 1e9), &s->send_at, err,
                                 sizeof err)) {
                settle_limiter_error(L, c, b, results, progress, item, &succeeded, &failed, err);
                continue;
            }
            s->item = item;
            s->reserved_at = now;
            s->state = SLOT_WAITING;
        }
        /* Start the transfers whose slot has come; sign each at send time. */
        for (i = 0; i < b->nslots; i++) {
            batch_slot *s = &b->slots[i];
            batch_item *it;
            if (s->state != SLOT_WAITING) continue;
            if (s->send_at > now) {
                if (s->send_at < soonest) soonest = s->send_at;
                continue;
            }
            it = &b->items[s->item];
            if (rtc_pace_missed(c, s->send_at, rtc_monotonic_ns())) { /* too late for this slot: take another */
                rtc_stats_missed_slot(rtc_stats_for(&c->stats, it->call.action));
                if (rtc_pace_reserve(c, it->call.action, rtc_monotonic_ns(), it->first_ns + (int64_t)(c->deadline * 1e9),
                                     &s->send_at, err, sizeof err) == 0) {
                    if (s->send_at < soonest) soonest = s->send_at;
                    continue;
                }
                s->state = SLOT_FREE;
                settle_limiter_error(L, c, b, results, progress, s->item, &succeeded, &failed, err);
                continue;
            }
            if (rtc_wire_build(c, &it->call, &s->wire, err, sizeof err))
                return luaL_error(L, "rtcadmin: cannot sign %s: %s", it->call.action, err);
            rtc_http_response_init(&s->resp);
            s->wire.http.timeout_ms = rtc_attempt_timeout_ms(it->first_ns + (int64_t)(c->deadline * 1e9), now);
            s->state = SLOT_ACTIVE;
            if (rtc_exchange_setup(c->transport, &s->x, s->easy, &s->wire.http, &s->resp) ||
                curl_multi_add_handle(multi, s->easy) != CURLM_OK)
                return luaL_error(L, "rtcadmin.batch: cannot start a transfer");
            s->started = rtc_monotonic_ns();
            active++;
        }
        curl_multi_perform(multi, &still);
        while ((m = curl_multi_info_read(multi, &msgs)) != NULL) {
            batch_slot *s = NULL;
            batch_item *it;
            rtc_outcome o;
            double elapsed;
            int rc;
            if (m->msg != CURLMSG_DONE) continue;
            for (i = 0; i < b->nslots; i++)
                if (b->slots[i].easy == m->easy_handle && b->slots[i].state == SLOT_ACTIVE) s = &b->slots[i];
            if (!s) continue;
            curl_multi_remove_handle(multi, s->easy);
            active--;
            rc = rtc_exchange_finish(&s->x, m->data.result);
            rtc_wire_free(&s->wire);
            it = &b->items[s->item];
            elapsed = (double)(rtc_monotonic_ns() - s->started) / 1e9;
            o = rtc_push_outcome(L, c, &it->call, rc, &s->resp, it->attempts, elapsed);
            s->state = SLOT_FREE;
            rtc_stats_attempt(rtc_stats_for(&c->stats, it->call.action), it->attempts,
                              (double)(s->send_at - s->reserved_at) / 1e9, elapsed, o.throttled);
            if (!o.ok && o.retryable && it->attempts <= c->retries) {
                int64_t wake = rtc_monotonic_ns() + (int64_t)(rtc_backoff(c, it->attempts) * 1e9);
                if (wake < it->first_ns + (int64_t)(c->deadline * 1e9)) {
                    it->wake_ns = wake;
                    lua_pop(L, 2);
                    continue;
                }
            }
            settle(L, c, b, results, progress, s->item, &succeeded, &failed, &o);
        }
        if (succeeded + failed == n) break;
        now = rtc_monotonic_ns();
        {
            int timeout_ms = 100;
            if (soonest != INT64_MAX) {
                int64_t ms = (soonest - now + 999999) / 1000000;
                timeout_ms = ms < 0 ? 0 : ms > 100 ? 100 : (int)ms;
            }
            if (active) curl_multi_poll(multi, NULL, 0, timeout_ms, NULL);
            else if (soonest != INT64_MAX && soonest > now) rtc_sleep_until(soonest);
        }
    }
    lua_pushvalue(L, results);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, succeeded);
    lua_setfield(L, -2, "succeeded");
    lua_pushinteger(L, failed);
    lua_setfield(L, -2, "failed");
    lua_pushnumber(L, (lua_Number)(rtc_monotonic_ns() - t_begin) / 1e9);
    lua_setfield(L, -2, "elapsed");
    return 2;
}

/* client:batch(calls, {progress = fn, concurrency = n}?) -> results, summary */
static int batch_run(lua_State *L) {
    rtc_client *c = rtc_check_idle_client(L, 1, "batch");
    batch_state *b;
    long concurrency = c->concurrency;
    int i, n;

    if (!lua_istable(L, 2)) rtc_argerror(L, "batch", "expects a list of calls, got %s", luaL_typename(L, 2));
    lua_settop(L, 3);
    lua_pushnil(L); /* 4: the batch state */
    lua_pushnil(L); /* 5: progress */
    if (!lua_isnil(L, 3)) {
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
    }

    if (lua_toboolean(L, lua_upvalueindex(1))) { /* through client:exchanges(): one exchange per call */
        n = (int)lua_rawlen(L, 2);
        lua_createtable(L, n, 0);
        prepare_all(L, 2, lua_gettop(L), n);
        lua_createtable(L, n, 0);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, -2, i);
            rtc_exchange_push(L, 1, -1);
            lua_rawseti(L, -3, i);
            lua_pop(L, 1);
        }
        return 1;
    }
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
int rtc_client_exchanges_method(lua_State *L) {
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
