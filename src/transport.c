#include "transport.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


struct rtc_transport {
    CURL *easy;
    CURLM *multi;
    char *ca_file, *proxy, *user_agent;
    long timeout_ms, connect_timeout_ms;
};

/* curl_global_init is not thread-safe in every libcurl we support: run it once. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static char *dupopt(const char *s) {
    char *d;
    size_t n;
    if (!s) return NULL;
    n = strlen(s) + 1;
    d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

rtc_transport *rtc_transport_new(const rtc_transport_opts *o, char *err, size_t errlen) {
    rtc_transport *t;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "libcurl initialisation failed: %s", curl_easy_strerror(curl_init_rc));
        return NULL;
    }
    t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->easy = curl_easy_init();
    t->ca_file = dupopt(o->ca_file);
    t->proxy = dupopt(o->proxy);
    t->user_agent = dupopt(o->user_agent);
    if (!t->easy || (o->ca_file && !t->ca_file) || (o->proxy && !t->proxy) || (o->user_agent && !t->user_agent))
        goto oom;
    t->timeout_ms = (long)(o->timeout * 1000.0 + 0.5);
    t->connect_timeout_ms = (long)(o->connect_timeout * 1000.0 + 0.5);
    return t;
oom:
    rtc_transport_free(t);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void rtc_transport_free(rtc_transport *t) {
    if (!t) return;
    if (t->easy) curl_easy_cleanup(t->easy);
    if (t->multi) curl_multi_cleanup(t->multi);
    free(t->ca_file);
    free(t->proxy);
    free(t->user_agent);
    free(t);
}

void rtc_http_response_init(rtc_http_response *r) {
    memset(r, 0, sizeof *r);
    rtc_buf_init(&r->body);
}

void rtc_http_response_free(rtc_http_response *r) { rtc_buf_free(&r->body); }

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    rtc_http_response *r = ud;
    size_t len = size * n;
    if (r->body.len + len > RTC_MAX_RESPONSE_BYTES) {
        r->error = RTC_NET_TOO_LARGE;
        return 0; /* aborts the transfer */
    }
    return rtc_buf_add(&r->body, p, len) ? 0 : len;
}

static rtc_net_error classify(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return RTC_NET_DNS;
    case CURLE_COULDNT_CONNECT: return RTC_NET_CONNECT;
    case CURLE_OPERATION_TIMEDOUT: return RTC_NET_TIMEOUT;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE: return RTC_NET_RESET;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: return RTC_NET_TLS;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT: return RTC_NET_PROTOCOL;
    default: return RTC_NET_OTHER;
    }
}

const char *rtc_net_error_code(rtc_net_error e) {
    switch (e) {
    case RTC_NET_OK: return "OK";
    case RTC_NET_DNS: return "DNSFailure";
    case RTC_NET_CONNECT: return "ConnectionFailed";
    case RTC_NET_TIMEOUT: return "Timeout";
    case RTC_NET_RESET: return "ConnectionReset";
    case RTC_NET_TLS: return "TLSError";
    case RTC_NET_TOO_LARGE: return "ResponseTooLarge";
    case RTC_NET_PROTOCOL: return "ProtocolError";
    default: return "TransportError";
    }
}

const char *rtc_transport_curl_version(void) { return curl_version_info(CURLVERSION_NOW)->version; }

CURL *rtc_transport_easy_new(void) { return curl_easy_init(); }

#if LIBCURL_VERSION_NUM >= 0x075000
/* libcurl silently sends a request again when a reused connection dies before any response byte.
 * Each send must pass the limiter and the retry policy, so a second send is refused here. */
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port) {
    rtc_exchange *x = ud;
    (void)conn_primary_ip, (void)conn_local_ip, (void)conn_primary_port, (void)conn_local_port;
    return ++x->sends > 1 ? CURL_PREREQFUNC_ABORT : CURL_PREREQFUNC_OK;
}
#endif

CURLM *rtc_transport_multi(rtc_transport *t, long max_conns) {
    if (!t->multi) t->multi = curl_multi_init();
    if (t->multi) {
        curl_multi_setopt(t->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_conns);
        curl_multi_setopt(t->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_conns);
    }
    return t->multi;
}

int rtc_exchange_setup(rtc_transport *t, rtc_exchange *x, CURL *e, const rtc_http_request *req,
                       rtc_http_response *r) {
    struct curl_slist *tmp;
    size_t i;
    long timeout_ms = req->timeout_ms > 0 && req->timeout_ms < t->timeout_ms ? req->timeout_ms : t->timeout_ms;
    x->easy = e;
    x->headers = NULL;
    x->resp = r;
    x->sends = 0;
    x->errbuf[0] = '\0';
    for (i = 0; i < req->nheaders; i++) {
        tmp = curl_slist_append(x->headers, req->headers[i]);
        if (!tmp) goto oom;
        x->headers = tmp;
    }
    /* No "Expect: 100-continue" round trip for small bodies. */
    tmp = curl_slist_append(x->headers, "Expect:");
    if (!tmp) goto oom;
    x->headers = tmp;

    /* Reset per-request options only; the handle keeps its connection cache. */
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
#if LIBCURL_VERSION_NUM >= 0x075000
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
#endif
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a redirect must not carry the signature elsewhere */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     t->connect_timeout_ms < timeout_ms ? t->connect_timeout_ms : timeout_ms);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (t->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
    /* An explicit proxy, or none at all: environment proxies would reroute signed traffic silently. */
    curl_easy_setopt(e, CURLOPT_PROXY, t->proxy ? t->proxy : "");
    if (t->user_agent) curl_easy_setopt(e, CURLOPT_USERAGENT, t->user_agent);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    if (strcmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(req->method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    return 0;
oom:
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    r->error = RTC_NET_OTHER;
    snprintf(r->message, sizeof r->message, "out of memory");
    return -1;
}

int rtc_exchange_finish(rtc_exchange *x, CURLcode rc) {
    rtc_http_response *r = x->resp;
    CURL *e = x->easy;
    char *ct = NULL;
    long connects = 0;
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
    r->connects = connects;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    if (curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(r->content_type, sizeof r->content_type, "%s", ct);
    if (rc == CURLE_OK) return 0;
    if (x->sends > 1) {
        r->error = RTC_NET_RESET;
        snprintf(r->message, sizeof r->message, "the connection closed before any response (not resent)");
        return -1;
    }
    if (r->error != RTC_NET_TOO_LARGE) r->error = r->body.oom ? RTC_NET_OTHER : classify(rc);
    if (r->error == RTC_NET_TOO_LARGE)
        snprintf(r->message, sizeof r->message, "response body larger than %d bytes", RTC_MAX_RESPONSE_BYTES);
    else
        snprintf(r->message, sizeof r->message, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    return -1;
}

int rtc_transport_perform(rtc_transport *t, const rtc_http_request *req, rtc_http_response *r) {
    rtc_exchange x;
    if (rtc_exchange_setup(t, &x, t->easy, req, r)) return -1;
    return rtc_exchange_finish(&x, curl_easy_perform(t->easy));
}
