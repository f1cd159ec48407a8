/* Opening and using one hiredis connection (redis_conn.h): shared by the limiter's C backend and
 * rtcadmin.redis. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "limiter.h"
#include "redis_conn.h"

#define NS 1000000000LL

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

void rtc_redis_drop(rtc_redis_conn *c) {
    if (c->ctx) redisFree(c->ctx);
    c->ctx = NULL;
}

static void io_error(rtc_redis_conn *c, char *why, size_t n) {
    if (c->ctx && c->ctx->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
        snprintf(why, n, "no answer within the timeout");
    else
        snprintf(why, n, "%s", c->ctx && c->ctx->errstr[0] ? c->ctx->errstr : "connection lost");
    rtc_redis_drop(c);
}

/* Sets the socket timeout to what is left until end_ns; 0, or -1 with why when nothing is left. */
static int time_left(rtc_redis_conn *c, int64_t end_ns, char *why, size_t n) {
    int64_t left = end_ns - rtc_monotonic_ns();
    if (left <= 0) {
        snprintf(why, n, "no answer within the timeout");
        return -1;
    }
    redisSetTimeout(c->ctx, to_timeval(left));
    return 0;
}

redisReply *rtc_redis_command(rtc_redis_conn *c, int64_t end_ns, int argc, const char **argv, const size_t *lens,
                              char *why, size_t n) {
    redisReply *rep;
    pipe_guard g;
    if (!c->ctx) {
        snprintf(why, n, "not connected");
        return NULL;
    }
    if (time_left(c, end_ns, why, n)) return NULL;
    pipe_guard_on(&g);
    errno = 0;
    rep = redisCommandArgv(c->ctx, argc, argv, lens);
    if (!rep) io_error(c, why, n);
    pipe_guard_off(&g);
    return rep;
}

int rtc_redis_pipeline(rtc_redis_conn *c, int64_t end_ns, int ncmds, const int *argcs, const char *const *const *argvs,
                       const size_t *const *lens, redisReply **out, char *why, size_t n) {
    pipe_guard g;
    int i, got = 0;
    if (!c->ctx) {
        snprintf(why, n, "not connected");
        return -1;
    }
    if (time_left(c, end_ns, why, n)) return -1;
    for (i = 0; i < ncmds; i++) {
        if (redisAppendCommandArgv(c->ctx, argcs[i], (const char **)argvs[i], lens[i]) != REDIS_OK) {
            snprintf(why, n, "out of memory");
            rtc_redis_drop(c); /* half a pipeline is buffered: the connection is unusable */
            return -1;
        }
    }
    pipe_guard_on(&g);
    errno = 0;
    for (; got < ncmds; got++) {
        void *rep = NULL;
        if (redisGetReply(c->ctx, &rep) != REDIS_OK || !rep) break;
        out[got] = rep;
        if (got + 1 < ncmds && time_left(c, end_ns, why, n)) {
            got++;
            rtc_redis_drop(c);
            break;
        }
    }
    if (got < ncmds && c->ctx) io_error(c, why, n);
    pipe_guard_off(&g);
    if (got == ncmds) return 0;
    for (i = 0; i < got; i++) freeReplyObject(out[i]);
    return -1;
}

/* A setup command that must not answer with an error: 0, -1 (I/O) or RTC_REDIS_REFUSED with why. */
static int setup_command(rtc_redis_conn *c, int64_t end_ns, int argc, const char **argv, const char *what, char *why,
                         size_t n) {
    size_t lens[3];
    int i;
    redisReply *rep;
    for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    rep = rtc_redis_command(c, end_ns, argc, argv, lens, why, n);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(why, n, "%s refused: %s", what, rep->str);
        freeReplyObject(rep);
        rtc_redis_drop(c);
        return RTC_REDIS_REFUSED;
    }
    freeReplyObject(rep);
    return 0;
}

int rtc_redis_open(rtc_redis_conn *c, int64_t end_ns, char *why, size_t n) {
    int64_t left = end_ns - rtc_monotonic_ns();
    const char *argv[3];
    char db[24];
    pipe_guard g;
    int rc;
    rtc_redis_drop(c);
    if (left <= 0) {
        snprintf(why, n, "no time left to connect");
        return -1;
    }
    pipe_guard_on(&g);
    c->ctx = redisConnectWithTimeout(c->url.host, c->url.port, to_timeval(left));
    pipe_guard_off(&g);
    if (!c->ctx) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    if (c->ctx->err) {
        snprintf(why, n, "cannot connect: %s", c->ctx->errstr);
        rtc_redis_drop(c);
        return -1;
    }
    if (c->url.password) {
        int argc = 0;
        argv[argc++] = "AUTH";
        if (c->url.user) argv[argc++] = c->url.user;
        argv[argc++] = c->url.password;
        if ((rc = setup_command(c, end_ns, argc, argv, "AUTH", why, n))) return rc;
    }
    if (c->url.db) {
        snprintf(db, sizeof db, "%ld", c->url.db);
        argv[0] = "SELECT";
        argv[1] = db;
        if ((rc = setup_command(c, end_ns, 2, argv, "SELECT", why, n))) return rc;
    }
    argv[0] = "PING";
    return setup_command(c, end_ns, 1, argv, "PING", why, n);
}
