#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

void rtc_buf_init(rtc_buf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    b->borrowed = 0;
}

void rtc_buf_init_in(rtc_buf *b, char *storage, size_t n) {
    rtc_buf_init(b);
    b->data = storage;
    b->cap = n;
    b->borrowed = 1;
    storage[0] = '\0';
}

void rtc_buf_free(rtc_buf *b) {
    if (!b->borrowed) free(b->data);
    rtc_buf_init(b);
}

void rtc_buf_free_secure(rtc_buf *b) {
    if (b->data) OPENSSL_cleanse(b->data, b->cap);
    rtc_buf_free(b);
}

void rtc_buf_reset(rtc_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

int rtc_buf_grow(rtc_buf *b, size_t extra) {
    size_t need, cap;
    char *p;
    if (b->oom) return -1;
    if (extra > (size_t)-1 - b->len - 1) { b->oom = 1; return -1; }
    need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > ((size_t)-1) / 2 ? need : cap * 2;
    p = b->borrowed ? malloc(cap) : realloc(b->data, cap);
    if (!p) { b->oom = 1; return -1; }
    if (b->borrowed) {
        memcpy(p, b->data, b->len + 1);
        b->borrowed = 0;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int rtc_buf_addf(rtc_buf *b, const char *fmt, ...) {
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || rtc_buf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void rtc_hex(const unsigned char *p, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        *out++ = hex[p[i] >> 4];
        *out++ = hex[p[i] & 15];
    }
    *out = '\0';
}

int rtc_buf_addhex(rtc_buf *b, const unsigned char *p, size_t n) {
    if (rtc_buf_reserve(b, n * 2)) return -1;
    rtc_hex(p, n, b->data + b->len);
    b->len += n * 2;
    return 0;
}

char *rtc_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}
