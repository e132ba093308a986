#!/usr/bin/env bash
# Runs the frame fuzzer: scripts/fuzz.sh BUILD_DIR SECONDS. The corpus lives in BUILD_DIR/corpus,
# seeded from tests/fuzz/seeds (frames the bad-input tests send); crashes are written to
# BUILD_DIR/crashes and make the run fail. Prints executions and crashes at the end.
set -euo pipefail
build=${1:-build-fuzz}
secs=${2:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
corpus="$build/corpus"
crashes="$build/crashes"
mkdir -p "$corpus" "$crashes"
cp -n "$here"/tests/fuzz/seeds/* "$corpus"/ 2>/dev/null || true
log="$build/fuzz.log"
echo "fuzz: running $build/fuzz_frames for ${secs}s (corpus $corpus, log $log)"
set +e
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$build/fuzz_frames" -max_total_time="$secs" -max_len=65536 -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" >"$log" 2>&1
rc=$?
set -e
execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
found=$(ls "$crashes" | wc -l)
echo "fuzz: ${execs:-0} executions, exit $rc, $found crash/timeout artifacts"
if [ "$rc" -ne 0 ]; then
    tail -40 "$log"
    exit 1
fi
