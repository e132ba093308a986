"""Time to first token of llama-cpp-python for one prompt, in one of three ways (one process
each; bench_python.py runs them in turn):

  llama_ttft.py MODEL SOCKET cold     evaluate the whole prompt; then save its chunks to kvtier
  llama_ttft.py MODEL SOCKET kvtier   (another process) restore the prefix from kvtier, evaluate
                                      the rest
  llama_ttft.py MODEL SOCKET ram      llama-cpp-python's own LlamaRAMCache in this process: the
                                      prompt's full state saved after one evaluation, then
                                      load_state + the last token (what create_completion does)

Time to first token here is from the prompt's token ids in hand to the logits of its last token.
Each way runs --rounds times; prints one JSON line with every round and the logits' checksum."""

import argparse
import hashlib
import json
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama, LlamaRAMCache

import kvtier
import kvtier.llama_cpp


def clear(llm):
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)


def logits_sum(llm):
    a = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm._n_vocab,))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("socket")
    ap.add_argument("mode", choices=["cold", "kvtier", "ram"])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    llm = Llama(model_path=a.model, n_ctx=4096, n_batch=512, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        toks = llm.tokenize(f.read().encode(), add_bos=False)[: a.tokens]
    rounds, extra = [], {}
    with kvtier.Client(a.socket, timeout=10.0, arena_bytes=256 << 20) as c:
        cache = kvtier.llama_cpp.PrefixCache(llm, c, tokens_per_chunk=a.chunk)
        if a.mode == "cold":
            for _ in range(a.rounds):
                clear(llm)
                t0 = time.perf_counter()
                llm.eval(toks)
                rounds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            extra["stored_chunks"] = cache.save()
            extra["save_s"] = time.perf_counter() - t0
        elif a.mode == "kvtier":
            for _ in range(a.rounds):
                clear(llm)
                t0 = time.perf_counter()
                n = cache.restore(toks)
                t1 = time.perf_counter()
                llm.eval(toks[n:])
                rounds.append(time.perf_counter() - t0)
                extra["restored_tokens"] = n
                extra.setdefault("restore_only_s", []).append(t1 - t0)
        else:
            ram = LlamaRAMCache(capacity_bytes=4 << 30)
            clear(llm)
            llm.eval(toks)
            ram[toks] = llm.save_state()
            extra["state_bytes"] = ram.cache_size
            for _ in range(a.rounds):
                clear(llm)
                t0 = time.perf_counter()
                state = ram[toks]
                llm.load_state(state)
                llm.n_tokens = len(toks) - 1  # create_completion replays the last token
                llm.eval(toks[-1:])
                rounds.append(time.perf_counter() - t0)
    print(json.dumps({"mode": a.mode, "tokens": len(toks), "chunk": a.chunk,
                      "threads": a.threads, "rounds_s": rounds,
                      "median_s": sorted(rounds)[len(rounds) // 2],
                      "logits": logits_sum(llm), **extra}))


if __name__ == "__main__":
    main()
