/* What the command line (lua/rtcadmin/cli.lua, `rtcadmin run --state`) needs of the system that plain
 * Lua lacks: stopping cleanly on SIGTERM/SIGINT, reading lines with a timeout (so state is saved
 * while the input is quiet), and writing a file atomically.
 *
 *   rtcadmin.catch_signals()     SIGTERM and SIGINT set a flag instead of killing the process; no
 *                                SA_RESTART, so a blocking read or sleep returns. Only the CLI
 *                                calls it: a library never installs a handler.
 *   rtcadmin.caught_signal()     "SIGTERM", "SIGINT" or nil
 *   rtcadmin.lines(path?)        a line reader on a file (nil or "-": stdin)
 *   reader:read(timeout?)        line (without "\n") | nil, "timeout" | nil, "signal" | nil at the end;
 *                                nil, err on a read error
 *   reader:close()
 *   rtcadmin.save_file(path, s)  writes path.tmp, fsyncs it, renames it over path and fsyncs the
 *                                directory: true | nil, err. A crash leaves the old file or the new.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rtcadmin.h"

#define LINES_MT "rtcadmin.lines"
#define LINE_MAX_BYTES (64u << 20)
#define READ_CHUNK 65536

/* The one process-wide value here: which signal arrived (0: none). A signal handler can only reach
 * static storage; it is written only by the handlers the CLI installs. */
static volatile sig_atomic_t caught = 0;

static void on_signal(int sig) { caught = sig; }

static int l_catch_signals(lua_State *L) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a blocking read returns EINTR */
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return luaL_error(L, "rtcadmin.catch_signals: %s", strerror(errno));
    return 0;
}

static const char *caught_name(void) {
    int sig = caught;
    if (sig == SIGTERM) return "SIGTERM";
    if (sig == SIGINT) return "SIGINT";
    return NULL;
}

static int l_caught_signal(lua_State *L) {
    const char *name = caught_name();
    if (name)
        lua_pushstring(L, name);
    else
        lua_pushnil(L);
    return 1;
}

typedef struct {
    int fd, owned, eof;
    char *buf;
    size_t start, len, cap;
} line_reader;

static line_reader *check_reader(lua_State *L) { return luaL_checkudata(L, 1, LINES_MT); }

static void reader_close(line_reader *r) {
    if (r->owned && r->fd >= 0) close(r->fd);
    r->fd = -1;
    free(r->buf);
    r->buf = NULL;
    r->start = r->len = r->cap = 0;
}

static int l_lines(lua_State *L) {
    const char *path = luaL_optstring(L, 1, "-");
    line_reader *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    r->fd = -1;
    luaL_getmetatable(L, LINES_MT);
    lua_setmetatable(L, -2);
    if (strcmp(path, "-") == 0) {
        r->fd = 0;
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s", path, strerror(errno));
            return 2;
        }
        r->owned = 1;
    }
    return 1;
}

static int push_line(lua_State *L, line_reader *r, size_t end, size_t next) {
    size_t n = end - r->start;
    lua_pushlstring(L, r->buf + r->start, n);
    r->start = next;
    return 1;
}

static int l_read(lua_State *L) {
    line_reader *r = check_reader(L);
    lua_Number timeout = luaL_optnumber(L, 2, -1);
    int wait_ms = timeout < 0 ? -1 : timeout > 86400 ? 86400000 : (int)(timeout * 1000);
    if (r->fd < 0 && !r->buf) return luaL_error(L, "rtcadmin.lines: the reader is closed");
    for (;;) {
        char *nl = r->len > r->start ? memchr(r->buf + r->start, '\n', r->len - r->start) : NULL;
        ssize_t got;
        if (nl) return push_line(L, r, (size_t)(nl - r->buf), (size_t)(nl - r->buf) + 1);
        if (r->eof) {
            if (r->len > r->start) return push_line(L, r, r->len, r->len);
            lua_pushnil(L);
            return 1;
        }
        if (caught_name()) {
            lua_pushnil(L);
            lua_pushliteral(L, "signal");
            return 2;
        }
        if (wait_ms >= 0) {
            struct pollfd p;
            int rc;
            p.fd = r->fd;
            p.events = POLLIN;
            p.revents = 0;
            rc = poll(&p, 1, wait_ms);
            if (rc == 0) {
                lua_pushnil(L);
                lua_pushliteral(L, "timeout");
                return 2;
            }
            if (rc < 0) {
                if (errno == EINTR) continue;
                lua_pushnil(L);
                lua_pushstring(L, strerror(errno));
                return 2;
            }
        }
        /* Room for a chunk: move what is left to the front, grow when a line is longer. */
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, r->len - r->start);
            r->len -= r->start;
            r->start = 0;
        }
        if (r->cap - r->len < READ_CHUNK) {
            size_t ncap = r->cap ? r->cap * 2 : 2 * READ_CHUNK;
            char *nb;
            if (r->len >= LINE_MAX_BYTES) {
                lua_pushnil(L);
                lua_pushliteral(L, "a line longer than 64 MiB");
                return 2;
            }
            nb = realloc(r->buf, ncap);
            if (!nb) return luaL_error(L, "rtcadmin.lines: out of memory");
            r->buf = nb;
            r->cap = ncap;
        }
        got = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (got > 0) {
            r->len += (size_t)got;
        } else if (got == 0) {
            r->eof = 1;
        } else if (errno != EINTR && errno != EAGAIN) {
            lua_pushnil(L);
            lua_pushstring(L, strerror(errno));
            return 2;
        }
    }
}

static int l_close(lua_State *L) {
    reader_close(check_reader(L));
    return 0;
}

/* Writes all of s to fd: 0, or -1 with errno set. */
static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int l_save_file(lua_State *L) {
    size_t n, plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *s = luaL_checklstring(L, 2, &n);
    char *tmp, *dir, *slash;
    int fd, err = 0;
    const char *step = NULL;
    tmp = malloc(plen + 5);
    dir = malloc(plen + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return luaL_error(L, "rtcadmin.save_file: out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno;
        step = "open";
    } else {
        if (write_all(fd, s, n) != 0) {
            err = errno;
            step = "write";
        } else if (fsync(fd) != 0) {
            err = errno;
            step = "fsync";
        }
        if (close(fd) != 0 && !step) {
            err = errno;
            step = "close";
        }
        if (!step && rename(tmp, path) != 0) {
            err = errno;
            step = "rename";
        }
        if (step) unlink(tmp);
    }
    if (!step) {
        /* The rename itself is durable once the directory is synced (best effort: not every file
         * system lets a directory be opened for that). */
        memcpy(dir, path, plen + 1);
        slash = strrchr(dir, '/');
        if (slash == dir)
            dir[1] = '\0';
        else if (slash)
            *slash = '\0';
        else
            strcpy(dir, ".");
        fd = open(dir, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            (void)fsync(fd);
            close(fd);
        }
    }
    if (step) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s %s: %s", step, step[0] == 'r' ? path : tmp, strerror(err));
        free(tmp);
        free(dir);
        return 2;
    }
    free(tmp);
    free(dir);
    lua_pushboolean(L, 1);
    return 1;
}

static int reader_gc(lua_State *L) {
    reader_close(check_reader(L));
    return 0;
}

void rtc_cli_io_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"read", l_read}, {"close", l_close}, {NULL, NULL}};
    static const luaL_Reg fns[] = {{"catch_signals", l_catch_signals},
                                   {"caught_signal", l_caught_signal},
                                   {"lines", l_lines},
                                   {"save_file", l_save_file},
                                   {NULL, NULL}};
    if (luaL_newmetatable(L, LINES_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, reader_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, fns, 0);
}
