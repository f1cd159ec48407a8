/* The client object in Lua: its options and credentials, close/__gc/__close, info, stats and reserve,
 * and the rule that a client runs one of its own methods at a time (rtc_client_run). The methods that
 * call the API are added by their own files (actions.c, batch.c, exchange.c); the calls themselves
 * run in the call engine (call.c). */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "call.h"
#include "client_lua.h"

#define DEFAULT_REGION "cn-north-1"
#define DEFAULT_HOST "rtc.volcengineapi.com"
#define DEFAULT_TIMEOUT 5.0
#define DEFAULT_CONNECT_TIMEOUT 2.0
#define CONFIG_FILE_MAX (64 * 1024)
#define RTC_MIN_SECONDS 0.001 /* the shortest duration an option may give: 1 ms */
#define MIN_QPS 0.001         /* one request per 1000 s: the interval stays well inside 64-bit nanoseconds */

static const char *const client_options[] = {
    "access_key", "secret_key", "session_token", "region", "host", "scheme", "endpoint", "timeout",
    "connect_timeout", "ca_file", "proxy", "user_agent", "versions", "qps", "limiter", "retries",
    "retry_base", "retry_cap", "deadline", "concurrency", NULL};

#define PROCESS_LIMITER_KEY "rtcadmin.process_limiter"
#define LIMITER_MT "rtcadmin.limiter"

static char *xstrdup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void free_secret(char **p, size_t n) {
    if (*p) {
        OPENSSL_cleanse(*p, n);
        free(*p);
        *p = NULL;
    }
}

/* close() == __gc == __close: releases everything once; later calls do nothing. */
static void client_release(rtc_client *c) {
    int i;
    if (c->closed) return;
    c->closed = 1;
    c->close_pending = 0;
    rtc_transport_free(c->transport);
    rtc_signer_free(c->signer);
    c->transport = NULL;
    c->signer = NULL;
    free_secret(&c->secret_key, c->secret_len);
    if (c->session_token) free_secret(&c->session_token, strlen(c->session_token));
    c->secret_len = 0;
    free(c->access_key);
    free(c->region);
    free(c->service);
    free(c->base_url);
    free(c->host_header);
    free(c->ca_file);
    free(c->proxy);
    free(c->user_agent);
    for (i = 0; i < c->nversions; i++) {
        free(c->versions[i].action);
        free(c->versions[i].version);
    }
    for (i = 0; i < c->nqps; i++) free(c->qps[i].action);
    c->nqps = 0;
    if (c->limiter_owned) rtc_limiter_free(c->limiter);
    c->limiter = NULL;
    rtc_stats_free(&c->stats);
    c->access_key = c->region = c->service = c->base_url = c->host_header = NULL;
    c->ca_file = c->proxy = c->user_agent = NULL;
    c->nversions = 0;
}

rtc_client *rtc_check_client(lua_State *L, int idx, const char *fname) {
    rtc_client *c = luaL_testudata(L, idx, RTC_CLIENT_MT);
    if (!c) rtc_argerror(L, fname, "expected a client as self (use client:%s(...), not client.%s(...))", fname, fname);
    if (c->closed) rtc_argerror(L, fname, "the client is closed");
    return c;
}

static int reentry_error(lua_State *L, const rtc_client *c, const char *fname) {
    return rtc_argerror(L, fname, "called from inside this client's %s (from %s); call it after %s returns",
                        c->running, c->running_via, c->running);
}

rtc_client *rtc_check_idle_client(lua_State *L, int idx, const char *fname) {
    rtc_client *c = rtc_check_client(L, idx, fname);
    if (c->running) reentry_error(L, c, fname);
    return c;
}

int rtc_client_run(lua_State *L, rtc_client *c, const char *what, const char *via, lua_CFunction body,
                   void (*cleanup)(void *), void *ud) {
    int n = lua_gettop(L), i, rc;
    luaL_checkstack(L, n + 1, "too many arguments");
    lua_pushcfunction(L, body);
    for (i = 1; i <= n; i++) lua_pushvalue(L, i); /* copies: the originals stay anchored until we return */
    /* Checked here, at the last moment: Lua code (a finalizer) may have run since the method's checks. */
    if (c->closed) return rtc_argerror(L, what, "the client is closed");
    if (c->running) return reentry_error(L, c, what);
    c->running = what;
    c->running_via = via;
    rc = lua_pcall(L, n, LUA_MULTRET, 0);
    if (cleanup) cleanup(ud);
    c->running = c->running_via = NULL;
    if (c->close_pending) client_release(c);
    if (rc != 0) return lua_error(L);
    return lua_gettop(L) - n;
}

/* A string without NUL, CR or LF; these could otherwise split a header or a URL. */
static int clean_string(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\0' || s[i] == '\r' || s[i] == '\n') return 0;
    return 1;
}

