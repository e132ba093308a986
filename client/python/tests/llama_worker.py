"""One process of the llama-cpp-python test (test_llama_cpp.py runs it twice, as two
processes): loads SmolLM2-135M with llama-cpp-python, evaluates a prompt through a
kvtier.llama_cpp.PrefixCache and prints a JSON report on its last line.

  llama_worker.py SOCKET MODEL OUT_DIR first    cold evaluation, then save() into kvtier
  llama_worker.py SOCKET MODEL OUT_DIR second   restore from kvtier + the rest, a full recompute
                                                in the same process, and a generation after a
                                                restore that must only evaluate the suffix
Logits go to OUT_DIR/<mode>-*.npy for the test to compare."""

import json
import os
import sys
import time

import numpy as np
from llama_cpp import Llama
import llama_cpp

import kvtier
import kvtier.llama_cpp

PROMPT_TOKENS = 600
CHUNK = 128
THREADS = 1  # robust on a loaded 2-core machine: no spinning thread team


def load(model):
    return Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=THREADS,
                 n_threads_batch=THREADS, verbose=False, seed=1)


def prompt_tokens(llm):
    with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
        text = f.read()
    return llm.tokenize(text.encode(), add_bos=False)[:PROMPT_TOKENS]


def last_logits(llm):
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm._n_vocab,)).copy()


def prompt_evals(llm):
    return llama_cpp.llama_perf_context(llm._ctx.ctx).n_p_eval


def reset(llm):
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)


def main():
    sock, model, out, mode = sys.argv[1:5]
    llm = load(model)
    toks = prompt_tokens(llm)
    report = {"mode": mode, "tokens": len(toks), "pid": os.getpid()}
    with kvtier.Client(sock, timeout=10.0) as c:
        # A window of 3 chunks: the 4 chunks move in two batches each way.
        cache = kvtier.llama_cpp.PrefixCache(llm, c, tokens_per_chunk=CHUNK, window=3)
        report["model_id"] = cache.model_id
        if mode == "first":
            t0 = time.perf_counter()
            assert cache.restore(toks) == 0, "kvtier held this prefix before the first process"
            llm.eval(toks)
            report["ttft_cold_s"] = time.perf_counter() - t0
            np.save(os.path.join(out, "first-cold.npy"), last_logits(llm))
            report["stored_chunks"] = cache.save()
        else:
            t0 = time.perf_counter()
            n = cache.restore(toks)
            llm.eval(toks[n:])
            report["ttft_restored_s"] = time.perf_counter() - t0
            report["restored_tokens"] = n
            np.save(os.path.join(out, "second-restored.npy"), last_logits(llm))

            reset(llm)
            t0 = time.perf_counter()
            llm.eval(toks)
            report["ttft_cold_s"] = time.perf_counter() - t0
            np.save(os.path.join(out, "second-cold.npy"), last_logits(llm))

            # Generation through llama-cpp-python's own API after a restore: it sees the
            # restored prefix as its own and evaluates only the rest.
            reset(llm)
            cold_text = llm.create_completion(toks, max_tokens=8, temperature=0.0)
            reset(llm)
            m = cache.restore(toks)
            llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
            warm_text = llm.create_completion(toks, max_tokens=8, temperature=0.0)
            report["generate_restored_tokens"] = m
            report["generate_prompt_evals"] = prompt_evals(llm)
            report["generate_same_text"] = (cold_text["choices"][0]["text"]
                                            == warm_text["choices"][0]["text"])
            report["text"] = warm_text["choices"][0]["text"]
        report["stats"] = cache.stats
    print(json.dumps(report))


if __name__ == "__main__":
    main()
