#!/usr/bin/env bash
# The metrics endpoint and the disk tier's graceful degradation, through real kvtierds scraped
# with curl and parsed with the Prometheus Python parser (prometheus_client.parser):
#   - off by default: no listening TCP socket; a non-loopback or malformed metrics.listen is
#     refused at start with a clear error;
#   - /metrics: HELP and TYPE for every family, tier="cpu"/"disk" series of one family, tenant
#     series per tenant, counters and histograms that move by exactly the requests sent,
#     cumulative buckets; /healthz 200 "ok"; 404 elsewhere; a Unix socket endpoint;
#   - bad HTTP (garbage, a 40 KiB header, POST, scrapers past metrics.connections_max, a scraper
#     that never finishes its request) gets an error or waits, and the daemon keeps serving;
#   - /healthz 503 with the reason once the disk tier latched failed (injected EIO);
#   - io_uring refused for real by a seccomp filter (tests/tools/no_io_uring): the daemon starts
#     on DRAM only and says so in the log, the stats and /healthz; disk.required=true refuses;
#   - RLIMIT_MEMLOCK of 64 KiB: registered buffers refused, the disk tier runs on unregistered
#     ones (disk.registered_buffers 0) and a chunk goes to disk and back intact.
set -u
B=${KVT_BUILD:-build}
D=$(mktemp -d /tmp/kvtier-metrics-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT
fail() { echo "FAIL $*"; [ -f "$D/log" ] && tail -5 "$D/log"; exit 1; }

if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    pip install --quiet prometheus-client >/dev/null 2>&1 ||
        pip install --quiet --break-system-packages prometheus-client >/dev/null 2>&1
fi
python3 -c 'import prometheus_client' || fail "prometheus-client not installable"
command -v curl >/dev/null || fail "curl missing"

DISK=(--disk.bytes=16M --disk.staging_bytes=1M --disk.object_bytes_max=256K)

# start NAME ARGS...: starts kvtierd (under $WRAP when set) with its log in $D/NAME.log, waits
# for its socket; PID and PORT (the metrics port from the log, when any) are set.
start() {
    local name=$1
    shift
    S="$D/$name.sock"
    ${WRAP:-} "$B/kvtierd" --socket="$S" --data-dir="$D/$name.data" --cpu.arena_bytes=64M \
        "$@" 2>"$D/$name.log" &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 100); do "$B/kvtier" --socket "$S" ping >/dev/null 2>&1 && break; sleep 0.05; done
    "$B/kvtier" --socket "$S" ping >/dev/null 2>&1 || { cat "$D/$name.log"; fail "$name: no daemon"; }
    PORT=$(grep -o 'metrics listening on 127.0.0.1:[0-9]*' "$D/$name.log" | grep -o '[0-9]*$')
}
stop() { kill "$PID" && wait "$PID" || fail "kvtierd exited with an error"; }
K() { "$B/kvtier" --socket "$S" "$@"; }

# ---- off by default; refused addresses -----------------------------------------------------
start off "${DISK[@]}"
python3 - "$PID" <<'PY' || fail "metrics off by default: a TCP socket listens"
import os, sys
pid = sys.argv[1]
inodes = set()
for fd in os.listdir("/proc/%s/fd" % pid):
    t = os.readlink("/proc/%s/fd/%s" % (pid, fd))
    if t.startswith("socket:["):
        inodes.add(t[8:-1])
for table in ("tcp", "tcp6"):
    for line in open("/proc/%s/net/%s" % (pid, table)).readlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:
            print("listening:", f[1]); sys.exit(1)
PY
grep -q "metrics listening" "$D/off.log" && fail "metrics endpoint started without metrics.listen"
stop
for bad in 0.0.0.0:9464 "[::]:9464" 10.1.2.3:9464 nohost.example:1 127.0.0.1:99999 "127.0.0.1:" \
    unix:relative; do
    out=$("$B/kvtierd" --socket="$D/bad.sock" --data-dir="$D/bad" --cpu.arena_bytes=64M \
        --metrics.listen="$bad" 2>&1) && fail "metrics.listen=$bad accepted"
    echo "$out" | grep -q "metrics.listen" || fail "metrics.listen=$bad: unclear error: $out"
done
"$B/kvtierd" --socket="$D/bad.sock" --data-dir="$D/bad" --cpu.arena_bytes=64M \
    --metrics.listen=0.0.0.0:9464 2>&1 | grep -q "metrics.allow_remote" ||
    fail "the refusal of a remote address does not name metrics.allow_remote"
