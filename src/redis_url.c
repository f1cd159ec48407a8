/* redis://[[user]:password@]host[:port][/db], read once for both Redis limiters (the C backend, and
 * rtcadmin.parse_redis_url for the OpenResty one). Messages never quote the userinfo. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "buf.h"
#include "redis_common.h"

void rtc_redis_wipe_free(char *s) {
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void rtc_redis_url_free(rtc_redis_url *u) {
    free(u->host);
    rtc_redis_wipe_free(u->user);
    rtc_redis_wipe_free(u->password);
    u->host = u->user = u->password = NULL;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL userinfo is percent-decoded (a password may hold '@' or ':'). NULL on a bad escape, a %00 or
 * no memory; *oom says which. */
static char *decode_part(const char *s, size_t n, int *oom) {
    char *d = malloc(n + 1);
    size_t i, j = 0;
    if (!d) {
        *oom = 1;
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                OPENSSL_cleanse(d, j);
                free(d);
                return NULL;
            }
            d[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            d[j++] = s[i];
        }
    }
    d[j] = '\0';
    return d;
}

/* The userinfo before the last '@' of [p, at): [[user]:]password. */
static int read_userinfo(rtc_redis_url *u, const char *p, const char *at, char *err, size_t errlen) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    int oom = 0;
    if (colon) {
        if (colon > p && !(u->user = decode_part(p, (size_t)(colon - p), &oom))) goto bad;
        if (!(u->password = decode_part(colon + 1, (size_t)(at - colon - 1), &oom))) goto bad;
    } else if (at > p && !(u->password = decode_part(p, (size_t)(at - p), &oom))) {
        goto bad; /* redis://password@host, as redis-cli reads it */
    }
    return 0;
bad:
    snprintf(err, errlen, oom ? "out of memory" : "url: bad percent-escape in the user or password");
    return -1;
}

static int parse(const char *url, rtc_redis_url *u, char *err, size_t errlen) {
    const char *p, *at = NULL, *end, *host_end, *port_at = NULL, *q;
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen, "rediss:// (TLS) is not supported: reach a TLS Redis through a local tunnel (stunnel, "
                 "spiped) and use redis://");
        return -1;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "url must start with redis://");
        return -1;
    }
    p = url + 8;
    end = p + strcspn(p, "/?#");
    for (q = p; q < end; q++)
        if (*q == '@') at = q; /* the last '@': the host part has none */
    if (at) {
        if (read_userinfo(u, p, at, err, errlen)) return -1;
        p = at + 1;
    }
    if (*p == '[') {
        host_end = memchr(p, ']', (size_t)(end - p));
        if (!host_end) {
            snprintf(err, errlen, "url: unterminated [IPv6 address]");
            return -1;
        }
        u->host = rtc_strndup(p + 1, (size_t)(host_end - p - 1));
        if (host_end + 1 < end) {
            if (host_end[1] != ':') {
                snprintf(err, errlen, "url: expected ':port' after the IPv6 address");
                return -1;
            }
            port_at = host_end + 2;
        }
    } else {
        host_end = memchr(p, ':', (size_t)(end - p));
        if (host_end) port_at = host_end + 1;
        else host_end = end;
        u->host = rtc_strndup(p, (size_t)(host_end - p));
    }
    if (!u->host || !u->host[0]) {
        snprintf(err, errlen, u->host ? "url has no host" : "out of memory");
        return -1;
    }
    u->port = 6379;
    if (port_at) {
        char *e;
        long v = strtol(port_at, &e, 10);
        if (e != end || port_at == end || v < 1 || v > 65535 || !(*port_at >= '0' && *port_at <= '9')) {
            snprintf(err, errlen, "url: port must be 1-65535");
            return -1;
        }
        u->port = (int)v;
    }
    if (*end == '/' && end[1]) {
        char *e;
        u->db = strtol(end + 1, &e, 10);
        if (*e || u->db < 0 || !(end[1] >= '0' && end[1] <= '9')) {
            snprintf(err, errlen, "url: the path must be a database number");
            return -1;
        }
    } else if (*end && !(*end == '/' && !end[1])) {
        snprintf(err, errlen, "url: unexpected query or fragment");
        return -1;
    }
    snprintf(u->where, sizeof u->where, "%s%s%s:%d/%ld", strchr(u->host, ':') ? "[" : "", u->host,
             strchr(u->host, ':') ? "]" : "", u->port, u->db);
    return 0;
}

int rtc_redis_url_parse(const char *url, rtc_redis_url *u, char *err, size_t errlen) {
    memset(u, 0, sizeof *u);
    if (parse(url, u, err, errlen) == 0) return 0;
    rtc_redis_url_free(u);
    return -1;
}
