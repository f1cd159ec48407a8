#!/bin/sh
# The rockspec builds the module with `luarocks make` into a private tree, and what it installs loads and signs.
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
luarocks --lua-version 5.4 --tree "$tmp/tree" make --deps-mode=none rtcadmin-scm-1.rockspec "$@" >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log"; echo "0 passed, 1 failed"; exit 1; }
so=$(find "$tmp/tree" -name rtcadmin.so | head -n 1)
[ -n "$so" ] || { echo "luarocks installed no rtcadmin.so"; echo "0 passed, 1 failed"; exit 1; }
LUA_CPATH="$(dirname "$so")/?.so;;" lua5.4 - <<'LUA'
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
print("luarocks-built module loads from " .. package.searchpath("rtcadmin", package.cpath))
LUA
echo "1 passed, 0 failed"
