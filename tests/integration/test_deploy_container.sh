#!/usr/bin/env bash
# deploy/Containerfile, checked without building the image (no image can be pulled here): it
# parses (dockerfile-parse from PyPI); it has a build stage and a runtime stage, both on
# debian:bookworm-slim; every package it installs exists in Debian bookworm (apt-cache, when
# this machine's apt sources are bookworm); the runtime stage installs the package of every
# shared library the built kvtierd and kvtier name (readelf, ldd, dpkg -S) and no -dev package; every
# COPY source exists in the repository, and those sources alone are enough for `make` to know
# how to build both binaries (make -n in a copy holding only them); the image runs as a non-root
# user, declares the socket and data volumes, a HEALTHCHECK and an ENTRYPOINT whose socket is
# the ENV KVTIER_SOCKET the health check uses. When podman or buildah exists, it also builds the
# image (not the case here).
set -u
B=${KVT_BUILD:-build}
F=deploy/Containerfile
D=$(mktemp -d /tmp/kvtier-cf-XXXXXX)
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; return 1; fi; }
cleanup() { rm -rf "$D"; }
trap cleanup EXIT

if ! python3 -c 'import dockerfile_parse' 2>/dev/null; then
    pip install --quiet dockerfile-parse >/dev/null 2>&1 ||
        pip install --quiet --break-system-packages dockerfile-parse >/dev/null 2>&1
fi
python3 -c 'import dockerfile_parse' || { echo "FAIL dockerfile-parse not installable"; exit 1; }

# One line per fact the checks below need: STAGE n base, PKG stage name, COPY src..., USER,
# VOLUME, HEALTHCHECK, ENTRYPOINT, ENV.
python3 - "$F" >"$D/facts" <<'PY' || { echo "FAIL $F does not parse"; exit 1; }
import json, re, shlex, sys
from dockerfile_parse import DockerfileParser
p = DockerfileParser(fileobj=open(sys.argv[1], "rb"))
stage = -1
for ins in p.structure:
    i, v = ins["instruction"], ins["value"]
    if i == "FROM":
        stage += 1
        print("STAGE", stage, v.split()[0])
    elif i == "RUN":
        for m in re.finditer(r"apt-get install ([^&;|]*)", v):
            for w in m.group(1).split():
                if not w.startswith("-"):
                    print("PKG", stage, w)
    elif i == "COPY":
        words = shlex.split(v)
        if not any(w.startswith("--from") for w in words):
            print("COPY", *[w for w in words[:-1] if not w.startswith("--")])
    elif i == "USER":
        print("USER", v)
    elif i == "VOLUME":
        for vol in json.loads(v) if v.startswith("[") else v.split():
            print("VOLUME", vol)
    elif i == "HEALTHCHECK":
        print("HEALTHCHECK", v)
    elif i == "ENTRYPOINT":
        print("ENTRYPOINT", " ".join(json.loads(v)))
    elif i == "ENV":
        print("ENV", v)
PY
ok "$F parses"
check "two stages, both debian:bookworm-slim" \
    "[ \"\$(grep -c '^STAGE [01] debian:bookworm-slim$' '$D/facts')\" -eq 2 ] && ! grep -q '^STAGE 2' '$D/facts'"

# Packages: all real (in bookworm), the runtime ones are not -dev, and cover the binaries.
if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null && apt-cache show libc6 >/dev/null 2>&1; then
    # One apt-cache call for all (each takes about a second): the names it describes, against the
    # names asked for (it exits 0 when only some of them exist).
    pkgs=$(awk '$1 == "PKG" { print $3 }' "$D/facts" | sort -u)
    found=$(apt-cache show --no-all-versions $pkgs 2>/dev/null | sed -n 's/^Package: //p' | sort -u)
    missing=$(comm -23 <(echo "$pkgs") <(echo "$found") | tr '\n' ' ')
    missing=$(echo $missing)
    check "every package exists in Debian bookworm (${missing:-all found})" "[ -z '$missing' ]"
    check "apt-cache tells a missing package (the check can fail)" \
        "! apt-cache show kvtier-no-such-package >/dev/null 2>&1"
