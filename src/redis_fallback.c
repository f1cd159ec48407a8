/* The Redis limiter's fallback decision, for both drivers (redis_common.h describes the interface
 * and the rules; docs/redis.md why they keep a fleet within its limit). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_common.h"

#define NS 1000000000LL

struct rtc_fallback {
    rtc_limiter *host;            /* this host's table: the fallback's schedules */
    int64_t timeout_ns, reprobe_ns;
    double share;
    int fail;                     /* fallback = "error" */
    int answered;                 /* Redis has answered at least once */
    int on_fallback;
    long epoch;                   /* transitions so far */
    int64_t next_probe_ns;        /* on the fallback: when the next turn asks Redis */
    int64_t fallback_from_ns;     /* on the fallback: no fallback slot before this */
    int64_t grace_until_ns;       /* after a recovery: Redis slots take 1/share intervals until then */
    int64_t horizon_ns;           /* end of the latest Redis slot seen */
    long fallbacks, recoveries, errors;
    char last_error[200];
    char where[RTC_REDIS_WHERE];
};

rtc_fallback *rtc_fallback_new(const rtc_fallback_opts *o, char *err, size_t errlen) {
    rtc_fallback *f;
    if (!(o->share > 0 && o->share <= 1) || !(o->timeout > 0) || !(o->reprobe > 0)) {
        snprintf(err, errlen, "fallback: share must be in (0, 1], timeout and reprobe above 0");
        return NULL;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->host = rtc_limiter_host_new(o->dir, err, errlen);
    if (!f->host) {
        free(f);
        return NULL;
    }
    f->timeout_ns = (int64_t)(o->timeout * 1e9);
    f->reprobe_ns = (int64_t)(o->reprobe * 1e9);
    f->share = o->share;
    f->fail = o->fail;
    snprintf(f->where, sizeof f->where, "%s", o->where ? o->where : "?");
    return f;
}

void rtc_fallback_free(rtc_fallback *f) {
    if (!f) return;
    rtc_limiter_free(f->host);
    free(f);
}

void rtc_fallback_reached(rtc_fallback *f) { f->answered = 1; }

/* A slot from the host table at the share, or the reason nothing may be sent. */
static rtc_fb_result fallback_slot(rtc_fallback *f, rtc_fb_turn *t, int64_t now_ns, rtc_fb_text *out) {
    int64_t from = now_ns > f->fallback_from_ns ? now_ns : f->fallback_from_ns;
    if (f->fail) {
        snprintf(out->err, sizeof out->err, "Redis limiter at %s is unavailable: %s", f->where, f->last_error);
        return RTC_FB_FAIL;
    }
    if (f->host->ops->reserve(f->host, t->fp, t->action, t->shared_ns, from, INT64_MAX, &t->start_ns, out->err,
                              sizeof out->err))
        return RTC_FB_FAIL;
    t->source = "host";
    return RTC_FB_SLOT;
}

rtc_fb_result rtc_fallback_begin(rtc_fallback *f, rtc_fb_turn *t, const unsigned char fp[8], const char *action,
                                 int64_t interval_ns, int64_t now_ns, int64_t deadline_ns, rtc_fb_text *out) {
    size_t n = strlen(action);
    out->note[0] = out->err[0] = '\0';
    memset(t, 0, sizeof *t);
    if (n >= sizeof t->action) {
        snprintf(out->err, sizeof out->err, "Action name longer than %d characters", (int)sizeof t->action - 1);
        return RTC_FB_FAIL;
    }
    memcpy(t->fp, fp, sizeof t->fp);
    memcpy(t->action, action, n + 1);
    t->base_ns = interval_ns;
    /* The fallback's interval: each slot counts 1/share of the budget. */
    t->shared_ns = (int64_t)ceil((double)interval_ns / f->share);
    t->epoch = f->epoch;
    if (f->on_fallback && now_ns < f->next_probe_ns) return fallback_slot(f, t, now_ns, out);
    /* This turn probes; the others wait until it has been answered or must have given up. */
    if (f->on_fallback) f->next_probe_ns = now_ns + f->reprobe_ns + f->timeout_ns;
    t->homecoming = f->on_fallback || now_ns < f->grace_until_ns;
    t->interval_ns = t->homecoming ? t->shared_ns : t->base_ns;
    if (t->homecoming) {
        /* On the way back: after every slot this host's table handed out on the schedule. */
        int64_t tat = rtc_limit_peek(f->host->table, fp, action);
        if (tat > now_ns) t->not_before_ns = tat - now_ns;
    }
    t->end_ns = now_ns + f->timeout_ns;
    if (deadline_ns < t->end_ns) t->end_ns = deadline_ns;
    if (t->end_ns < now_ns + NS / 1000) t->end_ns = now_ns + NS / 1000;
    return RTC_FB_ASK;
}

rtc_fb_result rtc_fallback_answered(rtc_fallback *f, rtc_fb_turn *t, int64_t at_ns, int64_t wait_ns,
                                    rtc_fb_text *out) {
    out->note[0] = out->err[0] = '\0';
    f->answered = 1;
    if (f->on_fallback && t->epoch == f->epoch) {
        f->on_fallback = 0;
        f->epoch++;
        f->recoveries++;
        f->grace_until_ns = at_ns + f->reprobe_ns + f->timeout_ns;
        snprintf(out->note, sizeof out->note, "Redis limiter at %s answers again; pacing with Redis", f->where);
    }
    t->start_ns = at_ns + wait_ns;
    if (t->start_ns + t->interval_ns > f->horizon_ns) f->horizon_ns = t->start_ns + t->interval_ns;
    if (t->homecoming) {
        /* ... and on it too, so this host's processes still on the fallback stay behind the slot. (A
         * table that is full only loses them that; the slot itself is Redis's.) */
        int64_t ignored;
        char why[128];
        f->host->ops->reserve(f->host, t->fp, t->action, t->shared_ns, t->start_ns, INT64_MAX, &ignored, why,
                              sizeof why);
    }
    t->source = "redis";
    return RTC_FB_SLOT;
}

rtc_fb_result rtc_fallback_failed(rtc_fallback *f, rtc_fb_turn *t, int64_t now_ns, const char *why, int refused,
                                  rtc_fb_text *out) {
    out->note[0] = out->err[0] = '\0';
    f->errors++;
    snprintf(f->last_error, sizeof f->last_error, "%s", why);
    if (refused && !f->answered) {
        /* Never worked: a wrong password, user or db is a configuration error, not an outage. */
        snprintf(out->err, sizeof out->err, "Redis limiter at %s: %s", f->where, why);
        return RTC_FB_FAIL;
    }
    if (t->epoch == f->epoch) {
        f->next_probe_ns = now_ns + f->reprobe_ns;
        if (!f->on_fallback) {
            f->on_fallback = 1;
            f->epoch++;
            f->fallbacks++;
            f->fallback_from_ns = (f->horizon_ns > now_ns ? f->horizon_ns : now_ns) + RTC_FB_HANDOVER_NS;
            if (f->fail)
                snprintf(out->note, sizeof out->note,
                         "Redis limiter at %s: %s; reservations fail until Redis answers again", f->where, why);
            else
                snprintf(out->note, sizeof out->note,
                         "Redis limiter at %s: %s; pacing with the host limiter at %g%% of each limit until Redis "
                         "answers again", f->where, why, f->share * 100);
        }
    }
    return fallback_slot(f, t, now_ns, out);
}

void rtc_fallback_status(const rtc_fallback *f, rtc_limiter_status *out) {
    out->active = !f->on_fallback ? "redis" : f->fail ? "none" : "host";
    out->server = f->where;
    out->fallbacks = f->fallbacks;
    out->recoveries = f->recoveries;
    out->errors = f->errors;
    out->last_error = f->last_error[0] ? f->last_error : NULL;
}
