#!/usr/bin/env bash
# deploy/k8s/: the sidecar manifests validate against the Kubernetes schemas (kubernetes-validate
# from PyPI, strict: unknown fields are errors), for the oldest and newest versions it bundles
# that we support; an unknown field makes the check fail. The kvtierd container's memory and
# ephemeral storage are at least what the formula of deploy/README.md gives for the ConfigMap's
# kvtier.conf, which kvtierd itself loads without error; the socket path is the same in both
# containers, on the shared volume; readiness is /healthz on the port of metrics.listen (allowed
# beyond loopback), liveness and startup `kvtier ping`; the
# Localhost seccomp profile named is deploy/k8s/kvtier-seccomp.json, which allows io_uring and is
# exactly what deploy/k8s/gen-seccomp.sh derives from the systemd unit's filter. As root, the
# Pod's socket arrangement is played with the manifest's uids and groups: the engine reaches the
# daemon through the shared volume with the Pod's groups and KVTIER_DAEMON_UID, and not without.
set -u
B=${KVT_BUILD:-build}
M=deploy/k8s/kvtier-sidecar.yaml
D=$(mktemp -d /tmp/kvtier-k8s-XXXXXX)
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; return 1; fi; }
cleanup() { [ -n "${KPID:-}" ] && kill "$KPID" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    pip install --quiet kubernetes-validate >/dev/null 2>&1 ||
        pip install --quiet --break-system-packages kubernetes-validate >/dev/null 2>&1
fi
python3 -c 'import kubernetes_validate, yaml' ||
    { echo "FAIL kubernetes-validate not installable"; exit 1; }
kv() { python3 -m kubernetes_validate "$@"; }

for v in 1.29.0 1.37.0; do
    kv --strict --quiet -k $v "$M" >"$D/kv" 2>&1
    check "manifests validate (Kubernetes $v, strict)" "[ $? -eq 0 ]" || cat "$D/kv"
done
sed 's/^\( *\)readOnlyRootFilesystem: true/&\n\1readOnlyRootFileSystem: true/' "$M" >"$D/bad.yaml"
check "a misspelt field is refused" "! kv --strict --quiet '$D/bad.yaml' >/dev/null 2>&1"

# The ConfigMap's kvtier.conf, as kvtierd reads it.
python3 - "$M" "$D/kvtier.conf" <<'PY' || { echo "FAIL no kvtier.conf in the ConfigMap"; exit 1; }
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
open(sys.argv[2], "w").write(cm["data"]["kvtier.conf"])
PY
# metrics.listen comes with the metrics endpoint: until this build knows the key, it is left out
# of the load test (and said so) rather than failing it.
conf="$D/kvtier.conf"
if ! "$B/kvtierd" --dump-config | grep -q '^metrics.listen = '; then
    echo "skip metrics.listen: this build has no such key yet"
    grep -v '^ *metrics\.' "$conf" >"$D/kvtier-nometrics.conf"
    conf="$D/kvtier-nometrics.conf"
fi
"$B/kvtierd" --config "$conf" --dump-config >"$D/effective" 2>"$D/err"
check "kvtierd loads the ConfigMap's kvtier.conf" "[ $? -eq 0 ]" || cat "$D/err"
grep -q '^metrics.listen = ' "$D/effective" || echo "metrics.listen = $(sed -n 's/^ *metrics.listen = //p' "$D/kvtier.conf")" >>"$D/effective"

python3 - "$M" "$D/effective" deploy/k8s/kvtier-seccomp.json <<'PY'
import json, re, sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cfg = {}
for line in open(sys.argv[2]):
    m = re.match(r"^([a-z_.]+) = (.*)$", line.rstrip("\n"))
    if m:
        cfg[m.group(1)] = m.group(2)
profile = json.load(open(sys.argv[3]))
fails = 0

def check(what, cond):
    global fails
    print(("ok   " if cond else "FAIL ") + what)
    fails += not cond

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
def size(v):  # kvtierd sizes: digits, then K, M, G or T (powers of 1024)
    m = re.fullmatch(r"(\d+)([KMGT]?)", v)
    return int(m.group(1)) * UNITS[m.group(2)]
KQ = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2,
      "G": 1000**3, "T": 1000**4, "": 1}
def quantity(v):  # Kubernetes quantities (the suffixes used for memory and storage)
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(v))
    if not m:
        raise ValueError("not a quantity: %r" % v)
    return int(m.group(1)) * KQ[m.group(2)]

