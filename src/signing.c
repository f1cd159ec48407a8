/* Volcengine "HMAC-SHA256" V4 signing, as the official SDKs do it (docs/signing.md). */
#include "signing.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define HMAC_BLOCK 64
#define KEY_CACHE_SLOTS 4

typedef struct {
    unsigned char *secret; /* copy of the secret this key was derived from; wiped on eviction */
    size_t secret_len;
    char date[9];
    char *region;
    char *service;
    EVP_MD_CTX *inner;     /* SHA-256 state after absorbing kSigning ^ ipad */
    EVP_MD_CTX *outer;     /* ... and kSigning ^ opad: one HMAC is then two short hashes */
} key_slot;

struct rtc_signer {
    EVP_MD_CTX *ctx;
    EVP_MD_CTX *scratch_inner;
    EVP_MD_CTX *scratch_outer;
    key_slot keys[KEY_CACHE_SLOTS];
    unsigned next_slot;
};

/* The only process-wide state: the SHA-256 implementation, fetched once. An explicit
 * fetch avoids OpenSSL 3's per-call implicit lookup, which dominates short hashes. */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static const EVP_MD *sha256_md;

static void sha256_init_once(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!sha256_md) sha256_md = EVP_sha256();
#else
    sha256_md = EVP_sha256();
#endif
}

#if OPENSSL_VERSION_NUMBER >= 0x30000000L && defined(__GNUC__)
/* Lua unloads the module (dlclose) when its state closes: give the fetched method back then, or the
 * process ends holding a reference that nothing can reach. */
__attribute__((destructor)) static void sha256_release(void) {
    if (sha256_md && sha256_md != EVP_sha256()) EVP_MD_free((EVP_MD *)sha256_md);
    sha256_md = NULL;
}
#endif

static const EVP_MD *sha256(void) {
    pthread_once(&sha256_once, sha256_init_once);
    return sha256_md;
}

static int digest(EVP_MD_CTX *ctx, const void *p, size_t n, unsigned char out[RTC_SHA256_LEN]) {
    return EVP_DigestInit_ex(ctx, sha256(), NULL) == 1 && EVP_DigestUpdate(ctx, p, n) == 1 &&
                   EVP_DigestFinal_ex(ctx, out, NULL) == 1
               ? 0
               : -1;
}

int rtc_sha256(const void *data, size_t n, unsigned char out[RTC_SHA256_LEN]) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc;
    if (!ctx) return -1;
    rc = digest(ctx, data, n, out);
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Hex digest with the signer's reusable context: no allocation per hash. */
static int digest_hex(EVP_MD_CTX *ctx, const void *data, size_t n, char out[2 * RTC_SHA256_LEN + 1]) {
    unsigned char md[RTC_SHA256_LEN];
    if (digest(ctx, data, n, md)) return -1;
    rtc_hex(md, RTC_SHA256_LEN, out);
    return 0;
}

int rtc_sha256_hex(const void *data, size_t n, char out[2 * RTC_SHA256_LEN + 1]) {
    unsigned char md[RTC_SHA256_LEN];
    if (rtc_sha256(data, n, md)) return -1;
    rtc_hex(md, RTC_SHA256_LEN, out);
    return 0;
}

/* Loads an HMAC-SHA256 key into two hash states (RFC 2104 inner and outer pads). */
static int hmac_load_key(EVP_MD_CTX *ctx, EVP_MD_CTX *inner, EVP_MD_CTX *outer, const unsigned char *key,
                         size_t keylen) {
    unsigned char k0[HMAC_BLOCK], pad[HMAC_BLOCK];
    int i, rc = -1;
    memset(k0, 0, sizeof k0);
    if (keylen > HMAC_BLOCK) {
        if (digest(ctx, key, keylen, k0)) goto done;
    } else if (keylen) {
        memcpy(k0, key, keylen);
    }
    for (i = 0; i < HMAC_BLOCK; i++) pad[i] = (unsigned char)(k0[i] ^ 0x36);
    if (EVP_DigestInit_ex(inner, sha256(), NULL) != 1 || EVP_DigestUpdate(inner, pad, HMAC_BLOCK) != 1) goto done;
    for (i = 0; i < HMAC_BLOCK; i++) pad[i] = (unsigned char)(k0[i] ^ 0x5c);
    if (EVP_DigestInit_ex(outer, sha256(), NULL) != 1 || EVP_DigestUpdate(outer, pad, HMAC_BLOCK) != 1) goto done;
    rc = 0;
done:
    OPENSSL_cleanse(k0, sizeof k0);
    OPENSSL_cleanse(pad, sizeof pad);
    return rc;
}

