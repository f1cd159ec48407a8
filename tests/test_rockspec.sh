#!/bin/sh
# The rockspec builds the module with `luarocks make` into a private tree, and what it installs loads and signs;
# the installed rtcadmin command runs.
set -eu
src=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
# Build from a copy so object files never land in the work tree.
tar -C "$src" --exclude=./build --exclude='./build-*' --exclude=./.git -cf - . | tar -C "$tmp/src" -xf -
cd "$tmp/src"
# Debian keeps curl.h under the multiarch include directory, where luarocks does not look by itself.
arch=$(gcc -print-multiarch 2>/dev/null || true)
set --
if [ -n "$arch" ] && [ -f "/usr/include/$arch/curl/curl.h" ]; then
  set -- "CURL_INCDIR=/usr/include/$arch" "CURL_LIBDIR=/usr/lib/$arch"
fi
# For Lua 5.4, and for LuaJIT (a 5.1 tree built against LuaJIT's headers: what OpenResty uses).
build_and_check() { # lua-version interpreter tree [luarocks variables...]
  v=$1 lua=$2 tree=$3
  shift 3
  luarocks --lua-version "$v" --tree "$tree" make --deps-mode=none rtcadmin-scm-1.rockspec "$@" >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log"; echo "0 passed, 1 failed"; exit 1; }
  so=$(find "$tree" -name rtcadmin.so | head -n 1)
  [ -n "$so" ] || { echo "luarocks installed no rtcadmin.so"; echo "0 passed, 1 failed"; exit 1; }
  lmod=$(find "$tree" -path '*rtcadmin/callback.lua' | head -n 1)
  [ -n "$lmod" ] || { echo "luarocks installed no rtcadmin/callback.lua"; echo "0 passed, 1 failed"; exit 1; }
  LUA_CPATH="$(dirname "$so")/?.so;;" LUA_PATH="$(dirname "$(dirname "$lmod")")/?.lua;;" "$lua" - <<'LUA'
local r = require "rtcadmin"
local h = r.sign {
  method = "POST", host = "rtc.volcengineapi.com", path = "/",
  query = { { "Action", "KickUser" }, { "Version", "2020-12-01" } },
  headers = { ["Content-Type"] = "application/json" },
  body = '{"AppId": "661e2ebb5ffd4b0e8d3f6b1d", "RoomId": "room1", "UserId": "user1"}',
  access_key = "AKLTYWViMTVmZGYzM2E0NDI5Mzk2MDZjNjFmMjc2MjRjMzg",
  secret_key = "WkRZeE1EQmxPVGhsWWpWak5HVmtNbUUxTXpZeU9UVXlOMlE1TmpZeVlqTQ==",
  x_date = "20240619T071306Z",
}
assert(h.Authorization:match("Signature=2e31d9963f23f2ba1104d7d86bd982e3ffe93168fb69670dd74c944f8ab5c199$"),
  "the luarocks-built module signs the golden vector")
assert(type(r.client) == "function" and type(r.kick_user) == "function")
assert(require("rtcadmin.callback").signature({ EventType = "RecordStarted",
  EventData = '{"RoomId":"Room1","UserId":"User1"}', EventTime = "2024-01-01T00:00:00Z", EventId = "evt0001",
  AppId = "661e00000000543cf", Version = "2020-12-01", Nonce = "a1b2" }, "MySecretKey") ==
  "53f8a95bb1f97f446fd7ffed71841ff8fd773488d62c5cd55b438f2bc5e4117a", "the installed Lua layer loads")
print(_VERSION .. ": luarocks-built module loads from " .. package.searchpath("rtcadmin", package.cpath))
LUA
  if [ "$v" = 5.4 ]; then
    # The installed command (LuaRocks' wrapper) runs with the tree's paths, as `luarocks path` sets them.
    LUA_PATH="$(dirname "$(dirname "$lmod")")/?.lua;;" LUA_CPATH="$(dirname "$so")/?.so;;" \
      "$tree/bin/rtcadmin" check examples/rules >"$tmp/check.log" 2>&1 ||
      { cat "$tmp/check.log"; echo "1 passed, 1 failed"; exit 1; }
    grep -q "raid.lua: ok, 4 rules" "$tmp/check.log" || { cat "$tmp/check.log"; echo "1 passed, 1 failed"; exit 1; }
  fi
}
build_and_check 5.4 lua5.4 "$tmp/tree54" "$@"
build_and_check 5.1 luajit "$tmp/treejit" "$@" LUA_INCDIR=/usr/include/luajit-2.1
echo "2 passed, 0 failed"
