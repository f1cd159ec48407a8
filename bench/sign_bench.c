/* Signing benchmark: rtc_sign() against the least work the signature implies, in one binary.
 *
 * Request: the golden vector rtc_kickuser_post_json (tests/vectors/signing.json). Before timing, the
 * signer's output is compared with the vector's Authorization; a mismatch aborts the run.
 *
 *   bench/out/sign_bench [iterations] [runs] [only]   (defaults: 200000, 7, all)
 *
 * `only` (c_sign, c_sign_reused, min_evp, min_lowlevel) runs just that loop, for profiling.
 *
 * Every figure is the median over the runs of (wall time of the run / iterations), in ns/op, on one
 * thread; the runs of the four loops are interleaved. Output lines are "key value" pairs so
 * bench/run.sh can pick them up.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* the low-level SHA256_* API is used for an informational floor */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/sha.h>

#include "signing.h"

#define MAX_RUNS 31

static const char AK[] = "AKLTYWViMTVmZGYzM2E0NDI5Mzk2MDZjNjFmMjc2MjRjMzg";
static const char SK[] = "WkRZeE1EQmxPVGhsWWpWak5HVmtNbUUxTXpZeU9UVXlOMlE1TmpZeVlqTQ==";
static const char BODY[] = "{\"AppId\": \"661e2ebb5ffd4b0e8d3f6b1d\", \"RoomId\": \"room1\", \"UserId\": \"user1\"}";
static const char XDATE[] = "20240619T071306Z";
static const char EXPECTED_AUTH[] =
    "HMAC-SHA256 Credential=AKLTYWViMTVmZGYzM2E0NDI5Mzk2MDZjNjFmMjc2MjRjMzg/20240619/cn-north-1/rtc/request, "
    "SignedHeaders=content-type;host;x-content-sha256;x-date, "
    "Signature=2e31d9963f23f2ba1104d7d86bd982e3ffe93168fb69670dd74c944f8ab5c199";

#define KV(k, v) {k, sizeof k - 1, v, sizeof v - 1}
static const rtc_kv QUERY[] = {KV("Action", "KickUser"), KV("Version", "2020-12-01")};
static const rtc_kv HEADERS[] = {KV("Accept", "application/json"), KV("Host", "rtc.volcengineapi.com"),
                                 KV("User-Agent", "volc-sdk-python/v1.0.228"),
                                 KV("Content-Type", "application/json")};

static volatile unsigned char sink; /* keeps results observable so no loop is optimised away */

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) {
    fprintf(stderr, "sign_bench: %s\n", what);
    exit(1);
}

static rtc_sign_request make_request(void) {
    rtc_sign_request r;
    memset(&r, 0, sizeof r);
    r.method = "POST";
    r.host = "rtc.volcengineapi.com";
    r.path = "/";
    r.query = QUERY;
    r.nquery = sizeof QUERY / sizeof *QUERY;
    r.headers = HEADERS;
    r.nheaders = sizeof HEADERS / sizeof *HEADERS;
    r.body = (const unsigned char *)BODY;
    r.body_len = sizeof BODY - 1;
    r.access_key = AK;
    r.secret_key = SK;
    r.secret_len = sizeof SK - 1;
    r.region = "cn-north-1";
    r.service = "rtc";
    r.x_date = XDATE;
    return r;
}

/* ---- (a) rtc_sign ------------------------------------------------------------------------- */

static rtc_signer *g_signer;
static rtc_sign_request g_req;
static rtc_sign_result g_res; /* for the "reused result" variant */

/* As src/module.c and src/client.c call it: a fresh result per request. */
static void op_sign_fresh(void) {
    rtc_sign_result res;
    char err[256];
    rtc_sign_result_init(&res);
    if (rtc_sign(g_signer, &g_req, &res, err, sizeof err)) die(err);
    sink ^= (unsigned char)res.authorization.data[res.authorization.len - 1];
    rtc_sign_result_free(&res);
}

/* The signer alone: result buffers kept between requests, so no buffer allocation. */
static void op_sign_reused(void) {
    char err[256];
    if (rtc_sign(g_signer, &g_req, &g_res, err, sizeof err)) die(err);
    sink ^= (unsigned char)g_res.authorization.data[g_res.authorization.len - 1];
}

/* ---- (b) minimum work, EVP ------------------------------------------------------------------ */