/* Printable ASCII, space included: what a header value made from the string may hold. */
static int header_safe(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

static const char *opt_string(lua_State *L, int t, const char *k, size_t *len) {
    const char *s;
    size_t n;
    rtc_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        rtc_argerror(L, "client", "option '%s' must be a string, got %s", k, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &n);
    if (n == 0) rtc_argerror(L, "client", "option '%s' must not be empty", k);
    if (!clean_string(s, n)) rtc_argerror(L, "client", "option '%s' contains NUL, CR or LF", k);
    lua_pop(L, 1); /* still anchored by the options table */
    if (len) *len = n;
    return s;
}

/* Reads the numeric option k into *v; 0 when it is absent. */
static int opt_fetch_number(lua_State *L, int t, const char *k, const char *kind, double *v) {
    rtc_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TNUMBER)
        rtc_argerror(L, "client", "option '%s' must be %s, got %s", k, kind, luaL_typename(L, -1));
    *v = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return 1;
}

/* A number as an error message shows it: NaN and the infinities by name, the rest as %g would, with
 * enough digits to tell 0.0004 from 0.001. */
static const char *show_number(double v, char *buf, size_t n) {
    if (v != v) return "nan";
    if (v > DBL_MAX || v < -DBL_MAX) return v > 0 ? "inf" : "-inf";
    snprintf(buf, n, "%.14g", v);
    return buf;
}

/* Seconds in [min, max]; also 0 when zero_ok (where 0 has a documented meaning). No minimum is below
 * RTC_MIN_SECONDS: libcurl counts timeouts in whole milliseconds and reads 0 as "no timeout at all". */
static double opt_duration(lua_State *L, int t, const char *k, double dflt, double min, double max, int zero_ok) {
    double v;
    char shown[32];
    if (!opt_fetch_number(L, t, k, "a number of seconds", &v)) return dflt;
    if (zero_ok && v == 0) return 0;
    if (!(v >= min && v <= max))
        rtc_argerror(L, "client", "option '%s' must be %sbetween %g and %g seconds, got %s", k, zero_ok ? "0 or " : "",
                     min, max, show_number(v, shown, sizeof shown));
    return v;
}

/* Host name, IPv4 or [IPv6], with an optional :port. */
static int valid_authority(const char *s, size_t n) {
    size_t i = 0, host_end;
    if (n == 0 || n > 255) return 0;
    if (s[0] == '[') {
        for (i = 1; i < n && s[i] != ']'; i++)
            if (!strchr("0123456789abcdefABCDEF:.", s[i])) return 0;
        if (i == n || i == 1) return 0;
        host_end = ++i;
    } else {
        for (; i < n && s[i] != ':'; i++) {
            char ch = s[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                  ch == '.'))
                return 0;
        }
        if (i == 0) return 0;
        host_end = i;
    }
    if (host_end < n) {
        long port = 0;
        if (s[host_end] != ':' || host_end + 1 == n) return 0;
        for (i = host_end + 1; i < n; i++) {
            if (s[i] < '0' || s[i] > '9') return 0;
            port = port * 10 + (s[i] - '0');
            if (port > 65535) return 0;
        }
        if (port == 0) return 0;
    }
    return 1;
}

/* base_url "scheme://authority" and the Host value (default ports dropped, as the signer does). */
static void set_endpoint(lua_State *L, rtc_client *c, const char *scheme, size_t slen, const char *auth,
                         size_t alen, const char *what) {
    char *url;
    size_t hlen = alen;
    if (!((slen == 4 && memcmp(scheme, "http", 4) == 0) || (slen == 5 && memcmp(scheme, "https", 5) == 0)))
        rtc_argerror(L, "client", "%s: scheme must be http or https", what);
    if (!valid_authority(auth, alen))
        rtc_argerror(L, "client", "%s: %s is not a valid host[:port]", what, rtc_quote(L, auth, alen));
    if ((slen == 5 && alen > 4 && memcmp(auth + alen - 4, ":443", 4) == 0) ||
        (slen == 4 && alen > 3 && memcmp(auth + alen - 3, ":80", 3) == 0))
        hlen = alen - (slen == 5 ? 4 : 3);
    url = malloc(slen + 3 + alen + 1);
    if (!url) luaL_error(L, "out of memory");
    memcpy(url, scheme, slen);
    memcpy(url + slen, "://", 3);
    memcpy(url + slen + 3, auth, alen);
    url[slen + 3 + alen] = '\0';
    free(c->base_url);
    free(c->host_header);
    c->base_url = url;
    c->host_header = xstrdup(auth, hlen);
    if (!c->host_header) luaL_error(L, "out of memory");
}

