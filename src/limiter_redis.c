/* The "redis" limiter backend: GCRA schedules kept in Redis and advanced by one server-side script,
 * so every host that talks to the same Redis shares one budget per (access key, Action).
 *
 * This file is the hiredis driver: it connects, authenticates, runs the script and reports each
 * outcome to the fallback decision (redis_fallback.c), which decides everything else - when to ask
 * Redis, which slot to use, when to fall back to the host table and come back - for this backend and
 * for the OpenResty limiter (lua/rtcadmin/redis_limiter.lua) alike.
 *
 * Each reservation runs the script (EVALSHA, EVAL on NOSCRIPT) on one kept-open connection. The
 * script answers "your slot is W microseconds after the server's now"; the slot on our clock is the
 * moment the reply arrived plus W. That moment is later than the server's "now" by the reply path's
 * delay, so a slot can be late, never early; two slots one interval apart on the server are sent at
 * most that delay closer together here, and the pacing margin (1% = 10 ms per second) covers it on a
 * LAN. (The request's departure would be the worse anchor: a Redis that stalls makes every slot
 * handed out meanwhile early by the stall, a burst. A reply read late is a send made late, which
 * any limiter suffers the same way.)
 *
 * The Redis slot is used as it is. (Taking it again in a local schedule would be wrong: two
 * reservations that return out of order would push the earlier slot behind the later one, late,
 * onto another host's slot.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "buf.h"
#include "limiter.h"
#include "redis_conn.h"

#define DEFAULT_PREFIX "rtcadmin:gcra:"

typedef struct {
    rtc_limiter base;            /* first: the interface sees an rtc_limiter */
    rtc_fallback *decision;      /* when to ask Redis, and the fallback */
    rtc_redis_conn conn;         /* connected, authenticated and selected (redis_conn.c) */
    char *prefix;
    char *script;
    char sha[41];
    int64_t timeout_ns;
    int log;
} redis_limiter;

static char *copy_string(const char *s) { return rtc_strndup(s, strlen(s)); }

/* One GCRA step in Redis. *wait_ns: from the reply's arrival (*at_ns, our clock) to the slot.
 * 0, -1 or RTC_REDIS_REFUSED (the connection setup was refused) with why. */
static int gcra_round_trip(redis_limiter *r, const unsigned char fp[8], const char *action, int64_t interval_ns,
                           int64_t not_before_ns, int64_t end_ns, int64_t *wait_ns, int64_t *at_ns, char *why,
                           size_t n) {
    char key[256], interval[32], not_before[32];
    const char *argv[6];
    size_t lens[6];
    redisReply *rep;
    int i;
    if (!r->conn.ctx && (i = rtc_redis_open(&r->conn, end_ns, why, n))) return i;
    i = snprintf(key, sizeof key, "%s%02x%02x%02x%02x%02x%02x%02x%02x:%s", r->prefix, fp[0], fp[1], fp[2], fp[3],
                 fp[4], fp[5], fp[6], fp[7], action);
    if (i < 0 || (size_t)i >= sizeof key) {
        snprintf(why, n, "key too long");
        return -1;
    }
    /* Microseconds, rounded up like the interval itself: never a faster schedule. */
    snprintf(interval, sizeof interval, "%lld", (long long)((interval_ns + 999) / 1000));
    argv[0] = "EVALSHA";
    argv[1] = r->sha;
    argv[2] = "1";
    argv[3] = key;
    argv[4] = interval;
    snprintf(not_before, sizeof not_before, "%lld", (long long)((not_before_ns + 999) / 1000));
    argv[5] = not_before;
    for (i = 0; i < 6; i++) lens[i] = strlen(argv[i]);
    rep = rtc_redis_command(&r->conn, end_ns, 6, argv, lens, why, n);
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(rep); /* a restarted or flushed Redis: EVAL loads the script again */
        argv[0] = "EVAL";
        argv[1] = r->script;
        lens[0] = 4;
        lens[1] = strlen(r->script);
        rep = rtc_redis_command(&r->conn, end_ns, 6, argv, lens, why, n);
    }
    *at_ns = rtc_monotonic_ns();
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0) {
        *wait_ns = (int64_t)rep->integer * 1000;
        freeReplyObject(rep);
        return 0;
    }
    if (rep->type == REDIS_REPLY_ERROR)
        snprintf(why, n, "%s", rep->str);
    else
        snprintf(why, n, "unexpected reply to the GCRA script (type %d)", rep->type);
    freeReplyObject(rep);
    return -1;
}