echo "ok   off by default, bad addresses refused"

# ---- scrapes -------------------------------------------------------------------------------
start main "${DISK[@]}" --metrics.listen=127.0.0.1:0 --metrics.connections_max=4 \
    --metrics.idle_timeout_s=1 \
    --fault_injection=true --disk.io_errors_max=2 --tier.write_policy=write-through \
    --tenants="alpha=uid:$(id -u);beta=uid:$(id -u);_other=uid:$(id -u)"
[ -n "$PORT" ] || fail "no metrics port in the log"
M="http://127.0.0.1:$PORT"
[ "$(curl -s -o "$D/h" -w '%{http_code}' "$M/healthz")" = 200 ] && [ "$(cat "$D/h")" = ok ] ||
    fail "healthz not 200 ok: $(cat "$D/h")"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$M/nothing")" = 404 ] || fail "no 404"
curl -sf "$M/metrics" >"$D/m1" || fail "scrape 1"
for i in 1 2 3; do head -c 8192 /dev/urandom >"$D/f$i"; done
ka=$(K --tenant alpha put "$D/f1") && kb=$(K --tenant alpha put "$D/f2") &&
    kc=$(K --tenant beta put "$D/f3") || fail "puts"
# A tenant that calls itself "_other" shares the overflow series instead of doubling it.
K --tenant _other put "$D/f3" >/dev/null || fail "put as _other"
K --tenant alpha get "$ka" "$D/o" >/dev/null 2>&1 && K --tenant alpha get "$kb" "$D/o" >/dev/null 2>&1 ||
    fail "gets"
K --tenant beta get 000000000000000000000000000000aa "$D/o" 2>/dev/null && fail "miss served"
curl -sf "$M/metrics" >"$D/m2" || fail "scrape 2"
curl -sf -H 'Accept: text/plain' "$M/metrics" >"$D/m3" || fail "scrape 3"
python3 - "$D/m1" "$D/m2" "$D/m3" <<'PY' || fail "exposition"
import math, sys
from prometheus_client.parser import text_string_to_metric_families as parse
fails = []
def check(c, what):
    if not c:
        fails.append(what)
texts = [open(p).read() for p in sys.argv[1:]]
f1, f2, f3 = [{f.name: f for f in parse(t)} for t in texts]
def val(fams, name, sample=None, **labels):
    f = fams[name]
    for s in f.samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, labels))
for name, f in f2.items():
    check(f.documentation, "%s: no HELP" % name)
    check(f.type in ("counter", "gauge", "histogram"), "%s: type %s" % (name, f.type))
    check(texts[1].count("# TYPE %s%s " % (name, "_total" if f.type == "counter" else "")) == 1,
          "%s: TYPE not once" % name)
    if f.type == "histogram":
        groups = {}
        for s in f.samples:
            if s.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                groups.setdefault(key, []).append(s)
        for key, bs in groups.items():
            vals = [s.value for s in bs]
            les = [float(s.labels["le"]) for s in bs]
            check(vals == sorted(vals) and les == sorted(les) and math.isinf(les[-1]),
                  "%s%s: buckets not cumulative up to +Inf" % (name, key))
            count = val(f2, name, name + "_count", **dict(key))
            check(vals[-1] == count, "%s%s: +Inf %s != count %s" % (name, key, vals[-1], count))
# One family for a quantity of both tiers.
for q in ("kvtier_hits", "kvtier_misses", "kvtier_bytes_used", "kvtier_objects", "kvtier_failed"):
    tiers = sorted(s.labels.get("tier") for s in f2[q].samples)
    check(tiers == ["cpu", "disk"], "%s: tiers %s" % (q, tiers))
check(f2["kvtier_read_latency_us"].type == "histogram", "disk read latency not a histogram")
check(f2["kvtier_serving"].type == "gauge" and val(f2, "kvtier_serving", tier="disk") == 1,
      "disk not serving")