static void parse_endpoint(lua_State *L, rtc_client *c, const char *ep, const char *what) {
    const char *sep = strstr(ep, "://"), *auth, *end;
    size_t n = strlen(ep);
    if (!sep) rtc_argerror(L, "client", "%s must look like https://host[:port], got %s", what, rtc_quote(L, ep, n));
    auth = sep + 3;
    end = ep + n;
    if (end > auth && end[-1] == '/') end--; /* one trailing slash is harmless */
    set_endpoint(L, c, ep, (size_t)(sep - ep), auth, (size_t)(end - auth), what);
}

static char *checked_copy(lua_State *L, const char *s) {
    char *d;
    if (!s) return NULL;
    d = xstrdup(s, strlen(s));
    if (!d) luaL_error(L, "out of memory");
    return d;
}

/* Reads ~/.volc/config ({"ak": ..., "sk": ...}) with lua-cjson. Pushes nothing; fills c. */
static int credentials_from_file(lua_State *L, rtc_client *c) {
    const char *home = getenv("HOME");
    char path[4096];
    FILE *f;
    char *data;
    size_t n;
    int t;
    if (!home || !*home) return 0;
    snprintf(path, sizeof path, "%s/.volc/config", home);
    f = fopen(path, "rb");
    if (!f) return 0;
    data = malloc(CONFIG_FILE_MAX + 1);
    if (!data) {
        fclose(f);
        return luaL_error(L, "out of memory");
    }
    n = fread(data, 1, CONFIG_FILE_MAX + 1, f);
    fclose(f);
    lua_pushlstring(L, data, n > CONFIG_FILE_MAX ? CONFIG_FILE_MAX : n);
    OPENSSL_cleanse(data, CONFIG_FILE_MAX + 1);
    free(data);
    if (n > CONFIG_FILE_MAX) rtc_argerror(L, "client", "%s is larger than %d bytes", path, CONFIG_FILE_MAX);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 1);
    t = lua_gettop(L);
    if (!lua_istable(L, t)) rtc_argerror(L, "client", "%s is not a JSON object", path);
    lua_getfield(L, t, "ak");
    lua_getfield(L, t, "sk");
    lua_getfield(L, t, "session_token");
    if (lua_type(L, -3) != LUA_TSTRING || lua_type(L, -2) != LUA_TSTRING)
        rtc_argerror(L, "client", "%s must hold string fields \"ak\" and \"sk\"", path);
    c->access_key = checked_copy(L, lua_tostring(L, -3));
    c->secret_key = checked_copy(L, lua_tostring(L, -2));
    c->secret_len = lua_rawlen(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1)) c->session_token = checked_copy(L, lua_tostring(L, -1));
    c->credential_source = "~/.volc/config";
    lua_pop(L, 6);
    return 1;
}

/* Order: options, then VOLC_ACCESSKEY/VOLC_SECRETKEY(/VOLC_SESSIONTOKEN), then ~/.volc/config. */
static void resolve_credentials(lua_State *L, rtc_client *c, int opts) {
    size_t akl = 0, skl = 0;
    const char *ak = opt_string(L, opts, "access_key", &akl);
    const char *sk = opt_string(L, opts, "secret_key", &skl);
    const char *token = opt_string(L, opts, "session_token", NULL);
    const char *p;
    if (ak || sk) {
        if (!ak || !sk) rtc_argerror(L, "client", "give both access_key and secret_key, or neither");
        c->credential_source = "options";
    } else if (getenv("VOLC_ACCESSKEY") && *getenv("VOLC_ACCESSKEY")) {
        ak = getenv("VOLC_ACCESSKEY");
        sk = getenv("VOLC_SECRETKEY");
        if (!sk || !*sk) rtc_argerror(L, "client", "VOLC_ACCESSKEY is set but VOLC_SECRETKEY is not");
        skl = strlen(sk);
        if (!token) token = getenv("VOLC_SESSIONTOKEN");
        c->credential_source = "environment";
    } else if (!credentials_from_file(L, c)) {
        rtc_argerror(L, "client",
                     "no credentials: pass access_key and secret_key, set VOLC_ACCESSKEY and VOLC_SECRETKEY, "
                     "or write ~/.volc/config");
    }
    if (ak) {
        c->access_key = checked_copy(L, ak);
        c->secret_key = xstrdup(sk, skl);
        if (!c->secret_key) luaL_error(L, "out of memory");
        c->secret_len = skl;
        if (token && *token) c->session_token = checked_copy(L, token);
    }
    for (p = c->access_key; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '/' || *p == ',')
            rtc_argerror(L, "client", "access key (from %s) has a character that cannot stand in a credential",
                         c->credential_source);
    if (!*c->access_key || c->secret_len == 0 || !clean_string(c->secret_key, c->secret_len))
        rtc_argerror(L, "client", "credentials from %s are empty or contain NUL, CR or LF", c->credential_source);
    if (c->session_token && !header_safe(c->session_token))
        rtc_argerror(L, "client", "session token (from %s) must be printable ASCII: it is sent as a header",
                     c->credential_source);
}