static int hmac_finish(EVP_MD_CTX *ctx, const EVP_MD_CTX *inner, const EVP_MD_CTX *outer, const void *msg,
                       size_t n, unsigned char out[RTC_SHA256_LEN]) {
    unsigned char ih[RTC_SHA256_LEN];
    int ok = EVP_MD_CTX_copy_ex(ctx, inner) == 1 && EVP_DigestUpdate(ctx, msg, n) == 1 &&
             EVP_DigestFinal_ex(ctx, ih, NULL) == 1 && EVP_MD_CTX_copy_ex(ctx, outer) == 1 &&
             EVP_DigestUpdate(ctx, ih, sizeof ih) == 1 && EVP_DigestFinal_ex(ctx, out, NULL) == 1;
    OPENSSL_cleanse(ih, sizeof ih);
    return ok ? 0 : -1;
}

static int hmac(rtc_signer *s, const unsigned char *key, size_t keylen, const char *msg,
                unsigned char out[RTC_SHA256_LEN]) {
    if (hmac_load_key(s->ctx, s->scratch_inner, s->scratch_outer, key, keylen)) return -1;
    return hmac_finish(s->ctx, s->scratch_inner, s->scratch_outer, msg, strlen(msg), out);
}

static void key_slot_clear(key_slot *k) {
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    free(k->region);
    free(k->service);
    /* EVP_MD_CTX_free cleanses the digest state, which holds the padded key. */
    EVP_MD_CTX_free(k->inner);
    EVP_MD_CTX_free(k->outer);
    memset(k, 0, sizeof *k);
}

rtc_signer *rtc_signer_new(void) {
    rtc_signer *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->ctx = EVP_MD_CTX_new();
    s->scratch_inner = EVP_MD_CTX_new();
    s->scratch_outer = EVP_MD_CTX_new();
    if (!s->ctx || !s->scratch_inner || !s->scratch_outer) {
        rtc_signer_free(s);
        return NULL;
    }
    return s;
}

void rtc_signer_free(rtc_signer *s) {
    int i;
    if (!s) return;
    for (i = 0; i < KEY_CACHE_SLOTS; i++) key_slot_clear(&s->keys[i]);
    EVP_MD_CTX_free(s->ctx);
    EVP_MD_CTX_free(s->scratch_inner);
    EVP_MD_CTX_free(s->scratch_outer);
    free(s);
}

static char *dupstr(const char *p) {
    size_t n = strlen(p) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, p, n);
    return d;
}

