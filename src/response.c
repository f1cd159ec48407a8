/* An attempt's answer as Lua values: the response decoded into `result, meta` or `nil, err`, and what
 * the call engine needs of it to decide what comes next (rtc_answer). Also the `meta` metatable. */
#include <stdio.h>
#include <string.h>

#include "errors.h"
#include "response.h"

void rtc_ensure_decoder(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    if (lua_isnil(L, -1)) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "cjson.safe");
        lua_call(L, 1, 1);
        lua_getfield(L, -1, "decode");
        if (!lua_isfunction(L, -1)) luaL_error(L, "rtcadmin: cjson.safe.decode is missing");
        lua_setfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

void rtc_push_failure(lua_State *L, const rtc_client *c, const rtc_api_call *call, const char *code,
                      const char *message, int attempts) {
    rtc_error_info info;
    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.code = code;
    info.message = message;
    info.attempts = attempts;
    lua_pushnil(L);
    rtc_push_error(L, &info, c->secret_key, c->secret_len);
}

static rtc_answer push_error(lua_State *L, const rtc_client *c, int base, rtc_error_info *info) {
    rtc_answer a;
    memset(&a, 0, sizeof a);
    a.http_status = info->http_status;
    snprintf(a.code, sizeof a.code, "%s", info->code ? info->code : RTC_CODE_UNKNOWN);
    rtc_push_error(L, info, c->secret_key, c->secret_len);
    lua_replace(L, base + 1);
    lua_pushnil(L);
    lua_replace(L, base);
    lua_settop(L, base + 1);
    return a;
}

rtc_answer rtc_push_response(lua_State *L, const rtc_client *c, const rtc_api_call *call, int transfer_rc,
                             rtc_http_response *resp, int attempt, double elapsed) {
    rtc_error_info info;
    rtc_answer a;
    long connects = resp->connects;
    char msg[256], ctype[sizeof resp->content_type];
    const char *request_id = NULL;
    long status = resp->status;
    int base = lua_gettop(L) + 1, doc, md, ok2xx;

    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.attempts = attempt;
    lua_pushnil(L); /* base: result or nil */
    lua_pushnil(L); /* base + 1: meta or err */
    if (transfer_rc) {
        info.code = rtc_net_error_code(resp->error);
        info.message = resp->message;
        a = push_error(L, c, base, &info);
        a.connects = connects;
        rtc_http_response_free(resp);
        return a;
    }
    memcpy(ctype, resp->content_type, sizeof ctype);
    lua_pushlstring(L, resp->body.data ? resp->body.data : "", resp->body.len);
    rtc_http_response_free(resp);
    info.http_status = status;
    ok2xx = status >= 200 && status < 300;

    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    lua_pushvalue(L, base + 2);
    lua_call(L, 1, 1);
    doc = lua_gettop(L);
    if (!lua_istable(L, doc)) {
        snprintf(msg, sizeof msg, "%s response is not a JSON object (Content-Type %s, %lu bytes)",
                 ok2xx ? "a successful" : "an error", *ctype ? ctype : "none", (unsigned long)lua_rawlen(L, base + 2));
        info.code = ok2xx ? RTC_CODE_MALFORMED : RTC_CODE_HTTP;
        info.message = msg;
        a = push_error(L, c, base, &info);
        a.connects = connects;
        return a;
    }
    lua_getfield(L, doc, "ResponseMetadata");
    md = lua_gettop(L);
    if (lua_istable(L, md)) {
        lua_getfield(L, md, "RequestId");
        request_id = lua_tostring(L, -1);
        lua_getfield(L, md, "Error");
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    /* Failure: a non-2xx status, or ResponseMetadata.Error whatever the status. */
    if (!ok2xx || lua_istable(L, -1)) {
        int et = lua_gettop(L);
        info.request_id = request_id;
        if (lua_istable(L, et)) {
            lua_getfield(L, et, "Code");
            info.code = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : RTC_CODE_UNKNOWN;
            lua_getfield(L, et, "Message");
            info.message = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            lua_getfield(L, et, "CodeN");
            info.code_n = lua_type(L, -1) == LUA_TNUMBER ? (long)lua_tointeger(L, -1) : 0;
        } else {
            snprintf(msg, sizeof msg, "HTTP %ld without an error description", status);
            info.code = RTC_CODE_HTTP;
            info.message = msg;
        }
        a = push_error(L, c, base, &info);
        a.connects = connects;
        return a;
    }
    lua_getfield(L, doc, "Result");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_replace(L, base);
    lua_createtable(L, 0, 7);
    if (request_id) {
        lua_pushstring(L, request_id);
        lua_setfield(L, -2, "request_id");
    }
    lua_pushstring(L, call->action);
    lua_setfield(L, -2, "action");
    lua_pushstring(L, call->version);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "http_status");
    lua_pushinteger(L, attempt);
    lua_setfield(L, -2, "attempts");
    lua_pushnumber(L, (lua_Number)elapsed);
    lua_setfield(L, -2, "elapsed");
    luaL_getmetatable(L, RTC_META_MT);
    lua_setmetatable(L, -2);
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    memset(&a, 0, sizeof a);
    a.ok = 1;
    a.http_status = status;
    a.connects = connects;
    return a;
}

/* "KickUser 2020-12-01 200 request=<id> attempts=1 0.012s": the fields as they are now (a caller may
 * have changed them), each left out when absent or of another type. */
static int meta_tostring(lua_State *L) {
    static const char *const keys[] = {"action", "version", "http_status", "request_id", "attempts", "elapsed"};
    static const char *const labels[] = {"", "", "", "request=", "attempts=", ""};
    static const int numeric[] = {0, 0, 1, 0, 1, 1};
    char nums[6][48];
    const char *parts[6];
    luaL_Buffer b;
    int i, n = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    for (i = 0; i < 6; i++) { /* every value on the stack before the buffer uses it */
        lua_getfield(L, 1, keys[i]);
        parts[i] = NULL;
        if (numeric[i] && lua_type(L, -1) == LUA_TNUMBER) {
            snprintf(nums[i], sizeof nums[i], i == 5 ? "%.3fs" : "%.0f", (double)lua_tonumber(L, -1));
            parts[i] = nums[i];
        } else if (!numeric[i] && lua_type(L, -1) == LUA_TSTRING) {
            parts[i] = lua_tostring(L, -1);
        }
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < 6; i++) {
        if (!parts[i]) continue;
        if (n++) luaL_addchar(&b, ' ');
        luaL_addstring(&b, labels[i]);
        luaL_addstring(&b, parts[i]);
    }
    luaL_pushresult(&b);
    return 1;
}

void rtc_meta_register(lua_State *L) {
    if (luaL_newmetatable(L, RTC_META_MT)) {
        lua_pushcfunction(L, meta_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushstring(L, RTC_META_MT);
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
}

void rtc_push_call_end(lua_State *L, const rtc_call *k) {
    rtc_push_failure(L, k->c, k->call, k->code, k->message, k->attempts);
}
