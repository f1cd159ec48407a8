#!/bin/sh
# Runs one ctest command and keeps everything it prints, stdout and stderr, in OUT_DIR/NAME.log (it
# still reaches ctest too); the suites' emulators log their requests in OUT_DIR/NAME.d/. The test's own
# exit status is kept. secrets_scan reads all of it.
#   tests/secrets/capture.sh OUT_DIR NAME COMMAND...
set -u
out=$1
name=$2
shift 2
rm -rf "$out/$name.d" "$out/$name.log"
mkdir -p "$out/$name.d"
RTCADMIN_TEST_LOG_DIR="$out/$name.d"
export RTCADMIN_TEST_LOG_DIR
{ "$@" 2>&1; echo $? > "$out/$name.d/status"; } | tee "$out/$name.log"
status=$(cat "$out/$name.d/status" 2>/dev/null || echo 1)
rm -f "$out/$name.d/status"
exit "$status"
