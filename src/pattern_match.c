/* A Lua pattern matcher that counts its work (pattern.h).
 *
 * The language is the reference manual's: single-byte items (a literal byte, '.', %x classes and
 * escapes, [sets]) with '*', '+', '-' or '?', captures '(' ')' and position captures '()',
 * back-references %1-%9, %bxy, %f[set], '^' and '$' anchors. Where the manual is silent the stock
 * library's observed behaviour decides (what a set like "[a-%%]" holds, when a malformed pattern
 * is noticed): every error is raised only when matching reaches the faulty item, as there.
 *
 * Matching is a depth-first search over the same alternatives in the same order as Lua's (greedy
 * repetitions longest first, '-' shortest first, '?' with the byte first), so the first match found
 * is Lua's. The search keeps its choice points on an explicit stack of at most PAT_MAXDEPTH - 1
 * frames instead of recursing, so no pattern can exhaust the C stack.
 *
 * One step of the meter is one attempt at one pattern item at one subject position, or one byte
 * tested by a repetition, by a lazy repetition taking one more byte, by a %b scan or by a search
 * skipping positions where the pattern's first item cannot match (one per 16 bytes when memchr
 * looks for a literal first byte); a back-reference costs one more step per 16 bytes compared. */
#include <string.h>

#ifndef PAT_LUAJIT
#include <ctype.h>
#endif

#include "pattern.h"

#define uchar(c) ((unsigned char)(c))

enum { FRAME_OPENED, FRAME_CLOSED, FRAME_OPTIONAL, FRAME_GREEDY, FRAME_LAZY };

/* Character classes. LuaJIT classifies bytes as ASCII whatever the locale; PUC Lua asks <ctype.h>,
 * which follows the program's locale (the C locale unless os.setlocale changed it). */
#ifdef PAT_LUAJIT
static int ascii_upper(int c) { return c >= 'A' && c <= 'Z'; }
static int ascii_lower(int c) { return c >= 'a' && c <= 'z'; }
static int ascii_digit(int c) { return c >= '0' && c <= '9'; }
static int ascii_alpha(int c) { return ascii_upper(c) || ascii_lower(c); }
static int ascii_alnum(int c) { return ascii_alpha(c) || ascii_digit(c); }
static int ascii_graph(int c) { return c > ' ' && c < 127; }
#define is_alpha ascii_alpha
#define is_cntrl(c) ((c) < ' ' || (c) == 127)
#define is_digit ascii_digit
#define is_graph ascii_graph
#define is_lower ascii_lower
#define is_punct(c) (ascii_graph(c) && !ascii_alnum(c))
#define is_space(c) ((c) == ' ' || ((c) >= '\t' && (c) <= '\r'))
#define is_upper ascii_upper
#define is_alnum ascii_alnum
#define is_xdigit(c) (ascii_digit(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))
#define to_lower(c) (ascii_upper(c) ? (c) + ('a' - 'A') : (c))
#else
#define is_alpha isalpha
#define is_cntrl iscntrl
#define is_digit isdigit
#define is_graph isgraph
#define is_lower islower
#define is_punct ispunct
#define is_space isspace
#define is_upper isupper
#define is_alnum isalnum
#define is_xdigit isxdigit
#define to_lower tolower
#endif

/* Whether byte c belongs to %cl: a class letter (its upper case is the complement), or any other
 * byte, which stands for itself. */
static int class_has(int c, int cl) {
    int in;
    switch (to_lower(cl)) {
    case 'a': in = is_alpha(c); break;
    case 'c': in = is_cntrl(c); break;
    case 'd': in = is_digit(c); break;
#ifdef PAT_CLASS_G
    case 'g': in = is_graph(c); break;
#endif
    case 'l': in = is_lower(c); break;
    case 'p': in = is_punct(c); break;
    case 's': in = is_space(c); break;
    case 'u': in = is_upper(c); break;
    case 'w': in = is_alnum(c); break;
    case 'x': in = is_xdigit(c); break;
    case 'z': in = c == 0; break; /* deprecated since 5.2, still understood */
    default: return cl == c;
    }
    return is_upper(cl) ? !in : in != 0;
}