/* Finds or derives kSigning = HMAC(HMAC(HMAC(HMAC(secret, date), region), service), "request"). */
static key_slot *signing_key(rtc_signer *s, const rtc_sign_request *req) {
    unsigned char k1[RTC_SHA256_LEN], k2[RTC_SHA256_LEN];
    key_slot *k;
    int i, rc;
    for (i = 0; i < KEY_CACHE_SLOTS; i++) {
        k = &s->keys[i];
        if (k->secret && k->secret_len == req->secret_len && memcmp(k->date, req->x_date, 8) == 0 &&
            strcmp(k->region, req->region) == 0 && strcmp(k->service, req->service) == 0 &&
            CRYPTO_memcmp(k->secret, req->secret_key, req->secret_len) == 0)
            return k;
    }
    k = &s->keys[s->next_slot];
    s->next_slot = (s->next_slot + 1) % KEY_CACHE_SLOTS;
    key_slot_clear(k);
    memcpy(k->date, req->x_date, 8);
    k->date[8] = '\0';
    k->secret = malloc(req->secret_len ? req->secret_len : 1);
    k->region = dupstr(req->region);
    k->service = dupstr(req->service);
    k->inner = EVP_MD_CTX_new();
    k->outer = EVP_MD_CTX_new();
    if (!k->secret || !k->region || !k->service || !k->inner || !k->outer) {
        key_slot_clear(k);
        return NULL;
    }
    memcpy(k->secret, req->secret_key, req->secret_len);
    k->secret_len = req->secret_len;
    rc = hmac(s, (const unsigned char *)req->secret_key, req->secret_len, k->date, k1) ||
         hmac(s, k1, sizeof k1, req->region, k2) || hmac(s, k2, sizeof k2, req->service, k1) ||
         hmac(s, k1, sizeof k1, "request", k2) || hmac_load_key(s->ctx, k->inner, k->outer, k2, sizeof k2);
    OPENSSL_cleanse(k1, sizeof k1);
    OPENSSL_cleanse(k2, sizeof k2);
    if (rc) {
        key_slot_clear(k);
        return NULL;
    }
    return k;
}

static int is_unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == '~';
}

int rtc_uri_encode(rtc_buf *b, const char *s, size_t n, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    char *o;
    if (rtc_buf_reserve(b, n * 3)) return -1;
    o = b->data + b->len;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

int rtc_valid_xdate(const char *s, size_t len) {
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int i, month, day;
    if (len != RTC_XDATE_LEN || s[8] != 'T' || s[15] != 'Z') return 0;
    for (i = 0; i < 15; i++)
        if (i != 8 && !is_digit(s[i])) return 0;
    month = (s[4] - '0') * 10 + (s[5] - '0');
    day = (s[6] - '0') * 10 + (s[7] - '0');
    if (month < 1 || month > 12 || day < 1 || day > mdays[month - 1]) return 0;
    if ((s[9] - '0') * 10 + (s[10] - '0') > 23 || (s[11] - '0') * 10 + (s[12] - '0') > 59 ||
        (s[13] - '0') * 10 + (s[14] - '0') > 60)
        return 0;
    return 1;
}

void rtc_format_xdate(long long unix_time, char out[RTC_XDATE_LEN + 1]) {
    time_t t = (time_t)unix_time;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, RTC_XDATE_LEN + 1, "%Y%m%dT%H%M%SZ", &tm);
}

typedef struct {
    const rtc_kv *kv;
    size_t order;
} sort_item;

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return an < bn ? -1 : an > bn;
}

/* By raw key bytes; equal keys keep the caller's order (values are never sorted). */
static int query_cmp(const void *pa, const void *pb) {
    const sort_item *a = pa, *b = pb;
    int c = bytes_cmp(a->kv->key, a->kv->key_len, b->kv->key, b->kv->key_len);
    if (c) return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Requests carry a handful of parameters and headers: below this count the signer sorts on the stack
 * with an insertion sort (no allocation, no qsort call overhead); above it, on the heap with qsort. */
#define SMALL_SORT 16

static void insertion_sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    unsigned char tmp[128], *a = base;
    size_t i, j;
    for (i = 1; i < n; i++) {
        memcpy(tmp, a + i * size, size);
        for (j = i; j > 0 && cmp(a + (j - 1) * size, tmp) > 0; j--) memcpy(a + j * size, a + (j - 1) * size, size);
        memcpy(a + j * size, tmp, size);
    }
}

static void sort_small_or_large(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
    if (n <= SMALL_SORT && size <= 128)
        insertion_sort(base, n, size, cmp);
    else
        qsort(base, n, size, cmp);
}

