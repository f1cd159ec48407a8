#include "stats.h"

#include <stdlib.h>
#include <string.h>

const double rtc_stats_bounds[RTC_STATS_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

rtc_action_stats *rtc_stats_for(rtc_stats *s, const char *action) {
    int i;
    for (i = 0; i < s->nactions; i++)
        if (strcmp(s->actions[i]->action, action) == 0) return s->actions[i];
    if (s->nactions == RTC_STATS_ACTIONS) return NULL;
    s->actions[s->nactions] = calloc(1, sizeof(rtc_action_stats));
    if (!s->actions[s->nactions]) return NULL;
    strncpy(s->actions[s->nactions]->action, action, sizeof s->actions[0]->action - 1);
    return s->actions[s->nactions++];
}

void rtc_stats_missed_slot(rtc_action_stats *a) {
    if (a) a->missed_slots++;
}

void rtc_stats_attempt(rtc_action_stats *a, int attempt, double waited, double latency, int throttled) {
    int b = 0;
    if (!a) return;
    a->sent++;
    if (attempt > 1) a->retries++;
    if (throttled) a->throttled++;
    a->waited += waited;
    a->latency_sum += latency;
    /* A handful of comparisons; latencies over the last bound are counted by `sent` alone (+Inf). */
    while (b < RTC_STATS_BUCKETS && latency > rtc_stats_bounds[b]) b++;
    if (b < RTC_STATS_BUCKETS) a->buckets[b]++;
    a->latency[a->next_latency] = (float)latency;
    a->next_latency = (a->next_latency + 1) % RTC_STATS_SAMPLES;
    if (a->nlatency < RTC_STATS_SAMPLES) a->nlatency++;
}

void rtc_stats_outcome(rtc_action_stats *a, const char *failure_code) {
    int i;
    if (!a) return;
    if (!failure_code) {
        a->succeeded++;
        return;
    }
    a->failed++;
    for (i = 0; i < a->ncodes; i++)
        if (strcmp(a->codes[i].code, failure_code) == 0) {
            a->codes[i].count++;
            return;
        }
    /* The last entry collects every code beyond the first RTC_STATS_CODES - 1. */
    if (a->ncodes < RTC_STATS_CODES - 1) {
        i = a->ncodes++;
        strncpy(a->codes[i].code, failure_code, sizeof a->codes[i].code - 1);
    } else {
        i = RTC_STATS_CODES - 1;
        if (a->ncodes == i) {
            a->ncodes++;
            strcpy(a->codes[i].code, "other");
        }
    }
    a->codes[i].count++;
}

void rtc_stats_free(rtc_stats *s) {
    int i;
    for (i = 0; i < s->nactions; i++) free(s->actions[i]);
    s->nactions = 0;
}

static int float_cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int rtc_stats_percentiles(const rtc_action_stats *a, float *sorted, double *p50, double *p99) {
    if (!a->nlatency) return 0;
    memcpy(sorted, a->latency, (size_t)a->nlatency * sizeof *sorted);
    qsort(sorted, (size_t)a->nlatency, sizeof *sorted, float_cmp);
    *p50 = sorted[(a->nlatency - 1) / 2];
    *p99 = sorted[(a->nlatency * 99 - 1) / 100];
    return 1;
}

void rtc_stats_cumulative(const rtc_action_stats *a, long cumulative[RTC_STATS_BUCKETS]) {
    long n = 0;
    int i;
    for (i = 0; i < RTC_STATS_BUCKETS; i++) cumulative[i] = n += a->buckets[i];
}
