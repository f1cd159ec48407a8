/* C unit test of the signer: every vector read from stdin (tests/c/flatten_vectors.py) must
 * come out byte for byte, and again from the derived-key cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "signing.h"

#define MAXKV 300

typedef struct {
    rtc_buf f[14];
    rtc_buf qk[MAXKV], qv[MAXKV], hk[MAXKV], hv[MAXKV];
    size_t nq, nh;
} vec;

static const char *const fields[] = {"name", "method", "host", "path", "body", "ak", "sk",
                                     "token", "region", "service", "xdate", "creq", "sts", "auth"};
enum { NAME, METHOD, HOST, PATH, BODY, AK, SK, TOKEN, REGION, SERVICE, XDATE, CREQ, STS, AUTH };

static int unhex(rtc_buf *b, const char *h) {
    rtc_buf_reset(b);
    rtc_buf_add(b, "", 0);
    while (h[0] && h[1] && h[0] != '\n' && h[0] != ' ') {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1) return -1;
        rtc_buf_addc(b, (char)v);
        h += 2;
    }
    return b->oom ? -1 : 0;
}

static int failures, checks;

static void expect(const char *vname, const char *what, const rtc_buf *got, const rtc_buf *want) {
    checks++;
    if (got->len == want->len && memcmp(got->data, want->data, got->len) == 0) return;
    failures++;
    printf("FAIL %s: %s\n  got:  %s\n  want: %s\n", vname, what, got->data, want->data);
}

static void run(rtc_signer *s, vec *v, int pass) {
    rtc_kv q[MAXKV], h[MAXKV];
    rtc_sign_request r;
    rtc_sign_result res;
    char err[256];
    size_t i;
    for (i = 0; i < v->nq; i++) {
        q[i].key = v->qk[i].data, q[i].key_len = v->qk[i].len;
        q[i].value = v->qv[i].data, q[i].value_len = v->qv[i].len;
    }
    for (i = 0; i < v->nh; i++) {
        h[i].key = v->hk[i].data, h[i].key_len = v->hk[i].len;
        h[i].value = v->hv[i].data, h[i].value_len = v->hv[i].len;
    }
    memset(&r, 0, sizeof r);
    r.method = v->f[METHOD].data;
    r.host = v->f[HOST].data;
    r.path = v->f[PATH].data;
    r.query = q, r.nquery = v->nq;
    r.headers = h, r.nheaders = v->nh;
    r.body = (const unsigned char *)v->f[BODY].data, r.body_len = v->f[BODY].len;
    r.access_key = v->f[AK].data;
    r.secret_key = v->f[SK].data, r.secret_len = v->f[SK].len;
    r.session_token = v->f[TOKEN].data;
    r.region = v->f[REGION].data;
    r.service = v->f[SERVICE].data;
    r.x_date = v->f[XDATE].data;
    rtc_sign_result_init(&res);
    checks++;
    if (rtc_sign(s, &r, &res, err, sizeof err)) {
        failures++;
        printf("FAIL %s (pass %d): rtc_sign: %s\n", v->f[NAME].data, pass, err);
    } else {
        expect(v->f[NAME].data, "canonical_request", &res.canonical_request, &v->f[CREQ]);
        expect(v->f[NAME].data, "string_to_sign", &res.string_to_sign, &v->f[STS]);
        expect(v->f[NAME].data, "authorization", &res.authorization, &v->f[AUTH]);
    }
    rtc_sign_result_free(&res);
}

int main(void) {
    static vec v;
    static char line[1 << 20];
    rtc_signer *s = rtc_signer_new();
    int i, nvec = 0, pass;
    /* Vectors are kept to run them a second time: the second pass hits the key cache. */
    static vec all[256];
    if (!s) return 2;
    memset(&v, 0, sizeof v);
    while (fgets(line, sizeof line, stdin)) {
        char *sp = strchr(line, ' ');
        if (strncmp(line, "end", 3) == 0) {
            if (nvec == 256) { printf("too many vectors\n"); return 2; }
            all[nvec++] = v;
            memset(&v, 0, sizeof v);
            continue;
        }
        if (!sp) continue;
        *sp = '\0';
        if (strcmp(line, "q") == 0 || strcmp(line, "h") == 0) {
            char *sp2 = strchr(sp + 1, ' ');
            int isq = line[0] == 'q';
            size_t *n = isq ? &v.nq : &v.nh;
            if (!sp2 || *n == MAXKV) return 2;
            unhex(isq ? &v.qk[*n] : &v.hk[*n], sp + 1);
            unhex(isq ? &v.qv[*n] : &v.hv[*n], sp2 + 1);
            (*n)++;
            continue;
        }
        for (i = 0; i < 14; i++)
            if (strcmp(line, fields[i]) == 0) unhex(&v.f[i], sp + 1);
    }
    if (nvec == 0) {
        printf("no vectors on stdin\n");
        return 2;
    }
    for (pass = 1; pass <= 2; pass++)
        for (i = 0; i < nvec; i++) run(s, &all[i], pass);
    for (i = 0; i < nvec; i++) {
        size_t k;
        for (k = 0; k < 14; k++) rtc_buf_free(&all[i].f[k]);
        for (k = 0; k < all[i].nq; k++) rtc_buf_free(&all[i].qk[k]), rtc_buf_free(&all[i].qv[k]);
        for (k = 0; k < all[i].nh; k++) rtc_buf_free(&all[i].hk[k]), rtc_buf_free(&all[i].hv[k]);
    }
    rtc_signer_free(s);
    printf("%d vectors, %d checks: %d passed, %d failed\n", nvec, checks, checks - failures, failures);
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
