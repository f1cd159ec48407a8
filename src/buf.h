/* Growable byte buffer used by the signer, the JSON writer and the transport. */
#ifndef RTCADMIN_BUF_H
#define RTCADMIN_BUF_H

#include <stddef.h>

typedef struct {
    char *data;   /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    int oom;      /* sticky: set once an allocation failed */
} rtc_buf;

void rtc_buf_init(rtc_buf *b);
void rtc_buf_free(rtc_buf *b);
/* Wipes the contents before freeing: for buffers that held secrets. */
void rtc_buf_free_secure(rtc_buf *b);
void rtc_buf_reset(rtc_buf *b);
int rtc_buf_reserve(rtc_buf *b, size_t extra);
int rtc_buf_add(rtc_buf *b, const void *p, size_t n);
int rtc_buf_adds(rtc_buf *b, const char *s);
int rtc_buf_addc(rtc_buf *b, char c);
int rtc_buf_addf(rtc_buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Lower-case hex of n bytes. */
int rtc_buf_addhex(rtc_buf *b, const unsigned char *p, size_t n);

#endif
