/* libFuzzer: the response handling of one attempt (rtc_push_response): any body with any status, and
 * transport failures with any message. The outcome must be `result, meta` or `nil, err`, and
 * tostring(err) one printable line without the secret. */
#include <stdint.h>
#include <string.h>

#include "fuzz_lua.h"

static const long statuses[] = {200, 200, 200, 204, 302, 400, 401, 404, 429, 500, 502, 503};

static int check_outcome(lua_State *L) {
    rtc_client *c = lua_touserdata(L, 1);
    const uint8_t *data = lua_touserdata(L, 2);
    size_t size = (size_t)lua_tointeger(L, 3), i, n;
    rtc_http_response resp;
    rtc_api_call call;
    rtc_answer o;
    int transport_failure = data[0] & 1, top = lua_gettop(L);
    const char *s;

    memset(&call, 0, sizeof call);
    call.action = "KickUser";
    call.version = "2020-12-01";
    rtc_http_response_init(&resp);
    resp.status = statuses[data[1] % (sizeof statuses / sizeof *statuses)];
    if (transport_failure) {
        n = size - 2 < sizeof resp.message - 1 ? size - 2 : sizeof resp.message - 1;
        memcpy(resp.message, data + 2, n);
        resp.message[n] = '\0';
        resp.error = (rtc_net_error)(1 + data[1] % 8);
    } else {
        rtc_buf_add(&resp.body, data + 2, size - 2);
        snprintf(resp.content_type, sizeof resp.content_type, "application/json");
    }
    rtc_ensure_decoder(L);
    o = rtc_push_response(L, c, &call, transport_failure ? -1 : 0, &resp, 1, 0.0);
    FUZZ_CHECK(lua_gettop(L) == top + 2, "outcome left %d values", lua_gettop(L) - top);
    if (o.ok) {
        FUZZ_CHECK(!transport_failure, "a transport failure came back as success");
        FUZZ_CHECK(lua_istable(L, -2) && lua_istable(L, -1), "success is not result, meta");
        return 0;
    }
    FUZZ_CHECK(lua_isnil(L, -2) && lua_istable(L, -1), "failure is not nil, err");
    lua_getfield(L, -1, "code");
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING, "err.code is not a string");
    lua_pop(L, 1);
    s = luaL_tolstring(L, -1, &n);
    for (i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)s[i] >= 0x20 && s[i] != 0x7f, "control byte 0x%02x in tostring(err)", s[i]);
    FUZZ_CHECK(!strstr(s, c->secret_key), "the secret is in tostring(err)");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lua_State *L = fuzz_state();
    if (size < 2) return 0;
    lua_pushcfunction(L, check_outcome);
    lua_pushlightuserdata(L, fuzz_client(L));
    lua_pushlightuserdata(L, (void *)data);
    lua_pushinteger(L, (lua_Integer)size);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
        fprintf(stderr, "response handling raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
