/* One hiredis connection to the Redis a redis:// URL names, opened the same way for every user of
 * it: the limiter's C backend (limiter_redis.c) and rtcadmin.redis (redis_conn_lua.c). Connect, AUTH
 * (user and password from the URL), SELECT, PING: a connection that opened is known to work, and a
 * wrong password or db is an error at once. Every call has an absolute deadline (CLOCK_MONOTONIC
 * nanoseconds); an I/O failure drops the connection, and the next open makes a new one. */
#ifndef RTCADMIN_REDIS_CONN_H
#define RTCADMIN_REDIS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "redis_common.h"

/* rtc_redis_open's "Redis answered the setup (AUTH, SELECT, PING) with an error". */
#define RTC_REDIS_REFUSED (-2)

typedef struct {
    redisContext *ctx;            /* NULL until opened, and after any I/O failure */
    rtc_redis_url url;
} rtc_redis_conn;

/* Connect, AUTH, SELECT, PING by end_ns: 0, or -1 (I/O, timeout) / RTC_REDIS_REFUSED with why. */
int rtc_redis_open(rtc_redis_conn *c, int64_t end_ns, char *why, size_t n);
/* Closes the connection (the URL stays). */
void rtc_redis_drop(rtc_redis_conn *c);
/* One command by end_ns on an open connection: the reply, or NULL (connection dropped) with why. */
redisReply *rtc_redis_command(rtc_redis_conn *c, int64_t end_ns, int argc, const char **argv, const size_t *lens,
                              char *why, size_t n);
/* Commands written at once, replies read in order: ncmds replies into out (each freed by the caller
 * with freeReplyObject), or -1 (connection dropped, nothing in out) with why. */
int rtc_redis_pipeline(rtc_redis_conn *c, int64_t end_ns, int ncmds, const int *argcs, const char *const *const *argvs,
                       const size_t *const *lens, redisReply **out, char *why, size_t n);

#endif
