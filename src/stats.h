/* Per-Action counters and latency samples for client:stats(). No Lua (client.c pushes them). */
#ifndef RTCADMIN_STATS_H
#define RTCADMIN_STATS_H


#define RTC_STATS_ACTIONS 32
#define RTC_STATS_CODES 16
#define RTC_STATS_SAMPLES 1024 /* latency percentiles are over the most recent samples */
#define RTC_STATS_BUCKETS 11    /* latency histogram bounds (rtc_stats_bounds), for Prometheus */

/* The upper bounds, in seconds, of the latency histogram's buckets, ascending (rtcadmin.LATENCY_BUCKETS). */
extern const double rtc_stats_bounds[RTC_STATS_BUCKETS];

typedef struct {
    char code[48];
    long count;
} rtc_code_count;

typedef struct {
    char action[48];
    long sent;          /* attempts put on the wire */
    long succeeded;     /* calls that ended in success */
    long failed;        /* calls that ended in failure */
    long retries;       /* attempts after the first */
    long throttled;     /* attempts the server answered with a throttle */
    long missed_slots;  /* limiter slots given up because the sender reached them too late */
    double waited;      /* seconds spent waiting for the limiter */
    double latency_sum; /* seconds of every attempt's latency */
    long buckets[RTC_STATS_BUCKETS]; /* attempts by latency: buckets[i] for bounds[i-1] < latency <= bounds[i] */
    rtc_code_count codes[RTC_STATS_CODES];
    int ncodes;
    float latency[RTC_STATS_SAMPLES];
    int nlatency;
    int next_latency;
} rtc_action_stats;

typedef struct {
    rtc_action_stats *actions[RTC_STATS_ACTIONS];
    int nactions;
} rtc_stats;

/* NULL when the table is full or memory is short: statistics are best effort, calls are not. */
rtc_action_stats *rtc_stats_for(rtc_stats *s, const char *action);
void rtc_stats_attempt(rtc_action_stats *a, int attempt, double waited, double latency, int throttled);
void rtc_stats_outcome(rtc_action_stats *a, const char *failure_code);
void rtc_stats_missed_slot(rtc_action_stats *a);
void rtc_stats_free(rtc_stats *s);
/* Sorts the latency samples of a into sorted (room for RTC_STATS_SAMPLES) and gives the 50th and 99th
 * percentiles; 0 when there are none. */
int rtc_stats_percentiles(const rtc_action_stats *a, float *sorted, double *p50, double *p99);
/* Fills cumulative[i] with the attempts whose latency was at most rtc_stats_bounds[i]. */
void rtc_stats_cumulative(const rtc_action_stats *a, long cumulative[RTC_STATS_BUCKETS]);

#endif
