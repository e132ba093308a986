#!/usr/bin/env bash
# The kvtier CLI and kvtierd's command line through a real daemon: ping, put/get of a file,
# lookup, delete, stats as a table and as JSON, config get/set, config file and override
# precedence, rejected settings, the documented config reference, and a clean SIGTERM exit.
# The CLI's numbers are parsed strictly; its default socket is not in /tmp itself. Its options
# are strict too (unknown options, missing values and extra arguments are usage errors, exit 2);
# a failed connection names the socket it tried and why; `config list` shows every key of the
# daemon's config table with its value; `top` shows the tiers and the rates of a known load.
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
# Usage errors: exit 2 with a reason, before any connection is tried.
usage_err() { # WHY ARGS...
    local why=$1
    shift
    "$B/kvtier" --socket "$D/none.sock" "$@" >/dev/null 2>"$D/err"
    local rc=$?
    [ $rc -eq 2 ] && grep -q -- "$why" "$D/err" && ! grep -q 'cannot connect' "$D/err"
}
check "unknown option before the command" "usage_err 'unknown option --bogus' --bogus ping"
check "unknown option after the command" "usage_err 'unknown option --bogus' ping --bogus"
check "unknown short option" "usage_err 'unknown option -x' stats -x"
check "option without its value (last word)" "usage_err '--socket needs a value' ping --socket"
check "option without its value (an option follows)" "usage_err '--tenant needs a value' --tenant --json ping"
check "extra argument to ping" "usage_err \"unexpected argument 'now'\" ping now"
check "extra argument to stats" "usage_err \"unexpected argument 'all'\" stats all"
check "extra argument to get" "usage_err 'get takes KEY FILE' get 00000000000000000000000000000001 a b"
check "missing argument to get" "usage_err 'get takes KEY FILE' get 00000000000000000000000000000001"
check "extra argument to config get" "usage_err 'config get takes one KEY' config get log_level x"
check "extra argument to config list" "usage_err 'config list takes no argument' config list all"
check "unknown config subcommand" "usage_err 'config takes list, get KEY or set KEY VALUE' config show"
check "lookup without keys" "usage_err 'lookup takes at least one KEY' lookup"
check "unknown command" "usage_err \"unknown command 'pong'\" pong"
check "--prometheus belongs to stats" "usage_err 'option of stats' ping --prometheus"
check "--once belongs to top" "usage_err 'options of top' stats --once"
check "top: --once or -n" "usage_err 'not both' top --once -n 3"
check "top -n 0 refused" "usage_err 'out of range' top -n 0"
check "top --interval-ms 5 refused" "usage_err 'out of range' top --interval-ms 5"
check "--opt=value form is checked too" "usage_err 'not a number' --timeout-ms=abc ping"

# A failed connection names the socket tried (--socket, else KVTIER_SOCKET) and the reason.
"$B/kvtier" --socket "$D/none.sock" ping 2>"$D/err"; rc=$?
check "no socket: names it, says why and what to check" \
    "[ $rc -eq 1 ] && grep -qF 'cannot connect to $D/none.sock: No such file or directory (is kvtierd running? --socket or KVTIER_SOCKET)' '$D/err'"
KVTIER_SOCKET="$D/env.sock" "$B/kvtier" config list 2>"$D/err"; rc=$?
check "the KVTIER_SOCKET socket is named" "[ $rc -eq 1 ] && grep -qF 'cannot connect to $D/env.sock:' '$D/err'"
touch "$D/plain"
"$B/kvtier" --socket "$D/plain" top --once 2>"$D/err"; rc=$?
check "a file that is not a socket is named as such" \
    "[ $rc -eq 1 ] && grep -qF '$D/plain: Socket operation on non-socket' '$D/err'"
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
# config list: exactly the keys of the daemon's table, in its order, with the values it runs with.
$K config list --json >"$D/list.json"
check "config list --json: every key of --dump-config, same order and values" "python3 - '$D/list.json' <<'PY'
import json, re, subprocess, sys
items = json.load(open(sys.argv[1]))
dump = subprocess.run(['$B/kvtierd', '--socket=$S', '--data-dir=$D/data', '--cpu.arena_bytes=64M',
                       '--dump-config'], capture_output=True, text=True, check=True).stdout
want = [tuple(m.groups()) for m in re.finditer(r'^([a-z_.]+) = (.*)$', dump, re.M)]
got = [(i['key'], i['value']) for i in items]
# log_level was just set to debug at run time; --dump-config shows the start value.
want = [(k, 'debug' if k == 'log_level' else v) for k, v in want]
assert got == want, [x for x in zip(got, want) if x[0] != x[1]][:3]
by = {i['key']: i for i in items}
assert by['log_level']['runtime'] and by['log_level']['admin'], by['log_level']
assert not by['cpu.arena_bytes']['runtime'] and by['cpu.arena_bytes']['default'] == '1G'
assert all(i['help'] for i in items)
PY"
$K config list >"$D/list.txt"
check "config list: key = value, help and default of each" \
    "grep -q '^cpu.arena_bytes = 67108864\$' '$D/list.txt' && grep -q '^    Size of the CPU tier' '$D/list.txt' && grep -q '^    default: 1G\$' '$D/list.txt' && grep -q '^log_level = debug   \[runtime, admin\]\$' '$D/list.txt'"
