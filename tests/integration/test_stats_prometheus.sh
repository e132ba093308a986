#!/usr/bin/env bash
# `kvtier stats --prometheus` through a real kvtierd with a disk tier, read back with the official
# Prometheus Python parser (prometheus_client.parser): every stat is one series of a family with
# HELP and the right TYPE (cpu.X and disk.X the series tier="cpu"/"disk" of kvtier_X, tenant.T.X
# the series tenant="T" of kvtier_tenant_X, docs/metrics.md), counters carry _total, histograms
# have cumulative buckets ending in +Inf whose top equals _count, and the Put/Get/Lookup
# histograms count exactly the requests the CLI sent. The table and --json show the same types
# and help.
set -u
B=${KVT_BUILD:-build}
D=$(mktemp -d /tmp/kvtier-prom-XXXXXX)
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT

if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    pip install --quiet prometheus-client >/dev/null 2>&1 ||
        pip install --quiet --break-system-packages prometheus-client >/dev/null 2>&1
fi
python3 -c 'import prometheus_client' || { echo "FAIL prometheus-client not installable"; exit 1; }

S="$D/kvtier.sock"
"$B/kvtierd" --socket="$S" --data-dir="$D/data" --cpu.arena_bytes=64M --disk.bytes=16M \
    --disk.staging_bytes=1M --disk.object_bytes_max=256K 2>"$D/log" &
PID=$!
K="$B/kvtier --socket $S"
for _ in $(seq 100); do $K ping >/dev/null 2>&1 && break; sleep 0.05; done

# 3 Puts, 4 Gets (one a miss), 2 Lookups.
keys=()
for i in 1 2 3; do
    head -c 8192 /dev/urandom >"$D/f$i"
    keys+=("$($K put "$D/f$i")") || exit 1
done
for k in "${keys[@]}"; do $K get "$k" "$D/out" 2>/dev/null || exit 1; done
$K get 000000000000000000000000000000aa "$D/out" 2>/dev/null && { echo "FAIL miss served"; exit 1; }
$K lookup "${keys[@]}" >/dev/null || exit 1
$K lookup "${keys[0]}" >/dev/null || exit 1

$K stats --prometheus >"$D/prom" || { echo "FAIL stats --prometheus"; exit 1; }
$K stats --json >"$D/json" || { echo "FAIL stats --json"; exit 1; }
$K stats >"$D/table" || { echo "FAIL stats"; exit 1; }

python3 - "$D/prom" "$D/json" "$D/table" <<'PY'
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
meta = json.load(open(sys.argv[2]))
table = open(sys.argv[3]).read().splitlines()[1:]
stats = meta.pop("_meta")
fams = {f.name: f for f in text_string_to_metric_families(text)}
fails = []
# Each CLI call is a connection and a request of its own: these change between the two reads.
moving = {"connections_accepted", "requests", "uptime_ms"}
def check(cond, what):
    if not cond:
        fails.append(what)

def family(name):
    """The family and labels a stat becomes (common/prom.h)."""
    for tier in ("cpu", "disk"):
        if name.startswith(tier + "."):
            return "kvtier_" + name[len(tier) + 1:], {"tier": tier}
    if name.startswith("tenant.") and name.count(".") >= 2:
        last = name.rindex(".")
        return "kvtier_tenant_" + name[last + 1:], {"tenant": name[7:last]}
    return "kvtier_" + name.replace(".", "_"), {}

first_help = {}
series = set()
for name, m in stats.items():
    prom, labels = family(name)
    first_help.setdefault(prom, m["help"])
    key = (prom, tuple(sorted(labels.items())))
    check(key not in series, "%s: series %s given twice" % (name, key))
    series.add(key)
check(len(fams) == len(first_help), "families %d != %d" % (len(fams), len(first_help)))
check(len(fams) < len(stats), "no stats of two tiers share a family")
check(any(family(n)[1].get("tenant") == "uid-%d" % __import__("os").getuid() for n in stats),
      "no series of this tenant")
for name, m in stats.items():
    prom, labels = family(name)
    f = fams.get(prom)
    if f is None:
        fails.append("no family for %s (%s)" % (name, prom))
        continue
    check(f.type == m["type"], "%s: type %s, want %s" % (name, f.type, m["type"]))
    check(f.documentation == first_help[prom] and m["help"], "%s: help %r" % (name, f.documentation))
    mine = [s for s in f.samples if {k: v for k, v in s.labels.items() if k != "le"} == labels]
    if m["type"] == "counter":
        total = [s for s in mine if s.name == prom + "_total"]
        check(len(total) == 1, "%s: no single _total sample" % name)
        check(name in moving or (total and total[0].value == meta[name]), "%s: value" % name)
    elif m["type"] == "gauge":
        check(len(mine) == 1, "%s: %d samples" % (name, len(mine)))
        check(name in moving or (mine and mine[0].value == meta[name]), "%s: value" % name)
    else:
        h = meta[name]
        buckets = [s for s in mine if s.name == prom + "_bucket"]
        count = [s.value for s in mine if s.name == prom + "_count"]
        total = [s.value for s in mine if s.name == prom + "_sum"]
        check(buckets and buckets[-1].labels["le"] == "+Inf", "%s: last bucket not +Inf" % name)
        vals = [s.value for s in buckets]
        check(vals == sorted(vals), "%s: buckets not cumulative" % name)
        check(count == [h["count"]] and vals[-1] == h["count"], "%s: count" % name)
        check(total == [h["sum"]], "%s: sum" % name)
        check(len(buckets) == len(h["buckets"]), "%s: bucket count" % name)
        les = [float(s.labels["le"]) for s in buckets]
        check(les == sorted(les) and math.isinf(les[-1]), "%s: le order" % name)
    row = [l for l in table if l.split()[:1] == [name]]
    check(len(row) == 1 and row[0].split()[1] == m["type"] and row[0].endswith(m["help"]),
          "%s: table row %r" % (name, row))

want = {"put_latency_us": 3, "get_latency_us": 4, "lookup_latency_us": 2}
for name, n in want.items():
    check(meta[name]["count"] == n, "%s count %s, want %d" % (name, meta[name]["count"], n))
check(meta["puts"] == 3, "puts %s" % meta["puts"])
for f in fails:
    print("FAIL", f)
print("ok   %d families parsed, %d stats checked" % (len(fams), len(stats)) if not fails else "")
sys.exit(1 if fails else 0)
PY
rc=$?
kill "$PID" && wait "$PID"
PID=
exit $rc
