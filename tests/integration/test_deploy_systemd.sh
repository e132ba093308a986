#!/usr/bin/env bash
# deploy/kvtierd.service: `systemd-analyze security --offline` scores it at most 3.0 and
# `systemd-analyze verify` finds nothing to say about it (skipped without systemd-analyze); the
# paths the unit hands the daemon are the ones it lets it write; and kvtierd runs under an
# emulation of the unit's sandbox: a private mount namespace with every file system read-only
# except the unit's RuntimeDirectory/StateDirectory and a private /tmp, an unprivileged uid with
# no capabilities and no_new_privs, the unit's LimitMEMLOCK and LimitNOFILE. There the daemon
# starts with the disk tier (registered buffers under that memlock limit), stores a chunk
# write-through, restarts, and serves it back from disk; a client of another uid reaches the
# socket when it is in the daemon's group and is refused when not. Under strace, every system
# call it made must be in the unit's SystemCallFilter and every socket it opened in
# RestrictAddressFamilies. systemd itself (PID 1) does not run here, so the unit's own seccomp
# and namespace setup is not what is tested: the sandbox part needs root, unshare and setpriv,
# and is skipped (said so) without them.
set -u
B=${KVT_BUILD:-build}
B=$(cd "$B" && pwd)
UNIT=deploy/kvtierd.service
D=$(mktemp -d /tmp/kvtier-unit-XXXXXX)
chmod 0755 "$D"
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
skip() { echo "skip $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; return 1; fi; }
cleanup() { [ -n "${KVT_KEEP:-}" ] || rm -rf "$D"; }
trap cleanup EXIT

# A value of the unit: the last assignment of KEY in it.
unit_get() { sed -n "s/^$1=//p" "$UNIT" | tail -1; }

if command -v systemd-analyze >/dev/null; then
    exposure() { # UNIT-FILE: prints the overall exposure level, e.g. 1.2
        systemd-analyze security --offline=yes --no-pager "$1" 2>/dev/null |
            sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p'
    }
    score=$(exposure "$UNIT")
    echo "     exposure of $UNIT: ${score:-none}"
    check "systemd-analyze security: exposure <= 3.0" \
        "[ -n '$score' ] && awk 'BEGIN { exit !($score <= 3.0) }'"
    # The same measure sees an unhardened unit as unsafe: the check above can fail.
    printf '[Service]\nExecStart=/bin/true\n' >"$D/plain.service"
    plain=$(exposure "$D/plain.service")
    check "an unhardened unit scores above 3.0 (${plain:-none})" \
        "[ -n '$plain' ] && awk 'BEGIN { exit !($plain > 3.0) }'"
    # verify checks the binary exists: point ExecStart at the one just built.
    sed "s|^ExecStart=/usr/local/bin/kvtierd|ExecStart=$B/kvtierd|" "$UNIT" >"$D/kvtierd.service"
    systemd-analyze verify "$D/kvtierd.service" >"$D/verify" 2>&1
    rc=$?
    check "systemd-analyze verify: clean" "[ $rc -eq 0 ] && [ ! -s '$D/verify' ]" ||
        cat "$D/verify"
    printf '[Service]\nExecStart=/bin/true\nProtectSystem=bogus\n' >"$D/bad.service"
    check "systemd-analyze verify reports a bad value" \
        "systemd-analyze verify '$D/bad.service' 2>&1 | grep -q 'ProtectSystem\|protect system'"
else
    skip "systemd-analyze not installed: the unit's score and syntax are not checked"
fi

# The unit's writable directories, and the paths its command line gives the daemon.
exec_line=$(unit_get ExecStart)
arg() { echo "$exec_line" | tr ' ' '\n' | sed -n "s/^--$1=//p"; }
sock=$(arg socket)
data=$(arg data_dir)
check "User= is not root" "[ -n '$(unit_get User)' ] && [ '$(unit_get User)' != root ]"
check "the socket is in RuntimeDirectory" "[ '$(dirname "$sock")' = /run/$(unit_get RuntimeDirectory) ]"
check "data_dir is StateDirectory" "[ '$data' = /var/lib/$(unit_get StateDirectory) ]"
check "ProtectSystem=strict" "[ '$(unit_get ProtectSystem)' = strict ]"
check "CapabilityBoundingSet empty" "grep -qx 'CapabilityBoundingSet=' $UNIT"
check "kvtier.sysusers creates the unit's user" \
    "grep -Eq '^u +$(unit_get User) ' deploy/kvtier.sysusers"
# The shipped config must not send writes elsewhere: log_file under LogsDirectory or stderr,
# disk.paths empty (data_dir) or under StateDirectory.
logf=$(sed -n 's/^log_file = //p' deploy/kvtier.conf)
dpaths=$(sed -n 's/^disk.paths = //p' deploy/kvtier.conf)
check "kvtier.conf log_file is stderr or in LogsDirectory" \
    "[ -z '$logf' ] || [ '${logf#/var/log/$(unit_get LogsDirectory)/}' != '$logf' ]"
check "kvtier.conf disk.paths is data_dir" "[ -z '$dpaths' ]"
# LimitMEMLOCK covers the registered staging buffers of the shipped config, plus 1M for rings.
staging_conf=$(numfmt --from=iec "$(sed -n 's/^disk.staging_bytes = //p' deploy/kvtier.conf)")
check "LimitMEMLOCK >= disk.staging_bytes + 1M" \
    "[ $(numfmt --from=iec "$(unit_get LimitMEMLOCK)") -ge $((staging_conf + 1048576)) ]"

# ---- the sandbox, emulated ------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null || ! command -v setpriv >/dev/null ||
    ! unshare -m true 2>/dev/null; then
    skip "sandbox emulation needs root, unshare and setpriv"
    echo "$pass passed, $fail failed"
    [ $fail -eq 0 ]
    exit
fi
uid=61234 # no such user: the daemon needs no passwd entry
memlock=$(numfmt --from=iec "$(unit_get LimitMEMLOCK)")
nofile=$(unit_get LimitNOFILE)
# Without CAP_SYS_RESOURCE the hard limits cannot be raised to the unit's: then the sandbox runs
# under the hard limit, with staging buffers that fit it (and says so).
staging=16M
hard_kib=$(ulimit -Hl)
if [ "$hard_kib" != unlimited ] && [ $((hard_kib * 1024)) -lt "$memlock" ]; then
    memlock=$((hard_kib * 1024))
    staging=$((memlock / 2))
    echo "     memlock hard limit here is $memlock bytes, below the unit's: staging $staging bytes"
fi
[ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$nofile" ] && nofile=$(ulimit -Hn)
strace_cmd=""
# A sanitizer build makes calls of its own runtime (make asan): the filter is checked against
# the production build only.
sanitized=0
nm "$B/kvtierd" 2>/dev/null | grep -q '__asan_init\|__ubsan_handle' && sanitized=1
command -v strace >/dev/null && [ $sanitized -eq 0 ] && strace_cmd="strace -f -qq -o /tmp/st/trace.\$\$"
mkdir -p "$D/varlib" "$D/out/t" "$D/out/st"
chown $uid "$D/out/st" # strace runs as the daemon's uid
chmod 1777 "$D/out"
head -c 16384 /dev/urandom >"$D/out/t/blob"
# The daemon's command line is the unit's, with the built binary and the repository's config,
# both seen in the sandbox through read-only binds under its /run (the checkout may be under
# /tmp, which the sandbox replaces).
SB=/run/kvtier-test-bin
SR=/run/kvtier-test-src
daemon="${exec_line/\/usr\/local\/bin\/kvtierd/$SB/kvtierd}"
daemon="${daemon/\/etc\/kvtier\/kvtier.conf/$SR/deploy/kvtier.conf}"
daemon="$daemon --cpu.arena_bytes=64M --disk.bytes=64M --tier.write_policy=write-through"
daemon="$daemon --disk.staging_bytes=$staging --disk.object_bytes_max=1M"
cat >"$D/sandbox.sh" <<EOF
set -eu
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir $SB $SR
mount --bind "$B" $SB
mount --bind "$PWD" $SR
mkdir -m $(unit_get RuntimeDirectoryMode) $(dirname "$sock")
mount --bind $D/varlib /var/lib
mkdir -m $(unit_get StateDirectoryMode) $data
chown $uid:$uid $(dirname "$sock") $data
mount --bind $D/out /tmp
# ProtectSystem=strict: every mount read-only but the API file systems and the ones above.
awk '{ print \$5 }' /proc/self/mountinfo | while read -r mp; do
    case "\$mp" in /proc*|/sys*|/dev*|/run|/var/lib|/tmp) continue ;; esac
    mount -o remount,bind,ro "\$mp" 2>/dev/null || true
done
touch /etc/.kvtier-ro-probe 2>/dev/null && { echo "root file system still writable"; exit 3; }
# Clients trust a daemon of another uid only when told to (include/kvtier/kvtier.h, "Trust").
export KVTIER_DAEMON_UID=$uid
pid=
# strace -o blocks fatal signals: SIGTERM goes to the daemon, strace's child.
daemon_pid() { if [ -n "$strace_cmd" ]; then pgrep -P \$pid; else echo \$pid; fi; }
stop() { kill -\$1 \$(daemon_pid) 2>/dev/null; wait \$pid; rc=\$?; pid=; return \$rc; }
trap '[ -z "\$pid" ] || stop KILL' EXIT
run() { # the daemon as the unit runs it, in the background; its pid in \$pid
    prlimit --memlock=$memlock --nofile=$nofile \
        setpriv --reuid=$uid --regid=$uid --clear-groups --no-new-privs \
        --inh-caps=-all --bounding-set=-all $strace_cmd $daemon 2>>/tmp/t/log &
    pid=\$!
    for _ in \$(seq 100); do $SB/kvtier --socket $sock ping >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "daemon did not start"; cat /tmp/t/log; return 1
}
run
key=\$($SB/kvtier --socket $sock put /tmp/t/blob)
$SB/kvtier --socket $sock stats --json >/tmp/t/stats1
# Clients of other uids: one in the daemon's group reaches the socket, one outside it does not.
setpriv --reuid=61235 --regid=61235 --groups=$uid $SB/kvtier --socket $sock ping >/tmp/t/ping_group 2>&1 || true
setpriv --reuid=61235 --regid=61235 --clear-groups $SB/kvtier --socket $sock ping >/tmp/t/ping_other 2>&1 || true
stop TERM
run
$SB/kvtier --socket $sock get \$key /tmp/t/back 2>/tmp/t/get
stop TERM
# Everything else is read-only; of the writable places, the daemon may use only its own.
find /run /var/lib /tmp /dev/shm -newer /tmp/t/blob ! -type d ! -path '/tmp/t/*' ! -path '/tmp/st/*' ! -path '$SB/*' ! -path '$SR/*' >/tmp/t/written
EOF
unshare -m sh "$D/sandbox.sh" >"$D/sandbox.out" 2>&1
rc=$?
check "kvtierd starts, serves and stops in the sandbox" "[ $rc -eq 0 ]" ||
    { cat "$D/sandbox.out"; tail -20 "$D/out/t/log" 2>/dev/null; }
check "disk tier came up under a memlock limit of $memlock bytes (registered buffers)" \
    "grep -q 'disk tier ready' '$D/out/t/log' && ! grep -q 'io_uring_register' '$D/out/t/log'"
check "a client of another uid in the daemon's group connects" "grep -q pong '$D/out/t/ping_group'" ||
    cat "$D/out/t/ping_group"
check "a client outside the group is refused by the socket's permissions" \
    "grep -q 'Permission denied' '$D/out/t/ping_other'" || cat "$D/out/t/ping_other"
check "the chunk went to disk" \
    "python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d[\"disk.objects\"]==1' '$D/out/t/stats1'"
check "after a restart it is read back from disk, same bytes" \
    "cmp -s '$D/out/t/blob' '$D/out/t/back' && grep -q 'disk tier' '$D/out/t/get'"
check "the daemon wrote only in $(dirname "$sock") and $data" \
    "grep -qx '$data/disk.0' '$D/out/t/written' && ! grep -v '^$(dirname "$sock")/\|^$data/' '$D/out/t/written'" ||
    cat "$D/out/t/written"
cat "$D"/out/st/trace.* >"$D/out/t/trace" 2>/dev/null
if [ -n "$strace_cmd" ] && [ -s "$D/out/t/trace" ] && command -v systemd-analyze >/dev/null; then
    # Every system call the daemon made, against the unit's allow list expanded by systemd.
    allowed() { # expands @groups recursively
        systemd-analyze syscall-filter --no-pager "$@" 2>/dev/null | sed 's/#.*//' | awk 'NF' |
            while read -r s; do case "$s" in @*) [ "$s" != "$1" ] && allowed "$s" ;; *) echo "$s" ;; esac; done
    }
    { for f in $(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$UNIT"); do
        case "$f" in @*) allowed "$f" ;; *) echo "$f" ;; esac
    done; } | sort -u >"$D/allowed"
    { for f in $(sed -n 's/^SystemCallFilter=~//p' "$UNIT"); do allowed "$f"; done; } | sort -u >"$D/denied"
    sed -n 's/^[0-9]* *\([a-z0-9_]*\)(.*/\1/p' "$D/out/t/trace" | sort -u >"$D/used"
    missing=$(comm -23 "$D/used" "$D/allowed" | tr '\n' ' ')
    denied=$(comm -12 "$D/used" "$D/denied" | tr '\n' ' ')
    echo "     $(wc -l <"$D/used") distinct system calls used"
    check "every system call is in SystemCallFilter (${missing:-all})" "[ -z '$missing' ]"
    check "none is in the denied sets (${denied:-none})" "[ -z '$denied' ]"
    check "io_uring was used (and is allowed)" "grep -qx io_uring_setup '$D/used'"
    fams=$(sed -n 's/.*socket(\(AF_[A-Z0-9]*\).*/\1/p' "$D/out/t/trace" | sort -u | tr '\n' ' ')
    ok_fams=$(unit_get RestrictAddressFamilies)
    stray=""
    for f in $fams; do case " $ok_fams " in *" $f "*) ;; *) stray="$stray $f" ;; esac; done
    check "sockets only of RestrictAddressFamilies (${fams:-none})" "[ -z '$stray' ]"
    check "no writable and executable mapping (MemoryDenyWriteExecute)" \
        "! grep -E '(mmap|mprotect)\\(' '$D/out/t/trace' | grep -q 'PROT_WRITE|PROT_EXEC'"
else
    skip "strace or systemd-analyze missing, or a sanitizer build: system calls not checked"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
