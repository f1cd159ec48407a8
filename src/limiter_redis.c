/* The "redis" limiter backend: GCRA schedules kept in Redis and advanced by one server-side script,
 * so every host that talks to the same Redis shares one budget per (access key, Action).
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
 * onto another host's slot.)
 *
 * When Redis does not answer within the timeout (or refuses), the backend paces with the host table
 * at fallback_share of each limit, logs once, and tries Redis again every `reprobe` seconds:
 *  - the fallback starts HANDOVER after the last Redis slot this process saw, so slots that Redis
 *    handed out just before it went away are spent before the fallback's own;
 *  - after Redis answers again, its Redis slots start after the fallback slots it still has booked
 *    (the script's "not before"), and it keeps the fallback share (now on the Redis schedule) for
 *    reprobe + timeout, the time every other process needs to notice the recovery too.
 * With N hosts and fallback_share <= 1/N the fleet stays within the limit throughout. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "buf.h"
#include "limiter.h"

#define NS 1000000000LL
#define HANDOVER_NS NS
#define DEFAULT_PREFIX "rtcadmin:gcra:"

typedef struct {
    rtc_limiter base;            /* first: the interface sees an rtc_limiter */
    rtc_limiter *host;           /* this host's shared table: the fallback */
    redisContext *ctx;           /* NULL until connected, and after any I/O error */
    char *hostname;
    int port;
    long db;
    char *user;
    char *password;
    char *prefix;
    char *script;
    char sha[41];
    int64_t timeout_ns, reprobe_ns;
    double share;
    int fallback_error, log;
    int on_fallback;
    int64_t next_probe_ns;       /* on the fallback: when to try Redis again */
    int64_t fallback_from_ns;    /* on the fallback: no slot before this */
    int64_t grace_until_ns;      /* after a recovery: keep the fallback share until then */
    int64_t horizon_ns;          /* end of the latest Redis slot seen, on our clock */
    int64_t fallback_end_ns;     /* end of the latest fallback slot booked, on our clock */
    long fallbacks, recoveries, errors;
    char last_error[200];
    char where[300];             /* host:port/db, for messages: never credentials */
} redis_limiter;

