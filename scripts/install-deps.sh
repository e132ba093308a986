#!/usr/bin/env bash
# Installs the Debian packages kvtier builds and tests with, only those that are missing.
# Called by the Makefile before every build so that a fresh machine needs no manual step.
set -euo pipefail

pkgs=(build-essential pkg-config liburing-dev liblz4-dev libzstd-dev protobuf-c-compiler
      libprotobuf-c-dev libcmocka-dev libxxhash-dev libhiredis-dev libmicrohttpd-dev redis-server
      python3 python3-venv python3-dev curl
      clang libclang-rt-14-dev)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
