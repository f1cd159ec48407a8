/* JSON request bodies: escaping primitives and a Lua value encoder. Decoding is lua-cjson's job. */
#ifndef RTCADMIN_JSON_H
#define RTCADMIN_JSON_H

#include <stddef.h>

#include "buf.h"
#include "compat.h"

/* 1 if s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
int rtc_utf8_valid(const char *s, size_t n);

/* Appends a quoted JSON string; s must be valid UTF-8. */
int rtc_json_string(rtc_buf *b, const char *s, size_t n);

/* Encodes the Lua value at idx: nil/false/true/numbers/strings/tables (a table whose keys are
 * exactly 1..n is an array; an empty table is {}; other tables need string keys, written sorted).
 * Returns 0, or -1 with a message in err. */
int rtc_json_encode(lua_State *L, int idx, rtc_buf *b, char *err, size_t errlen);

/* rtcadmin.json_encode (output: NaN/inf as null, invalid UTF-8 replaced, tables marked by
 * rtcadmin.json_array written as arrays even when empty) and rtcadmin.json_array. */
void rtc_json_register(lua_State *L);

#endif
