/* The client object: configuration, credentials, and one signed request/response cycle. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <openssl/crypto.h>

#include "rtcadmin.h"

#define DEFAULT_REGION "cn-north-1"
#define DEFAULT_HOST "rtc.volcengineapi.com"
#define DEFAULT_TIMEOUT 5.0
#define DEFAULT_CONNECT_TIMEOUT 2.0
#define CONFIG_FILE_MAX (64 * 1024)

static const char *const client_options[] = {
    "access_key", "secret_key", "session_token", "region", "host", "scheme", "endpoint", "timeout",
    "connect_timeout", "ca_file", "proxy", "user_agent", "versions", NULL};

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

/* A string without NUL, CR or LF; these could otherwise split a header or a URL. */
static int clean_string(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\0' || s[i] == '\r' || s[i] == '\n') return 0;
    return 1;
}

static const char *opt_string(lua_State *L, int t, const char *k, size_t *len) {
    const char *s;
    size_t n;
    lua_getfield(L, t, k);
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

static double opt_seconds(lua_State *L, int t, const char *k, double dflt) {
    double v;
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return dflt;
    }
    if (lua_type(L, -1) != LUA_TNUMBER)
        rtc_argerror(L, "client", "option '%s' must be a number of seconds, got %s", k, luaL_typename(L, -1));
    v = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(v > 0 && v <= 600)) rtc_argerror(L, "client", "option '%s' must be > 0 and <= 600 seconds", k);
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
    if (c->session_token && !clean_string(c->session_token, strlen(c->session_token)))
        rtc_argerror(L, "client", "session token contains CR or LF");
}