/* Whether byte c is in the set that opens with '[' at p and closes with the ']' at close. Members
 * are read left to right: %x, a range a-z (when its end comes before the closing ']'), or a byte. */
static int set_has(int c, const char *p, const char *close) {
    int hit = 1;
    p++;
    if (*p == '^') {
        hit = 0;
        p++;
    }
    while (p < close) {
        if (*p == '%') {
            if (class_has(c, uchar(p[1]))) return hit;
            p += 2;
        } else if (p[1] == '-' && p + 2 < close) {
            if (uchar(p[0]) <= c && c <= uchar(p[2])) return hit;
            p += 3;
        } else {
            if (uchar(*p) == c) return hit;
            p++;
        }
    }
    return !hit;
}

/* The end of the single-byte item at p (where its quantifier would be). A set's first byte is a
 * member even when it is ']'; '%' escapes the byte after it. */
static const char *item_end(pat_state *st, const char *p) {
    const char *end = st->pat_end;
    if (*p == '%') {
        if (p + 1 >= end) pat_error(st, "malformed pattern (ends with '%%')");
        return p + 2;
    }
    if (*p != '[') return p + 1;
    p++;
    if (p < end && *p == '^') p++;
    for (;;) {
        if (p >= end) pat_error(st, "malformed pattern (missing ']')");
        if (*p++ == '%' && p < end) p++;
        if (p < end && *p == ']') return p + 1;
    }
}

/* Whether the item [p, ep) matches the subject byte at s. */
static int item_has(const pat_state *st, const char *s, const char *p, const char *ep) {
    int c;
    if (s >= st->src_end) return 0;
    c = uchar(*s);
    switch (*p) {
    case '.': return 1;
    case '%': return class_has(c, uchar(p[1]));
    case '[': return set_has(c, p, ep - 1);
    default: return uchar(*p) == c;
    }
}

/* How many bytes from s on the item [p, ep) matches in a row, charged one step per byte tested. */
static size_t item_run(pat_state *st, const char *s, const char *p, const char *ep) {
    const char *q = s, *end = st->src_end;
    switch (*p) {
    case '.':
        rtc_meter_charge(&st->meter, 1); /* nothing to test */
        return (size_t)(end - s);
    case '%': {
        int cl = uchar(p[1]);
        while (q < end && class_has(uchar(*q), cl)) q++;
        break;
    }
    case '[':
        while (q < end && set_has(uchar(*q), p, ep - 1)) q++;
        break;
    default: {
        int c = uchar(*p);
        while (q < end && uchar(*q) == c) q++;
        break;
    }
    }
    rtc_meter_charge(&st->meter, (int64_t)(q - s) + 1);
    return (size_t)(q - s);
}

/* %bxy at p: the end of a balanced run from s, or NULL. */
static const char *balance(pat_state *st, const char *s, const char *p) {
    const char *q, *end = st->src_end;
    int open, close, depth = 1;
    if (p + 3 >= st->pat_end) {
#ifdef PAT_DETAILED_ERRORS
        pat_error(st, "malformed pattern (missing arguments to '%%b')");
#else
        pat_error(st, "unbalanced pattern");
#endif
    }
    open = uchar(p[2]);
    close = uchar(p[3]);
    if (s >= end || uchar(*s) != open) return NULL;
    for (q = s + 1; q < end; q++) {
        if (uchar(*q) == close) { /* tested first: %bxx closes at the next x */
            if (--depth == 0) break;
        } else if (uchar(*q) == open) {
            depth++;
        }
    }
    rtc_meter_charge(&st->meter, (int64_t)(q - s));
    return q < end ? q + 1 : NULL;
}

/* %d (digit d) at s: the end of a copy of capture d there, or NULL. */
static const char *back_reference(pat_state *st, const char *s, int digit) {
    int l = digit - '1';
    const pat_capture *cap;
    size_t len;
    if (l < 0 || l >= st->level || st->capture[l].len == PAT_CAP_OPEN) {
#ifdef PAT_DETAILED_ERRORS
        pat_error(st, "invalid capture index %%%d", l + 1);
#else
        pat_error(st, "invalid capture index");
#endif
    }
    cap = &st->capture[l];
    if (cap->len == PAT_CAP_POSITION) return NULL; /* a position never matches text */
    len = (size_t)cap->len;
    rtc_meter_charge(&st->meter, (int64_t)(len >> 4));
    if ((size_t)(st->src_end - s) < len || memcmp(cap->init, s, len) != 0) return NULL;
    return s + len;
}