static char *dup_or_null(const char *s, size_t n) {
    char *d;
    if (!s) return NULL;
    d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void wipe_free(char *s) {
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static struct timeval to_timeval(int64_t ns) {
    struct timeval tv;
    if (ns < 1000000) ns = 1000000; /* hiredis treats a zero timeout as "none" */
    tv.tv_sec = (time_t)(ns / NS);
    tv.tv_usec = (suseconds_t)((ns % NS) / 1000);
    return tv;
}

/* hiredis writes with write(2): a peer that went away would raise SIGPIPE. The signal is blocked in
 * this thread for the call and a SIGPIPE it caused is consumed, leaving the process's handlers alone. */
typedef struct {
    sigset_t old;
    int was_pending;
} pipe_guard;

static void pipe_guard_on(pipe_guard *g) {
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void pipe_guard_off(pipe_guard *g) {
    if (!g->was_pending) {
        sigset_t set, pending;
        struct timespec zero = {0, 0};
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        sigemptyset(&pending);
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE) == 1) sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static void drop_connection(redis_limiter *r) {
    if (r->ctx) redisFree(r->ctx);
    r->ctx = NULL;
}

static void io_error(redis_limiter *r, char *why, size_t n) {
    if (r->ctx && r->ctx->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
        snprintf(why, n, "no answer within the timeout");
    else
        snprintf(why, n, "%s", r->ctx && r->ctx->errstr[0] ? r->ctx->errstr : "connection lost");
    drop_connection(r);
}

/* One command with what is left until end_ns; NULL (connection dropped) on an I/O failure. */
static redisReply *command(redis_limiter *r, int64_t end_ns, int argc, const char **argv, const size_t *lens,
                           char *why, size_t n) {
    int64_t left = end_ns - rtc_monotonic_ns();
    redisReply *rep;
    pipe_guard g;
    if (left <= 0) {
        snprintf(why, n, "no answer within the timeout");
        return NULL;
    }
    redisSetTimeout(r->ctx, to_timeval(left));
    pipe_guard_on(&g);
    errno = 0;
    rep = redisCommandArgv(r->ctx, argc, argv, lens);
    if (!rep) io_error(r, why, n);
    pipe_guard_off(&g);
    return rep;
}

/* Runs a setup command that must not answer with an error; 0 or -1 with why. */
static int setup_command(redis_limiter *r, int64_t end_ns, int argc, const char **argv, const char *what,
                         char *why, size_t n) {
    size_t lens[3];
    int i;
    redisReply *rep;
    for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    rep = command(r, end_ns, argc, argv, lens, why, n);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(why, n, "%s refused: %s", what, rep->str);
        freeReplyObject(rep);
        drop_connection(r);
        return -1;
    }
    freeReplyObject(rep);
    return 0;
}

/* Connect, AUTH, SELECT, PING: after this the connection is known to work. */
static int open_connection(redis_limiter *r, int64_t end_ns, char *why, size_t n) {
    int64_t left = end_ns - rtc_monotonic_ns();
    const char *argv[3];
    char db[24];
    pipe_guard g;
    if (left <= 0) {
        snprintf(why, n, "no time left to connect");
        return -1;
    }
    pipe_guard_on(&g);
    r->ctx = redisConnectWithTimeout(r->hostname, r->port, to_timeval(left));
    pipe_guard_off(&g);
    if (!r->ctx) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    if (r->ctx->err) {
        snprintf(why, n, "cannot connect: %s", r->ctx->errstr);
        drop_connection(r);
        return -1;
    }
    if (r->password) {
        int argc = 0;
        argv[argc++] = "AUTH";
        if (r->user) argv[argc++] = r->user;
        argv[argc++] = r->password;
        if (setup_command(r, end_ns, argc, argv, "AUTH", why, n)) return -1;
    }
    if (r->db) {
        snprintf(db, sizeof db, "%ld", r->db);
        argv[0] = "SELECT";
        argv[1] = db;
        if (setup_command(r, end_ns, 2, argv, "SELECT", why, n)) return -1;
    }
    argv[0] = "PING";
    return setup_command(r, end_ns, 1, argv, "PING", why, n);
}

/* One GCRA step in Redis. *wait_ns: from the reply's arrival (*at_ns, our clock) to the slot. */
static int gcra_round_trip(redis_limiter *r, const unsigned char fp[8], const char *action, int64_t interval_ns,
                           int64_t not_before_ns, int64_t end_ns, int64_t *wait_ns, int64_t *at_ns, char *why,
                           size_t n) {
    char key[256], interval[32], not_before[32];
    const char *argv[6];
    size_t lens[6];
    redisReply *rep;
    int i;
    if (!r->ctx && open_connection(r, end_ns, why, n)) return -1;
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
    rep = command(r, end_ns, 6, argv, lens, why, n);
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(rep); /* a restarted or flushed Redis: EVAL loads the script again */
        argv[0] = "EVAL";
        argv[1] = r->script;
        lens[0] = 4;
        lens[1] = strlen(r->script);
        rep = command(r, end_ns, 6, argv, lens, why, n);
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

static void log_line(redis_limiter *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(redis_limiter *r, const char *fmt, ...) {
    va_list ap;
    if (!r->log) return;
    va_start(ap, fmt);
    fputs("rtcadmin: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int redis_reserve(rtc_limiter *self, const unsigned char fp[8], const char *action, int64_t interval_ns,
                         int64_t now_ns, int64_t deadline_ns, int64_t *start_ns, char *err, size_t errlen) {
    redis_limiter *r = (redis_limiter *)self;
    /* The fallback's interval: each slot counts 1/share of the budget. */
    int64_t shared_ns = (int64_t)ceil((double)interval_ns / r->share);
    if (!r->on_fallback || now_ns >= r->next_probe_ns) {
        int64_t end = now_ns + r->timeout_ns, wait_ns, at;
        int recovering = r->on_fallback;
        int64_t step = recovering || now_ns < r->grace_until_ns ? shared_ns : interval_ns;
        char why[sizeof r->last_error];
        if (end > deadline_ns) end = deadline_ns;
        /* Back from the fallback: its slots booked ahead come first. */
        int64_t not_before = r->fallback_end_ns > now_ns ? r->fallback_end_ns - now_ns : 0;
        if (gcra_round_trip(r, fp, action, step, not_before, end, &wait_ns, &at, why, sizeof why) == 0) {
            int64_t slot = at + wait_ns;
            if (recovering) {
                r->on_fallback = 0;
                r->recoveries++;
                r->grace_until_ns = at + r->reprobe_ns + r->timeout_ns;
                log_line(r, "Redis limiter at %s answers again; pacing with Redis", r->where);
            }
            if (slot + step > r->horizon_ns) r->horizon_ns = slot + step;
            *start_ns = slot;
            return 0;
        }
        r->errors++;
        memcpy(r->last_error, why, sizeof why);
        now_ns = rtc_monotonic_ns();
        r->next_probe_ns = now_ns + r->reprobe_ns;
        if (!r->on_fallback) {
            r->on_fallback = 1;
            r->fallbacks++;
            r->fallback_from_ns = (r->horizon_ns > now_ns ? r->horizon_ns : now_ns) + HANDOVER_NS;
            if (r->fallback_error)
                log_line(r, "Redis limiter at %s: %s; reservations fail until Redis answers again", r->where, why);
            else
                log_line(r, "Redis limiter at %s: %s; pacing with the host limiter at %g%% of each limit until "
                         "Redis answers again", r->where, why, r->share * 100);
        }
    }
    if (r->fallback_error) {
        snprintf(err, errlen, "Redis limiter at %s is unavailable: %s", r->where, r->last_error);
        return -1;
    }
    if (r->host->ops->reserve(r->host, fp, action, shared_ns,
                              now_ns > r->fallback_from_ns ? now_ns : r->fallback_from_ns, deadline_ns, start_ns,
                              err, errlen))
        return -1;
    if (*start_ns + shared_ns > r->fallback_end_ns) r->fallback_end_ns = *start_ns + shared_ns;
    return 0;
}

static void redis_destroy(rtc_limiter *self) {
    redis_limiter *r = (redis_limiter *)self;
    drop_connection(r);
    rtc_limiter_free(r->host);
    free(r->hostname);
    wipe_free(r->user);
    wipe_free(r->password);
    free(r->prefix);
    free(r->script);
    free(r);
}

static void redis_status(rtc_limiter *self, rtc_limiter_status *out) {
    redis_limiter *r = (redis_limiter *)self;
    out->active = !r->on_fallback ? "redis" : r->fallback_error ? "none" : "host";
    out->server = r->where;
    out->fallbacks = r->fallbacks;
    out->recoveries = r->recoveries;
    out->errors = r->errors;
    out->last_error = r->last_error[0] ? r->last_error : NULL;
}

static const rtc_limiter_ops redis_ops = {"redis", redis_reserve, redis_destroy, redis_status};

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL userinfo is percent-decoded (a password may hold '@' or ':'). NULL on a bad escape. */
static char *decode_part(const char *s, size_t n) {
    char *d = malloc(n + 1);
    size_t i, j = 0;
    if (!d) return NULL;
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                wipe_free(d);
                return NULL;
            }
            d[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            d[j++] = s[i];
        }
    }
    d[j] = '\0';
    return d;
}

/* redis://[[user]:password@]host[:port][/db]. Messages never quote the userinfo. */
static int parse_url(redis_limiter *r, const char *url, char *err, size_t errlen) {
    const char *p, *at, *end, *host_end, *port_at = NULL;
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen, "rediss:// (TLS) is not supported: this hiredis (%d.%d) has no TLS; reach a TLS Redis "
                 "through a local tunnel (stunnel, spiped) and use redis://", HIREDIS_MAJOR, HIREDIS_MINOR);
        return -1;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "url must start with redis://");
        return -1;
    }
    p = url + 8;
    end = p + strcspn(p, "/?#");
    at = NULL;
    {
        const char *q;
        for (q = p; q < end; q++)
            if (*q == '@') at = q; /* the last '@': the host part has none */
    }
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p && !(r->user = decode_part(p, (size_t)(colon - p)))) goto bad_userinfo;
            if (!(r->password = decode_part(colon + 1, (size_t)(at - colon - 1)))) goto bad_userinfo;
        } else if (at > p && !(r->password = decode_part(p, (size_t)(at - p)))) {
            goto bad_userinfo; /* redis://password@host, as redis-cli reads it */
        }
        p = at + 1;
    }
    if (*p == '[') {
        host_end = memchr(p, ']', (size_t)(end - p));
        if (!host_end) {
            snprintf(err, errlen, "url: unterminated [IPv6 address]");
            return -1;
        }
        r->hostname = dup_or_null(p + 1, (size_t)(host_end - p - 1));
        if (host_end + 1 < end) {
            if (host_end[1] != ':') {
                snprintf(err, errlen, "url: expected ':port' after the IPv6 address");
                return -1;
            }
            port_at = host_end + 2;
        }
    } else {
        host_end = memchr(p, ':', (size_t)(end - p));
        if (host_end) port_at = host_end + 1;
        else host_end = end;
        r->hostname = dup_or_null(p, (size_t)(host_end - p));
    }
    if (!r->hostname || !r->hostname[0]) {
        snprintf(err, errlen, r->hostname ? "url has no host" : "out of memory");
        return -1;
    }
    r->port = 6379;
    if (port_at) {
        char *e;
        long v = strtol(port_at, &e, 10);
        if (e != end || port_at == end || v < 1 || v > 65535) {
            snprintf(err, errlen, "url: port must be 1-65535");
            return -1;
        }
        r->port = (int)v;
    }
    if (*end == '/' && end[1]) {
        char *e;
        r->db = strtol(end + 1, &e, 10);
        if (*e || r->db < 0 || !(end[1] >= '0' && end[1] <= '9')) {
            snprintf(err, errlen, "url: the path must be a database number");
            return -1;
        }
    } else if (*end && !(*end == '/' && !end[1])) {
        snprintf(err, errlen, "url: unexpected query or fragment");
        return -1;
    }
    snprintf(r->where, sizeof r->where, "%s%s%s:%d/%ld", strchr(r->hostname, ':') ? "[" : "", r->hostname,
             strchr(r->hostname, ':') ? "]" : "", r->port, r->db);
    return 0;
