/* What the two Redis limiters share: the C backend (limiter_redis.c, hiredis, for blocking and batch
 * calls) and the OpenResty one (lua/rtcadmin/redis_limiter.lua, cosockets) do their own I/O and
 * nothing else. The URL is read here, and every decision about Redis and its fallback is taken here,
 * once, for both. No Lua, no I/O, no clock of its own: times come in as arguments (CLOCK_MONOTONIC
 * nanoseconds, the host table's clock), so tests/c/test_redis_fallback.c runs it on a fake clock. */
#ifndef RTCADMIN_REDIS_COMMON_H
#define RTCADMIN_REDIS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "limiter.h"

/* ---- redis://[[user]:password@]host[:port][/db] ------------------------------------------------ */

#define RTC_REDIS_WHERE 300

typedef struct {
    char *host;                   /* without the brackets of an IPv6 address */
    int port;                     /* 6379 unless given */
    long db;                      /* 0 unless given */
    char *user;                   /* percent-decoded, or NULL */
    char *password;               /* percent-decoded, or NULL; wiped when freed */
    char where[RTC_REDIS_WHERE];  /* "host:port/db" for messages: never credentials */
} rtc_redis_url;

/* Fills u (zeroed first) or returns -1 with err. No message quotes the user or the password; u is
 * freed on failure. "redis://secret@host" is read as a password, as redis-cli reads it. */
int rtc_redis_url_parse(const char *url, rtc_redis_url *u, char *err, size_t errlen);
void rtc_redis_url_free(rtc_redis_url *u);
/* Frees a copy of a credential after overwriting it. */
void rtc_redis_wipe_free(char *s);

/* ---- the fallback decision ----------------------------------------------------------------------
 *
 * Two states. On "redis", every reservation asks Redis. On the fallback, reservations take their
 * slots from the host table (this host's shared schedule, limiter.c) at `share` of each limit, and
 * every `reprobe` seconds one of them asks Redis again. With fallback = "error" the fallback fails
 * reservations instead (nothing is sent); the state is then called "none".
 *
 * One reservation is one turn:
 *   rtc_fallback_begin       -> RTC_FB_SLOT (t->start_ns is the slot), RTC_FB_FAIL (out->err), or
 *                               RTC_FB_ASK: run the GCRA script with t->interval_ns and
 *                               t->not_before_ns, giving up at t->end_ns, then report the outcome:
 *   rtc_fallback_answered    (the reply arrived at at_ns, the slot is wait_ns after it) or
 *   rtc_fallback_failed      (why; refused: Redis answered the connection setup - AUTH, SELECT,
 *                             PING - with an error) -> RTC_FB_SLOT or RTC_FB_FAIL.
 * A turn that changed the state leaves one line to log in out->note ("" otherwise): exactly one
 * line per transition, whatever the number of turns in flight. Turns may overlap (cosocket
 * coroutines): an outcome counts for the state its turn began in, so a reply that was asked before
 * a fallback does not end it, and a failure that began before a recovery does not start a new one.
 *
 * The rules (docs/redis.md says why each keeps the fleet within the limit):
 *  - into the fallback: the first fallback slot is HANDOVER (1 s) after the later of now and the end
 *    of the last Redis slot this process saw;
 *  - back to Redis ("homecoming": the probe, then reprobe + timeout after it answered): every Redis
 *    slot takes 1/share intervals of the Redis schedule, comes after the slots this host's table has
 *    handed out on the same schedule (the script's "not before"), and is booked on that table too;
 *  - a refusal before Redis has ever answered is a configuration error (wrong password, user, db):
 *    the reservation fails with it and the state stays as it is.
 * "Not before" is per schedule (access key, Action) and per host, read from the host table: a
 * fallback slot only shares the budget of its own schedule, so slots booked for one Action must not
 * hold back another's; and the other processes on this host may still be on the fallback, booking on
 * that table, when this one comes back. Booking the homecoming slots there too keeps them behind. */

#define RTC_FB_HANDOVER_NS 1000000000LL
#define RTC_FB_TEXT 640
#define RTC_FB_ACTION 96              /* the longest Action name, and its NUL */

typedef struct rtc_fallback rtc_fallback;

typedef struct {
    const char *where;            /* "host:port/db", for messages */
    const char *dir;              /* the host table's directory (NULL: as the host backend) */
    double timeout;               /* seconds a round trip may take */
    double reprobe;               /* seconds between attempts while on the fallback */
    double share;                 /* (0, 1]: the fallback's share of each limit */
    int fail;                     /* fallback = "error" */
} rtc_fallback_opts;

typedef enum { RTC_FB_FAIL = -1, RTC_FB_SLOT = 0, RTC_FB_ASK = 1 } rtc_fb_result;

/* One reservation's conversation with the decision; filled by rtc_fallback_begin. */
typedef struct {
    /* RTC_FB_ASK: what to ask Redis */
    int64_t interval_ns;          /* the step to take on the Redis schedule */
    int64_t not_before_ns;        /* the slot must be at least this long after the server's now */
    int64_t end_ns;               /* give up by then (timeout, the call's deadline; >= 1 ms ahead) */
    /* RTC_FB_SLOT: the slot, and where it came from ("redis" or "host") */
    int64_t start_ns;
    const char *source;
    /* the decision's own */
    unsigned char fp[8];
    char action[RTC_FB_ACTION];
    int64_t base_ns, shared_ns;
    long epoch;
    int homecoming;               /* asked on the way back from the fallback */
} rtc_fb_turn;

typedef struct {
    char note[RTC_FB_TEXT];       /* a transition this turn made: one line to log, or "" */
    char err[RTC_FB_TEXT];        /* RTC_FB_FAIL: why nothing may be sent */
} rtc_fb_text;

/* Makes the decision with its fallback (the host table in o->dir); starts on "redis". */
rtc_fallback *rtc_fallback_new(const rtc_fallback_opts *o, char *err, size_t errlen);
void rtc_fallback_free(rtc_fallback *f);
/* Redis answered outside a reservation (the C backend's check when it is made). */
void rtc_fallback_reached(rtc_fallback *f);

rtc_fb_result rtc_fallback_begin(rtc_fallback *f, rtc_fb_turn *t, const unsigned char fp[8], const char *action,
                                 int64_t interval_ns, int64_t now_ns, int64_t deadline_ns, rtc_fb_text *out);
rtc_fb_result rtc_fallback_answered(rtc_fallback *f, rtc_fb_turn *t, int64_t at_ns, int64_t wait_ns,
                                    rtc_fb_text *out);
rtc_fb_result rtc_fallback_failed(rtc_fallback *f, rtc_fb_turn *t, int64_t now_ns, const char *why, int refused,
                                  rtc_fb_text *out);

/* What client:info().limiter_status and redis_limiter:status() show; strings live in f. */
void rtc_fallback_status(const rtc_fallback *f, rtc_limiter_status *out);

#endif
