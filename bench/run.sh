#!/bin/sh
# Runs the signing, per-call overhead and policy engine benchmarks (RESULTS.md sections 1, 2 and 6)
# and prints a summary. From the repository root:
#
#   bench/run.sh
#
# Builds the module (build/) and the C signing benchmark (bench/out/), installs the Node SDK into
# bench/node_modules when it is missing, starts bench/instant_server.js for each client, and leaves
# the raw output of every step in bench/out/. Needs cmake, a C compiler, OpenSSL and libcurl
# headers, lua5.4 with lua-cjson, node and npm (the first run fetches the SDK from the npm registry);
# with luajit installed, the policy engine is measured on LuaJIT too (its build: build/lua-luajit).
set -eu

cd "$(dirname "$0")/.."
OUT=bench/out
mkdir -p "$OUT"

export LUA_CPATH='build/?.so;;'
export LUA_PATH='lua/?.lua;lua/?/init.lua;;'
# axios honours http_proxy; libcurl in rtcadmin ignores it. Nothing here may go through a proxy.
unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY

SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

echo "== build"
cmake -S . -B build >/dev/null
cmake --build build -j2 >/dev/null
make -s -C bench >/dev/null
if command -v luajit >/dev/null 2>&1; then
    cmake -S . -B build/lua-luajit -DRTCADMIN_LUA=luajit -DBUILD_TESTING=OFF >/dev/null
    cmake --build build/lua-luajit -j2 >/dev/null
fi
if [ ! -f bench/node_modules/@volcengine/openapi/lib/base/sign.js ]; then
    echo "== installing @volcengine/openapi into bench/node_modules"
    npm ci --prefix bench --no-audit --no-fund --loglevel=error >/dev/null
fi

echo "== 1. signing (C rtc_sign vs. OpenSSL minimum; Lua rtcadmin.sign; Node SDK Signer)"
bench/out/sign_bench >"$OUT/sign_c.txt"
lua5.4 bench/sign_bench.lua >"$OUT/sign_lua.txt"
node bench/sign_bench.js >"$OUT/sign_node.txt"

# start_server NAME: starts bench/instant_server.js, sets SERVER_PID and URL.
start_server() {
    node bench/instant_server.js >"$OUT/$1.out" 2>"$OUT/$1.err" &
    SERVER_PID=$!
    i=0
    while ! grep -q "listening on" "$OUT/$1.out" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then echo "instant_server did not start" >&2; exit 1; fi
        sleep 0.05
    done
    URL=$(sed -n 's/.*listening on //p' "$OUT/$1.out")
}
stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}

echo "== 2. per-call client overhead against the instant server"
start_server server_lua
lua5.4 bench/call_overhead.lua "$URL" >"$OUT/calls_lua.txt"
stop_server
start_server server_node
node bench/call_overhead.js "$URL" >"$OUT/calls_node.txt"
stop_server

echo "== 6. policy engine, 10 rules over 100k users, 2M events after 500k of warm-up"
lua5.4 bench/policy_bench.lua 2000000 100000 500000 >"$OUT/policy_lua54.txt"
if command -v luajit >/dev/null 2>&1; then
    LUA_CPATH='build/lua-luajit/?.so;;' luajit bench/policy_bench.lua 2000000 100000 500000 >"$OUT/policy_luajit.txt"
fi