static const EVP_MD *g_md;
static EVP_MD_CTX *g_ctx, *g_inner, *g_outer;
static unsigned char g_creq[512], g_sts[512];
static size_t g_creq_len, g_sts_len;

static void evp_digest(const void *p, size_t n, unsigned char out[32]) {
    if (EVP_DigestInit_ex(g_ctx, g_md, NULL) != 1 || EVP_DigestUpdate(g_ctx, p, n) != 1 ||
        EVP_DigestFinal_ex(g_ctx, out, NULL) != 1)
        die("EVP digest failed");
}

/* SHA-256(body) + SHA-256(canonical request) + HMAC-SHA256(32-byte key, string to sign), with the
 * HMAC key's inner and outer pad blocks absorbed once and the two states copied per operation. */
static void op_min_evp(void) {
    unsigned char h1[32], h2[32], ih[32], mac[32];
    evp_digest(BODY, sizeof BODY - 1, h1);
    evp_digest(g_creq, g_creq_len, h2);
    if (EVP_MD_CTX_copy_ex(g_ctx, g_inner) != 1 || EVP_DigestUpdate(g_ctx, g_sts, g_sts_len) != 1 ||
        EVP_DigestFinal_ex(g_ctx, ih, NULL) != 1 || EVP_MD_CTX_copy_ex(g_ctx, g_outer) != 1 ||
        EVP_DigestUpdate(g_ctx, ih, sizeof ih) != 1 || EVP_DigestFinal_ex(g_ctx, mac, NULL) != 1)
        die("EVP HMAC failed");
    sink ^= (unsigned char)(h1[0] ^ h2[0] ^ mac[0]);
}

/* ---- (b') the same work through the low-level SHA256_* API (deprecated in OpenSSL 3) ---------- */

static SHA256_CTX g_ll_inner, g_ll_outer;

static void op_min_lowlevel(void) {
    unsigned char h1[32], h2[32], ih[32], mac[32];
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, BODY, sizeof BODY - 1);
    SHA256_Final(h1, &c);
    SHA256_Init(&c);
    SHA256_Update(&c, g_creq, g_creq_len);
    SHA256_Final(h2, &c);
    c = g_ll_inner;
    SHA256_Update(&c, g_sts, g_sts_len);
    SHA256_Final(ih, &c);
    c = g_ll_outer;
    SHA256_Update(&c, ih, sizeof ih);
    SHA256_Final(mac, &c);
    sink ^= (unsigned char)(h1[0] ^ h2[0] ^ mac[0]);
}

static void setup_minimum(const rtc_sign_result *golden) {
    unsigned char key[32], pad[64];
    int i;
    g_creq_len = golden->canonical_request.len;
    g_sts_len = golden->string_to_sign.len;
    if (g_creq_len > sizeof g_creq || g_sts_len > sizeof g_sts) die("buffers too small");
    /* Same lengths as the real inputs; the contents do not change the cost of SHA-256. */
    memcpy(g_creq, golden->canonical_request.data, g_creq_len);
    memcpy(g_sts, golden->string_to_sign.data, g_sts_len);
    for (i = 0; i < 32; i++) key[i] = (unsigned char)(i * 7 + 1);

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    g_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    g_md = EVP_sha256();
#endif
    g_ctx = EVP_MD_CTX_new();
    g_inner = EVP_MD_CTX_new();
    g_outer = EVP_MD_CTX_new();
    if (!g_md || !g_ctx || !g_inner || !g_outer) die("OpenSSL setup failed");
    memset(pad, 0x36, sizeof pad);
    for (i = 0; i < 32; i++) pad[i] ^= key[i];
    if (EVP_DigestInit_ex(g_inner, g_md, NULL) != 1 || EVP_DigestUpdate(g_inner, pad, 64) != 1) die("ipad");
    SHA256_Init(&g_ll_inner);
    SHA256_Update(&g_ll_inner, pad, 64);
    memset(pad, 0x5c, sizeof pad);
    for (i = 0; i < 32; i++) pad[i] ^= key[i];
    if (EVP_DigestInit_ex(g_outer, g_md, NULL) != 1 || EVP_DigestUpdate(g_outer, pad, 64) != 1) die("opad");
    SHA256_Init(&g_ll_outer);
    SHA256_Update(&g_ll_outer, pad, 64);

    /* The shortcut must compute real HMAC-SHA256: compare it once with HMAC by its definition. */
    {
        unsigned char a[32], b[32], ih[32];
        unsigned int blen = 0;
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        memset(pad, 0x36, sizeof pad);
        for (i = 0; i < 32; i++) pad[i] ^= key[i];
        EVP_DigestInit_ex(c, g_md, NULL);
        EVP_DigestUpdate(c, pad, 64);
        EVP_DigestUpdate(c, g_sts, g_sts_len);
        EVP_DigestFinal_ex(c, ih, NULL);
        memset(pad, 0x5c, sizeof pad);
        for (i = 0; i < 32; i++) pad[i] ^= key[i];
        EVP_DigestInit_ex(c, g_md, NULL);
        EVP_DigestUpdate(c, pad, 64);
        EVP_DigestUpdate(c, ih, 32);
        EVP_DigestFinal_ex(c, a, &blen);
        EVP_MD_CTX_free(c);
        EVP_MD_CTX_copy_ex(g_ctx, g_inner);
        EVP_DigestUpdate(g_ctx, g_sts, g_sts_len);
        EVP_DigestFinal_ex(g_ctx, ih, NULL);
        EVP_MD_CTX_copy_ex(g_ctx, g_outer);
        EVP_DigestUpdate(g_ctx, ih, 32);
        EVP_DigestFinal_ex(g_ctx, b, NULL);
        if (blen != 32 || memcmp(a, b, 32) != 0) die("pre-keyed HMAC states disagree with HMAC");
    }
    OPENSSL_cleanse(pad, sizeof pad);
}