/* %f[set] at p: whether s is a frontier (the byte before it is not in the set, the one at it is;
 * the subject's edges count as NUL bytes); *next gets the item after the set. */
static int frontier(pat_state *st, const char *s, const char *p, const char **next) {
    const char *set = p + 2, *ep;
    int before, at;
    if (set >= st->pat_end || *set != '[') pat_error(st, "missing '[' after '%%f' in pattern");
    ep = item_end(st, set);
    before = s == st->src ? 0 : uchar(s[-1]);
    at = s < st->src_end ? uchar(*s) : 0;
    *next = ep;
    return !set_has(before, set, ep - 1) && set_has(at, set, ep - 1);
}

static pat_frame *push_frame(pat_state *st, int *depth, int kind, const char *s) {
    pat_frame *f;
    if (*depth >= PAT_MAXDEPTH - 1) pat_error(st, "pattern too complex");
    f = &st->frame[(*depth)++];
    f->kind = (unsigned char)kind;
    f->s = s;
    return f;
}

static void remember_item(pat_frame *f, const char *p, const char *ep) {
    f->item = p;
    f->item_len = (unsigned)(ep - p);
}

/* Where the pattern goes on after a frame's item and its quantifier. */
static const char *after_item(const pat_frame *f) { return f->item + f->item_len + 1; }

/* Undoes choice points until one has an alternative left: that alternative's subject position
 * and pattern item go to *s and *p. Returns 0 when none is left (no match). */
static int backtrack(pat_state *st, int *depth, const char **s, const char **p) {
    while (*depth > 0) {
        pat_frame *f = &st->frame[*depth - 1];
        switch (f->kind) {
        case FRAME_OPENED:
            st->level--;
            break;
        case FRAME_CLOSED:
            st->capture[f->n].len = PAT_CAP_OPEN;
            break;
        case FRAME_OPTIONAL: /* the item was taken; now go on without it (from the frame's level) */
            (*depth)--;
            *s = f->s;
            *p = after_item(f);
            return 1;
        case FRAME_GREEDY: /* give back one repetition */
            if (f->n == 0) break;
            f->n--;
            *s = f->s + f->n;
            *p = after_item(f);
            return 1;
        case FRAME_LAZY: /* take one repetition more */
            rtc_meter_charge(&st->meter, 1);
            if (!item_has(st, f->s, f->item, f->item + f->item_len)) break;
            f->s++;
            *s = f->s;
            *p = after_item(f);
            return 1;
        }
        (*depth)--;
    }
    return 0;
}

