#!/bin/sh
# Runs the kvtier Python package's pytest suite (client/python/tests) in the virtualenv that
# mk/python.mk builds under $KVT_BUILD/py, against real daemons it starts itself: every test but
# the llama-cpp-python one, which tests/python/test_llama.sh runs (arguments replace the default
# selection). In a sanitizer build the extension carries ASan/UBSan, so their runtime is
# preloaded into the interpreter.
set -eu
B=${KVT_BUILD:-build}
V=$B/py/venv
if [ ! -x "$V/bin/python" ]; then
    echo "test_pytest: $V missing (make builds it)" >&2
    exit 1
fi
san=$(cat "$B/py/san" 2>/dev/null || true)
case $san in
*address*)
    LD_PRELOAD=$(${CC:-cc} -print-file-name=libasan.so)
    export LD_PRELOAD
    # The interpreter's own allocations are not ours to account for.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
    ;;
esac
export KVT_BUILD="$B"
[ $# -gt 0 ] || set -- client/python/tests --ignore=client/python/tests/test_llama_cpp.py
exec "$V/bin/python" -m pytest -q -p no:cacheprovider -rs "$@"
