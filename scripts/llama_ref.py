#!/usr/bin/env python3
"""Reference logits from llama.cpp (through llama-cpp-python) for the engine's correctness tests.

Takes the head of a text (default: the GNU GPL v3 from /usr/share/common-licenses), tokenizes it
with llama.cpp exactly as the engine must (no BOS: the model's tokenizer.ggml.add_bos_token is
false; special tokens are not parsed), evaluates the first N tokens in one batch with every
position's logits kept, and writes a small JSON fixture: the text, its token ids, and for each of
the first N positions the top-5 token ids with their logits. CI compares the engine with this
fixture without building llama.cpp.

Usage: scripts/llama_ref.py --model models/X.gguf [--text FILE] [--lines 60] [--tokens 256]
                            [--out tests/engine/fixtures/gpl3_ref.json]
Needs: pip install llama-cpp-python numpy
"""
import argparse
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--lines", type=int, default=60, help="lines of the text head to keep")
    ap.add_argument("--tokens", type=int, default=256, help="positions with logits")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="tests/engine/fixtures/gpl3_ref.json")
    a = ap.parse_args()

    with open(a.text, "r", encoding="utf-8") as f:
        text = "".join(f.readlines()[: a.lines])

    llm = Llama(model_path=a.model, n_ctx=max(512, a.tokens + 16), n_batch=512,
                n_threads=a.threads, logits_all=True, verbose=False)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if len(ids) < a.tokens:
        sys.exit(f"text head has only {len(ids)} tokens, need {a.tokens}: raise --lines")
    n = a.tokens
    llm.eval(ids[:n])
    logits = np.array(llm.scores[:n], dtype=np.float32)

    top_ids, top_vals = [], []
    for row in logits:
        idx = np.argsort(-row, kind="stable")[: a.top]
        top_ids.append([int(i) for i in idx])
        top_vals.append([round(float(row[i]), 4) for i in idx])

    out = {
        "source": a.text,
        "lines": a.lines,
        "llama_cpp_python": llama_cpp.__version__,
        "add_bos": False,
        "parse_special": False,
        "n_positions": n,
        "text": text,
        "token_ids": [int(t) for t in ids],
        "top_ids": top_ids,
        "top_logits": top_vals,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"{a.out}: {len(ids)} token ids, top-{a.top} logits at {n} positions")


if __name__ == "__main__":
    main()
