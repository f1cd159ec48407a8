/* Growable byte buffer used by the signer, the JSON writer and the transport. */
#ifndef RTCADMIN_BUF_H
#define RTCADMIN_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct {
    char *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    int oom;      /* sticky: set once an allocation failed */
    int borrowed; /* data is the caller's storage (rtc_buf_init_in), moved to the heap on growth */
} rtc_buf;

void rtc_buf_init(rtc_buf *b);
/* Starts in caller-owned storage (n >= 1 bytes), so short contents never touch the allocator. */
void rtc_buf_init_in(rtc_buf *b, char *storage, size_t n);
void rtc_buf_free(rtc_buf *b);
/* Wipes the contents before freeing: for buffers that held secrets. */
void rtc_buf_free_secure(rtc_buf *b);
void rtc_buf_reset(rtc_buf *b);
/* Grows the buffer; the inline functions below call it only when the contents do not fit. */
int rtc_buf_grow(rtc_buf *b, size_t extra);

/* Inline because the signer appends dozens of short pieces per request. */
static inline int rtc_buf_reserve(rtc_buf *b, size_t extra) {
    return (!b->oom && extra < b->cap - b->len) ? 0 : rtc_buf_grow(b, extra);
}

static inline int rtc_buf_add(rtc_buf *b, const void *p, size_t n) {
    if (rtc_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static inline int rtc_buf_adds(rtc_buf *b, const char *s) { return rtc_buf_add(b, s, strlen(s)); }

static inline int rtc_buf_addc(rtc_buf *b, char c) {
    if (rtc_buf_reserve(b, 1)) return -1;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
    return 0;
}

int rtc_buf_addf(rtc_buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Lower-case hex of n bytes: into out (2n + 1 bytes, NUL-terminated), or appended to a buffer. */
void rtc_hex(const unsigned char *p, size_t n, char *out);
int rtc_buf_addhex(rtc_buf *b, const unsigned char *p, size_t n);

/* A NUL-terminated copy of s[0..n), or NULL when out of memory. */
char *rtc_strndup(const char *s, size_t n);

#endif
