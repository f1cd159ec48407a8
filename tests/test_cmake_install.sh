#!/bin/sh
# `cmake --install` puts the module, the Lua layer and the rtcadmin command where Lua finds them.
set -eu
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; echo "0 passed, 1 failed"; exit 1; }
so=$(find "$tmp/prefix" -name rtcadmin.so | head -n 1)
cli=$(find "$tmp/prefix" -path '*/rtcadmin/cli.lua' | head -n 1)
[ -x "$tmp/prefix/bin/rtcadmin" ] && [ -n "$so" ] && [ -n "$cli" ] ||
  { find "$tmp/prefix"; echo "0 passed, 1 failed"; exit 1; }
LUA_PATH="$(dirname "$(dirname "$cli")")/?.lua;;" LUA_CPATH="$(dirname "$so")/?.so;;" \
  "$tmp/prefix/bin/rtcadmin" replay examples/rules examples/events/raid.jsonl >"$tmp/replay.log" 2>&1 ||
  { cat "$tmp/replay.log"; echo "0 passed, 1 failed"; exit 1; }
grep -q "143 events, 24 decisions" "$tmp/replay.log" || { cat "$tmp/replay.log"; echo "0 passed, 1 failed"; exit 1; }
echo "1 passed, 0 failed"