int rtc_valid_action(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9'))) return 0;
    return 1;
}

static int valid_version(const char *s) {
    size_t i;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '-')) return 0;
    return i >= 1 && i <= 32;
}

static void parse_versions(lua_State *L, rtc_client *c, int opts) {
    rtc_getfield(L, opts, "versions");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1)) rtc_argerror(L, "client", "option 'versions' must be a table {Action = \"YYYY-MM-DD\"}");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *a, *v;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            rtc_argerror(L, "client", "option 'versions' must map Action names to version strings");
        a = lua_tostring(L, -2);
        v = lua_tostring(L, -1);
        if (!rtc_valid_action(a) || !valid_version(v))
            rtc_argerror(L, "client", "option 'versions': bad entry %s = %s", rtc_quote(L, a, strlen(a)),
                         rtc_quote(L, v, strlen(v)));
        if (c->nversions == RTC_MAX_VERSION_OVERRIDES)
            rtc_argerror(L, "client", "option 'versions': at most %d entries", RTC_MAX_VERSION_OVERRIDES);
        c->versions[c->nversions].action = checked_copy(L, a);
        c->versions[c->nversions].version = checked_copy(L, v);
        c->nversions++;
        lua_pop(L, 1); /* the value; the key stays for lua_next */
    }
    lua_pop(L, 1);
}

static double opt_number(lua_State *L, int t, const char *k, double dflt, double min, double max) {
    double v;
    if (!opt_fetch_number(L, t, k, "a number", &v)) return dflt;
    if (!(v >= min && v <= max)) rtc_argerror(L, "client", "option '%s' must be between %g and %g", k, min, max);
    return v;
}

/* A count: a whole number in [min, max] (a fraction would be silently cut). */
static long opt_count(lua_State *L, int t, const char *k, long dflt, long min, long max) {
    double v = opt_number(L, t, k, (double)dflt, (double)min, (double)max);
    if (v != (double)(long)v) rtc_argerror(L, "client", "option '%s' must be a whole number, got %g", k, v);
    return (long)v;
}

