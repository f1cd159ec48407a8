/* libFuzzer harness for rtcadmin.unpack (src/pack.c), the reader of saved engine state. The input is
 * the payload: framed here with a correct header, length and CRC-32, so the fuzzer reaches the value
 * reader rather than the checksum. Invariants: unpack never raises, for the framed payload and for
 * the raw bytes; a value it returns packs again (plain data, no cycles), and that reads back to a
 * value that packs to the same length. */
#include <stdint.h>
#include <string.h>

#include "fuzz_lua.h"
#include "pack.h"

/* Calls rtcadmin.<fn> on the string s; leaves its results (at most 2) on the stack; returns whether
 * it raised. */
static int call(lua_State *L, const char *fn, int arg) {
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "rtcadmin");
    lua_getfield(L, -1, fn);
    lua_replace(L, -3);
    lua_pop(L, 1);
    lua_pushvalue(L, arg);
    return lua_pcall(L, 1, 2, 0) != LUA_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lua_State *L = fuzz_state();
    unsigned char *framed = malloc(size + RTC_PACK_HEADER + RTC_PACK_TRAILER);
    uint32_t crc;
    int i, top;
    FUZZ_CHECK(framed != NULL, "out of memory");
    memcpy(framed, RTC_PACK_MAGIC, 4);
    framed[4] = RTC_PACK_VERSION;
    framed[5] = LUA_VERSION_NUM >= 503 ? 1 : 0;
    for (i = 0; i < 8; i++) framed[6 + i] = (unsigned char)((uint64_t)size >> (8 * i));
    if (size) memcpy(framed + RTC_PACK_HEADER, data, size);
    crc = rtc_crc32(0, framed, size + RTC_PACK_HEADER);
    for (i = 0; i < 4; i++) framed[RTC_PACK_HEADER + size + i] = (unsigned char)(crc >> (8 * i));

    lua_settop(L, 0);
    lua_pushlstring(L, (const char *)data, size);
    lua_pushlstring(L, (const char *)framed, size + RTC_PACK_HEADER + RTC_PACK_TRAILER);
    free(framed);
    FUZZ_CHECK(!call(L, "unpack", 1), "unpack raised on raw bytes: %s", lua_tostring(L, -1));
    FUZZ_CHECK(lua_isnil(L, -2) && lua_isstring(L, -1), "raw bytes read as a value");
    lua_pop(L, 2);
    FUZZ_CHECK(!call(L, "unpack", 2), "unpack raised: %s", lua_tostring(L, -1));
    if (lua_isnil(L, -2) && !lua_isnil(L, -1)) {
        FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING, "an error that is not a message");
    } else {
        size_t n1, n2;
        lua_pop(L, 1);
        top = lua_gettop(L); /* the value */
        FUZZ_CHECK(!call(L, "pack", top), "a value read does not pack again: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_tolstring(L, -1, &n1);
        FUZZ_CHECK(!call(L, "unpack", lua_gettop(L)), "unpack raised on pack's output");
        FUZZ_CHECK(!lua_isnil(L, -2) || lua_isnil(L, -1), "pack's output does not read back: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        FUZZ_CHECK(!call(L, "pack", lua_gettop(L)), "the value read back does not pack");
        lua_pop(L, 1);
        lua_tolstring(L, -1, &n2);
        FUZZ_CHECK(n1 == n2, "packed again to %zu bytes, then to %zu", n1, n2);
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
