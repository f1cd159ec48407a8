#!/bin/sh
# Builds the libFuzzer harnesses with clang (ASan + UBSan + fuzzer coverage) in BUILD_DIR and runs each
# for SECONDS (default 10) over its seed corpus.
#   tests/fuzz/run_all.sh SOURCE_DIR BUILD_DIR [SECONDS]
set -eu
src=$1
build=$2
seconds=${3:-10}
CC=clang cmake -S "$src" -B "$build" -DRTCADMIN_FUZZ=ON -DRTCADMIN_SANITIZE=address,undefined \
  -DFUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$build" -j2 --target fuzz_all -- --no-print-directory >/dev/null
exec ctest --test-dir "$build" --output-on-failure -j2 -R '^fuzz_'
