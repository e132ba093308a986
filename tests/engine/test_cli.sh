#!/bin/sh
# Smoke test of the kvtier-engine command line: generate (resident and offload through a real
# daemon, with prefix reuse on the second offload run), eval with its JSON report, and clear
# errors for a missing daemon and bad options; dump-kv's layout. Run by `make test` (EXTRA_TESTS);
# KVT_BUILD names the build directory. Skips (exit 0) when the model has not been fetched.
set -eu

B=${KVT_BUILD:-build}
M=${KVT_ENGINE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
E="$B/kvtier-engine"
if [ ! -r "$M" ]; then
    echo "test_cli: model $M not fetched; skipping"
    exit 0
fi
tmp=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
fail() {
    echo "test_cli: FAIL: $*" >&2
    exit 1
}

# generate, resident: a greedy answer and a stats line.
out=$("$E" generate --model "$M" --prompt "What is the capital of France? Answer in one sentence." --max-tokens 12 \
    2>"$tmp/err")
echo "$out" | grep -q "Paris" || fail "resident answer lacks Paris: $out"
grep -q "mode resident" "$tmp/err" || fail "no stats line"

# A daemon for the offload runs.
"$B/kvtierd" --socket="$tmp/s" --data-dir="$tmp" --cpu.arena_bytes=64M >"$tmp/d.log" 2>&1 &
pid=$!
i=0
until [ -S "$tmp/s" ]; do
    i=$((i + 1))
    [ $i -le 100 ] || fail "kvtierd did not start"
    sleep 0.1
done

p="Name three colours of the rainbow."
out2=$("$E" generate --model "$M" --prompt "$p" --max-tokens 16 2>/dev/null)
for run in 1 2; do
    o=$("$E" generate --model "$M" --mode offload --socket "$tmp/s" --chunk-tokens 8 \
        --prompt "$p" --max-tokens 16 2>"$tmp/err$run")
    [ "$o" = "$out2" ] || fail "offload answer differs from resident: '$o' vs '$out2'"
done
grep -q "(0 reused" "$tmp/err1" || fail "first offload run reused tokens"
grep -Eq "\(([1-9][0-9]*) reused from kvtier\)" "$tmp/err2" || fail "second run reused nothing"

# eval: JSON with equal perplexities and bit-exact logits.
head -c 3000 /usr/share/common-licenses/GPL-3 >"$tmp/text" 2>/dev/null ||
    printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 60) >"$tmp/text"
"$E" eval --model "$M" --text "$tmp/text" --mode offload --socket "$tmp/s" --tokens 300 \
    --json "$tmp/eval.json" 2>/dev/null || fail "eval failed"
grep -q '"bit_exact_with_resident": true' "$tmp/eval.json" || fail "offload not bit-exact"
grep -q '"top1_agreement_with_resident": 1.000000' "$tmp/eval.json" || fail "top-1 differs"
grep -q '"fell_back_to_resident": false' "$tmp/eval.json" || fail "eval fell back"
ppl=$(sed -n 's/.*"perplexity": \([0-9.]*\).*/\1/p' "$tmp/eval.json")
rppl=$(sed -n 's/.*"resident_perplexity": \([0-9.]*\).*/\1/p' "$tmp/eval.json")
[ -n "$ppl" ] && [ "$ppl" = "$rppl" ] || fail "perplexities differ: $ppl vs $rppl"

# dump-kv: whole chunks in the canonical layout (30 layers x 3 KV heads x 64 dims x k|v x fp16 =
# 23,040 bytes per token), and causal: the first chunk does not depend on the tokens after it.
"$E" dump-kv --model "$M" --text "$tmp/text" --tokens 70 --chunk-tokens 32 --out "$tmp/kv2" \
    2>/dev/null || fail "dump-kv failed"
"$E" dump-kv --model "$M" --text "$tmp/text" --tokens 32 --chunk-tokens 32 --out "$tmp/kv1" \
    2>/dev/null || fail "dump-kv of one chunk failed"
[ "$(wc -c <"$tmp/kv2")" -eq $((2 * 32 * 23040)) ] || fail "dump-kv size $(wc -c <"$tmp/kv2")"
head -c $((32 * 23040)) "$tmp/kv2" | cmp -s - "$tmp/kv1" || fail "dump-kv first chunk differs"
if "$E" dump-kv --model "$M" --text "$tmp/text" --out "$tmp/kv3" --tokens 10 --chunk-tokens 32 \
    2>/dev/null; then fail "dump-kv of less than a chunk succeeded"; fi

# Errors are clear and quick.
if "$E" generate --model "$M" --mode offload --socket "$tmp/nope" --prompt hi 2>"$tmp/err"; then
    fail "offload without a daemon succeeded"
fi
grep -q "daemon unreachable" "$tmp/err" || fail "no clear message without a daemon"
if "$E" generate --model "$M" --bogus 1 2>/dev/null; then fail "bad option accepted"; fi
if "$E" generate --model /nonexistent.gguf --prompt hi 2>/dev/null; then fail "bad model accepted"; fi

echo "test_cli: ok"