/* qps = {KickUser = 30, default = 10}: per-Action pacing below the documented limits. */
static void parse_qps(lua_State *L, rtc_client *c, int opts) {
    rtc_getfield(L, opts, "qps");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1)) rtc_argerror(L, "client", "option 'qps' must be a table {Action = requests per second}");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *a;
        double q;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TNUMBER)
            rtc_argerror(L, "client", "option 'qps' must map Action names to numbers");
        a = lua_tostring(L, -2);
        q = (double)lua_tonumber(L, -1);
        if (!(q >= MIN_QPS && q <= 100000)) {
            char shown[32];
            rtc_argerror(L, "client", "option 'qps': %s must be between %g and 100000 requests per second, got %s",
                         rtc_quote(L, a, strlen(a)), MIN_QPS, show_number(q, shown, sizeof shown));
        }
        if (strcmp(a, "default") == 0) {
            c->default_qps = q;
        } else {
            if (!rtc_valid_action(a)) rtc_argerror(L, "client", "option 'qps': %s is not an Action name", rtc_quote(L, a, strlen(a)));
            if (c->nqps == RTC_MAX_QPS_OVERRIDES)
                rtc_argerror(L, "client", "option 'qps': at most %d entries", RTC_MAX_QPS_OVERRIDES);
            c->qps[c->nqps].action = checked_copy(L, a);
            c->qps[c->nqps++].qps = q;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int limiter_gc(lua_State *L) {
    rtc_limiter **lp = luaL_checkudata(L, 1, LIMITER_MT);
    rtc_limiter_free(*lp);
    *lp = NULL;
    return 0;
}

/* The process backend is one table per Lua state, shared by all its clients. */
static rtc_limiter *process_limiter(lua_State *L) {
    rtc_limiter **lp;
    lua_getfield(L, LUA_REGISTRYINDEX, PROCESS_LIMITER_KEY);
    if (!lua_isnil(L, -1)) {
        lp = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return *lp;
    }
    lua_pop(L, 1);
    lp = lua_newuserdatauv(L, sizeof *lp, 0);
    *lp = NULL;
    if (luaL_newmetatable(L, LIMITER_MT)) {
        lua_pushcfunction(L, limiter_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    *lp = rtc_limiter_process_new();
    if (!*lp) luaL_error(L, "out of memory");
    lua_setfield(L, LUA_REGISTRYINDEX, PROCESS_LIMITER_KEY);
    return *lp;
}

static const char *const limiter_fields[] = {"backend", "dir", "margin", "url", "user", "password", "key_prefix",
                                             "timeout", "reprobe", "fallback", "fallback_share", "log", NULL};
static const char *const redis_only_fields[] = {"url", "user", "password", "key_prefix", "timeout", "reprobe",
                                                "fallback", "fallback_share", "log", NULL};

/* The Redis backend's options; the GCRA script comes from lua/rtcadmin/redis_gcra.lua, its one home. */
static rtc_limiter *redis_limiter(lua_State *L, int t, const char *dir) {
    rtc_redis_opts o;
    rtc_limiter *l;
    const char *fallback;
    char err[256];
    memset(&o, 0, sizeof o);
    o.dir = dir;
    o.url = opt_string(L, t, "url", NULL);
    if (!o.url) rtc_argerror(L, "client", "option 'limiter': backend \"redis\" needs 'url' (redis://host:port/db)");
    o.user = opt_string(L, t, "user", NULL);
    o.password = opt_string(L, t, "password", NULL);
    o.key_prefix = opt_string(L, t, "key_prefix", NULL);
    o.timeout = opt_duration(L, t, "timeout", 0.25, RTC_MIN_SECONDS, 60, 0);
    o.reprobe = opt_duration(L, t, "reprobe", 1, 0.01, 3600, 0);
    o.fallback_share = opt_number(L, t, "fallback_share", 0.5, 0.01, 1);
    fallback = opt_string(L, t, "fallback", NULL);
    if (fallback && strcmp(fallback, "host") != 0 && strcmp(fallback, "error") != 0)
        rtc_argerror(L, "client", "option 'fallback' must be \"host\" or \"error\"");
    o.fallback_error = fallback && strcmp(fallback, "error") == 0;
    rtc_getfield(L, t, "log");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) rtc_argerror(L, "client", "option 'log' must be a boolean");
    o.log = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rtcadmin.redis_gcra");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "script");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "rtcadmin: rtcadmin.redis_gcra has no script");
    o.script = lua_tostring(L, -1);
    l = rtc_limiter_redis_new(&o, err, sizeof err);
    lua_pop(L, 2);
    /* Configuration is checked now: a wrong url, password or db fails here, not at the first call. */
    if (!l) rtc_argerror(L, "client", "redis limiter: %s", err);
    return l;
}

/* limiter = "process" | "host" | "none" | {backend = ..., dir = ..., margin = ..., <redis options>} */
static void parse_limiter(lua_State *L, rtc_client *c, int opts) {
    const char *backend = "process", *dir = NULL;
    char err[256];
    int t = 0;
    c->margin = 0.01;
    /* nginx runs several worker processes: one budget for all of them unless told otherwise. Its
     * event loop wakes timers late by several ms under load, and a late send narrows the gap to the
     * sends after it, so the interval keeps 5% in reserve there (see docs/nginx.md). */
    lua_getfield(L, LUA_REGISTRYINDEX, RTC_IN_NGINX_KEY);
    if (lua_toboolean(L, -1)) {
        backend = "host";
        c->margin = 0.05;
    }
    lua_pop(L, 1);
    rtc_getfield(L, opts, "limiter");
    if (lua_type(L, -1) == LUA_TSTRING) {
        backend = lua_tostring(L, -1);
    } else if (lua_istable(L, -1)) {
        t = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, t)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            int i, known = 0;
            lua_pop(L, 1);
            for (i = 0; limiter_fields[i]; i++) known |= strcmp(k, limiter_fields[i]) == 0;
            if (!known)
                rtc_argerror(L, "client", "option 'limiter': unknown field %s (backend, dir, margin; for redis: url, "
                             "user, password, key_prefix, timeout, reprobe, fallback, fallback_share, log)",
                             rtc_quote(L, k, strlen(k)));
        }
        rtc_getfield(L, t, "backend");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING) rtc_argerror(L, "client", "option 'limiter.backend' must be a string");
            backend = lua_tostring(L, -1);
        }
        lua_pop(L, 1);
        dir = opt_string(L, t, "dir", NULL);
        c->margin = opt_number(L, t, "margin", c->margin, 0, 1);
        if (strcmp(backend, "redis") != 0) {
            int i;
            for (i = 0; redis_only_fields[i]; i++) {
                rtc_getfield(L, t, redis_only_fields[i]);
                if (!lua_isnil(L, -1))
                    rtc_argerror(L, "client", "option 'limiter': field '%s' is for backend \"redis\"",
                                 redis_only_fields[i]);
                lua_pop(L, 1);
            }
        }
    } else if (!lua_isnil(L, -1)) {
        rtc_argerror(L, "client", "option 'limiter' must be \"process\", \"host\", \"none\" or a table");
    }
    if (strcmp(backend, "process") == 0) {
        c->limiter = process_limiter(L);
    } else if (strcmp(backend, "host") == 0) {
        c->limiter = rtc_limiter_host_new(dir, err, sizeof err);
        if (!c->limiter) rtc_argerror(L, "client", "host limiter: %s", err);
        c->limiter_owned = 1;
    } else if (strcmp(backend, "redis") == 0) {
        if (!t) rtc_argerror(L, "client", "option 'limiter': backend \"redis\" takes a table with 'url'");
        lua_getfield(L, LUA_REGISTRYINDEX, RTC_IN_NGINX_KEY);
        if (lua_toboolean(L, -1)) /* hiredis blocks: a worker must not wait on it */
            rtc_argerror(L, "client", "option 'limiter': backend \"redis\" blocks, so it is not for nginx; use "
                         "rtcadmin.redis_limiter (cosockets) there (docs/redis.md)");
        lua_pop(L, 1);
        c->limiter = redis_limiter(L, t, dir);
        c->limiter_owned = 1;
    } else if (strcmp(backend, "none") != 0) {
        rtc_argerror(L, "client", "option 'limiter': unknown backend %s (process, host, redis, none)",
                     rtc_quote(L, backend, strlen(backend)));
    }
    lua_pop(L, 1);
}