bad_userinfo:
    snprintf(err, errlen, "url: bad percent-escape in the user or password");
    return -1;
}

static int sha1_hex(const char *s, char out[41]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!EVP_Digest(s, strlen(s), md, &len, EVP_sha1(), NULL) || len != 20) return -1;
    rtc_hex(md, len, out);
    return 0;
}

rtc_limiter *rtc_limiter_redis_new(const rtc_redis_opts *o, char *err, size_t errlen) {
    redis_limiter *r = calloc(1, sizeof *r);
    char why[sizeof r->last_error];
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->base.ops = &redis_ops;
    if (parse_url(r, o->url, err, errlen)) goto fail;
    if (o->password) {
        if (r->password) {
            snprintf(err, errlen, "give the password in the url or in 'password', not both");
            goto fail;
        }
        r->password = dup_or_null(o->password, strlen(o->password));
    }
    if (o->user) {
        if (r->user) {
            snprintf(err, errlen, "give the user in the url or in 'user', not both");
            goto fail;
        }
        r->user = dup_or_null(o->user, strlen(o->user));
    }
    if (r->user && !r->password) {
        snprintf(err, errlen, "a Redis user needs a password");
        goto fail;
    }
    r->prefix = dup_or_null(o->key_prefix ? o->key_prefix : DEFAULT_PREFIX,
                            strlen(o->key_prefix ? o->key_prefix : DEFAULT_PREFIX));
    r->script = dup_or_null(o->script, strlen(o->script));
    if (!r->prefix || !r->script || (o->password && !r->password) || (o->user && !r->user)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (sha1_hex(r->script, r->sha)) {
        snprintf(err, errlen, "cannot hash the GCRA script");
        goto fail;
    }
    r->timeout_ns = (int64_t)(o->timeout * 1e9);
    r->reprobe_ns = (int64_t)(o->reprobe * 1e9);
    r->share = o->fallback_share;
    r->fallback_error = o->fallback_error;
    r->log = o->log;
    r->host = rtc_limiter_host_new(o->dir, err, errlen);
    if (!r->host) goto fail;
    if (open_connection(r, rtc_monotonic_ns() + r->timeout_ns, why, sizeof why)) {
        snprintf(err, errlen, "Redis at %s: %s", r->where, why);
        goto fail;
    }
    return &r->base;
fail:
    redis_destroy(&r->base);
    return NULL;
}