# Counters move by exactly what was sent.
d = lambda name, sample=None, **l: val(f2, name, sample, **l) - val(f1, name, sample, **l)
tp = lambda fams, t: val(fams, "kvtier_tenant_puts", "kvtier_tenant_puts_total", tenant=t)
check(d("kvtier_puts", "kvtier_puts_total") == 4, "puts moved by %s" % d("kvtier_puts", "kvtier_puts_total"))
check(tp(f2, "_other") == 1, "_other puts")
check(d("kvtier_get_hits", "kvtier_get_hits_total") == 2, "get_hits")
check(d("kvtier_get_misses", "kvtier_get_misses_total") == 1, "get_misses")
check(d("kvtier_put_latency_us", "kvtier_put_latency_us_count") == 4, "put latency count")
check(d("kvtier_writes", "kvtier_writes_total", tier="disk") == 4, "disk writes (write-through)")
check(tp(f2, "alpha") == 2 and tp(f2, "beta") == 1, "tenant puts %s %s" % (tp(f2, "alpha"), tp(f2, "beta")))
check(val(f2, "kvtier_tenant_put_bytes", "kvtier_tenant_put_bytes_total", tenant="alpha") == 16384,
      "alpha put bytes")
check(val(f2, "kvtier_tenant_get_misses", "kvtier_tenant_get_misses_total", tenant="beta") == 1,
      "beta misses")
check(val(f2, "kvtier_tenant_objects", tenant="alpha") == 2, "alpha objects")
check(val(f3, "kvtier_metrics_scrapes", "kvtier_metrics_scrapes_total") ==
      val(f2, "kvtier_metrics_scrapes", "kvtier_metrics_scrapes_total") + 1, "scrapes counted")
for f in fails:
    print("FAIL", f)
print("ok   %d families, counters moved by the requests sent" % len(f2) if not fails else "")
sys.exit(1 if fails else 0)
PY