const char *rtc_client_version(rtc_client *c, const char *action, const char *dflt) {
    int i;
    for (i = 0; i < c->nversions; i++)
        if (strcmp(c->versions[i].action, action) == 0) return c->versions[i].version;
    return dflt;
}

int rtc_client_new(lua_State *L) {
    rtc_client *c;
    const char *s, *scheme, *host, *endpoint;
    char err[256];
    rtc_transport_opts topts;
    int opts = 1;
    char ua[128];

    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    if (!lua_istable(L, 1)) rtc_argerror(L, "client", "expects an options table, got %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        int i, known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (i = 0; client_options[i]; i++)
                if (strcmp(lua_tostring(L, -1), client_options[i]) == 0) known = 1;
        if (!known) {
            const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1);
            rtc_argerror(L, "client", "unknown option %s (known: access_key, secret_key, session_token, region, host, "
                         "scheme, endpoint, timeout, connect_timeout, ca_file, proxy, user_agent, versions, qps, "
                         "limiter, retries, retry_base, retry_cap, deadline, concurrency)",
                         rtc_quote(L, k, strlen(k)));
        }
    }

    c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c); /* a raised error below leaves __gc only NULLs or what was built */
    luaL_getmetatable(L, RTC_CLIENT_MT);
    lua_setmetatable(L, -2);

    resolve_credentials(L, c, opts);
    c->region = checked_copy(L, (s = opt_string(L, opts, "region", NULL)) ? s : DEFAULT_REGION);
    c->service = checked_copy(L, "rtc");
    scheme = opt_string(L, opts, "scheme", NULL);
    host = opt_string(L, opts, "host", NULL);
    endpoint = opt_string(L, opts, "endpoint", NULL);
    if (endpoint) {
        if (scheme || host) rtc_argerror(L, "client", "give either 'endpoint' or 'scheme'/'host', not both");
        parse_endpoint(L, c, endpoint, "option 'endpoint'");
    } else if ((s = getenv("RTCADMIN_ENDPOINT")) != NULL && *s) {
        parse_endpoint(L, c, s, "RTCADMIN_ENDPOINT");
    } else {
        if (!scheme) scheme = "https";
        if (!host) host = DEFAULT_HOST;
        set_endpoint(L, c, scheme, strlen(scheme), host, strlen(host), "options 'scheme'/'host'");
    }
    for (s = c->region; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || *s == '/' || *s == ',')
            rtc_argerror(L, "client", "option 'region' has a character that cannot stand in a credential scope");
    c->timeout = opt_duration(L, opts, "timeout", DEFAULT_TIMEOUT, RTC_MIN_SECONDS, 600, 0);
    c->connect_timeout =
        opt_duration(L, opts, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, RTC_MIN_SECONDS, 600, 0);
    if (c->connect_timeout > c->timeout) c->connect_timeout = c->timeout;
    c->ca_file = checked_copy(L, opt_string(L, opts, "ca_file", NULL));
    c->proxy = checked_copy(L, opt_string(L, opts, "proxy", NULL));
    snprintf(ua, sizeof ua, "rtcadmin/%s libcurl/%s", RTCADMIN_VERSION, rtc_transport_curl_version());
    c->user_agent = checked_copy(L, (s = opt_string(L, opts, "user_agent", NULL)) ? s : ua);
    if (!header_safe(c->user_agent))
        rtc_argerror(L, "client", "option 'user_agent' must be printable ASCII: it is sent as a header");
    parse_versions(L, c, opts);
    c->default_qps = 10; /* conservative for Actions without a documented limit */
    parse_qps(L, c, opts);
    parse_limiter(L, c, opts);
    c->retries = (int)opt_count(L, opts, "retries", 3, 0, 20);
    /* 0 means no backoff: a retry goes out at its next limiter slot. */
    c->retry_base = opt_duration(L, opts, "retry_base", 0.1, RTC_MIN_SECONDS, 60, 1);
    c->retry_cap = opt_duration(L, opts, "retry_cap", 2, RTC_MIN_SECONDS, 600, 1);
    c->deadline =
        opt_duration(L, opts, "deadline", c->timeout * 3 > 30 ? c->timeout * 3 : 30, RTC_MIN_SECONDS, 3600, 0);
    c->concurrency = opt_count(L, opts, "concurrency", 16, 1, 64);
    {
        unsigned char digest[RTC_SHA256_LEN];
        if (rtc_sha256(c->access_key, strlen(c->access_key), digest)) return luaL_error(L, "out of memory");
        memcpy(c->key_fp, digest, sizeof c->key_fp);
        /* Jitter only needs to differ between clients and processes. */
        c->rng = ((uint64_t)time(NULL) << 32) ^ (uint64_t)(uintptr_t)c ^ ((uint64_t)getpid() << 16) ^ 0x9e3779b97f4a7c15ULL;
    }

    c->signer = rtc_signer_new();
    if (!c->signer) return luaL_error(L, "out of memory");
    topts.timeout = c->timeout;
    topts.connect_timeout = c->connect_timeout;
    topts.ca_file = c->ca_file;
    topts.proxy = c->proxy;
    topts.user_agent = c->user_agent;
    c->transport = rtc_transport_new(&topts, err, sizeof err);
    if (!c->transport) return luaL_error(L, "rtcadmin.client: %s", err);
    return 1;
}

