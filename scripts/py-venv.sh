#!/usr/bin/env bash
# The Python environment `make test` uses (mk/python.mk), all of it under BUILD/py:
#   py-venv.sh venv   BUILD   a virtualenv with the pinned test requirements
#   py-venv.sh kvtier BUILD   the kvtier package (client/python) built against BUILD/libkvtier.a
#   py-venv.sh llama  BUILD   llama-cpp-python, pinned (client/python/requirements-llama.txt)
# llama-cpp-python compiles llama.cpp (about 6 minutes on 2 cores), so its wheel is built once
# per machine into a cache outside the build folder, keyed by version, build options, compiler
# and CPU: $KVT_WHEEL_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/kvtier/wheels. When it cannot
# be built (no compiler, no network), BUILD/py/llama-unavailable says why and the test that
# needs it skips with that message; `rm BUILD/py/llama.stamp` makes the next `make test` retry.
# Environment: KVT_PYTHON (the interpreter; default Debian's /usr/bin/python3), SAN (the
# Makefile's sanitizer flags, passed to the extension build).
set -euo pipefail

step=${1:?usage: py-venv.sh venv|kvtier|llama BUILD}
B=${2:?usage: py-venv.sh venv|kvtier|llama BUILD}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case $B in /*) ;; *) B=$ROOT/$B ;; esac
P=$B/py
V=$P/venv
PYTHON=${KVT_PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
# Installs into the virtualenv take a lock: under `make -j` the kvtier and llama steps may run at
# once, and pip does not lock a virtualenv itself. (The long llama.cpp build runs outside it.)
pip() { flock "$P/.pip.lock" "$V/bin/python" -m pip --disable-pip-version-check "$@"; }
say() { echo "py-venv: $*" >&2; }
mkdir -p "$P"

case $step in
venv)
    if [ ! -x "$V/bin/python" ]; then
        say "creating $V ($($PYTHON --version 2>&1))"
        "$PYTHON" -m venv "$V"
    fi
    pip install -q -r "$ROOT/client/python/requirements-test.txt"
    ;;

kvtier)
    # Debug info and the project's sanitizers go into the extension as into the library.
    export KVTIER_BUILD=$B KVTIER_CFLAGS="${SAN:-}" KVTIER_LDFLAGS="${SAN:-}"
    pip install -q --no-build-isolation --no-deps --force-reinstall "$ROOT/client/python"
    printf '%s\n' "${SAN:-}" >"$P/san"
    ;;

llama)
    req=$ROOT/client/python/requirements-llama.txt
    spec=$(grep -m1 '^llama-cpp-python==' "$req")
    ver=${spec#llama-cpp-python==}
    # llama.cpp is compiled with -march=native: a wheel is only good for this CPU and compiler.
    # The multimodal library is not needed (and is a good part of the build).
    export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
    # A CPU that lists AMX under a kernel or hypervisor that does not grant its tile state (a
    # Firecracker VM on a Sapphire Rapids host does this) crashes llama.cpp's AMX matmul with
    # SIGSEGV on its first ldtilecfg: build without AMX there (the -mno flags win over the
    # -march=native that comes after them).
    if grep -m1 '^flags' /proc/cpuinfo | grep -qw amx_tile; then
        noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
    fi
    key=$( { echo "$CMAKE_ARGS"; c++ --version 2>/dev/null | head -n1;
             grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-12)
    cache=${KVT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvtier/wheels}/llama-cpp-python-$ver-$key
    rm -f "$P/llama-unavailable"
    fail() {
        printf '%s\n' "$*" >"$P/llama-unavailable"
        say "llama-cpp-python unavailable: $*"
        exit 0
    }
    wheel=$(ls "$cache"/llama_cpp_python-"$ver"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ]; then
        tmp=$(mktemp -d "$P/llama-build.XXXXXX")
        log=$P/llama-build.log
        say "building llama-cpp-python $ver once for this machine (about 6 min on 2 cores);" \
            "log: $log, cache: $cache"
        start=$(date +%s)
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$V/bin/python" -m pip --disable-pip-version-check \
            wheel -v --no-cache-dir --no-deps -w "$tmp" "llama-cpp-python==$ver" >"$log" 2>&1 &
        pid=$!
        trap 'kill "$pid" 2>/dev/null; rm -rf "$tmp"' INT TERM
        while kill -0 "$pid" 2>/dev/null; do
            sleep 20
            step_now=$(grep -oE '\[[0-9]+/[0-9]+\]' "$log" 2>/dev/null | tail -n1 || true)
            say "llama-cpp-python build: $(( $(date +%s) - start )) s${step_now:+, compile step $step_now}"
        done
        rc=0
        wait "$pid" || rc=$?
        trap - INT TERM
        built=$(ls "$tmp"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
        if [ $rc -ne 0 ] || [ -z "$built" ]; then
            rm -rf "$tmp"
            fail "pip wheel llama-cpp-python==$ver failed (exit $rc) after" \
                "$(( $(date +%s) - start )) s: $(grep -v '^ *$' "$log" | tail -n 3 | tr '\n' ' ')"
        fi
        say "llama-cpp-python built in $(( $(date +%s) - start )) s"
        mkdir -p "$(dirname "$cache")"
        rm -rf "$cache.new"
        mv "$tmp" "$cache.new"
        rm -rf "$cache"
        mv "$cache.new" "$cache"
        wheel=$(ls "$cache"/llama_cpp_python-*.whl | head -n1)
    fi
    grep -v '^llama-cpp-python==' "$req" | grep -v '^#' >"$P/llama-deps.txt"
    pip install -q -r "$P/llama-deps.txt" ||
        fail "the dependencies of llama-cpp-python could not be installed from PyPI"
    pip install -q --no-deps --force-reinstall "$wheel" ||
        fail "the cached wheel $wheel does not install"
    "$V/bin/python" -c "import llama_cpp" ||
        fail "llama_cpp does not import from the cached wheel $wheel"
    ;;

*)
    echo "usage: py-venv.sh venv|kvtier|llama BUILD" >&2
    exit 2
    ;;
esac
