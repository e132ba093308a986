#!/bin/sh
# Smoke test of the kvtier-engine command line: generate (resident and offload through a real
# daemon, with prefix reuse on the second offload run), rag (passages reused at any position), eval with its JSON report (batched and
# --decode-from), passkey at 1K tokens, and clear errors for a missing daemon and bad options;
# dump-kv's layout. Run by `make test` (EXTRA_TESTS);
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

# rag: passages reused at the same place give the full prefill's answer with nothing
# recomputed; swapped, the plan recomputes some of them.
tr -s ' \n\t' ' ' </usr/share/common-licenses/GPL-3 2>/dev/null | cut -c 1000-1800 >"$tmp/p1" ||
    printf 'The first document is about apples and pears. %.0s' $(seq 1 20) >"$tmp/p1"
tr -s ' \n\t' ' ' </usr/share/common-licenses/Apache-2.0 2>/dev/null | cut -c 2000-2900 >"$tmp/p2" ||
    printf 'The second document is about rivers and hills. %.0s' $(seq 1 20) >"$tmp/p2"
rag() {
    "$E" rag --model "$M" --socket "$tmp/s" --prompt "What do these documents talk about?" \
        --max-tokens 8 "$@"
}
ref=$(rag --policy full --passage "$tmp/p1" --passage "$tmp/p2" 2>/dev/null) || fail "rag full failed"
for run in 1 2; do
    o=$(rag --policy plan --passage "$tmp/p1" --passage "$tmp/p2" 2>"$tmp/rag$run") ||
        fail "rag plan failed"
    [ "$o" = "$ref" ] || fail "rag plan answer differs from full prefill: '$o' vs '$ref'"
done
grep -q "passages 0 reused / 2 computed, 2 versions stored" "$tmp/rag1" || fail "rag: first run"
grep -Eq "\(([1-9][0-9]*) reused from kvtier, 0 of them recomputed\), passages 2 reused" \
    "$tmp/rag2" || fail "rag: second run did not reuse both passages as they are"
rag --policy plan --passage "$tmp/p2" --passage "$tmp/p1" >/dev/null 2>"$tmp/rag3" ||
    fail "rag swapped failed"
grep -Eq "reused from kvtier, [1-9][0-9]* of them recomputed" "$tmp/rag3" ||
    fail "rag: the swapped passages were not planned with recompute"
if rag --policy bogus --passage "$tmp/p1" >/dev/null 2>&1; then fail "rag took a bad policy"; fi

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

# eval --decode-from: the decode evaluation of q8 against resident; its JSON parses and has every
# field (the numbers themselves are checked in test_engine_fidelity).
"$E" eval --model "$M" --text "$tmp/text" --mode q8 --tokens 200 --decode-from 150 \
    --json "$tmp/dec.json" 2>/dev/null || fail "decode eval failed"
python3 - "$tmp/dec.json" <<'PY' || fail "decode eval JSON: $(cat "$tmp/dec.json")"
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("kl_mean", "kl_p99", "kl_max", "top1_agreement_with_resident", "perplexity",
          "resident_perplexity", "ms_per_token", "resident_ms_per_token", "kv_bytes_per_token",
          "resident_kv_bytes_per_token", "kv_token_bytes", "buckets", "prefill_ms"):
    assert k in d, k
assert d["eval"] == "decode" and d["mode"] == "q8"
assert d["decode_from"] == 150 and d["positions"] == 49, d
assert 0 < d["kl_mean"] <= d["kl_p99"] <= d["kl_max"], d
assert 0 < d["top1_agreement_with_resident"] <= 1
assert d["ms_per_token"] > 0 and d["resident_ms_per_token"] > 0
assert d["kv_token_bytes"] == 12960 and d["resident_kv_token_bytes"] == 23040
for t in ("fetched", "dram", "disk", "gpu", "remote", "stored"):
    assert t in d["kv_bytes_per_token"], t
assert list(d["buckets"]) == ["0-1K"] and d["buckets"]["0-1K"]["positions"] == 49
assert d["buckets"]["0-1K"]["kl_mean"] == d["kl_mean"]
PY

# passkey: resident finds the key at every depth of a 1K-token prompt.
"$E" passkey --model "$M" --mode resident --tokens 1024 --trials 3 --json "$tmp/pk.json" \
    2>"$tmp/pk.err" || fail "passkey failed: $(cat "$tmp/pk.err")"
python3 - "$tmp/pk.json" <<'PY' || fail "passkey JSON: $(cat "$tmp/pk.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["mode"] == "resident" and d["trials"] == 3 and d["tokens"] == 1024
assert d["accuracy"] == 1.0 and d["correct"] == 3, d
assert d["mean_key_logprob"] < 0
r = d["per_depth"]
assert [round(x["depth"], 2) for x in r] == [0.1, 0.5, 0.9], r
for x in r:
    assert x["correct"] and x["answer_int"] == x["key"] and 1 <= x["key"] <= 50000, x
    assert 1000 < x["prompt_tokens"] <= 1024 and x["key_logprob"] < 0, x
PY

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
# Bad evaluation options: each refused with a message that names the problem.
refuse() {
    want=$1
    shift
    if "$E" "$@" 2>"$tmp/err"; then fail "accepted: $*"; fi
    grep -q -- "$want" "$tmp/err" || fail "no clear message for $*: $(cat "$tmp/err")"
}
ev="eval --model $M --text $tmp/text --json $tmp/bad.json"
# shellcheck disable=SC2086
{
    refuse "--budget must be a fraction in (0, 1]" $ev --budget 0
    refuse "--budget must be a fraction in (0, 1]" $ev --budget 1.5
    refuse "--budget must be a fraction in (0, 1]" $ev --budget 0.5x
    refuse "--top-p must be a fraction in (0, 1]" $ev --top-p 0
    refuse "--spans is fixed or variable" $ev --spans other
    refuse "unknown mode 'sparse2' (modes: resident, offload, q8, sparse, quant, cluster)" \
        $ev --mode sparse2
    refuse "--ratio must be in" $ev --mode cluster --ratio 1
    refuse "configure the quant and cluster modes, not q8" $ev --mode q8 --bits 8
    refuse "bad or incomplete option" $ev --mode quant --bits 3
    refuse "mode q8 does not select" $ev --mode q8 --budget 0.2
    refuse "mode resident does not select" $ev --spans fixed
    refuse "leaves nothing to score in 300 tokens" $ev --tokens 300 --decode-from 300
    refuse "leaves nothing to score in 300 tokens" $ev --tokens 300 --decode-from 500
    refuse "cannot read /nonexistent" eval --model "$M" --text /nonexistent --json "$tmp/bad.json"
    refuse "cannot build a passkey prompt of 20 tokens" passkey --model "$M" --tokens 20 \
        --trials 1 --json "$tmp/bad.json"
}
if "$E" generate --model /nonexistent.gguf --prompt hi 2>/dev/null; then fail "bad model accepted"; fi

echo "test_cli: ok"
