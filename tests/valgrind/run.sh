#!/bin/sh
# valgrind memcheck of the C unit tests and of a Lua client tour against the emulator: any memory
# error or any definitely lost byte fails the run (valgrind's exit status 99).
#   tests/valgrind/run.sh BUILD_DIR VECTOR_FILE...   (from the source directory)
set -eu
build=$1
shift
vg="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"

echo "== C signer against the vectors"
python3 tests/c/flatten_vectors.py "$@" > "$build/valgrind-vectors.txt"
$vg "$build/tests/test_signing" < "$build/valgrind-vectors.txt"
echo "== C limiter (forked and killed children included)"
$vg --trace-children=yes "$build/tests/test_limiter"
echo "== C Redis fallback decision on the shared outage timeline"
$vg "$build/tests/test_redis_fallback" tests/vectors/redis_outage.txt
echo "== Lua client tour"
$vg "${LUA:-lua5.4}" tests/valgrind/smoke.lua
echo "valgrind: no errors, nothing definitely lost"
