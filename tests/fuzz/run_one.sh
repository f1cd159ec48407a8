#!/bin/sh
# Runs one libFuzzer harness for SECONDS over its committed seed corpus. New inputs go to WORK_DIR,
# never into the committed corpus; a crash, leak, sanitizer report or failed invariant fails the run
# and leaves the input in WORK_DIR.
#   tests/fuzz/run_one.sh HARNESS SECONDS SEED_DIR WORK_DIR
set -eu
harness=$1
seconds=$2
seeds=$3
work=$4
mkdir -p "$work/new"
exec "$harness" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/" "$work/new" "$seeds"
