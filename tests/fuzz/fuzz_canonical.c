/* libFuzzer: query and path canonicalisation in the signer (src/signing.c). The input is split at 0x01
 * bytes into path, host, one extra header name and value, then query keys and values. When rtc_sign
 * accepts it, the canonical path and query hold only unreserved characters and %XX escapes, the
 * signature is 64 hex digits, and signing again (from the key cache) gives the same bytes. The URI
 * encoder round-trips every input. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <string.h>

#include "fuzz_lua.h"

#define MAX_PARTS 32

static int unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == '~';
}

static int hexval(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }

/* Checks one canonical line: unreserved bytes, %XX with upper-case hex, and the given separators. */
static void check_encoded(const char *s, size_t n, const char *seps) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (unreserved((unsigned char)s[i]) || (s[i] && strchr(seps, s[i]))) continue;
        FUZZ_CHECK(s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0,
                   "bad byte 0x%02x at %zu of a canonical line", (unsigned char)s[i], i);
        i += 2;
    }
}

static void check_uri_roundtrip(const uint8_t *data, size_t size) {
    rtc_buf b;
    size_t i, j = 0;
    rtc_buf_init(&b);
    FUZZ_CHECK(rtc_uri_encode(&b, (const char *)data, size, 0) == 0, "rtc_uri_encode failed");
    check_encoded(b.data, b.len, "");
    for (i = 0; i < b.len; i++, j++) {
        unsigned char c = (unsigned char)b.data[i];
        if (c == '%') {
            c = (unsigned char)(hexval(b.data[i + 1]) * 16 + hexval(b.data[i + 2]));
            i += 2;
        }
        FUZZ_CHECK(j < size && c == data[j], "rtc_uri_encode does not round-trip at byte %zu", j);
    }
    FUZZ_CHECK(j == size, "rtc_uri_encode lost bytes");
    rtc_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rtc_signer *signer;
    const char *parts[MAX_PARTS];
    size_t lens[MAX_PARTS], nparts = 0, i, start = 0;
    char *copy, err[256];
    rtc_kv query[MAX_PARTS / 2], headers[2];
    rtc_sign_request req;
    rtc_sign_result r1, r2;
    int rc, secret_in_input;

    check_uri_roundtrip(data, size);
    if (!signer) signer = rtc_signer_new();
    copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    for (i = 0; i <= size && nparts < MAX_PARTS; i++) {
        if (i == size || copy[i] == 0x01) {
            copy[i] = '\0';
            parts[nparts] = copy + start;
            lens[nparts++] = i - start;
            start = i + 1;
        }
    }
    while (nparts < 4) {
        parts[nparts] = "";
        lens[nparts++] = 0;
    }
    memset(&req, 0, sizeof req);
    req.method = "POST";
    req.path = parts[0];
    req.host = lens[1] ? parts[1] : "rtc.volcengineapi.com";
    headers[0].key = "Content-Type", headers[0].key_len = 12;
    headers[0].value = "application/json", headers[0].value_len = 16;
    headers[1].key = parts[2], headers[1].key_len = lens[2];
    headers[1].value = parts[3], headers[1].value_len = lens[3];
    req.headers = headers;
    req.nheaders = lens[2] ? 2 : 1;
    for (i = 4; i + 1 < nparts; i += 2) {
        query[(i - 4) / 2].key = parts[i], query[(i - 4) / 2].key_len = lens[i];
        query[(i - 4) / 2].value = parts[i + 1], query[(i - 4) / 2].value_len = lens[i + 1];
        req.nquery++;
    }
    req.query = query;
    req.body = (const unsigned char *)data;
    req.body_len = size;
    req.access_key = "AKLTfuzzAccessKey000001";
    req.secret_key = "RnV6elNlY3JldEtleQ==";
    req.secret_len = strlen(req.secret_key);
    req.region = "cn-north-1";
    req.service = "rtc";
    req.x_date = "20250101T000000Z";

    /* The secret can only show up in the output if it was in the input (the fuzzer learns it from strstr). */
    secret_in_input = memmem(data, size, req.secret_key, req.secret_len) != NULL;
    rtc_sign_result_init(&r1);
    rtc_sign_result_init(&r2);
    rc = rtc_sign(signer, &req, &r1, err, sizeof err);
    if (rc == 0) {
        const char *cr = r1.canonical_request.data, *l2 = strchr(cr, '\n') + 1, *l3 = strchr(l2, '\n') + 1,
                   *l4 = strchr(l3, '\n');
        const char *sig = strstr(r1.authorization.data, "Signature=");
        check_encoded(l2, (size_t)(l3 - 1 - l2), "/");
        check_encoded(l3, (size_t)(l4 - l3), "=&");
        FUZZ_CHECK(sig && strlen(sig + 10) == 64 && strspn(sig + 10, "0123456789abcdef") == 64, "signature");
        FUZZ_CHECK(secret_in_input || !strstr(r1.canonical_request.data, req.secret_key),
                   "secret in the canonical request");
        FUZZ_CHECK(!strchr(r1.authorization.data, '\n') && !strchr(r1.authorization.data, '\r'), "CR/LF in header");
        FUZZ_CHECK(rtc_sign(signer, &req, &r2, err, sizeof err) == 0, "second signing failed: %s", err);
        FUZZ_CHECK(strcmp(r1.authorization.data, r2.authorization.data) == 0, "signing is not deterministic");
    } else {
        FUZZ_CHECK(secret_in_input || !strstr(err, req.secret_key), "secret in the error");
    }
    rtc_sign_result_free(&r1);
    rtc_sign_result_free(&r2);
    free(copy);
    return 0;
}