# ---- bad HTTP, slow scrapers, the connection limit ---------------------------------------
python3 - "$PORT" "$B/kvtier" "$S" <<'PY' || fail "bad HTTP"
import socket, subprocess, sys, time
port, cli, sock = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def raw(data, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    out = b""
    if read:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
    s.close()
    return out.split(b"\r\n", 1)[0].decode("latin-1")
def ping_ms():
    t = time.monotonic()
    subprocess.run([cli, "--socket", sock, "ping"], check=True, stdout=subprocess.DEVNULL)
    return (time.monotonic() - t) * 1000
fails = []
for what, data, want in [
        ("garbage", b"hello, this is no HTTP\r\n\r\n", ("400",)),
        ("binary", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), ("", "400")),
        ("huge header", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
         ("431", "413")),
        ("POST", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", ("405",)),
        ("PUT", b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", ("405",)),
        ("unknown path", b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", ("404", "400")),
        ("HTTP/1.0", b"GET /healthz HTTP/1.0\r\n\r\n", ("200",))]:
    t = time.monotonic()
    line = raw(data)
    code = line.split(" ")[1] if line.startswith("HTTP/1.") else ""
    if code in want and time.monotonic() - t < 4:  # an error, or closed after idle_timeout_s
        continue
    fails.append("%s: answered %r, want %s" % (what, line, want))
# Scrapers that connect and never finish a request: more than connections_max of them. The
# daemon's clients are not slowed, and once they go a scrape is answered again.
held = []
for _ in range(6):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the request never ends
    held.append(s)
time.sleep(0.2)
worst = max(ping_ms() for _ in range(5))
if worst > 1000:
    fails.append("client ping took %.0f ms while scrapers hung" % worst)
for s in held:
    s.close()
time.sleep(0.3)
line = raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
if " 200 " not in line + " ":
    fails.append("after the hung scrapers left: %r" % line)
for f in fails:
    print("FAIL", f)
print("ok   bad HTTP answered with errors, hung scrapers do not stall the daemon" if not fails else "")
sys.exit(1 if fails else 0)
PY
K ping >/dev/null || fail "daemon gone after bad HTTP"

# ---- the disk tier latches failed: /healthz 503 ---------------------------------------------
K config set disk.fault_fail_next_io 100 >/dev/null || fail "fault injection"
for i in 4 5 6 7; do head -c 8192 /dev/urandom >"$D/f$i"; K put "$D/f$i" >/dev/null 2>&1; done
code=$(curl -s -o "$D/h" -w '%{http_code}' "$M/healthz")
[ "$code" = 503 ] && grep -q "disk tier latched failed" "$D/h" ||
    fail "healthz after the latch: $code $(cat "$D/h")"
curl -s "$M/metrics" | grep -q '^kvtier_serving{tier="disk"} 0$' || fail "disk still serving"
K --tenant alpha get "$ka" "$D/o" >/dev/null 2>&1 && cmp -s "$D/o" "$D/f1" || fail "DRAM copy not served after the latch"
echo "ok   healthz 503 after the disk tier latched failed: $(cat "$D/h")"
stop

# ---- a Unix socket endpoint ----------------------------------------------------------------
start unix --metrics.listen="unix:$D/metrics.sock"
curl -sf --unix-socket "$D/metrics.sock" http://x/metrics | grep -q '^# TYPE kvtier_puts_total counter$' ||
    fail "no metrics over the Unix socket"
stop
[ -e "$D/metrics.sock" ] && fail "the metrics socket file outlived the daemon"
echo "ok   unix:/path endpoint"

# ---- io_uring refused by seccomp: DRAM only, said in the log, stats and /healthz -------------
WRAP="$B/tests/tools/no_io_uring" start nouring "${DISK[@]}" --metrics.listen=127.0.0.1:0
grep -q "disk tier OFF, running on DRAM only: the kernel refused io_uring: .*errno 1, io_uring_queue_init.*seccomp" \
    "$D/nouring.log" || fail "no clear log line: $(grep tier "$D/nouring.log")"
code=$(curl -s -o "$D/h" -w '%{http_code}' "http://127.0.0.1:$PORT/healthz")
[ "$code" = 503 ] && grep -q "disk tier not started: the kernel refused io_uring" "$D/h" ||
    fail "healthz without the disk tier: $code $(cat "$D/h")"
curl -s "http://127.0.0.1:$PORT/metrics" >"$D/m"
grep -q '^kvtier_serving{tier="disk"} 0$' "$D/m" && grep -q '^kvtier_configured{tier="disk"} 1$' "$D/m" &&
    grep -q '^kvtier_start_errno{tier="disk"} 1$' "$D/m" || fail "stats without the disk tier"
k=$(K put "$D/f1") && K get "$k" "$D/o" >/dev/null 2>&1 && cmp -s "$D/o" "$D/f1" ||
    fail "no DRAM service without the disk tier"
stop
# A profile that allows the ring but refuses io_uring_register: no buffers (said), no files, DRAM.
WRAP="$B/tests/tools/no_io_uring --register-only" start noreg "${DISK[@]}"
grep -q "io_uring_register_buffers (1048576 bytes) refused: Operation not permitted (errno 1)" \
    "$D/noreg.log" && grep -q "disk tier OFF, .*errno 1, io_uring_register_files" "$D/noreg.log" ||
    fail "register refused: $(grep -E 'disk|tier' "$D/noreg.log")"
K stats | grep -Eq '^disk.serving +gauge +0 ' || fail "register refused: disk.serving"
stop
out=$("$B/tests/tools/no_io_uring" "$B/kvtierd" --socket="$D/req.sock" --data-dir="$D/req" \
    --cpu.arena_bytes=64M "${DISK[@]}" --disk.required=true 2>&1) && fail "disk.required=true started"
echo "$out" | grep -q "io_uring_queue_init: Operation not permitted" ||
    fail "disk.required=true: unclear error: $out"
echo "ok   io_uring refused: DRAM only (log, stats, healthz 503); disk.required=true refuses"

# ---- RLIMIT_MEMLOCK 64 KiB: unregistered buffers ------------------------------------------
# Root ignores RLIMIT_MEMLOCK (CAP_IPC_LOCK): drop the capability for the daemon when it has it.
WRAP="prlimit --memlock=65536:65536"
if grep -q '^CapEff:.*[^0]' /proc/self/status && [ "$(id -u)" = 0 ]; then
    command -v setpriv >/dev/null || { echo "skip memlock: no setpriv to drop CAP_IPC_LOCK"; exit 0; }
    WRAP="setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock $WRAP"
fi
start memlock "${DISK[@]}" --metrics.listen=127.0.0.1:0 --tier.write_policy=write-through
grep -q "io_uring_register_buffers (1048576 bytes) refused: .*RLIMIT_MEMLOCK 65536 bytes.*unregistered" \
    "$D/memlock.log" || fail "no log line for the refused registration: $(grep disk "$D/memlock.log")"
[ "$(curl -s "http://127.0.0.1:$PORT/healthz")" = ok ] || fail "healthz with unregistered buffers"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -q '^kvtier_registered_buffers{tier="disk"} 0$' ||
    fail "disk.registered_buffers not 0"
head -c 131072 /dev/urandom >"$D/big"
k=$(K put "$D/big") || fail "put with unregistered buffers"
stop
start memlock "${DISK[@]}"
K get "$k" "$D/o" 2>&1 | grep -q "from the disk tier" && cmp -s "$D/o" "$D/big" ||
    fail "chunk not read back from disk with unregistered buffers"
stop
echo "ok   RLIMIT_MEMLOCK 64K: unregistered buffers, a chunk written and read back from disk"
