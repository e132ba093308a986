#!/bin/sh
# make demo: start kvtierd on a temporary socket and directory, fetch the model, answer a question
# with the reference engine keeping its KV cache in kvtier (--mode offload), ask the same question
# again to show the prompt prefix coming back from the cache, print the daemon's stats, and stop
# the daemon. BUILD (default build) names the build directory.
set -eu

BUILD=${BUILD:-build}
PROMPT=${DEMO_PROMPT:-"What is a KV cache in a transformer? Answer in two sentences."}
tmp=$(mktemp -d)
sock="$tmp/kvtier.sock"
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "== starting kvtierd on $sock"
"$BUILD/kvtierd" --socket="$sock" --data-dir="$tmp" --cpu.arena_bytes=256M \
    >"$tmp/kvtierd.log" 2>&1 &
pid=$!
i=0
until [ -S "$sock" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: kvtierd did not start:" >&2
        cat "$tmp/kvtierd.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "== fetching the model"
model=$(./scripts/fetch-model.sh models)
echo "$model"

for run in 1 2; do
    echo "== kvtier-engine generate --mode offload (run $run)"
    "$BUILD/kvtier-engine" generate --model "$model" --mode offload --socket "$sock" \
        --max-tokens 64 --chunk-tokens 16 --prompt "$PROMPT"
done

echo "== kvtier stats"
"$BUILD/kvtier" --socket "$sock" stats

echo "== stopping kvtierd"
kill -TERM "$pid"
wait "$pid" || true
pid=""
