/* The Redis limiter's fallback decision (src/redis_fallback.c) on a fake clock: every rule on its own,
 * then whole processes driven through the shared outage timeline (tests/vectors/redis_outage.txt,
 * the one the Lua suite plays with a real redis-server) against a fake Redis running the GCRA step of
 * lua/rtcadmin/redis_gcra.lua. Usage: test_redis_fallback TIMELINE */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "redis_common.h"

#define SEC 1000000000LL
#define MS 1000000LL
#define MAX_PHASES 32
#define MAX_SENDS 4096
#define MAX_NOTES 16

static const unsigned char KEY[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const char *WHERE = "10.0.0.5:6379/0";

/* ---- the timeline ---------------------------------------------------------------------------- */

typedef struct {
    int up[MAX_PHASES];
    int64_t start[MAX_PHASES + 1]; /* start[n] is the end of the last phase */
    int n;
} timeline;

static int load_timeline(const char *path, timeline *tl) {
    FILE *f = fopen(path, "r");
    char line[256], state[16];
    double seconds;
    int64_t t = 0;
    if (!f) return -1;
    tl->n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "%15s %lf", state, &seconds) != 2 || tl->n == MAX_PHASES ||
            (strcmp(state, "up") != 0 && strcmp(state, "down") != 0)) {
            fclose(f);
            return -1;
        }
        tl->up[tl->n] = strcmp(state, "up") == 0;
        tl->start[tl->n++] = t;
        t += (int64_t)(seconds * SEC);
    }
    tl->start[tl->n] = t;
    fclose(f);
    return tl->n ? 0 : -1;
}

/* The phase at time t (the last one past the end). */
static int phase_at(const timeline *tl, int64_t t) {
    int i = 0;
    while (i + 1 < tl->n && t >= tl->start[i + 1]) i++;
    return i;
}

/* ---- a fake Redis: the GCRA step of lua/rtcadmin/redis_gcra.lua, one schedule per name ---------- */

typedef struct {
    const timeline *tl;
    int generation;               /* the phase it last answered in: a restart empties it */
    char name[4][32];
    int64_t tat[4];
} fake_redis;

/* 0 and *wait_ns, or -1 when it is down at `now`. */
static int fake_gcra(fake_redis *r, const char *name, int64_t interval_ns, int64_t not_before_ns, int64_t now,
                     int64_t *wait_ns) {
    int p = phase_at(r->tl, now), i;
    int64_t start;
    if (!r->tl->up[p]) return -1;
    if (p != r->generation) {
        memset(r->tat, 0, sizeof r->tat);
        r->generation = p;
    }
    for (i = 0; i < 4 && r->name[i][0] && strcmp(r->name[i], name) != 0; i++) {
    }
    if (i == 4) return -1;
    snprintf(r->name[i], sizeof r->name[i], "%s", name);
    /* microseconds on the wire, rounded up as both drivers round them */
    interval_ns = (interval_ns + 999) / 1000 * 1000;
    not_before_ns = (not_before_ns + 999) / 1000 * 1000;
    start = r->tat[i] > now + not_before_ns ? r->tat[i] : now + not_before_ns;
    r->tat[i] = start + interval_ns;
    *wait_ns = start - now;
    return 0;
}

/* ---- a process: the drivers' loop around the decision ---------------------------------------- */

typedef struct {
    int64_t reserved, start;
    int from_redis;
} send;

typedef struct {
    rtc_fallback *d;
    const char *action;
    int64_t interval_ns;
    int64_t next;                 /* when it reserves again: as soon as it has sent */
    send sends[MAX_SENDS];
    int nsends;
    char notes[MAX_NOTES][RTC_FB_TEXT];
    int nnotes;
} proc;

static rtc_fallback *decision(const char *dir, double share, int fail) {
    rtc_fallback_opts o;
    char err[256];
    rtc_fallback *d;
    memset(&o, 0, sizeof o);
    o.where = WHERE;
    o.dir = dir;
    o.timeout = 0.1;
    o.reprobe = 0.2;
    o.share = share;
    o.fail = fail;
    d = rtc_fallback_new(&o, err, sizeof err);
    if (!d) printf("rtc_fallback_new: %s\n", err);
    return d;
}

