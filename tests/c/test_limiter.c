/* Limiter exactness with a fake clock, sharing across processes, and survival of killed processes. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "limiter.h"

#define SEC 1000000000LL

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The most sends that fall in any half-open window [t, t + 1 s). */
static int max_per_second(int64_t *t, int n) {
    int i, j = 0, best = 0;
    qsort(t, (size_t)n, sizeof *t, cmp64);
    for (i = 0; i < n; i++) {
        while (t[i] - t[j] >= SEC) j++;
        if (i - j + 1 > best) best = i - j + 1;
    }
    return best;
}

static const unsigned char KEY_A[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const unsigned char KEY_B[8] = {8, 7, 6, 5, 4, 3, 2, 1};

static void fake_clock_continuous_demand(void) {
    rtc_limit_table *t = calloc(1, sizeof *t);
    int64_t starts[600], now = 5 * SEC, interval = (SEC + 59) / 60; /* rounded up, as the client does */
    int i;
    for (i = 0; i < 600; i++) rtc_limit_reserve(t, KEY_A, "KickUser", interval, now, &starts[i]);
    CHECK(starts[0] == now, "first slot is immediate");
    for (i = 1; i < 600; i++) CHECK(starts[i] - starts[i - 1] == interval, "slot %d follows at the interval", i);
    CHECK(max_per_second(starts, 600) <= 60, "at most 60 in any second, got %d", max_per_second(starts, 600));
    CHECK(starts[599] - starts[0] == 599 * interval, "600 sends take 599 intervals: full use of the budget");
    CHECK(max_per_second(starts, 600) == 60, "and the whole budget is used");
    free(t);
}

static void fake_clock_bursty_callers(void) {
    rtc_limit_table *t = calloc(1, sizeof *t);
    static int64_t starts[5000];
    int64_t now = 0, interval = SEC / 40;
    int i;
    srand(42);
    /* Arrivals in random bursts, as several callers would produce; time only moves forward. */
    for (i = 0; i < 5000; i++) {
        if (rand() % 4 == 0) now += rand() % (SEC / 5);
        rtc_limit_reserve(t, KEY_A, "BanRoomUser", interval, now, &starts[i]);
        CHECK(starts[i] >= now, "a slot is never in the past");
    }
    CHECK(max_per_second(starts, 5000) <= 40, "at most 40 in any second, got %d", max_per_second(starts, 5000));
    free(t);
}

static void keys_and_actions_are_independent(void) {
    rtc_limit_table *t = calloc(1, sizeof *t);
    int64_t a, b, c, d;
    rtc_limit_reserve(t, KEY_A, "KickUser", SEC, 0, &a);
    rtc_limit_reserve(t, KEY_A, "BanRoomUser", SEC, 0, &b);
    rtc_limit_reserve(t, KEY_B, "KickUser", SEC, 0, &c);
    rtc_limit_reserve(t, KEY_A, "KickUser", SEC, 0, &d);
    CHECK(a == 0 && b == 0 && c == 0, "different (key, Action) schedules do not wait for each other");
    CHECK(d == SEC, "the same schedule waits");
    free(t);
}

static void full_table_is_an_error(void) {
    rtc_limit_table *t = calloc(1, sizeof *t);
    char name[32];
    int64_t s;
    int i, rc = 0;
    for (i = 0; i < RTC_LIMIT_SLOTS && rc == 0; i++) {
        snprintf(name, sizeof name, "Action%d", i);
        rc = rtc_limit_reserve(t, KEY_A, name, SEC, 0, &s);
    }
    CHECK(rc == 0, "a full table holds RTC_LIMIT_SLOTS schedules");
    CHECK(rtc_limit_reserve(t, KEY_A, "OneMore", SEC, 0, &s) == -1, "one more is refused, not overwritten");
    free(t);
}

/* Four processes reserve from the host table with the real clock; together they stay within the limit. */
static void host_table_shared_by_processes(const char *dir) {
    int fds[2], i, n = 0;
    int64_t all[4 * 100];
    char err[256];
    if (pipe(fds) != 0) return;
    for (i = 0; i < 4; i++) {
        if (fork() == 0) {
            rtc_limiter *l = rtc_limiter_host_new(dir, err, sizeof err);
            int k;
            close(fds[0]);
            for (k = 0; k < 100 && l; k++) {
                int64_t s;
                l->ops->reserve(l, KEY_B, "SharedTest", SEC / 200, rtc_monotonic_ns(), INT64_MAX, &s, err, sizeof err);
                rtc_sleep_until(s);
                if (write(fds[1], &s, sizeof s) != sizeof s) _exit(1);
            }
            rtc_limiter_free(l);
            _exit(0);
        }
    }
    close(fds[1]);
    while (n < 400 && read(fds[0], &all[n], sizeof all[n]) == sizeof all[n]) n++;
    close(fds[0]);
    while (wait(NULL) > 0) {
    }
    CHECK(n == 400, "all 400 reservations reported, got %d", n);
    CHECK(max_per_second(all, n) <= 200, "4 processes together stay within 200/s, got %d", max_per_second(all, n));
    qsort(all, (size_t)n, sizeof *all, cmp64);
    CHECK(all[n - 1] - all[0] < 2 * SEC + SEC / 2, "and use the budget: 400 sends in about 2 s");
}

/* A process killed at any point (here: between and during reservations, as a client that reserves,
 * sleeps until its slot, and sends) leaves the table usable and holds no budget beyond its slot. */
static void killed_process_leaves_table_usable(const char *dir) {
    char err[256];
    int round;
    for (round = 0; round < 20; round++) {
        pid_t pid = fork();
        if (pid == 0) {
            rtc_limiter *l = rtc_limiter_host_new(dir, err, sizeof err);
            for (;;) {
                int64_t s;
                l->ops->reserve(l, KEY_A, "KillTest", SEC / 1000, rtc_monotonic_ns(), INT64_MAX, &s, err, sizeof err);
                rtc_sleep_until(s);
            }
        }
        rtc_sleep_until(rtc_monotonic_ns() + 1000000 + round * 300000);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    {
        rtc_limiter *l = rtc_limiter_host_new(dir, err, sizeof err);
        int64_t now = rtc_monotonic_ns(), s = 0;
        int rc = l ? l->ops->reserve(l, KEY_A, "KillTest", SEC / 1000, now, INT64_MAX, &s, err, sizeof err) : -1;
        CHECK(rc == 0, "reserve works after 20 killed processes");
        /* A dead process held at most the one slot it was waiting for (up to one interval ahead), so the
         * next free slot is at most two intervals away. */
        CHECK(s - now <= 2 * (SEC / 1000), "no budget lost for long: next slot in %lld ns", (long long)(s - now));
        rtc_limiter_free(l);
    }
}

int main(void) {
    char dir[] = "/tmp/rtcadmin-limiter-test-XXXXXX";
    char path[600];
    if (!mkdtemp(dir)) return 2;
    fake_clock_continuous_demand();
    fake_clock_bursty_callers();
    keys_and_actions_are_independent();
    full_table_is_an_error();
    host_table_shared_by_processes(dir);
    killed_process_leaves_table_usable(dir);
    snprintf(path, sizeof path, "%s/rtcadmin-limits-v1-%lu", dir, (unsigned long)getuid());
    unlink(path);
    rmdir(dir);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
