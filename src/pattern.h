/* The budgeted Lua pattern matcher (pattern_match.c) and what the Lua functions built on it
 * (pattern.c) share with it. */
#ifndef RTCADMIN_PATTERN_H
#define RTCADMIN_PATTERN_H

#include <stddef.h>

#include "compat.h"
#include "step_meter.h"

/* The Lua the module is built for decides how patterns behave; these are the differences that
 * reach the matcher itself. (LuaJIT's lualib.h defines LUA_JITLIBNAME; PUC Lua's does not.) */
#ifdef LUA_JITLIBNAME
#define PAT_LUAJIT 1
#endif
#if LUA_VERSION_NUM < 502
/* Lua 5.1 and LuaJIT read a pattern only up to its first NUL byte. */
#define PAT_ENDS_AT_NUL 1
#else
/* 5.2 and later say which capture a back-reference names, or what %b misses, when it is wrong. */
#define PAT_DETAILED_ERRORS 1
#endif
#if LUA_VERSION_NUM >= 502 || defined(PAT_LUAJIT)
/* %g (printable characters but space) */
#define PAT_CLASS_G 1
#endif

#define PAT_MAXCAPTURES 32
/* Choice points that may wait at once (open captures, repetitions and optional items being tried).
 * Lua 5.2 and later refuse deeper patterns with "pattern too complex" at this very depth; 5.1 and
 * LuaJIT recurse until the C stack gives out, where this matcher says "pattern too complex" too. */
#define PAT_MAXDEPTH 200

enum { PAT_CAP_OPEN = -1, PAT_CAP_POSITION = -2 };

typedef struct {
    const char *init;
    ptrdiff_t len; /* bytes, or PAT_CAP_OPEN / PAT_CAP_POSITION */
} pat_capture;

/* A choice point: what to undo or try next when the rest of the pattern fails. */
typedef struct {
    const char *s;     /* subject position it is about */
    const char *item;  /* the single-byte item (repetitions, optional items) */
    size_t n;          /* greedy repetitions still to give back; the capture index of a closed capture */
    unsigned item_len; /* bytes of the item, its quantifier not included */
    unsigned char kind;
} pat_frame;

typedef struct {
    rtc_meter meter;
    const char *src, *src_end;     /* the subject */
    const char *pat, *pat_end;     /* the pattern, its anchor '^' already taken off */
    const char *first, *first_end; /* the first item when every match must start with it; else NULL */
    int first_known;               /* first/first_end worked out (that can raise, so only when needed) */
    int level;                     /* captures opened */
    pat_capture capture[PAT_MAXCAPTURES];
    pat_frame frame[PAT_MAXDEPTH - 1]; /* the first call is the depth's first level */
} pat_state;

/* Sets up a state for subject s and pattern p; st->meter must be read already. */
void pat_init(pat_state *st, const char *s, size_t ls, const char *p, size_t lp);
/* The end of a match starting exactly at s, or NULL. */
const char *pat_match_at(pat_state *st, const char *s);
/* The start of the first match at s or later (its end in *e), or NULL. */
const char *pat_search(pat_state *st, const char *s, const char **e);
/* Writes the budget back and raises a formatted error, as luaL_error would. */
int pat_error(pat_state *st, const char *fmt, ...);

#endif