else
    echo "skip package names: this machine's apt is not Debian bookworm"
fi
runtime=$(awk '$1 == "PKG" && $2 == 1 { print $3 }' "$D/facts" | sort -u)
check "runtime stage installs no -dev package" "! echo '$runtime' | grep -q -- '-dev$'"
if command -v dpkg >/dev/null; then
    # The libraries the binaries name (DT_NEEDED); apt brings what those need in turn.
    sonames=$(readelf -d "$B/kvtierd" "$B/kvtier" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u)
    needed=$(for so in $sonames; do
        lib=$(ldd "$B/kvtierd" "$B/kvtier" | awk -v so="$so" '$1 == so { print $3; exit }')
        dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib"
    done | cut -d: -f1 | sort -u)
    lacking=$(comm -23 <(echo "$needed") <(printf '%s\nlibc6\n' "$runtime" | sort -u) | tr '\n' ' ')
    check "runtime stage has every library the binaries load (needed: $(echo $needed))" \
        "[ -z '$(echo $lacking)' ]" || echo "     lacking: $lacking"
fi

# COPY sources exist, and are all the build stage needs.
srcs=$(awk '$1 == "COPY" { for (i = 2; i <= NF; i++) print $i }' "$D/facts")
absent=""
for s in $srcs; do [ -e "$s" ] || absent="$absent $s"; done
check "every COPY source exists (${absent:-all})" "[ -z '$absent' ]"
mkdir -p "$D/ctx"
for s in $srcs; do mkdir -p "$D/ctx/$(dirname "$s")" && cp -r "$s" "$D/ctx/$s"; done
(cd "$D/ctx" && mkdir -p build && touch build/.deps-installed &&
    make -n build/kvtierd build/kvtier >"$D/make.out" 2>&1)
check "the COPY sources suffice for make build/kvtierd build/kvtier (make -n)" "[ $? -eq 0 ]" ||
    tail -5 "$D/make.out"
rm -rf "$D/ctx/daemon"
(cd "$D/ctx" && make -n build/kvtierd >/dev/null 2>&1)
check "without daemon/ it would not (the check can fail)" "[ $? -ne 0 ]"

# User, volumes, health check, entry point.
user=$(awk '$1 == "USER" { u = $2 } END { print u }' "$D/facts")
check "runs as a non-root user ($user)" "[ -n '$user' ] && [ '${user%%:*}' != root ] && [ '${user%%:*}' != 0 ]"
check "socket and data volumes" "grep -qx 'VOLUME /run/kvtier' '$D/facts' && grep -qx 'VOLUME /var/lib/kvtier' '$D/facts'"
check "a HEALTHCHECK that pings the daemon" "grep -q '^HEALTHCHECK .*kvtier.*ping' '$D/facts'"
sock=$(sed -n 's/^ENTRYPOINT .*--socket=\([^ ]*\).*/\1/p' "$D/facts")
check "the ENTRYPOINT's socket is KVTIER_SOCKET ($sock)" \
    "[ -n '$sock' ] && grep -q '^ENV KVTIER_SOCKET=$sock\$' '$D/facts'"
check "the socket is on the socket volume" "[ '${sock#/run/kvtier/}' != '$sock' ]"
check "the ENTRYPOINT's config is the one COPYed" \
    "grep -q -- '--config=/etc/kvtier/kvtier.conf' '$D/facts' && grep -q '^COPY deploy/kvtier.conf /etc/kvtier/kvtier.conf' $F"

if command -v podman >/dev/null || command -v buildah >/dev/null; then
    tool=$(command -v podman || command -v buildah)
    "$tool" build -f "$F" -t kvtier:test . >"$D/build.out" 2>&1
    check "image builds with $tool" "[ $? -eq 0 ]" || tail -20 "$D/build.out"
else
    echo "skip image build: no podman or buildah here (the image was not built)"
fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
