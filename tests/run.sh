#!/usr/bin/env bash
# Runs every test executable given on the command line, each with a time limit, and prints one
# closing line "N passed, N failed" counting executables. cmocka's own output (per test case)
# stays visible above it. Exits non-zero when any executable fails.
set -u
limit=${KVT_TEST_TIMEOUT_S:-300}
passed=0 failed=0 names=()
for t in "$@"; do
    [ -x "$t" ] || { echo "run.sh: $t is not executable" >&2; failed=$((failed + 1)); names+=("$t"); continue; }
    start=$(date +%s)
    echo "=== $t"
    if timeout --kill-after=10 "$limit" "$t"; then
        passed=$((passed + 1))
        echo "--- ok   $t ($(( $(date +%s) - start ))s)"
    else
        rc=$?
        failed=$((failed + 1)); names+=("$t")
        echo "--- FAIL $t (exit $rc, $(( $(date +%s) - start ))s)"
    fi
done
echo
[ $failed -gt 0 ] && printf 'failed: %s\n' "${names[@]}"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
