/* The client's settings and running state as plain C: what the call engine (call.c) reads and the
 * Lua object (client.c) fills from its options. No Lua. */
#ifndef RTCADMIN_CLIENT_H
#define RTCADMIN_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "limiter.h"
#include "signing.h"
#include "stats.h"
#include "transport.h"

#define RTC_MAX_VERSION_OVERRIDES 16
#define RTC_MAX_QPS_OVERRIDES 32

typedef struct {
    char *action;
    char *version;
} rtc_version_override;

typedef struct {
    char *action;
    double qps;
} rtc_qps_override;

typedef struct rtc_client {
    char *access_key;
    char *secret_key;
    size_t secret_len;
    char *session_token;
    const char *credential_source; /* static string: where the keys came from */
    char *region;
    char *service;
    char *base_url;     /* scheme://host[:port], no trailing slash */
    char *host_header;  /* Host as sent and signed */
    double timeout;
    double connect_timeout;
    char *ca_file;
    char *proxy;
    char *user_agent;
    rtc_version_override versions[RTC_MAX_VERSION_OVERRIDES];
    int nversions;
    rtc_qps_override qps[RTC_MAX_QPS_OVERRIDES];
    int nqps;
    double default_qps;  /* for Actions without a documented or configured limit */
    rtc_limiter *limiter; /* NULL: no pacing */
    int limiter_owned;   /* the host backend's mapping belongs to this client */
    double margin;       /* pacing interval = (1 + margin) / qps */
    unsigned char key_fp[8]; /* limiter key: a SHA-256 prefix of the access key, never the key */
    int retries;
    double retry_base, retry_cap, deadline;
    long concurrency;    /* connections for bulk calls */
    uint64_t rng;        /* xorshift state for backoff jitter */
    rtc_stats stats;
    rtc_signer *signer;
    rtc_transport *transport;
    long requests;      /* requests sent */
    long connections;   /* TCP/TLS connections opened */
    int closed;
    /* The method running on this client (its transport, statistics and signer in use), or NULL. While
     * it runs, Lua code it calls (a batch's progress callback, a finalizer, a metamethod) may not use
     * the client: every method but info and stats refuses, and close is put off until it returns. */
    const char *running;
    const char *running_via; /* how Lua code runs inside it, for the refusal's message */
    int close_pending;
} rtc_client;

#endif
