#!/usr/bin/env bash
# The kvtier CLI and kvtierd's command line through a real daemon: ping, put/get of a file,
# lookup, delete, stats as a table and as JSON, config get/set, config file and override
# precedence, rejected settings, the documented config reference, and a clean SIGTERM exit.
# The CLI's numbers are parsed strictly; its default socket is not in /tmp itself.
set -u
B=${KVT_BUILD:-build}
D=$(mktemp -d /tmp/kvtier-cli-XXXXXX)
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT

# deploy/kvtier.conf documents every key with its default: it is exactly --dump-config.
check "deploy/kvtier.conf matches --dump-config" "diff <($B/kvtierd --dump-config) deploy/kvtier.conf >/dev/null"

# Bad settings are refused at start with a reason and exit code 2.
$B/kvtierd --cpu.arena_bytes=lots 2>"$D/err"; rc=$?
check "bad size refused (exit 2)" "[ $rc -eq 2 ] && grep -q cpu.arena_bytes '$D/err'"
$B/kvtierd --no_such_key=1 2>"$D/err"; rc=$?
check "unknown key refused" "[ $rc -eq 2 ] && grep -q 'unknown config key' '$D/err'"
printf 'max_clients = 7\nlog_level = warn\n' > "$D/k.conf"
check "config file then override" "$B/kvtierd --config '$D/k.conf' --max-clients=9 --dump-config | grep -q '^max_clients = 9$'"
check "config file value" "$B/kvtierd --config '$D/k.conf' --dump-config | grep -q '^max_clients = 7$'"
printf 'max_clients 7\n' > "$D/bad.conf"
$B/kvtierd --config "$D/bad.conf" 2>"$D/err"; rc=$?
check "malformed config file names the line" "[ $rc -eq 2 ] && grep -q 'bad.conf:1' '$D/err'"

# CLI numbers: decimal digits in range, or exit 2 with the option named (no daemon needed: the
# options are refused before any connection).
refused() { # OPTION VALUE WHY
    "$B/kvtier" --socket "$D/none.sock" "$1" "$2" ping >/dev/null 2>"$D/err"
    local rc=$?
    [ $rc -eq 2 ] && grep -q -- "$1" "$D/err" && grep -q "$3" "$D/err"
}
check "--timeout-ms abc refused" "refused --timeout-ms abc 'not a number'"
check "--timeout-ms 12x refused" "refused --timeout-ms 12x 'not a number'"
check "--timeout-ms '' refused" "refused --timeout-ms '' 'not a number'"
check "--timeout-ms -5 refused" "refused --timeout-ms -5 'not a number'"
check "--timeout-ms ' 5' refused" "refused --timeout-ms ' 5' 'not a number'"
check "--timeout-ms +5 refused" "refused --timeout-ms +5 'not a number'"
check "--timeout-ms 4294967424 refused, not truncated" "refused --timeout-ms 4294967424 'out of range'"
check "--timeout-ms 0 refused" "refused --timeout-ms 0 'out of range'"
check "--layers 2^64 refused" "refused --layers 18446744073709551616 'out of range'"
check "--kv-heads 0x10 refused" "refused --kv-heads 0x10 'not a number'"
check "--head-dim 65537 refused" "refused --head-dim 65537 'out of range'"
check "--tokens-per-chunk -1 refused" "refused --tokens-per-chunk -1 'not a number'"
"$B/kvtier" --layers 4096 --kv-heads 4096 --head-dim 65536 ping >/dev/null 2>"$D/err"; rc=$?
check "geometry too large refused" "[ $rc -eq 2 ] && grep -q 'larger than' '$D/err'"
"$B/kvtier" --timeout-ms 1000 --socket "$D/none.sock" ping >/dev/null 2>"$D/err"; rc=$?
check "valid numbers accepted (fails later, on the missing daemon)" "[ $rc -eq 1 ] && grep -q E_DISCONNECTED '$D/err'"
defsock="/tmp/kvtier-$(id -u)/kvtier.sock"
case "${XDG_RUNTIME_DIR:-}" in /*) defsock="$XDG_RUNTIME_DIR/kvtier/kvtier.sock" ;; esac
[ "$(id -u)" -eq 0 ] && defsock=/run/kvtier/kvtier.sock
check "default socket in a directory of its own" "$B/kvtier --help | grep -qF '$defsock'"

S="$D/kvtier.sock"
$B/kvtierd --socket="$S" --data-dir="$D/data" --cpu.arena_bytes=64M 2>"$D/log" &
PID=$!
for _ in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
K="$B/kvtier --socket $S"
check "ping" "$K ping | grep -q pong"
check "ping names the socket; \$KVTIER_SOCKET is used" "KVTIER_SOCKET='$S' $B/kvtier --timeout-ms 3000 ping | grep -qF 'pong from $S'"
head -c 16384 /dev/urandom > "$D/blob"
key=$($K put "$D/blob")
check "put prints a key" "[ \${#key} -eq 32 ]"
check "get returns the same bytes" "$K get $key '$D/out' 2>/dev/null && cmp -s '$D/blob' '$D/out'"
check "get to stdout" "$K get $key - | cmp -s '$D/blob' -"
check "lookup finds it in the cpu tier" "$K lookup $key | grep -q '$key cpu'"
check "lookup json" "$K --json lookup $key 00000000000000000000000000000001 | grep -q '\"hits\": 1'"
check "stats table" "$K stats | grep -q '^puts '"
check "stats json" "$K stats --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"puts\"]==1'"
check "config set/get" "$K config set log_level debug | grep -q 'log_level = debug' && $K config get log_level | grep -q debug"
check "read-only config refused" "! $K config set cpu.arena_bytes 1G 2>&1 | grep -q '= '"
check "delete" "$K delete $key | grep -q deleted"
check "get after delete is a miss" "$K get $key '$D/out' 2>&1 | grep -q E_NOTFOUND"
head -c 1000 /dev/urandom > "$D/odd"
check "wrong size for the geometry is refused" "! $K put '$D/odd' 2>/dev/null"
check "bad key text is refused" "! $K get nothex '$D/out' 2>/dev/null"
check "socket is not world-writable" "[ \$(( 0\$(stat -c %a '$S') & 2 )) -eq 0 ]"

kill -TERM $PID
wait $PID; rc=$?
PID=
check "SIGTERM exits 0" "[ $rc -eq 0 ]"
check "socket removed at exit" "[ ! -e '$S' ]"
check "daemon down: CLI fails fast" "timeout 2 $B/kvtier --socket $S ping 2>&1 | grep -q E_DISCONNECTED"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
