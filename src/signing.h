/* Volcengine "HMAC-SHA256" V4 request signing (docs/signing.md). Pure: no I/O, no Lua. */
#ifndef RTCADMIN_SIGNING_H
#define RTCADMIN_SIGNING_H

#include <stddef.h>

#include "buf.h"

#define RTC_SHA256_LEN 32
#define RTC_XDATE_LEN 16 /* YYYYMMDDTHHMMSSZ */

typedef struct {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} rtc_kv;

typedef struct {
    const char *method;
    const char *host;            /* used for Host when no Host header is given; may be NULL */
    const char *path;            /* NULL or "" means "/" */
    const rtc_kv *query;         /* in the caller's order; repeated keys allowed */
    size_t nquery;
    const rtc_kv *headers;       /* request headers before signing */
    size_t nheaders;
    const unsigned char *body;
    size_t body_len;
    const char *access_key;
    const char *secret_key;
    size_t secret_len;
    const char *session_token;   /* NULL or "" for long-term keys */
    const char *region;
    const char *service;
    const char *x_date;          /* RTC_XDATE_LEN chars */
} rtc_sign_request;

typedef struct {
    rtc_buf authorization;
    rtc_buf signed_headers;
    rtc_buf canonical_request;
    rtc_buf string_to_sign;
    char x_date[RTC_XDATE_LEN + 1];
    char content_sha256[2 * RTC_SHA256_LEN + 1];
    char host[256];              /* the Host value that was signed */
    int content_type_added;      /* the form Content-Type default was added (non-GET, none given) */
    /* Starting storage of the four buffers: a typical API request signs without a heap allocation. */
    char store_authorization[320], store_signed_headers[128], store_canonical_request[640],
        store_string_to_sign[192];
} rtc_sign_result;

#define RTC_DEFAULT_FORM_CONTENT_TYPE "application/x-www-form-urlencoded; charset=utf-8"

/* A signer owns hashing state and a small cache of derived signing keys keyed by
 * (secret, date, region, service). Not thread-safe: one per Lua state or client. */
typedef struct rtc_signer rtc_signer;

rtc_signer *rtc_signer_new(void);
/* Wipes cached keys and secrets, then frees. NULL is fine. */
void rtc_signer_free(rtc_signer *s);

void rtc_sign_result_init(rtc_sign_result *r);
void rtc_sign_result_free(rtc_sign_result *r);

/* Returns 0, or -1 with a message in err (never containing the secret). */
int rtc_sign(rtc_signer *s, const rtc_sign_request *req, rtc_sign_result *res, char *err, size_t errlen);

/* Formats a UNIX time as X-Date. */
void rtc_format_xdate(long long unix_time, char out[RTC_XDATE_LEN + 1]);
int rtc_valid_xdate(const char *s, size_t len);

/* RFC 3986 percent-encoding of every byte but A-Z a-z 0-9 - _ . ~ (and '/' when keep_slash). */
int rtc_uri_encode(rtc_buf *b, const char *s, size_t n, int keep_slash);

/* SHA-256 of data: raw, and lower-case hex into out (65 bytes). */
int rtc_sha256(const void *data, size_t n, unsigned char out[RTC_SHA256_LEN]);
int rtc_sha256_hex(const void *data, size_t n, char out[2 * RTC_SHA256_LEN + 1]);

#endif