val() { awk -v k="$1" '$1 == k { print $2; exit }' "$OUT/$2"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
conns() { sed -n 's/.*connections=//p' "$OUT/$1"; }

c_sign=$(val c_sign_ns sign_c.txt)
c_reused=$(val c_sign_reused_ns sign_c.txt)
min_evp=$(val min_evp_ns sign_c.txt)
min_ll=$(val min_lowlevel_ns sign_c.txt)
ratio_min=$(val ratio_sign_over_min sign_c.txt)
lua_sign=$(val lua_sign_ns sign_lua.txt)
lua_fresh=$(val lua_sign_fresh_ns sign_lua.txt)
node_sign=$(val node_sign_ns sign_node.txt)
node_ops=$(val node_sign_ops_per_s sign_node.txt)
lua_cpu=$(val lua_paced_cpu_us_per_call calls_lua.txt)
lua_nl_cpu=$(val lua_nolimit_cpu_us_per_call calls_lua.txt)
node_cpu=$(val node_cpu_us_per_call calls_node.txt)
lua_wall=$(val lua_paced_wall_us_per_call calls_lua.txt)
lua_nl_wall=$(val lua_nolimit_wall_us_per_call calls_lua.txt)
node_wall=$(val node_wall_us_per_call calls_node.txt)

rest() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$OUT/$2"; }

echo
echo "== machine"
echo "nproc:    $(nproc)"
echo "cpu:      $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "kernel:   $(uname -r)"
echo "cc:       $(cc --version | head -1)"
echo "openssl:  $(rest openssl sign_c.txt)"
echo "lua:      $(lua5.4 -v 2>&1 | head -1 | cut -d' ' -f1-2), rtcadmin $(val rtcadmin_version calls_lua.txt)"
echo "libcurl:  $(curl --version 2>/dev/null | head -1 | cut -d' ' -f2)"
echo "node:     $(node --version), @volcengine/openapi $(val sdk_version sign_node.txt), axios $(val axios_version calls_node.txt)"

echo
echo "== 1. signing, golden vector rtc_kickuser_post_json (ns per signature, median)"
row() { printf '%-68s %10s\n' "$1" "$2"; }
row "(a) C rtc_sign(), fresh result per call (as the module calls it)" "$c_sign"
row "    C rtc_sign(), result buffers reused" "$c_reused"
row "(b) minimum: 2 x SHA-256 + 1 pre-keyed HMAC, OpenSSL EVP" "$min_evp"
row "    the same minimum, low-level SHA256_* API (information)" "$min_ll"
row "(c) Lua rtcadmin.sign(req), request table reused" "$lua_sign"
row "    Lua rtcadmin.sign(req), request table built per call" "$lua_fresh"
row "(d) Node SDK Signer (new Signer + addAuthorization), $node_ops ops/s" "$node_sign"
echo
echo "(a)/(b) = $ratio_min (target <= 2)"
echo "(d)/(a) = $(div "$node_sign" "$c_sign") (target >= 20)"
echo "(d)/(c) = $(div "$node_sign" "$lua_sign") (Lua, request table reused)"

echo
echo "== 2. per-call overhead, KickUser against an instant keep-alive server (us per call, client process)"
printf '%-46s %9s %9s  %s\n' "" "CPU" "wall" "server saw"
printf '%-46s %9s %9s  %s\n' "rtcadmin, process limiter (qps raised)" "$lua_cpu" "$lua_wall" \
    "$(conns server_lua.err) connections for both rtcadmin clients"
printf '%-46s %9s %9s\n' "rtcadmin, limiter = \"none\"" "$lua_nl_cpu" "$lua_nl_wall"
printf '%-46s %9s %9s  %s\n' "Node SDK, createJSONAPI(\"KickUser\")" "$node_cpu" "$node_wall" \
    "$(conns server_node.err) connection(s)"
echo
echo "Node CPU / rtcadmin CPU = $(div "$node_cpu" "$lua_cpu") (paced), $(div "$node_cpu" "$lua_nl_cpu") (no limiter) (target >= 5)"
echo "Node wall / rtcadmin wall = $(div "$node_wall" "$lua_wall") (paced)"
echo
echo "== 6. policy engine, 10 rules over 100k users (events per second, one core)"
printf '%-20s %12s %14s %14s %12s\n' "" "10 rules" "no rules" "bare loop" "heap (KiB)"
for f in policy_lua54 policy_luajit; do
    [ -f "$OUT/$f.txt" ] || continue
    printf '%-20s %12s %14s %14s %12s\n' "$(sed -n '1s/.*warm-up [0-9]*, //p' "$OUT/$f.txt")" \
        "$(val ten_rules_events_per_s "$f.txt")" "$(val no_rules_events_per_s "$f.txt")" \
        "$(val bare_loop_events_per_s "$f.txt")" "$(val heap_after_full_gc_kib "$f.txt")"
done
echo "(target >= 500000 events/s; the machine's run-to-run spread is in RESULTS.md section 6)"
echo
echo "raw output: $OUT/{sign_c,sign_lua,sign_node,calls_lua,calls_node,policy_lua54,policy_luajit}.txt, $OUT/server_*.err"