/* close() and __close: from Lua code that one of the client's own methods runs (a progress callback,
 * a finalizer), the release waits until that method returns: it still uses the transport. */
static int client_close(lua_State *L) {
    rtc_client *c = luaL_checkudata(L, 1, RTC_CLIENT_MT);
    if (c->running)
        c->close_pending = 1;
    else
        client_release(c);
    return 0;
}

/* __gc: a running method holds its client on the stack, so the client is collected while one runs only
 * when the Lua state closes (os.exit(code, true) in a progress callback). That method never resumes:
 * everything is released now. */
static int client_gc(lua_State *L) {
    client_release(luaL_checkudata(L, 1, RTC_CLIENT_MT));
    return 0;
}

static int client_tostring(lua_State *L) {
    rtc_client *c = luaL_checkudata(L, 1, RTC_CLIENT_MT);
    size_t n;
    char masked[32];
    if (c->closed) {
        lua_pushliteral(L, "rtcadmin.client (closed)");
        return 1;
    }
    n = strlen(c->access_key);
    if (n >= 12)
        snprintf(masked, sizeof masked, "%.4s****%s", c->access_key, c->access_key + n - 4);
    else
        snprintf(masked, sizeof masked, "****");
    lua_pushfstring(L,
                    "rtcadmin.client{endpoint=\"%s\", region=\"%s\", access_key=\"%s\" (from %s), "
                    "session_token=%s, timeout=%f, connect_timeout=%f, requests=%d, connections=%d}",
                    c->base_url, c->region, masked, c->credential_source, c->session_token ? "yes" : "no",
                    (lua_Number)c->timeout, (lua_Number)c->connect_timeout, (int)c->requests, (int)c->connections);
    return 1;
}

/* {backend = name, active = schedule in use, ...}: what the limiter reports about itself. */
static void push_limiter_info(lua_State *L, rtc_limiter *l) {
    rtc_limiter_status st;
    lua_createtable(L, 0, 7);
    lua_pushstring(L, l ? l->ops->name : "none");
    lua_setfield(L, -2, "backend");
    memset(&st, 0, sizeof st);
    st.active = l ? l->ops->name : "none";
    if (l && l->ops->status) l->ops->status(l, &st);
    lua_pushstring(L, st.active);
    lua_setfield(L, -2, "active");
    if (!l || !l->ops->status) return;
    lua_pushstring(L, st.server);
    lua_setfield(L, -2, "server");
    lua_pushinteger(L, (lua_Integer)st.fallbacks);
    lua_setfield(L, -2, "fallbacks");
    lua_pushinteger(L, (lua_Integer)st.recoveries);
    lua_setfield(L, -2, "recoveries");
    lua_pushinteger(L, (lua_Integer)st.errors);
    lua_setfield(L, -2, "errors");
    if (st.last_error) {
        lua_pushstring(L, st.last_error);
        lua_setfield(L, -2, "last_error");
    }
}