dep = [d for d in docs if d["kind"] == "Deployment"][0]
pod = dep["spec"]["template"]["spec"]
ctrs = {c["name"]: c for c in pod["containers"]}
k = ctrs["kvtierd"]
args = dict(a[2:].split("=", 1) for a in k["args"])

# Memory: the formula of deploy/README.md.
MiB = 1024**2
need = (size(cfg["cpu.arena_bytes"]) + size(cfg["disk.staging_bytes"]) +
        size(cfg["abstract.bytes_max"]) +
        128 * (int(cfg["index.max_objects"]) + int(cfg["disk.objects_max"])) + 64 * MiB)
lim = quantity(k["resources"]["limits"]["memory"])
check("memory limit %d MiB >= formula %d MiB" % (lim // MiB, need // MiB), lim >= need)
check("memory request = limit (no overcommit of the arena)",
      quantity(k["resources"]["requests"]["memory"]) == lim)
check("memory limit within 10% of the formula (sized, not guessed)", lim <= need * 1.1)
vols = {v["name"]: v for v in pod["volumes"]}
data_vol = [m["name"] for m in k["volumeMounts"] if m["mountPath"] == args["data_dir"]]
check("data_dir is a volume", len(data_vol) == 1)
disk = size(cfg["disk.bytes"])
if data_vol and "emptyDir" in vols[data_vol[0]]:
    check("data volume holds disk.bytes",
          quantity(vols[data_vol[0]]["emptyDir"].get("sizeLimit", "0")) >= disk)
    check("ephemeral-storage limit holds disk.bytes",
          quantity(k["resources"]["limits"]["ephemeral-storage"]) >= disk)

# The socket: the same path in both containers, on one shared volume.
sock = args["socket"]
env = {e["name"]: e.get("value") for e in ctrs["inference"].get("env", [])}
check("the engine's KVTIER_SOCKET is the daemon's socket", env.get("KVTIER_SOCKET") == sock)
def vol_of(c, path):
    best = None
    for m in c["volumeMounts"]:
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            best = m["name"]
    return best
check("both containers mount the socket's volume",
      vol_of(k, sock) is not None and vol_of(k, sock) == vol_of(ctrs["inference"], sock))
uid = k["securityContext"]["runAsUser"]
check("the engine trusts the daemon's uid (KVTIER_DAEMON_UID)",
      env.get("KVTIER_DAEMON_UID") == str(uid))
check("kvtierd is not root", uid != 0 and k["securityContext"]["runAsNonRoot"])
check("kvtierd's group reaches the engine", k["securityContext"]["runAsGroup"] in
      pod["securityContext"].get("supplementalGroups", []) or
      k["securityContext"]["runAsGroup"] == ctrs["inference"]["securityContext"].get("runAsGroup"))

# Probes: readiness is /healthz on the metrics port, which metrics.listen binds beyond loopback
# (the kubelet probes the Pod's address; allow_remote permits it); liveness and startup ping the
# socket (a tier that is down makes /healthz 503 while the daemon serves: no restart for that).
listen = cfg.get("metrics.listen", "")
port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
ports = {p["name"]: p["containerPort"] for p in k.get("ports", [])}
h = k.get("readinessProbe", {}).get("httpGet", {})
check("readinessProbe: GET /healthz on metrics.listen's port (%s)" % port,
      h.get("path") == "/healthz" and ports.get(h.get("port"), h.get("port")) == port)
for probe in ("livenessProbe", "startupProbe"):
    cmd = k.get(probe, {}).get("exec", {}).get("command", [])
    check("%s: kvtier ping" % probe, len(cmd) >= 2 and cmd[0].endswith("/kvtier") and
          cmd[-1] == "ping")
check("metrics.listen is not loopback-only, and allowed to be",
      not listen.startswith("127.") and not listen.startswith("[::1]") and
      cfg.get("metrics.allow_remote") == "true")

# Seccomp: the Localhost profile, allowing io_uring.
sp = k["securityContext"]["seccompProfile"]
check("seccomp profile is Localhost kvtier-seccomp.json",
      sp["type"] == "Localhost" and sp["localhostProfile"].endswith("kvtier-seccomp.json"))
names = {n for s in profile["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]}
check("the profile allows io_uring_setup/enter/register",
      {"io_uring_setup", "io_uring_enter", "io_uring_register"} <= names)
check("the profile denies by default", profile["defaultAction"] in ("SCMP_ACT_ERRNO",
                                                                     "SCMP_ACT_KILL_PROCESS"))
check("the profile refuses mount, bpf, ptrace, init_module",
      not names & {"mount", "bpf", "ptrace", "init_module"})
sys.exit(1 if fails else 0)
PY
check "manifest checks" "[ $? -eq 0 ]"

# The Pod's socket story, played with the manifest's uids and groups (no kubelet here): the
# shared emptyDir is mode 2777 with group fsGroup; kvtierd (runAsUser/runAsGroup, no
# capabilities) creates its socket directory in it; the engine's uid, with the Pod's
# supplementalGroups and its KVTIER_DAEMON_UID, reaches the daemon; the same uid without the
# group does not.
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    python3 - "$M" >"$D/pod.env" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pod = [d for d in docs if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]
c = {x["name"]: x for x in pod["containers"]}
k, e = c["kvtierd"], c["inference"]
env = {v["name"]: v["value"] for v in e["env"]}
args = dict(a[2:].split("=", 1) for a in k["args"])
mount = [m["mountPath"] for m in k["volumeMounts"] if args["socket"].startswith(m["mountPath"] + "/")][0]
print("kuid=%d kgid=%d euid=%d groups=%s fsgroup=%d" % (
    k["securityContext"]["runAsUser"], k["securityContext"]["runAsGroup"],
    e["securityContext"]["runAsUser"], ",".join(map(str, pod["securityContext"]["supplementalGroups"])),
    pod["securityContext"]["fsGroup"]))
print("sock_rel=%s daemon_uid=%s env_sock=%s" % (args["socket"][len(mount):], env["KVTIER_DAEMON_UID"],
                                                 env["KVTIER_SOCKET"]))
PY
    . "$D/pod.env"
    # The endpoint on a free loopback port here (the Pod's 0.0.0.0:9464 may be taken).
    mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    metrics=""
    "$B/kvtierd" --dump-config | grep -q '^metrics.listen = ' && metrics="--metrics.listen=127.0.0.1:$mport"
    mkdir -p "$D/vol" "$D/data"
    chgrp "$fsgroup" "$D/vol" && chmod 2777 "$D/vol" && chmod 0755 "$D"
    chown "$kuid:$kgid" "$D/data"
    setpriv --reuid="$kuid" --regid="$kgid" --clear-groups --no-new-privs --inh-caps=-all \
        --bounding-set=-all "$B/kvtierd" --config="$conf" --socket="$D/vol$sock_rel" \
        --data_dir="$D/data" --cpu.arena_bytes=64M --disk.bytes=0 $metrics 2>"$D/pod.log" &
    KPID=$!
    for _ in $(seq 100); do [ -S "$D/vol$sock_rel" ] && break; sleep 0.05; done
    engine() { # GROUPS: ping as the engine's uid with these supplementary groups
        KVTIER_DAEMON_UID=$daemon_uid setpriv --reuid="$euid" --regid="$euid" $1 \
            --inh-caps=-all --bounding-set=-all "$B/kvtier" --socket "$D/vol$sock_rel" ping 2>&1
    }
    check "the engine (uid $euid, groups $groups) reaches kvtierd (uid $kuid) on the shared volume" \
        "engine --groups=$groups | grep -q pong" || { engine --groups=$groups; cat "$D/pod.log"; }
    check "the same uid without the Pod's groups is refused" \
        "engine --clear-groups | grep -q 'Permission denied'"
    check "without KVTIER_DAEMON_UID the engine does not trust the daemon" \
        "setpriv --reuid=$euid --regid=$euid --groups=$groups $B/kvtier --socket '$D/vol$sock_rel' ping 2>&1 | grep -q E_UNTRUSTED"
    check "the engine's KVTIER_SOCKET is the daemon's socket path" "[ '$env_sock' = '/run/kvtier$sock_rel' ]"
    if [ -n "$metrics" ] && command -v curl >/dev/null; then
        check "the readiness probe's GET /healthz answers 200" \
            "curl -sf 'http://127.0.0.1:$mport/healthz' >/dev/null"
    fi
    check "the liveness probe's kvtier ping answers (as the daemon's uid)" \
        "setpriv --reuid=$kuid --regid=$kgid --clear-groups $B/kvtier --timeout-ms 2000 --socket '$D/vol$sock_rel' ping | grep -q pong"
    kill -TERM $KPID; wait $KPID
    check "kvtierd exits 0 on SIGTERM" "[ $? -eq 0 ]"
else
    echo "skip the socket between the containers: needs root and setpriv"
fi

if command -v systemd-analyze >/dev/null; then
    deploy/k8s/gen-seccomp.sh >"$D/seccomp.json"
    check "kvtier-seccomp.json is gen-seccomp.sh's output (regenerate it)" \
        "cmp -s '$D/seccomp.json' deploy/k8s/kvtier-seccomp.json"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
