#!/bin/sh
# The whole suite against an ASan+UBSan build of the module and the C tests (Lua 5.4): configures
# and builds it in BUILD_DIR, then runs its ctest. Lint, the rockspec build, the emulator's own Python
# tests, the install check and the other Lua builds of the matrix do not involve this build and are left to the main
# one, like the scan of all outputs (which covers this build's too). Any sanitizer report fails.
#   tests/sanitize/run_suite.sh SOURCE_DIR BUILD_DIR
set -eu
src=$1
build=$2
# nginx (in the Redis suite) loads the main build's LuaJIT module: nginx itself is not instrumented.
cmake -S "$src" -B "$build" -DRTCADMIN_SANITIZE=address,undefined -DRTCADMIN_MATRIX=OFF \
  -DRTCADMIN_LUAJIT_BUILD="$(dirname "$build")/lua-luajit" >/dev/null
cmake --build "$build" -j2 -- --no-print-directory >/dev/null
exec ctest --test-dir "$build" --output-on-failure -j2 \
  -E '^(rockspec_builds|cmake_install|luacheck|emulator_selftest|secrets_scan)$'