static int valid_action(const char *s) {
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
    lua_getfield(L, opts, "versions");
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
        if (!valid_action(a) || !valid_version(v))
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
    luaL_checktype(L, 1, LUA_TTABLE);
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
            rtc_argerror(L, "client", "unknown option %s (known: access_key, secret_key, session_token, region, "
                                      "host, scheme, endpoint, timeout, connect_timeout, ca_file, proxy, user_agent, versions)",
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
    c->timeout = opt_seconds(L, opts, "timeout", DEFAULT_TIMEOUT);
    c->connect_timeout = opt_seconds(L, opts, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    if (c->connect_timeout > c->timeout) c->connect_timeout = c->timeout;
    c->ca_file = checked_copy(L, opt_string(L, opts, "ca_file", NULL));
    c->proxy = checked_copy(L, opt_string(L, opts, "proxy", NULL));
    snprintf(ua, sizeof ua, "rtcadmin/%s libcurl/%s", RTCADMIN_VERSION, rtc_transport_curl_version());
    c->user_agent = checked_copy(L, (s = opt_string(L, opts, "user_agent", NULL)) ? s : ua);
    parse_versions(L, c, opts);

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

static double now_seconds(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Builds `?k=v&...` in the given order with the canonical encoding (servers decode and re-canonicalise). */
static int build_url(rtc_buf *url, const char *base, const rtc_kv *q, size_t n) {
    size_t i;
    rtc_buf_adds(url, base);
    rtc_buf_adds(url, "/?");
    for (i = 0; i < n; i++) {
        if (i) rtc_buf_addc(url, '&');
        rtc_uri_encode(url, q[i].key, q[i].key_len, 0);
        rtc_buf_addc(url, '=');
        rtc_uri_encode(url, q[i].value, q[i].value_len, 0);
    }
    return url->oom ? -1 : 0;
}

static void push_transport_error(lua_State *L, rtc_client *c, const rtc_api_call *call, rtc_net_error e,
                                 const char *message) {
    rtc_error_info info;
    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.code = rtc_net_error_code(e);
    info.message = message;
    info.attempts = 1;
    rtc_push_error(L, &info, c->secret_key, c->secret_len);
}

/* Stack: body string at top. Replaces it with `result, meta` or `nil, err`. */
static int handle_response(lua_State *L, rtc_client *c, const rtc_api_call *call, long status, const char *ctype,
                           double elapsed) {
    int body = lua_gettop(L), doc, md, ok2xx = status >= 200 && status < 300;
    rtc_error_info info;
    char msg[256];
    const char *request_id = NULL;

    memset(&info, 0, sizeof info);
    info.action = call->action;
    info.version = call->version;
    info.http_status = status;
    info.attempts = 1;

    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    lua_pushvalue(L, body);
    lua_call(L, 1, 1);
    doc = lua_gettop(L);
    if (!lua_istable(L, doc)) {
        snprintf(msg, sizeof msg, "%s response is not a JSON object (Content-Type %s, %lu bytes)",
                 ok2xx ? "a successful" : "an error", *ctype ? ctype : "none", (unsigned long)lua_rawlen(L, body));
        info.code = ok2xx ? "MalformedResponse" : "HTTPError";
        info.message = msg;
        lua_settop(L, body - 1);
        lua_pushnil(L);
        rtc_push_error(L, &info, NULL, 0);
        return 2;
    }
    lua_getfield(L, doc, "ResponseMetadata");
    md = lua_gettop(L);
    if (lua_istable(L, md)) {
        lua_getfield(L, md, "RequestId");
        request_id = lua_tostring(L, -1);
        lua_getfield(L, md, "Error");
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    /* Failure: a non-2xx status, or ResponseMetadata.Error whatever the status. */
    if (!ok2xx || lua_istable(L, -1)) {
        int et = lua_gettop(L);
        info.request_id = request_id;
        if (lua_istable(L, et)) {
            lua_getfield(L, et, "Code");
            info.code = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "UnknownError";
            lua_getfield(L, et, "Message");
            info.message = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            lua_getfield(L, et, "CodeN");
            info.code_n = lua_type(L, -1) == LUA_TNUMBER ? (long)lua_tointeger(L, -1) : 0;
        } else {
            snprintf(msg, sizeof msg, "HTTP %ld without an error description", status);
            info.code = "HTTPError";
            info.message = msg;
        }
        rtc_push_error(L, &info, c->secret_key, c->secret_len);
        lua_replace(L, body);
        lua_settop(L, body);
        lua_pushnil(L);
        lua_insert(L, body);
        return 2;
    }
    lua_getfield(L, doc, "Result");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_createtable(L, 0, 7);
    if (request_id) {
        lua_pushstring(L, request_id);
        lua_setfield(L, -2, "request_id");
    }
    lua_pushstring(L, call->action);
    lua_setfield(L, -2, "action");
    lua_pushstring(L, call->version);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "http_status");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "attempts");
    lua_pushnumber(L, (lua_Number)elapsed);
    lua_setfield(L, -2, "elapsed");
    lua_replace(L, body + 1);
    lua_replace(L, body);
    lua_settop(L, body + 1);
    return 2;
}

static void ensure_decoder(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
    if (lua_isnil(L, -1)) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "cjson.safe");
        lua_call(L, 1, 1);
        lua_getfield(L, -1, "decode");
        if (!lua_isfunction(L, -1)) luaL_error(L, "rtcadmin: cjson.safe.decode is missing");
        lua_setfield(L, LUA_REGISTRYINDEX, "rtcadmin.json_decode");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

int rtc_client_request(lua_State *L, rtc_client *c, const rtc_api_call *call) {
    rtc_kv *q;
    rtc_kv hdrs[2];
    rtc_sign_request sr;
    rtc_sign_result res;
    rtc_http_request hr;
    rtc_http_response resp;
    rtc_buf url, lines;
    const char *hv[8];
    size_t offs[8], nh = 0, i;
    char err[256];
    char xdate[RTC_XDATE_LEN + 1];
    double t0;
    int rc;

    ensure_decoder(L); /* before any C allocation: it may raise */
    q = lua_newuserdatauv(L, (call->nparams + 2) * sizeof *q, 0);
    q[0].key = "Action";
    q[0].key_len = 6;
    q[0].value = call->action;
    q[0].value_len = strlen(call->action);
    q[1].key = "Version";
    q[1].key_len = 7;
    q[1].value = call->version;
    q[1].value_len = strlen(call->version);
    for (i = 0; i < call->nparams; i++) q[i + 2] = call->params[i];

    hdrs[0].key = "Host";
    hdrs[0].key_len = 4;
    hdrs[0].value = c->host_header;
    hdrs[0].value_len = strlen(c->host_header);
    hdrs[1].key = "Content-Type";
    hdrs[1].key_len = 12;
    hdrs[1].value = "application/json";
    hdrs[1].value_len = 16;

    memset(&sr, 0, sizeof sr);
    sr.method = call->is_get ? "GET" : "POST";
    sr.path = "/";
    sr.query = q;
    sr.nquery = call->nparams + 2;
    sr.headers = hdrs;
    sr.nheaders = call->is_get ? 1 : 2;
    sr.body = (const unsigned char *)call->body;
    sr.body_len = call->is_get ? 0 : call->body_len;
    sr.access_key = c->access_key;
    sr.secret_key = c->secret_key;
    sr.secret_len = c->secret_len;
    sr.session_token = c->session_token;
    sr.region = c->region;
    sr.service = c->service;
    rtc_format_xdate((long long)time(NULL), xdate);
    sr.x_date = xdate;

    rtc_sign_result_init(&res);
    rtc_buf_init(&url);
    rtc_buf_init(&lines);
    rtc_http_response_init(&resp);
    if (rtc_sign(c->signer, &sr, &res, err, sizeof err) || build_url(&url, c->base_url, q, sr.nquery)) {
        rtc_sign_result_free(&res);
        rtc_buf_free(&url);
        return luaL_error(L, "rtcadmin: cannot sign %s: %s", call->action, err);
    }
    /* Header lines are packed into one buffer; offsets survive its reallocation. */
    offs[nh++] = lines.len, rtc_buf_addf(&lines, "Host: %s", c->host_header), rtc_buf_addc(&lines, '\0');
    if (!call->is_get)
        offs[nh++] = lines.len, rtc_buf_adds(&lines, "Content-Type: application/json"), rtc_buf_addc(&lines, '\0');
    offs[nh++] = lines.len, rtc_buf_adds(&lines, "Accept: application/json"), rtc_buf_addc(&lines, '\0');
    offs[nh++] = lines.len, rtc_buf_addf(&lines, "X-Date: %s", res.x_date), rtc_buf_addc(&lines, '\0');
    offs[nh++] = lines.len, rtc_buf_addf(&lines, "X-Content-Sha256: %s", res.content_sha256),
    rtc_buf_addc(&lines, '\0');
    offs[nh++] = lines.len, rtc_buf_addf(&lines, "Authorization: %s", res.authorization.data),
    rtc_buf_addc(&lines, '\0');
    if (c->session_token)
        offs[nh++] = lines.len, rtc_buf_addf(&lines, "X-Security-Token: %s", c->session_token),
        rtc_buf_addc(&lines, '\0');
    rtc_sign_result_free(&res);
    if (lines.oom) {
        rtc_buf_free_secure(&lines);
        rtc_buf_free(&url);
        return luaL_error(L, "out of memory");
    }
    for (i = 0; i < nh; i++) hv[i] = lines.data + offs[i];

    hr.method = sr.method;
    hr.url = url.data;
    hr.headers = hv;
    hr.nheaders = nh;
    hr.body = call->body;
    hr.body_len = sr.body_len;
    t0 = now_seconds();
    rc = rtc_transport_perform(c->transport, &hr, &resp);
    c->requests++;
    c->connections += resp.connects;
    rtc_buf_free_secure(&lines);
    rtc_buf_free(&url);
    if (rc) {
        lua_pushnil(L);
        push_transport_error(L, c, call, resp.error, resp.message);
        rtc_http_response_free(&resp);
        return 2;
    }
    lua_pushlstring(L, resp.body.data ? resp.body.data : "", resp.body.len);
    {
        char ctype[sizeof resp.content_type];
        long status = resp.status;
        memcpy(ctype, resp.content_type, sizeof ctype);
        rtc_http_response_free(&resp);
        return handle_response(L, c, call, status, ctype, now_seconds() - t0);
    }
}

static int client_close(lua_State *L) {
    rtc_client *c = luaL_checkudata(L, 1, RTC_CLIENT_MT);
    client_release(c);
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

/* Read-only facts for scripts and tests: endpoint, region, connections opened, requests sent. */
static int client_info(lua_State *L) {
    rtc_client *c = rtc_check_client(L, 1, "info");
    lua_createtable(L, 0, 8);
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
    return 1;
}

void rtc_client_register(lua_State *L, const luaL_Reg *methods) {
    static const luaL_Reg meta[] = {{"__gc", client_close},
                                    {"__tostring", client_tostring},
#if LUA_VERSION_NUM >= 504
                                    {"__close", client_close},
#endif
                                    {NULL, NULL}};
    static const luaL_Reg base[] = {{"close", client_close}, {"info", client_info}, {NULL, NULL}};
    if (luaL_newmetatable(L, RTC_CLIENT_MT)) {
        luaL_setfuncs(L, meta, 0);
        lua_newtable(L);
        luaL_setfuncs(L, base, 0);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "rtcadmin.client");
        lua_setfield(L, -2, "__name");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}
