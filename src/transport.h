/* HTTP(S) transport over one reusable libcurl easy handle (keep-alive). No Lua. */
#ifndef RTCADMIN_TRANSPORT_H
#define RTCADMIN_TRANSPORT_H

#include <stddef.h>

#include <curl/curl.h>

#include "buf.h"

#define RTC_MAX_RESPONSE_BYTES (1024 * 1024)

typedef struct {
    double timeout;          /* whole request, seconds */
    double connect_timeout;  /* seconds */
    const char *ca_file;     /* NULL: system store */
    const char *proxy;       /* NULL: none (environment proxies are ignored too) */
    const char *user_agent;
} rtc_transport_opts;

typedef enum {
    RTC_NET_OK = 0,
    RTC_NET_DNS,          /* name did not resolve */
    RTC_NET_CONNECT,      /* refused or unreachable */
    RTC_NET_TIMEOUT,
    RTC_NET_RESET,        /* connection closed or reset mid-exchange, or nothing received */
    RTC_NET_TLS,          /* handshake or certificate verification failed */
    RTC_NET_TOO_LARGE,    /* response body over RTC_MAX_RESPONSE_BYTES */
    RTC_NET_PROTOCOL,     /* malformed HTTP */
    RTC_NET_OTHER
} rtc_net_error;

typedef struct {
    const char *method;      /* "GET" or "POST" */
    const char *url;
    const char *const *headers; /* "Name: value" lines */
    size_t nheaders;
    const char *body;
    size_t body_len;
    long timeout_ms;         /* > 0: a tighter limit than the transport's (what is left of a deadline) */
} rtc_http_request;

typedef struct {
    long status;
    rtc_buf body;
    char content_type[128];
    rtc_net_error error;
    char message[256];       /* readable transport error */
    long connects;           /* new connections this request opened (0 when reused) */
} rtc_http_response;

typedef struct rtc_transport rtc_transport;

/* One request on one easy handle: what libcurl needs alive until the transfer ends. */
typedef struct {
    CURL *easy;
    struct curl_slist *headers;
    rtc_http_response *resp;
    int sends;            /* times libcurl was about to send the request in this transfer */
    char errbuf[CURL_ERROR_SIZE];
} rtc_exchange;

rtc_transport *rtc_transport_new(const rtc_transport_opts *opts, char *err, size_t errlen);
void rtc_transport_free(rtc_transport *t);
void rtc_http_response_init(rtc_http_response *r);
void rtc_http_response_free(rtc_http_response *r);
/* Returns 0 when an HTTP response arrived (any status), -1 on transport failure (r->error). */
int rtc_transport_perform(rtc_transport *t, const rtc_http_request *req, rtc_http_response *r);
const char *rtc_net_error_code(rtc_net_error e);

/* For concurrent transfers (libcurl multi): a fresh easy handle, request setup, and completion. */
CURL *rtc_transport_easy_new(void);
int rtc_exchange_setup(rtc_transport *t, rtc_exchange *x, CURL *easy, const rtc_http_request *req,
                       rtc_http_response *r);
/* Fills r->status/content_type/error from the finished transfer; returns 0 on an HTTP response. */
int rtc_exchange_finish(rtc_exchange *x, CURLcode rc);
/* The shared multi handle (created on first use); connections per host capped at max_conns. */
CURLM *rtc_transport_multi(rtc_transport *t, long max_conns);
const char *rtc_transport_curl_version(void);

#endif