/* Read-only facts for scripts and tests: endpoint, region, connections opened, requests sent. */
static int client_info(lua_State *L) {
    rtc_client *c = rtc_check_client(L, 1, "info");
    lua_createtable(L, 0, 10);
    lua_pushstring(L, c->base_url);
    lua_setfield(L, -2, "endpoint");
    lua_pushstring(L, c->host_header);
    lua_setfield(L, -2, "host");
    lua_pushstring(L, c->region);
    lua_setfield(L, -2, "region");
    lua_pushstring(L, c->credential_source);
    lua_setfield(L, -2, "credential_source");
    lua_pushnumber(L, (lua_Number)c->timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, (lua_Number)c->connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, (lua_Integer)c->requests);
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, (lua_Integer)c->connections);
    lua_setfield(L, -2, "connections");
    lua_pushstring(L, c->limiter ? c->limiter->ops->name : "none");
    lua_setfield(L, -2, "limiter");
    lua_pushinteger(L, (lua_Integer)c->concurrency);
    lua_setfield(L, -2, "concurrency");
    push_limiter_info(L, c->limiter);
    lua_setfield(L, -2, "limiter_status");
    return 1;
}

/* client:reserve(action) -> seconds to wait before sending: the non-blocking entry for event loops.
 * The slot is taken; the caller sleeps its own way (ngx.sleep) and then sends. */
static int client_reserve(lua_State *L) {
    rtc_client *c = rtc_check_idle_client(L, 1, "reserve");
    size_t n = 0;
    const char *action = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n) : NULL;
    int64_t now = rtc_monotonic_ns(), start;
    char err[256];
    if (!action || n > 64 || strlen(action) != n || !rtc_valid_action(action))
        return rtc_argerror(L, "reserve", "bad argument 'action': expected an Action name such as \"KickUser\"");
    if (rtc_pace_reserve(c, action, now, now + (int64_t)(c->deadline * 1e9), &start, err, sizeof err))
        return luaL_error(L, "rtcadmin.reserve: %s", err);
    lua_pushnumber(L, (lua_Number)(start - now) / 1e9);
    return 1;
}

static void set_number(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}

static void set_integer(lua_State *L, const char *k, long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* client:stats() -> {Action = {sent, succeeded, failed, failures = {code = n}, retries, throttled,
 * missed_slots, waited, p50, p99, latency_sum, buckets = {n <= LATENCY_BUCKETS[i]}}} */
static int client_stats(lua_State *L) {
    rtc_client *c = rtc_check_client(L, 1, "stats");
    float sorted[RTC_STATS_SAMPLES];
    long cumulative[RTC_STATS_BUCKETS];
    int i, j;
    lua_createtable(L, 0, c->stats.nactions);
    for (i = 0; i < c->stats.nactions; i++) {
        const rtc_action_stats *a = c->stats.actions[i];
        double p50, p99;
        lua_createtable(L, 0, 12);
        set_integer(L, "sent", a->sent);
        set_integer(L, "succeeded", a->succeeded);
        set_integer(L, "failed", a->failed);
        set_integer(L, "retries", a->retries);
        set_integer(L, "throttled", a->throttled);
        set_integer(L, "missed_slots", a->missed_slots);
        set_number(L, "waited", a->waited);
        set_number(L, "latency_sum", a->latency_sum);
        rtc_stats_cumulative(a, cumulative);
        lua_createtable(L, RTC_STATS_BUCKETS, 0);
        for (j = 0; j < RTC_STATS_BUCKETS; j++) {
            lua_pushinteger(L, (lua_Integer)cumulative[j]);
            lua_rawseti(L, -2, j + 1);
        }
        lua_setfield(L, -2, "buckets");
        lua_createtable(L, 0, a->ncodes);
        for (j = 0; j < a->ncodes; j++) set_integer(L, a->codes[j].code, a->codes[j].count);
        lua_setfield(L, -2, "failures");
        if (rtc_stats_percentiles(a, sorted, &p50, &p99)) {
            set_number(L, "p50", p50);
            set_number(L, "p99", p99);
        }
        lua_setfield(L, -2, a->action);
    }
    return 1;
}

void rtc_client_register(lua_State *L) {
    static const luaL_Reg meta[] = {{"__gc", client_gc},
                                    {"__tostring", client_tostring},
#if LUA_VERSION_NUM >= 504
                                    {"__close", client_close},
#endif
                                    {NULL, NULL}};
    static const luaL_Reg base[] = {{"close", client_close},
                                    {"info", client_info},
                                    {"reserve", client_reserve},
                                    {"stats", client_stats},
                                    {NULL, NULL}};
    if (luaL_newmetatable(L, RTC_CLIENT_MT)) {
        luaL_setfuncs(L, meta, 0);
        lua_newtable(L);
        luaL_setfuncs(L, base, 0);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "rtcadmin.client");
        lua_setfield(L, -2, "__name");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

void rtc_client_add_methods(lua_State *L, const luaL_Reg *methods) {
    luaL_getmetatable(L, RTC_CLIENT_MT);
    lua_getfield(L, -1, "__index");
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 2);
}