check "config list: one entry per key" "[ \$(grep -c '^    default: ' '$D/list.txt') -eq \$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' '$D/list.json') ]"

# top: one frame over a 1 s interval in which exactly 5 Gets (hits) were made.
$K top --once --json >"$D/top.json" &
TOP=$!
sleep 0.3
for _ in 1 2 3 4 5; do $K get $key "$D/out" 2>/dev/null; done
wait $TOP; rc=$?
check "top --once --json: the cpu tier with its capacity and chunk, 5 gets in the interval, hit ratio 1" "[ $rc -eq 0 ] && python3 - '$D/top.json' <<'PY'
import json, sys
f = json.loads(open(sys.argv[1]).read())
cpu = [t for t in f['tiers'] if t['tier'] == 'cpu'][0]
assert cpu['bytes_capacity'] == 64 << 20 and cpu['chunks'] == 1, cpu
assert 0.9 <= f['interval_s'] <= 1.5, f
assert round(f['ops_per_s']['gets'] * f['interval_s']) == 5, f
assert round(cpu['hits_per_s'] * f['interval_s']) == 5 and cpu['hit_ratio'] == 1.0, cpu
assert not cpu['failed'] and f['socket'] == '$S'
PY"
$K top -n 2 --interval-ms 100 >"$D/top.txt"; rc=$?
check "top -n 2: two frames, a row per tier, no escape codes when not a terminal" \
    "[ $rc -eq 0 ] && [ \$(grep -c '^TIER ' '$D/top.txt') -eq 2 ] && [ \$(grep -c '^cpu ' '$D/top.txt') -eq 2 ] && ! grep -q \$'\\033' '$D/top.txt'"
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

# The live top keeps going across a daemon restart: it says the daemon is unreachable, then
# shows frames again once the library has reconnected.
$B/kvtierd --socket="$S" --data-dir="$D/data" --cpu.arena_bytes=64M 2>>"$D/log" &
PID=$!
for _ in $(seq 100); do $K ping >/dev/null 2>&1 && break; sleep 0.05; done
$K top --interval-ms 100 >"$D/live.txt" 2>&1 &
TOP=$!
sleep 0.5
kill -TERM $PID; wait $PID
sleep 0.5
# (Restarted with a tenants map longer than 512 bytes, for config list below.)
tenants=$(for i in $(seq 60); do printf 'team%02d=uid:%d;' $i $((1000 + i)); done)
tenants=${tenants%;}
$B/kvtierd --socket="$S" --data-dir="$D/data" --cpu.arena_bytes=64M --tenants="$tenants" 2>>"$D/log" &
PID=$!
for _ in $(seq 100); do $K ping >/dev/null 2>&1 && break; sleep 0.05; done
sleep 0.5
kill $TOP; wait $TOP 2>/dev/null
check "live top: frames, then 'retrying' while the daemon is down, then frames again" \
    "awk '/^TIER /{ if (state == 0) state = 1; if (state == 2) state = 3 } /retrying every/{ if (state == 1) state = 2 } END { exit state != 3 }' '$D/live.txt'" ||
    tail -20 "$D/live.txt"
check "config list shows a ${#tenants}-byte value whole" \
    "$K config list --json | python3 -c 'import json,sys; d={i[\"key\"]: i[\"value\"] for i in json.load(sys.stdin)}; assert d[\"tenants\"] == sys.argv[1]' '$tenants'"
check "config get shows it whole too" \
    "[ \"\$($K config get tenants)\" = 'tenants = $tenants' ]"
kill -TERM $PID; wait $PID
PID=

# top marks a configured tier that is not serving: the disk tier where io_uring is refused.
if [ -x "$B/tests/tools/no_io_uring" ]; then
    "$B/tests/tools/no_io_uring" $B/kvtierd --socket="$S" --data-dir="$D/data2" \
        --cpu.arena_bytes=64M --disk.bytes=64M 2>>"$D/log" &
    PID=$!
    for _ in $(seq 100); do $K ping >/dev/null 2>&1 && break; sleep 0.05; done
    check "top: a disk tier refused io_uring is shown off" \
        "$K top --once --interval-ms 100 | grep -q '^disk .* off\$' && $K top --once --json --interval-ms 100 | python3 -c 'import json,sys; t={x[\"tier\"]: x for x in json.load(sys.stdin)[\"tiers\"]}; assert t[\"disk\"][\"serving\"] is False and t[\"cpu\"][\"serving\"] is True'"
    kill -TERM $PID; wait $PID
    PID=
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