static const char *match_here(pat_state *st, const char *s, const char *p) {
    const char *const pat_end = st->pat_end;
    int depth = 0;
    for (;;) {
        const char *ep;
        pat_frame *f;
        int rep;
        if (--st->meter.left < 0) rtc_meter_overdrawn(&st->meter);
        if (p == pat_end) return s;
        switch (*p) {
        case '(': {
            pat_capture *cap;
            if (st->level >= PAT_MAXCAPTURES) pat_error(st, "too many captures");
            cap = &st->capture[st->level++];
            cap->init = s;
            if (p + 1 < pat_end && p[1] == ')') {
                cap->len = PAT_CAP_POSITION;
                p += 2;
            } else {
                cap->len = PAT_CAP_OPEN;
                p++;
            }
            push_frame(st, &depth, FRAME_OPENED, s);
            continue;
        }
        case ')': {
            int l = st->level - 1;
            while (l >= 0 && st->capture[l].len != PAT_CAP_OPEN) l--;
            if (l < 0) pat_error(st, "invalid pattern capture");
            st->capture[l].len = s - st->capture[l].init;
            push_frame(st, &depth, FRAME_CLOSED, s)->n = (size_t)l;
            p++;
            continue;
        }
        case '$':
            if (p + 1 != pat_end) break; /* a '$' before the end is a literal */
            if (s == st->src_end) return s;
            goto fail;
        case '%':
            if (p + 1 == pat_end) break; /* item_end raises */
            switch (p[1]) {
            case 'b':
                if (!(s = balance(st, s, p))) goto fail;
                p += 4;
                continue;
            case 'f':
                if (!frontier(st, s, p, &p)) goto fail;
                continue;
            case '0': case '1': case '2': case '3': case '4':
            case '5': case '6': case '7': case '8': case '9':
                if (!(s = back_reference(st, s, uchar(p[1])))) goto fail;
                p += 2;
                continue;
            }
            break;
        }
        /* A single-byte item, perhaps repeated. */
        ep = item_end(st, p);
        rep = ep < pat_end ? *ep : 0;
        if (!item_has(st, s, p, ep)) {
            if (rep == '*' || rep == '?' || rep == '-') { /* zero of them will do */
                p = ep + 1;
                continue;
            }
            goto fail;
        }
        switch (rep) {
        case '?':
            remember_item(push_frame(st, &depth, FRAME_OPTIONAL, s), p, ep);
            s++;
            p = ep + 1;
            continue;
        case '*':
        case '+': {
            const char *from = rep == '+' ? s + 1 : s;
            size_t n = item_run(st, from, p, ep);
            f = push_frame(st, &depth, FRAME_GREEDY, from);
            remember_item(f, p, ep);
            f->n = n;
            s = from + n;
            p = ep + 1;
            continue;
        }
        case '-':
            remember_item(push_frame(st, &depth, FRAME_LAZY, s), p, ep);
            p = ep + 1;
            continue;
        default:
            s++;
            p = ep;
            continue;
        }
    fail:
        if (!backtrack(st, &depth, &s, &p)) return NULL;
    }
}

void pat_init(pat_state *st, const char *s, size_t ls, const char *p, size_t lp) {
#ifdef PAT_ENDS_AT_NUL
    const char *nul = memchr(p, '\0', lp);
    if (nul) lp = (size_t)(nul - p);
#endif
    st->src = s;
    st->src_end = s + ls;
    st->pat = p;
    st->pat_end = p + lp;
    st->first = NULL;
    st->first_known = 0;
    st->level = 0;
}

const char *pat_match_at(pat_state *st, const char *s) {
    st->level = 0;
    return match_here(st, s, st->pat);
}

/* Works out whether every match starts with one single-byte item (not optional, not a capture or
 * anything else): then a search can skip the positions where it fails. Working out a set's extent
 * raises for a malformed one, as the first attempt to match would. */
static void find_first_item(pat_state *st) {
    const char *p = st->pat, *ep;
    st->first_known = 1;
    if (p == st->pat_end) return;
    switch (*p) {
    case '(': case ')': case '.': return;
    case '$':
        if (p + 1 == st->pat_end) return;
        break;
    case '%':
        if (p + 1 < st->pat_end && (p[1] == 'b' || p[1] == 'f' || (p[1] >= '0' && p[1] <= '9'))) return;
        break;
    }
    ep = item_end(st, p);
    if (ep < st->pat_end && (*ep == '*' || *ep == '?' || *ep == '-')) return;
    st->first = p;
    st->first_end = ep;
}

/* The next position from s where the first item matches (src_end when there is none). */
static const char *skip_to_first(pat_state *st, const char *s) {
    const char *p = st->first, *end = st->src_end, *q = s;
    if (*p != '%' && *p != '[') {
        q = memchr(s, uchar(*p), (size_t)(end - s));
        if (!q) q = end;
        rtc_meter_charge(&st->meter, (q - s) >> 4);
        return q;
    }
    while (q < end && !item_has(st, q, p, st->first_end)) q++;
    rtc_meter_charge(&st->meter, q - s);
    return q;
}

const char *pat_search(pat_state *st, const char *s, const char **e) {
    if (!st->first_known) find_first_item(st);
    for (;;) {
        const char *m;
        if (st->first) {
            s = skip_to_first(st, s);
            if (s == st->src_end) return NULL; /* the first item needs a byte */
        }
        m = pat_match_at(st, s);
        if (m) {
            *e = m;
            return s;
        }
        if (s == st->src_end) return NULL;
        s++;
    }
}
