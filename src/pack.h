/* rtcadmin.pack / rtcadmin.unpack: plain Lua data as a compact, checksummed string (src/pack.c; the
 * format is described in docs/api.md, "Packing plain data"). */
#ifndef RTCADMIN_PACK_H
#define RTCADMIN_PACK_H

#include <stddef.h>
#include <stdint.h>

#include "compat.h"

/* The header: the magic, the format version, a flags byte (bit 0: written where integers and floats
 * are distinct number subtypes, Lua 5.3+), the payload's length (8 bytes, little endian). The
 * trailer: the CRC-32 (IEEE 802.3, as zlib computes it) of the header and payload, little endian. */
#define RTC_PACK_MAGIC "RTCP"
#define RTC_PACK_VERSION 1
#define RTC_PACK_FLAGS_KNOWN 0x01
#define RTC_PACK_HEADER 14
#define RTC_PACK_TRAILER 4

/* CRC-32 of n bytes, continuing from `crc` (0 to start). */
uint32_t rtc_crc32(uint32_t crc, const void *data, size_t n);

/* Sets pack and unpack in the table on top of the stack. */
void rtc_pack_register(lua_State *L);

#endif