static void note(proc *p, const rtc_fb_text *out) {
    if (out->note[0] && p->nnotes < MAX_NOTES) snprintf(p->notes[p->nnotes++], RTC_FB_TEXT, "%s", out->note);
}

/* One reservation at `now`, asking the fake Redis when the decision says so; its outcome. */
static rtc_fb_result reserve(proc *p, fake_redis *r, int64_t now, rtc_fb_turn *t) {
    rtc_fb_text out;
    rtc_fb_result rc = rtc_fallback_begin(p->d, t, KEY, p->action, p->interval_ns, now, INT64_MAX, &out);
    if (rc == RTC_FB_ASK) {
        int64_t wait;
        if (fake_gcra(r, p->action, t->interval_ns, t->not_before_ns, now, &wait) == 0)
            rc = rtc_fallback_answered(p->d, t, now, wait, &out);
        else
            rc = rtc_fallback_failed(p->d, t, now, "cannot connect: Connection refused", 0, &out);
    }
    note(p, &out);
    return rc;
}

/* Runs the processes, each reserving again as soon as it has sent, until `end`. */
static void run(proc *ps, int n, fake_redis *r, int64_t end) {
    for (;;) {
        proc *p = NULL;
        rtc_fb_turn t;
        int i;
        for (i = 0; i < n; i++)
            if (!p || ps[i].next < p->next) p = &ps[i];
        if (p->next >= end || p->nsends == MAX_SENDS) return;
        if (reserve(p, r, p->next, &t) != RTC_FB_SLOT) {
            printf("reservation failed\n");
            return;
        }
        p->sends[p->nsends].reserved = p->next;
        p->sends[p->nsends].start = t.start_ns;
        p->sends[p->nsends++].from_redis = strcmp(t.source, "redis") == 0;
        p->next = t.start_ns > p->next ? t.start_ns : p->next;
    }
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The most sends of all processes in any window [t, t + 1 s), and where the first such window starts. */
static int max_per_second(proc *ps, int n, int64_t *at) {
    static int64_t t[MAX_SENDS * 8];
    int i, j, k = 0, best = 0;
    for (i = 0; i < n; i++)
        for (j = 0; j < ps[i].nsends && k < MAX_SENDS * 8; j++) t[k++] = ps[i].sends[j].start;
    qsort(t, (size_t)k, sizeof *t, cmp64);
    for (i = 0, j = 0; i < k; i++) {
        while (t[i] - t[j] >= SEC) j++;
        if (i - j + 1 > best) {
            best = i - j + 1;
            *at = t[j];
        }
    }
    return best;
}

static char dirs[4][64];

static void make_dirs(void) {
    int i;
    for (i = 0; i < 4; i++) {
        snprintf(dirs[i], sizeof dirs[i], "/tmp/rtcadmin-fallback-test-XXXXXX");
        if (!mkdtemp(dirs[i])) dirs[i][0] = '\0';
    }
}

static void remove_dirs(void) {
    char path[320];
    int i;
    for (i = 0; i < 4; i++) {
        if (!dirs[i][0]) continue;
        snprintf(path, sizeof path, "%s/rtcadmin-limits-v1-%lu", dirs[i], (unsigned long)getuid());
        unlink(path);
        rmdir(dirs[i]);
    }
}

/* Each test starts its host tables empty. */
static void empty_dirs(void) {
    remove_dirs();
    make_dirs();
}

static void free_procs(proc *ps, int n) {
    int i;
    for (i = 0; i < n; i++) rtc_fallback_free(ps[i].d);
}


/* ---- the rules, one by one ------------------------------------------------------------------ */

#define I50 (50 * MS)             /* a 20/s schedule: 100 ms on the fallback at half the limit */

static rtc_fb_result ask(rtc_fallback *d, rtc_fb_turn *t, const char *action, int64_t now, rtc_fb_text *out) {
    return rtc_fallback_begin(d, t, KEY, action, I50, now, INT64_MAX, out);
}

/* The host table's schedule for (KEY, action), read as another process on the host would. */
static int64_t host_tat(const char *action) {
    char err[256];
    rtc_limiter *l = rtc_limiter_host_new(dirs[0], err, sizeof err);
    int64_t tat = l ? rtc_limit_peek(l->table, KEY, action) : -1;
    rtc_limiter_free(l);
    return tat;
}

/* A decision alone on an empty host table (dirs[0]), at half the limit. */
static rtc_fallback *fresh(int fail) {
    empty_dirs();
    return decision(dirs[0], 0.5, fail);
}

static void check_status(rtc_fallback *d, const char *active, long fallbacks, long recoveries, int line) {
    rtc_limiter_status st;
    rtc_fallback_status(d, &st);
    CHECK(strcmp(st.active, active) == 0 && st.fallbacks == fallbacks && st.recoveries == recoveries,
          "(line %d) status %s %ld %ld, expected %s %ld %ld", line, st.active, st.fallbacks, st.recoveries, active,
          fallbacks, recoveries);
    CHECK(strcmp(st.server, WHERE) == 0, "(line %d) server %s", line, st.server);
}
#define STATUS(d, active, f, r) check_status((d), (active), (f), (r), __LINE__)

static void asks_redis_while_it_answers(void) {
    rtc_fallback *d;
    rtc_fb_turn t;
    rtc_fb_text out;
    int64_t now = 100 * SEC;
    d = fresh(0);
    CHECK(ask(d, &t, "KickUser", now, &out) == RTC_FB_ASK, "on Redis, a reservation asks Redis");
    CHECK(t.interval_ns == I50 && t.not_before_ns == 0, "the whole interval, no not-before: %lld %lld",
          (long long)t.interval_ns, (long long)t.not_before_ns);
    CHECK(t.end_ns == now + 100 * MS, "the round trip may take the timeout");
    CHECK(rtc_fallback_answered(d, &t, now + MS, 30 * MS, &out) == RTC_FB_SLOT, "an answer is a slot");
    CHECK(t.start_ns == now + 31 * MS && strcmp(t.source, "redis") == 0, "the reply's arrival + the wait, from Redis");
    CHECK(out.note[0] == '\0', "nothing to log");
    STATUS(d, "redis", 0, 0);
    CHECK(rtc_fallback_begin(d, &t, KEY, "KickUser", I50, now, now + 20 * MS, &out) == RTC_FB_ASK &&
              t.end_ns == now + 20 * MS,
          "the call's deadline bounds the round trip");
    CHECK(rtc_fallback_begin(d, &t, KEY, "KickUser", I50, now, now - 5 * MS, &out) == RTC_FB_ASK &&
              t.end_ns == now + MS,
          "but it is given 1 ms at least");
    {
        char longname[200];
        memset(longname, 'A', sizeof longname - 1);
        longname[sizeof longname - 1] = '\0';
        CHECK(ask(d, &t, longname, now, &out) == RTC_FB_FAIL && strstr(out.err, "longer than"),
              "an over-long Action name is refused: %s", out.err);
    }
    rtc_fallback_free(d);
}

static void falls_back_once_and_comes_back(void) {
    rtc_fallback *d;
    rtc_fb_turn t, probe, other;
    rtc_fb_text out;
    int64_t now = 100 * SEC, first, slot;
    d = fresh(0);
    ask(d, &t, "KickUser", now, &out);
    rtc_fallback_answered(d, &t, now, 300 * MS, &out); /* a Redis slot 300 ms ahead: the horizon */
    now += 10 * MS;
    ask(d, &t, "KickUser", now, &out);
    CHECK(rtc_fallback_failed(d, &t, now, "cannot connect: Connection refused", 0, &out) == RTC_FB_SLOT,
          "a failed round trip still gets a slot");
    CHECK(strcmp(out.note, "Redis limiter at 10.0.0.5:6379/0: cannot connect: Connection refused; pacing with the "
                           "host limiter at 50% of each limit until Redis answers again") == 0,
          "one line says so: %s", out.note);
    first = t.start_ns;
    CHECK(strcmp(t.source, "host") == 0 && first == 100 * SEC + 350 * MS + RTC_FB_HANDOVER_NS,
          "from the host table, 1 s after the last Redis slot's end: %lld", (long long)first);
    STATUS(d, "host", 1, 0);
    now += 50 * MS;
    CHECK(ask(d, &t, "KickUser", now, &out) == RTC_FB_SLOT && t.start_ns == first + 2 * I50 && !out.note[0],
          "before the re-probe: the next host slot at 1/share intervals, without asking, nothing logged");
    now += 200 * MS;
    CHECK(ask(d, &probe, "KickUser", now, &out) == RTC_FB_ASK, "after reprobe: one reservation asks Redis");
    CHECK(probe.interval_ns == 2 * I50, "at 1/share intervals: %lld", (long long)probe.interval_ns);
    CHECK(probe.not_before_ns == first + 4 * I50 - now,
          "after the host table's slots on this schedule: %lld", (long long)probe.not_before_ns);
    CHECK(ask(d, &other, "KickUser", now, &out) == RTC_FB_SLOT && strcmp(other.source, "host") == 0,
          "while the probe is out, the others stay on the fallback");
    CHECK(ask(d, &other, "KickUser", now + 250 * MS, &out) == RTC_FB_SLOT,
          "also past reprobe, as long as the probe may still be answered");
    CHECK(rtc_fallback_failed(d, &probe, now + 100 * MS, "no answer within the timeout", 0, &out) == RTC_FB_SLOT &&
              !out.note[0],
          "a failed probe: a host slot, nothing logged");
    STATUS(d, "host", 1, 0);
    now += 400 * MS;
    CHECK(ask(d, &probe, "KickUser", now, &out) == RTC_FB_ASK, "probing again");
    CHECK(rtc_fallback_answered(d, &probe, now, probe.not_before_ns, &out) == RTC_FB_SLOT, "Redis answers");
    CHECK(strcmp(out.note, "Redis limiter at 10.0.0.5:6379/0 answers again; pacing with Redis") == 0, "logged: %s",
          out.note);
    STATUS(d, "redis", 1, 1);
    slot = probe.start_ns;
    CHECK(host_tat("KickUser") == slot + 2 * I50, "the homecoming slot is booked on the host table too");
    now += 100 * MS;
    CHECK(ask(d, &t, "KickUser", now, &out) == RTC_FB_ASK && t.interval_ns == 2 * I50 &&
              t.not_before_ns == slot + 2 * I50 - now,
          "within reprobe + timeout of the recovery: still 1/share intervals, after the host table");
    rtc_fallback_answered(d, &t, now, t.not_before_ns, &out);
    now += 300 * MS;
    CHECK(ask(d, &t, "KickUser", now, &out) == RTC_FB_ASK && t.interval_ns == I50 && t.not_before_ns == 0,
          "after it: the whole limit, no not-before");
    slot = host_tat("KickUser");
    rtc_fallback_answered(d, &t, now, 0, &out);
    CHECK(host_tat("KickUser") == slot, "and nothing more booked on the host table");
    STATUS(d, "redis", 1, 1);
    rtc_fallback_free(d);
}

/* "Not before" is the host table's schedule: per (key, Action), and the same for every process on
 * the host. */
static void not_before_is_per_schedule_and_host(void) {
    rtc_fallback *a, *b;
    rtc_fb_turn t;
    rtc_fb_text out;
    int64_t now = 100 * SEC;
    int i;
    empty_dirs();
    a = decision(dirs[0], 0.5, 0);
    b = decision(dirs[0], 0.5, 0);
    ask(a, &t, "KickUser", now, &out);
    rtc_fallback_failed(a, &t, now, "connection reset", 0, &out);
    ask(b, &t, "KickUser", now, &out);
    rtc_fallback_failed(b, &t, now, "connection reset", 0, &out);
    for (i = 0; i < 10; i++) ask(b, &t, "KickUser", now, &out); /* b books far ahead on the fallback */
    now += 300 * MS;
    CHECK(ask(a, &t, "BanRoomUser", now, &out) == RTC_FB_ASK && t.not_before_ns == 0,
          "another Action's first Redis slot is not held back: %lld", (long long)t.not_before_ns);
    rtc_fallback_answered(a, &t, now, 0, &out);
    CHECK(ask(a, &t, "KickUser", now, &out) == RTC_FB_ASK && t.not_before_ns == host_tat("KickUser") - now &&
              t.not_before_ns > SEC,
          "this Action's waits for the slots another process on this host booked: %lld",
          (long long)t.not_before_ns);
    rtc_fallback_free(a);
    rtc_fallback_free(b);
}

/* Overlapping turns (coroutines): an outcome counts for the state its turn began in. */
static void outcomes_count_for_their_state(void) {
    rtc_fallback *d;
    rtc_fb_turn x, y, late, probe;
    rtc_fb_text out;
    int64_t now = 100 * SEC;
    d = fresh(0);
    ask(d, &x, "KickUser", now, &out);
    ask(d, &y, "KickUser", now, &out);
    ask(d, &late, "KickUser", now, &out);
    rtc_fallback_failed(d, &y, now, "connection reset", 0, &out);
    CHECK(out.note[0] != '\0', "the first failure falls back");
    CHECK(rtc_fallback_answered(d, &x, now + MS, 0, &out) == RTC_FB_SLOT && strcmp(x.source, "redis") == 0 &&
              !out.note[0],
          "a reply asked before the fallback is a Redis slot, and no recovery");
    STATUS(d, "host", 1, 0);
    now += 300 * MS;
    ask(d, &probe, "KickUser", now, &out);
    rtc_fallback_answered(d, &probe, now, 0, &out);
    STATUS(d, "redis", 1, 1);
    CHECK(rtc_fallback_failed(d, &late, now + MS, "no answer within the timeout", 0, &out) == RTC_FB_SLOT &&
              strcmp(late.source, "host") == 0 && !out.note[0],
          "a failure asked before the recovery: a host slot for it, and no new fallback");
    STATUS(d, "redis", 1, 1);
    rtc_fallback_free(d);
}

static void refusals_before_any_answer_are_configuration_errors(void) {
    rtc_fallback *d;
    rtc_fb_turn t;
    rtc_fb_text out;
    int64_t now = 100 * SEC;
    d = fresh(0);
    ask(d, &t, "KickUser", now, &out);
    CHECK(rtc_fallback_failed(d, &t, now, "AUTH refused: WRONGPASS invalid username-password pair", 1, &out) ==
                  RTC_FB_FAIL &&
              strcmp(out.err, "Redis limiter at 10.0.0.5:6379/0: AUTH refused: WRONGPASS invalid username-password "
                              "pair") == 0 &&
              !out.note[0],
          "refused before Redis ever answered: the reservation fails with why: %s", out.err);
    STATUS(d, "redis", 0, 0);
    ask(d, &t, "KickUser", now, &out);
    CHECK(rtc_fallback_failed(d, &t, now, "cannot connect: Connection refused", 0, &out) == RTC_FB_SLOT &&
              out.note[0],
          "unreachable is an outage, answered or not");
    rtc_fallback_free(d);
    d = decision(dirs[0], 0.5, 0);
    rtc_fallback_reached(d);
    ask(d, &t, "KickUser", now, &out);
    CHECK(rtc_fallback_failed(d, &t, now, "AUTH refused: WRONGPASS", 1, &out) == RTC_FB_SLOT && out.note[0],
          "once Redis has answered, a refusal is an outage too");
    STATUS(d, "host", 1, 0);
    rtc_fallback_free(d);
}

static void fallback_error_fails_reservations(void) {
    rtc_fallback *d;
    rtc_fb_turn t;
    rtc_fb_text out;
    int64_t now = 100 * SEC;
    d = fresh(1);
    ask(d, &t, "KickUser", now, &out);
    CHECK(rtc_fallback_failed(d, &t, now, "cannot connect: Connection refused", 0, &out) == RTC_FB_FAIL, "fails");
    CHECK(strcmp(out.err, "Redis limiter at 10.0.0.5:6379/0 is unavailable: cannot connect: Connection refused") == 0,
          "err: %s", out.err);
    CHECK(strcmp(out.note, "Redis limiter at 10.0.0.5:6379/0: cannot connect: Connection refused; reservations "
                           "fail until Redis answers again") == 0,
          "note: %s", out.note);
    STATUS(d, "none", 1, 0);
    CHECK(ask(d, &t, "KickUser", now + 10 * MS, &out) == RTC_FB_FAIL && !out.note[0],
          "until the re-probe, reservations fail without asking");
    CHECK(ask(d, &t, "KickUser", now + 300 * MS, &out) == RTC_FB_ASK, "then one asks");
    rtc_fallback_answered(d, &t, now + 300 * MS, 0, &out);
    STATUS(d, "redis", 1, 1);
    rtc_fallback_free(d);
}

/* ---- the shared outage timeline -------------------------------------------------------------- */

#define QPS 60
#define INTERVAL ((SEC + QPS - 1) / QPS) /* rounded up, as the clients round it */

/* One process through the timeline: which slots came from Redis and which from the fallback, and
 * the lines it logged, are exactly what the Lua suite expects of the C client and the nginx workers. */
static void timeline_one_process(const timeline *tl) {
    static proc p;
    fake_redis r;
    int i, downs = 0, wrong = 0, k = 0;
    int64_t settle = 200 * MS; /* reprobe: Redis is asked again by then */
    empty_dirs();
    memset(&r, 0, sizeof r);
    memset(&p, 0, sizeof p);
    r.tl = tl;
    p.d = decision(dirs[0], 0.5, 0);
    p.action = "KickUser";
    p.interval_ns = INTERVAL;
    run(&p, 1, &r, tl->start[tl->n]);
    for (i = 0; i < p.nsends; i++) {
        int ph = phase_at(tl, p.sends[i].reserved);
        int expect = !tl->up[ph] ? 0 : p.sends[i].reserved >= tl->start[ph] + settle || ph == 0 ? 1 : -1;
        if (expect >= 0 && expect != p.sends[i].from_redis) {
            if (wrong++ < 3)
                printf("  reserved at %.3f s (phase %d, %s): from %s\n", (double)p.sends[i].reserved / SEC, ph,
                       tl->up[ph] ? "up" : "down", p.sends[i].from_redis ? "redis" : "host");
        }
        /* the handover: a fallback's first slot is a second after the Redis slots before it */
        if (i > 0 && p.sends[i - 1].from_redis && !p.sends[i].from_redis)
            CHECK(p.sends[i].start >= p.sends[i - 1].start + RTC_FB_HANDOVER_NS, "handover at %.3f s",
                  (double)p.sends[i].reserved / SEC);
        /* back on Redis: after the fallback's slots */
        if (i > 0 && !p.sends[i - 1].from_redis && p.sends[i].from_redis)
            CHECK(p.sends[i].start >= p.sends[i - 1].start + 2 * INTERVAL, "not before at %.3f s",
                  (double)p.sends[i].reserved / SEC);
    }
    CHECK(wrong == 0, "every slot reserved while Redis is down comes from the host table, every one reserved "
                      "(reprobe after) it is up from Redis: %d do not", wrong);
    for (i = 0; i < tl->n; i++) {
        if (tl->up[i]) continue;
        downs++;
        CHECK(k < p.nnotes && strstr(p.notes[k], "; pacing with the host limiter at 50% of each limit"),
              "down %d: one line for the fallback: %s", downs, k < p.nnotes ? p.notes[k] : "(none)");
        k++;
        if (i + 1 < tl->n) {
            CHECK(k < p.nnotes && strstr(p.notes[k], " answers again; pacing with Redis"),
                  "down %d: one line for the recovery: %s", downs, k < p.nnotes ? p.notes[k] : "(none)");
            k++;
        }
    }
    CHECK(p.nnotes == k, "one line per transition, no more: %d for %d", p.nnotes, k);
    STATUS(p.d, "redis", downs, downs);
    rtc_fallback_free(p.d);
}

/* `hosts` hosts of `per_host` processes (each host its own table, the fallback at 1/hosts), all on one
 * schedule at QPS through the timeline: the most sends in any second. *used: sends / (QPS x seconds),
 * over the whole timeline and over the first phase. */
static int fleet(const timeline *tl, int hosts, int per_host, double used[2]) {
    static proc ps[12];
    static unsigned seed = 7;
    fake_redis r;
    int i, j, n = hosts * per_host, worst, total = 0, first = 0;
    int64_t at = 0, begin = INT64_MAX;
    empty_dirs();
    memset(&r, 0, sizeof r);
    memset(ps, 0, sizeof ps);
    r.tl = tl;
    for (i = 0; i < n; i++) {
        ps[i].d = decision(dirs[i / per_host], 1.0 / hosts, 0);
        ps[i].action = "KickUser";
        ps[i].interval_ns = INTERVAL;
        seed = seed * 1103515245u + 12345u;
        ps[i].next = (int64_t)(seed >> 16) % 500 * MS; /* processes start apart */
        if (ps[i].next < begin) begin = ps[i].next;
    }
    run(ps, n, &r, tl->start[tl->n]);
    worst = max_per_second(ps, n, &at);
    for (i = 0; i < n; i++) {
        total += ps[i].nsends;
        for (j = 0; j < ps[i].nsends; j++) first += ps[i].sends[j].start < tl->start[1];
    }
    used[0] = (double)total / (QPS * ((double)tl->start[tl->n] / SEC));
    used[1] = (double)first / (QPS * ((double)(tl->start[1] - begin) / SEC));
    free_procs(ps, n);
    return worst;
}

static void timeline_fleets(const timeline *tl) {
    static const int mixes[][2] = {{1, 1}, {2, 1}, {3, 1}, {4, 1}, {1, 2}, {2, 2}, {1, 3}, {2, 3}, {3, 2}, {4, 3}};
    size_t i;
    for (i = 0; i < sizeof mixes / sizeof mixes[0]; i++) {
        double used[2];
        int worst = fleet(tl, mixes[i][0], mixes[i][1], used);
        CHECK(worst <= QPS, "%d hosts x %d processes: at most %d in any second, got %d", mixes[i][0], mixes[i][1],
              QPS, worst);
        /* Redis alone uses the budget; each fall costs the handover second, and flaps cost more. */
        CHECK(used[1] >= 0.95, "%d hosts x %d processes: %.0f%% of the budget used before the outage", mixes[i][0],
              mixes[i][1], used[1] * 100);
        CHECK(used[0] >= 0.55, "%d hosts x %d processes: %.0f%% of the budget used over the timeline", mixes[i][0],
              mixes[i][1], used[0] * 100);
    }
}

/* The same on random timelines whose phases outlast the handover second (shorter flaps that only
 * some processes notice are the partial outage docs/redis.md describes). */
static void random_timelines(void) {
    static timeline tl;
    unsigned seed = 1;
    int run_no;
    for (run_no = 0; run_no < 40; run_no++) {
        int64_t t = 0;
        int hosts, per_host, worst;
        double used[2];
        tl.n = 0;
        while (tl.n < 8) {
            tl.up[tl.n] = tl.n % 2 == 0;
            tl.start[tl.n++] = t;
            seed = seed * 1103515245u + 12345u;
            t += (int64_t)(1100 + (seed >> 16) % 2500) * MS;
        }
        tl.start[tl.n] = t;
        seed = seed * 1103515245u + 12345u;
        hosts = (int)((seed >> 16) % 4) + 1;
        seed = seed * 1103515245u + 12345u;
        per_host = (int)((seed >> 16) % 3) + 1;
        worst = fleet(&tl, hosts, per_host, used);
        CHECK(worst <= QPS, "random timeline %d, %d hosts x %d processes: at most %d in any second, got %d", run_no,
              hosts, per_host, QPS, worst);
    }
}

int main(int argc, char **argv) {
    timeline tl;
    if (argc != 2 || load_timeline(argv[1], &tl)) {
        fprintf(stderr, "usage: test_redis_fallback TIMELINE (tests/vectors/redis_outage.txt)\n");
        return 2;
    }
    make_dirs();
    asks_redis_while_it_answers();
    falls_back_once_and_comes_back();
    not_before_is_per_schedule_and_host();
    outcomes_count_for_their_state();
    refusals_before_any_answer_are_configuration_errors();
    fallback_error_fails_reservations();
    timeline_one_process(&tl);
    timeline_fleets(&tl);
    random_timelines();
    remove_dirs();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
