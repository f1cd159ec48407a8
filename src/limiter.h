/* Send pacing: one GCRA schedule per (access key, Action), in process memory or in a file shared by
 * every process on the host. No Lua. */
#ifndef RTCADMIN_LIMITER_H
#define RTCADMIN_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#define RTC_LIMIT_SLOTS 1024
#define RTC_LIMIT_NAME 48

/* One schedule: `tat` is the theoretical arrival time (CLOCK_MONOTONIC ns) of the next free slot. */
typedef struct {
    uint64_t key;                 /* 0 = free; else hash of (key fingerprint, Action) */
    int64_t tat;
    char name[RTC_LIMIT_NAME];    /* "Action/fingerprint", for inspection only */
} rtc_limit_slot;

/* The file layout is versioned through its name (rtcadmin-limits-v1-UID). */
typedef struct {
    rtc_limit_slot slots[RTC_LIMIT_SLOTS];
} rtc_limit_table;

typedef struct rtc_limiter rtc_limiter;

/* What a backend reports about itself (client:info().limiter). */
typedef struct {
    const char *active;           /* the schedule in use now: "redis", "host" (fallback), ... */
    const char *server;           /* "host:port/db" or NULL; never credentials */
    long fallbacks;               /* times the backend fell back */
    long recoveries;              /* times it came back */
    long errors;                  /* failed round trips */
    const char *last_error;       /* or NULL */
} rtc_limiter_status;

/* The backend interface: every backend hands out send times; callers wait until then and send. */
typedef struct {
    const char *name;
    /* Reserves the next send slot at least interval_ns after the previous one. *start_ns is when
     * the caller may send (>= now_ns). A backend that talks to a server gives up by deadline_ns.
     * Returns 0, or -1 with err filled. */
    int (*reserve)(rtc_limiter *self, const unsigned char fingerprint[8], const char *action, int64_t interval_ns,
                   int64_t now_ns, int64_t deadline_ns, int64_t *start_ns, char *err, size_t errlen);
    void (*destroy)(rtc_limiter *self);
    void (*status)(rtc_limiter *self, rtc_limiter_status *out); /* NULL: nothing beyond the name */
} rtc_limiter_ops;

struct rtc_limiter {
    const rtc_limiter_ops *ops;
    rtc_limit_table *table;
    size_t mapped;                /* bytes mapped for the host backend; 0 for process memory */
    char path[512];
};

/* The schedule arithmetic on one table: lock-free (compare-and-swap), so a process that dies at
 * any point can neither block others nor leave the table inconsistent. */
int rtc_limit_reserve(rtc_limit_table *t, const unsigned char fingerprint[8], const char *action,
                      int64_t interval_ns, int64_t now_ns, int64_t *start_ns);
/* The schedule's identity in a table: a hash of (key fingerprint, Action), never 0. */
uint64_t rtc_limit_key(const unsigned char fingerprint[8], const char *action);
/* The schedule's TAT (when its next slot is free), or 0 when the table has no such schedule. */
int64_t rtc_limit_peek(const rtc_limit_table *t, const unsigned char fingerprint[8], const char *action);

rtc_limiter *rtc_limiter_process_new(void);
/* dir: where the shared table file lives (NULL: /dev/shm, else /tmp). */
rtc_limiter *rtc_limiter_host_new(const char *dir, char *err, size_t errlen);
void rtc_limiter_free(rtc_limiter *l);

/* The "redis" backend (limiter_redis.c): one schedule per key in Redis, shared by every host. */
typedef struct {
    const char *url;              /* redis://[[user]:password@]host[:port][/db] */
    const char *user;             /* ACL user, or NULL (also from the URL) */
    const char *password;         /* or NULL (also from the URL; not both) */
    const char *key_prefix;       /* NULL: "rtcadmin:gcra:" */
    const char *script;           /* the GCRA script text (lua/rtcadmin/redis_gcra.lua) */
    const char *dir;              /* the host table's directory, as for the host backend */
    double timeout;               /* seconds per round trip (connect, AUTH, each command) */
    double reprobe;               /* seconds between attempts to reach Redis again */
    double fallback_share;        /* share of each limit paced by the host table while Redis is away */
    int fallback_error;           /* 1: fail reservations instead of falling back */
    int log;                      /* 1: one stderr line when falling back and when recovering */
} rtc_redis_opts;

/* Connects, authenticates, selects the db and pings before returning: a wrong URL, password or db
 * is an error here. NULL with err on failure. */
rtc_limiter *rtc_limiter_redis_new(const rtc_redis_opts *o, char *err, size_t errlen);

int64_t rtc_monotonic_ns(void);
/* Sleeps until the monotonic clock reads at least t_ns. */
void rtc_sleep_until(int64_t t_ns);

#endif