/* ---- harness -------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    void (*op)(void);
} loop;

static const loop LOOPS[] = {{"c_sign", op_sign_fresh},
                             {"c_sign_reused", op_sign_reused},
                             {"min_evp", op_min_evp},
                             {"min_lowlevel", op_min_lowlevel}};
#define NLOOPS (sizeof LOOPS / sizeof *LOOPS)

static double time_loop(void (*op)(void), long iters) {
    double t0 = now_ns();
    long i;
    for (i = 0; i < iters; i++) op();
    return (now_ns() - t0) / (double)iters;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    int runs = argc > 2 ? atoi(argv[2]) : 7;
    const char *only = argc > 3 ? argv[3] : NULL;
    char err[256];
    double t[NLOOPS][MAX_RUNS], ratio[MAX_RUNS];
    size_t k;
    int r, found = 0;
    if (iters < 1 || runs < 1 || runs > MAX_RUNS) die("usage: sign_bench [iterations] [runs 1..31]");

    g_signer = rtc_signer_new();
    if (!g_signer) die("rtc_signer_new failed");
    g_req = make_request();
    rtc_sign_result_init(&g_res);
    if (rtc_sign(g_signer, &g_req, &g_res, err, sizeof err)) die(err);
    if (strcmp(g_res.authorization.data, EXPECTED_AUTH) != 0) die("Authorization differs from the golden vector");
    setup_minimum(&g_res);

    printf("openssl %s\n", OpenSSL_version(OPENSSL_VERSION));
    printf("iterations %ld\nruns %d\n", iters, runs);
    printf("body_len %zu\ncanonical_request_len %zu\nstring_to_sign_len %zu\n", sizeof BODY - 1, g_creq_len,
           g_sts_len);
    for (k = 0; k < NLOOPS; k++) {
        if (only && strcmp(only, LOOPS[k].name) != 0) continue;
        time_loop(LOOPS[k].op, iters / 10 + 1); /* warm-up */
        found = 1;
    }
    if (!found) die("unknown loop name");
    /* Rounds interleave the loops, so a slow patch of the machine hits all of them alike; each
     * round also yields its own ratio, and the reported ratio is the median of those. */
    for (r = 0; r < runs; r++) {
        for (k = 0; k < NLOOPS; k++)
            if (!only || strcmp(only, LOOPS[k].name) == 0) t[k][r] = time_loop(LOOPS[k].op, iters);
        ratio[r] = only ? 0 : t[0][r] / t[2][r];
    }
    for (k = 0; k < NLOOPS; k++)
        if (!only || strcmp(only, LOOPS[k].name) == 0) printf("%s_ns %.1f\n", LOOPS[k].name, median(t[k], runs));
    if (!only) printf("ratio_sign_over_min %.2f\n", median(ratio, runs));

    rtc_sign_result_free(&g_res);
    rtc_signer_free(g_signer);
    return 0;
}
