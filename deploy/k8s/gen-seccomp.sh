#!/usr/bin/env bash
# Writes the seccomp profile for the kvtierd container (OCI / Kubernetes "Localhost" format) to
# stdout from the systemd unit's own filter, so the container and the unit allow the same calls:
# SystemCallFilter= of deploy/kvtierd.service (@system-service plus io_uring_*), expanded by
# `systemd-analyze syscall-filter`, less the ~ sets it denies, plus the two calls a container runtime needs (below). Everything
# else fails with EPERM.
#   deploy/k8s/gen-seccomp.sh > deploy/k8s/kvtier-seccomp.json
# tests/integration/test_deploy_k8s.sh checks that the checked-in file is this script's output.
set -euo pipefail
cd "$(dirname "$0")/../.."
UNIT=deploy/kvtierd.service
expand() { # @group or name -> names, recursively
    case "$1" in
    @*) systemd-analyze syscall-filter --no-pager "$1" 2>/dev/null | sed 's/#.*//' | awk 'NF' |
        while read -r s; do [ "$s" = "$1" ] || expand "$s"; done ;;
    *) echo "$1" ;;
    esac
}
allow=$(for f in $(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$UNIT"); do expand "$f"; done | sort -u)
deny=$(for f in $(sed -n 's/^SystemCallFilter=~//p' "$UNIT"); do expand "$f"; done | sort -u)
# The container runtime (runc, crun) may still call these after it installed the filter and before
# it executes kvtierd; without capabilities they can only drop privileges, never gain any.
runtime="capget capset"
names=$( (comm -23 <(echo "$allow") <(echo "$deny"); printf '%s\n' $runtime) | sort -u)
python3 - "$names" <<'PY'
import json, sys
names = sys.argv[1].split()
profile = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64",
                      "SCMP_ARCH_ARM"],
    "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
}
print(json.dumps(profile, indent=2))
PY
