#include "limiter.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t rtc_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* system-wide on Linux: comparable across processes */
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void rtc_sleep_until(int64_t t_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(t_ns / 1000000000LL);
    ts.tv_nsec = (long)(t_ns % 1000000000LL);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

uint64_t rtc_limit_key(const unsigned char fp[8], const char *action) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    int i;
    for (i = 0; i < 8; i++) h = (h ^ fp[i]) * 1099511628211ULL;
    for (; *action; action++) h = (h ^ (unsigned char)*action) * 1099511628211ULL;
    return h ? h : 1;
}

int rtc_limit_reserve(rtc_limit_table *t, const unsigned char fp[8], const char *action, int64_t interval_ns,
                      int64_t now_ns, int64_t *start_ns) {
    uint64_t key = rtc_limit_key(fp, action);
    size_t i, idx = (size_t)(key % RTC_LIMIT_SLOTS);
    rtc_limit_slot *s = NULL;
    for (i = 0; i < RTC_LIMIT_SLOTS; i++) {
        rtc_limit_slot *c = &t->slots[(idx + i) % RTC_LIMIT_SLOTS];
        uint64_t k = __atomic_load_n(&c->key, __ATOMIC_ACQUIRE), zero = 0;
        if (k == key) {
            s = c;
            break;
        }
        if (k == 0) {
            if (__atomic_compare_exchange_n(&c->key, &zero, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                /* Informational; a torn name is harmless. */
                snprintf(c->name, sizeof c->name, "%.30s/%02x%02x%02x%02x", action, fp[0], fp[1], fp[2], fp[3]);
                s = c;
                break;
            }
            if (zero == key) {
                s = c;
                break;
            }
        }
    }
    if (!s) return -1;
    for (;;) {
        int64_t old = __atomic_load_n(&s->tat, __ATOMIC_ACQUIRE);
        int64_t start = old > now_ns ? old : now_ns;
        if (__atomic_compare_exchange_n(&s->tat, &old, start + interval_ns, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *start_ns = start;
            return 0;
        }
    }
}

int64_t rtc_limit_peek(const rtc_limit_table *t, const unsigned char fp[8], const char *action) {
    uint64_t key = rtc_limit_key(fp, action);
    size_t i, idx = (size_t)(key % RTC_LIMIT_SLOTS);
    for (i = 0; i < RTC_LIMIT_SLOTS; i++) {
        const rtc_limit_slot *c = &t->slots[(idx + i) % RTC_LIMIT_SLOTS];
        uint64_t k = __atomic_load_n(&c->key, __ATOMIC_ACQUIRE);
        if (k == key) return __atomic_load_n(&c->tat, __ATOMIC_ACQUIRE);
        if (k == 0) break;
    }
    return 0;
}

static int table_reserve(rtc_limiter *l, const unsigned char fp[8], const char *action, int64_t interval_ns,
                         int64_t now_ns, int64_t deadline_ns, int64_t *start_ns, char *err, size_t errlen) {
    (void)deadline_ns; /* memory never blocks */
    if (rtc_limit_reserve(l->table, fp, action, interval_ns, now_ns, start_ns)) {
        snprintf(err, errlen, "limiter table %s is full (%d schedules)", l->path[0] ? l->path : "(process)",
                 RTC_LIMIT_SLOTS);
        return -1;
    }
    return 0;
}

static void process_destroy(rtc_limiter *l) {
    free(l->table);
    free(l);
}

static void host_destroy(rtc_limiter *l) {
    if (l->table) munmap(l->table, l->mapped);
    free(l);
}

static const rtc_limiter_ops process_ops = {"process", table_reserve, process_destroy, NULL};
static const rtc_limiter_ops host_ops = {"host", table_reserve, host_destroy, NULL};

rtc_limiter *rtc_limiter_process_new(void) {
    rtc_limiter *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->table = calloc(1, sizeof *l->table);
    if (!l->table) {
        free(l);
        return NULL;
    }
    l->ops = &process_ops;
    return l;
}

rtc_limiter *rtc_limiter_host_new(const char *dir, char *err, size_t errlen) {
    rtc_limiter *l;
    struct stat st;
    int fd;
    void *p;
    if (!dir) dir = (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) ? "/dev/shm" : "/tmp";
    l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* One file per user: processes started independently find each other by name. */
    snprintf(l->path, sizeof l->path, "%s/rtcadmin-limits-v1-%lu", dir, (unsigned long)getuid());
    fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", l->path, strerror(errno));
        free(l);
        return NULL;
    }
    /* Every process extends the zero-filled file to the same size: racing is harmless. */
    if (fstat(fd, &st) != 0 || (st.st_size < (off_t)sizeof(rtc_limit_table) &&
                                ftruncate(fd, (off_t)sizeof(rtc_limit_table)) != 0)) {
        snprintf(err, errlen, "cannot size %s: %s", l->path, strerror(errno));
        close(fd);
        free(l);
        return NULL;
    }
    p = mmap(NULL, sizeof(rtc_limit_table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s: %s", l->path, strerror(errno));
        free(l);
        return NULL;
    }
    l->table = p;
    l->mapped = sizeof(rtc_limit_table);
    l->ops = &host_ops;
    return l;
}

void rtc_limiter_free(rtc_limiter *l) {
    if (l) l->ops->destroy(l);
}
