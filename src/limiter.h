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

/* The backend interface: every backend hands out send times; callers wait until then and send. */
typedef struct {
    const char *name;
    /* Reserves the next send slot at least interval_ns after the previous one. *start_ns is when
     * the caller may send (>= now_ns). Returns 0, or -1 with err filled. */
    int (*reserve)(rtc_limiter *self, const unsigned char fingerprint[8], const char *action, int64_t interval_ns,
                   int64_t now_ns, int64_t *start_ns, char *err, size_t errlen);
    void (*destroy)(rtc_limiter *self);
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

rtc_limiter *rtc_limiter_process_new(void);
/* dir: where the shared table file lives (NULL: /dev/shm, else /tmp). */
rtc_limiter *rtc_limiter_host_new(const char *dir, char *err, size_t errlen);
void rtc_limiter_free(rtc_limiter *l);

int64_t rtc_monotonic_ns(void);
/* Sleeps until the monotonic clock reads at least t_ns. */
void rtc_sleep_until(int64_t t_ns);

#endif