/* Every decision is the fallback decision's; this asks Redis when it says so and logs what it says. */
static int redis_reserve(rtc_limiter *self, const unsigned char fp[8], const char *action, int64_t interval_ns,
                         int64_t now_ns, int64_t deadline_ns, int64_t *start_ns, char *err, size_t errlen) {
    redis_limiter *r = (redis_limiter *)self;
    rtc_fb_turn t;
    rtc_fb_text out;
    rtc_fb_result rc = rtc_fallback_begin(r->decision, &t, fp, action, interval_ns, now_ns, deadline_ns, &out);
    if (rc == RTC_FB_ASK) {
        int64_t wait_ns = 0, at = 0;
        char why[200];
        int io = gcra_round_trip(r, fp, action, t.interval_ns, t.not_before_ns, t.end_ns, &wait_ns, &at, why,
                                 sizeof why);
        if (io == 0)
            rc = rtc_fallback_answered(r->decision, &t, at, wait_ns, &out);
        else
            rc = rtc_fallback_failed(r->decision, &t, rtc_monotonic_ns(), why, io == RTC_REDIS_REFUSED, &out);
    }
    if (out.note[0] && r->log) fprintf(stderr, "rtcadmin: %s\n", out.note);
    if (rc == RTC_FB_FAIL) {
        snprintf(err, errlen, "%s", out.err);
        return -1;
    }
    *start_ns = t.start_ns;
    return 0;
}

static void redis_destroy(rtc_limiter *self) {
    redis_limiter *r = (redis_limiter *)self;
    rtc_redis_drop(&r->conn);
    rtc_fallback_free(r->decision);
    rtc_redis_url_free(&r->conn.url);
    free(r->prefix);
    free(r->script);
    free(r);
}

static void redis_status(rtc_limiter *self, rtc_limiter_status *out) {
    rtc_fallback_status(((redis_limiter *)self)->decision, out);
}

static const rtc_limiter_ops redis_ops = {"redis", redis_reserve, redis_destroy, redis_status};

static int sha1_hex(const char *s, char out[41]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL) || len != 20) return -1;
    rtc_hex(md, len, out);
    return 0;
}

rtc_limiter *rtc_limiter_redis_new(const rtc_redis_opts *o, char *err, size_t errlen) {
    redis_limiter *r = calloc(1, sizeof *r);
    rtc_fallback_opts fo;
    char why[200];
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->base.ops = &redis_ops;
    if (rtc_redis_url_parse(o->url, &r->conn.url, err, errlen)) goto fail;
    if (o->password) {
        if (r->conn.url.password) {
            snprintf(err, errlen, "give the password in the url or in 'password', not both");
            goto fail;
        }
        if (!(r->conn.url.password = copy_string(o->password))) goto oom;
    }
    if (o->user) {
        if (r->conn.url.user) {
            snprintf(err, errlen, "give the user in the url or in 'user', not both");
            goto fail;
        }
        if (!(r->conn.url.user = copy_string(o->user))) goto oom;
    }
    if (r->conn.url.user && !r->conn.url.password) {
        snprintf(err, errlen, "a Redis user needs a password");
        goto fail;
    }
    r->prefix = copy_string(o->key_prefix ? o->key_prefix : DEFAULT_PREFIX);
    r->script = copy_string(o->script);
    if (!r->prefix || !r->script) goto oom;
    if (sha1_hex(r->script, r->sha)) {
        snprintf(err, errlen, "cannot hash the GCRA script");
        goto fail;
    }
    r->timeout_ns = (int64_t)(o->timeout * 1e9);
    r->log = o->log;
    memset(&fo, 0, sizeof fo);
    fo.where = r->conn.url.where;
    fo.dir = o->dir;
    fo.timeout = o->timeout;
    fo.reprobe = o->reprobe;
    fo.share = o->fallback_share;
    fo.fail = o->fallback_error;
    if (!(r->decision = rtc_fallback_new(&fo, err, errlen))) goto fail;
    if (rtc_redis_open(&r->conn, rtc_monotonic_ns() + r->timeout_ns, why, sizeof why)) {
        snprintf(err, errlen, "Redis at %s: %s", r->conn.url.where, why);
        goto fail;
    }
    rtc_fallback_reached(r->decision);
    return &r->base;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    redis_destroy(&r->base);
    return NULL;
}