static int canonical_query(rtc_buf *out, const rtc_kv *q, size_t n) {
    sort_item small[SMALL_SORT], *items = small;
    size_t i;
    int rc = 0;
    if (n == 0) return 0;
    if (n > SMALL_SORT && !(items = malloc(n * sizeof *items))) return -1;
    for (i = 0; i < n; i++) {
        items[i].kv = &q[i];
        items[i].order = i;
    }
    sort_small_or_large(items, n, sizeof *items, query_cmp);
    for (i = 0; i < n && rc == 0; i++) {
        if (i) rc |= rtc_buf_addc(out, '&');
        rc |= rtc_uri_encode(out, items[i].kv->key, items[i].kv->key_len, 0);
        rc |= rtc_buf_addc(out, '=');
        rc |= rtc_uri_encode(out, items[i].kv->value, items[i].kv->value_len, 0);
    }
    if (items != small) free(items);
    return rc ? -1 : 0;
}

typedef struct {
    char name[64]; /* lower-cased */
    const char *value;
    size_t value_len;
} signed_header;

static int header_cmp(const void *pa, const void *pb) {
    return strcmp(((const signed_header *)pa)->name, ((const signed_header *)pb)->name);
}

/* RFC 9110 token character; letters, digits and '-' first, as header names are mostly those. */
static int is_tchar(unsigned char c) {
    if (((c | 32) >= 'a' && (c | 32) <= 'z') || (c >= '0' && c <= '9') || c == '-') return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

static int lower_name(const char *name, size_t n, char out[64]) {
    size_t i;
    if (n == 0 || n >= 64) return -1;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!is_tchar(c)) return -1;
        out[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    out[n] = '\0';
    return 0;
}

static int value_ok(const char *v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') return 0;
    return 1;
}

/* Printable ASCII without space, ',' or '/': what may stand in a credential scope. */
static int scope_ok(const char *s) {
    if (!s || !*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '/' || *s == ',') return 0;
    return 1;
}

/* Host value as signed: ":80" / ":443" dropped exactly as the Python SDK does it. */
static int set_host(rtc_sign_result *res, const char *v, size_t n) {
    const char *colon = memchr(v, ':', n);
    if (colon) {
        const char *port = colon + 1, *end = memchr(port, ':', n - (size_t)(port - v));
        size_t plen = (size_t)((end ? end : v + n) - port);
        if ((plen == 2 && memcmp(port, "80", 2) == 0) || (plen == 3 && memcmp(port, "443", 3) == 0))
            n = (size_t)(colon - v);
    }
    if (n >= sizeof res->host) return -1;
    memcpy(res->host, v, n);
    res->host[n] = '\0';
    return 0;
}

void rtc_sign_result_init(rtc_sign_result *r) {
    r->x_date[0] = r->content_sha256[0] = r->host[0] = '\0';
    r->content_type_added = 0;
    rtc_buf_init_in(&r->authorization, r->store_authorization, sizeof r->store_authorization);
    rtc_buf_init_in(&r->signed_headers, r->store_signed_headers, sizeof r->store_signed_headers);
    rtc_buf_init_in(&r->canonical_request, r->store_canonical_request, sizeof r->store_canonical_request);
    rtc_buf_init_in(&r->string_to_sign, r->store_string_to_sign, sizeof r->store_string_to_sign);
}

void rtc_sign_result_free(rtc_sign_result *r) {
    rtc_buf_free(&r->authorization);
    rtc_buf_free(&r->signed_headers);
    rtc_buf_free(&r->canonical_request);
    rtc_buf_free(&r->string_to_sign);
}

/* YYYYMMDD/region/service/request */
static void add_scope(rtc_buf *b, const char *x_date, const char *region, const char *service) {
    rtc_buf_add(b, x_date, 8);
    rtc_buf_addc(b, '/');
    rtc_buf_adds(b, region);
    rtc_buf_addc(b, '/');
    rtc_buf_adds(b, service);
    rtc_buf_adds(b, "/request");
}

#define FAIL(...)                                  \
    do {                                           \
        if (err) snprintf(err, errlen, __VA_ARGS__); \
        goto fail;                                 \
    } while (0)

int rtc_sign(rtc_signer *s, const rtc_sign_request *req, rtc_sign_result *res, char *err, size_t errlen) {
    static const char *const ours[] = {"x-date", "x-content-sha256", "x-security-token"};
    signed_header small[SMALL_SORT], *hs = small;
    size_t nh = 0, i, j;
    int has_host = 0, has_ctype = 0, has_token = req->session_token && *req->session_token;
    unsigned char md[RTC_SHA256_LEN];
    char creq_hash[2 * RTC_SHA256_LEN + 1];
    key_slot *key;
    rtc_buf *cr = &res->canonical_request;
    const char *path = (req->path && *req->path) ? req->path : "/";
    const char *m;

    if (!req->method || !*req->method) FAIL("method is empty");
    for (m = req->method; *m; m++)
        if (!is_tchar((unsigned char)*m)) FAIL("method is not an HTTP token");
    if (!rtc_valid_xdate(req->x_date, req->x_date ? strlen(req->x_date) : 0))
        FAIL("x_date must be YYYYMMDDTHHMMSSZ (UTC)");
    if (!scope_ok(req->access_key)) FAIL("access_key must be printable ASCII without spaces, ',' or '/'");
    if (!req->secret_key || req->secret_len == 0) FAIL("secret_key is empty");
    if (!scope_ok(req->region)) FAIL("region must be printable ASCII without spaces, ',' or '/'");
    if (!scope_ok(req->service)) FAIL("service must be printable ASCII without spaces, ',' or '/'");
    if (has_token && !value_ok(req->session_token, strlen(req->session_token)))
        FAIL("session_token contains CR, LF or NUL");

    memcpy(res->x_date, req->x_date, RTC_XDATE_LEN + 1);
    if (digest_hex(s->ctx, req->body ? (const void *)req->body : "", req->body_len, res->content_sha256))
        FAIL("out of memory");

    if (req->nheaders + 5 > SMALL_SORT && !(hs = malloc((req->nheaders + 5) * sizeof *hs))) {
        hs = small;
        FAIL("out of memory");
    }
    for (i = 0; i < req->nheaders; i++) {
        char name[64];
        const rtc_kv *h = &req->headers[i];
        int is_ours = 0;
        if (lower_name(h->key, h->key_len, name)) FAIL("header name is not a valid HTTP token (1-63 chars)");
        if (!value_ok(h->value, h->value_len)) FAIL("header '%s' value contains CR, LF or NUL", name);
        for (j = 0; j < sizeof ours / sizeof *ours; j++)
            if (strcmp(name, ours[j]) == 0 && (j < 2 || has_token)) is_ours = 1;
        if (is_ours) continue; /* the signer's own value wins */
        if (strcmp(name, "host") == 0) {
            has_host = 1;
            if (set_host(res, h->value, h->value_len)) FAIL("Host header is too long");
            strcpy(hs[nh].name, name);
            hs[nh].value = res->host;
            hs[nh].value_len = strlen(res->host);
            nh++;
            continue;
        }
        if (strcmp(name, "content-type") == 0) has_ctype = 1;
        if (strcmp(name, "content-type") == 0 || strcmp(name, "content-md5") == 0 || strncmp(name, "x-", 2) == 0) {
            strcpy(hs[nh].name, name);
            hs[nh].value = h->value;
            hs[nh].value_len = h->value_len;
            nh++;
        }
    }
    if (!has_host) {
        if (!req->host || !*req->host) FAIL("host is required (req.host or a Host header)");
        if (!value_ok(req->host, strlen(req->host))) FAIL("host contains CR, LF or NUL");
        if (set_host(res, req->host, strlen(req->host))) FAIL("host is too long");
        strcpy(hs[nh].name, "host");
        hs[nh].value = res->host;
        hs[nh].value_len = strlen(res->host);
        nh++;
    }
    if (!has_ctype && strcmp(req->method, "GET") != 0) {
        res->content_type_added = 1;
        strcpy(hs[nh].name, "content-type");
        hs[nh].value = RTC_DEFAULT_FORM_CONTENT_TYPE;
        hs[nh].value_len = strlen(RTC_DEFAULT_FORM_CONTENT_TYPE);
        nh++;
    }
    strcpy(hs[nh].name, "x-date");
    hs[nh].value = res->x_date;
    hs[nh++].value_len = RTC_XDATE_LEN;
    strcpy(hs[nh].name, "x-content-sha256");
    hs[nh].value = res->content_sha256;
    hs[nh++].value_len = 2 * RTC_SHA256_LEN;
    if (has_token) {
        strcpy(hs[nh].name, "x-security-token");
        hs[nh].value = req->session_token;
        hs[nh++].value_len = strlen(req->session_token);
    }
    sort_small_or_large(hs, nh, sizeof *hs, header_cmp);
    for (i = 1; i < nh; i++)
        if (strcmp(hs[i].name, hs[i - 1].name) == 0) FAIL("header '%s' is given twice", hs[i].name);

    rtc_buf_reset(cr);
    rtc_buf_adds(cr, req->method);
    rtc_buf_addc(cr, '\n');
    rtc_uri_encode(cr, path, strlen(path), 1);
    rtc_buf_addc(cr, '\n');
    canonical_query(cr, req->query, req->nquery);
    rtc_buf_addc(cr, '\n');
    rtc_buf_reset(&res->signed_headers);
    for (i = 0; i < nh; i++) {
        rtc_buf_adds(cr, hs[i].name);
        rtc_buf_addc(cr, ':');
        rtc_buf_add(cr, hs[i].value, hs[i].value_len);
        rtc_buf_addc(cr, '\n');
        if (i) rtc_buf_addc(&res->signed_headers, ';');
        rtc_buf_adds(&res->signed_headers, hs[i].name);
    }
    rtc_buf_addc(cr, '\n');
    rtc_buf_add(cr, res->signed_headers.data, res->signed_headers.len);
    rtc_buf_addc(cr, '\n');
    rtc_buf_add(cr, res->content_sha256, 2 * RTC_SHA256_LEN);
    if (cr->oom || res->signed_headers.oom) FAIL("out of memory");
    if (digest_hex(s->ctx, cr->data, cr->len, creq_hash)) FAIL("out of memory");

    /* Plain appends: printf-style formatting cost more than the hashing here. */
    rtc_buf_reset(&res->string_to_sign);
    rtc_buf_adds(&res->string_to_sign, "HMAC-SHA256\n");
    rtc_buf_add(&res->string_to_sign, res->x_date, RTC_XDATE_LEN);
    rtc_buf_addc(&res->string_to_sign, '\n');
    add_scope(&res->string_to_sign, res->x_date, req->region, req->service);
    rtc_buf_addc(&res->string_to_sign, '\n');
    rtc_buf_add(&res->string_to_sign, creq_hash, 2 * RTC_SHA256_LEN);
    if (res->string_to_sign.oom) FAIL("out of memory");

    key = signing_key(s, req);
    if (!key || hmac_finish(s->ctx, key->inner, key->outer, res->string_to_sign.data, res->string_to_sign.len, md))
        FAIL("signing failed (OpenSSL error or out of memory)");
    rtc_buf_reset(&res->authorization);
    rtc_buf_adds(&res->authorization, "HMAC-SHA256 Credential=");
    rtc_buf_adds(&res->authorization, req->access_key);
    rtc_buf_addc(&res->authorization, '/');
    add_scope(&res->authorization, res->x_date, req->region, req->service);
    rtc_buf_adds(&res->authorization, ", SignedHeaders=");
    rtc_buf_add(&res->authorization, res->signed_headers.data, res->signed_headers.len);
    rtc_buf_adds(&res->authorization, ", Signature=");
    rtc_buf_addhex(&res->authorization, md, sizeof md);
    OPENSSL_cleanse(md, sizeof md);
    if (res->authorization.oom) FAIL("out of memory");
    if (hs != small) free(hs);
    return 0;
fail:
    if (hs != small) free(hs);
    return -1;
}
