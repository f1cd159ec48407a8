rockspec_format = "3.0"
package = "rtcadmin"
version = "scm-1"
source = {
   url = "git+https://example.invalid/rtcadmin.git",
}
description = {
   summary = "Moderate Volcengine RTC rooms from Lua: signed KickUser, BanRoomUser, mute and more",
   detailed = [[
rtcadmin is a C module (libcurl + OpenSSL) with a thin Lua layer, for Lua 5.1 to 5.4 and LuaJIT
(inside nginx/OpenResty it sends over non-blocking cosockets). It signs Volcengine
OpenAPI requests (HMAC-SHA256 V4), sends them over a keep-alive connection with TLS
verification, and returns decoded results or structured errors. rtcadmin.policy runs
moderators' sandboxed Lua rules over room events; the rtcadmin command line wraps both.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1, < 5.5",
   "lua-cjson",
}
external_dependencies = {
   CURL = { header = "curl/curl.h" },
   OPENSSL = { header = "openssl/evp.h" },
   HIREDIS = { header = "hiredis/hiredis.h" },
}
build = {
   type = "builtin",
   modules = {
      rtcadmin = {
         sources = {
            "src/module.c", "src/client.c", "src/actions.c", "src/prepared.c", "src/response.c", "src/request.c",
            "src/batch.c", "src/exchange.c", "src/call.c", "src/errors.c", "src/json.c", "src/stats.c", "src/heap.c", "src/view.c", "src/buf.c", "src/signing.c", "src/transport.c", "src/limiter.c",
            "src/limiter_redis.c", "src/redis_url.c", "src/redis_fallback.c", "src/step_meter.c", "src/pattern.c",
            "src/pattern_match.c", "src/redis_lua.c", "src/pack.c", "src/cli_io.c",
            "src/redis_conn.c", "src/redis_conn_lua.c",
         },
         defines = { "_POSIX_C_SOURCE=200809L" },
         incdirs = { "src", "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(HIREDIS_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(HIREDIS_LIBDIR)" },
         libraries = { "curl", "crypto", "hiredis", "pthread" },
      },
      -- inside nginx / OpenResty (LuaJIT): the cosocket transport, callback receiver, admin endpoint
      ["rtcadmin.nginx"] = "lua/rtcadmin/nginx.lua",
      ["rtcadmin.callback"] = "lua/rtcadmin/callback.lua",
      ["rtcadmin.admin"] = "lua/rtcadmin/admin.lua",
      ["rtcadmin.logtext"] = "lua/rtcadmin/logtext.lua",
      ["rtcadmin.bans"] = "lua/rtcadmin/bans.lua",
      ["rtcadmin.redis_gcra"] = "lua/rtcadmin/redis_gcra.lua",
      ["rtcadmin.redis_limiter"] = "lua/rtcadmin/redis_limiter.lua",
      ["rtcadmin.resp"] = "lua/rtcadmin/resp.lua",
      ["rtcadmin.fleet"] = "lua/rtcadmin/fleet.lua",
      ["rtcadmin.fleet_cli"] = "lua/rtcadmin/fleet_cli.lua",
      -- the policy engine, its rule sandbox and the command line
      ["rtcadmin.sandbox"] = "lua/rtcadmin/sandbox.lua",
      ["rtcadmin.policy"] = "lua/rtcadmin/policy.lua",
      ["rtcadmin.rules"] = "lua/rtcadmin/rules.lua",
      ["rtcadmin.events"] = "lua/rtcadmin/events.lua",
      ["rtcadmin.store"] = "lua/rtcadmin/store.lua",
      ["rtcadmin.outbox"] = "lua/rtcadmin/outbox.lua",
      ["rtcadmin.state"] = "lua/rtcadmin/state.lua",
      ["rtcadmin.cli"] = "lua/rtcadmin/cli.lua",
   },
   install = {
      bin = { rtcadmin = "bin/rtcadmin" },
   },
}
