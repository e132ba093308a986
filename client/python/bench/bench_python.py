"""Benchmark of the Python binding against the C library, in one run against one daemon
(`make bench-python`, or build/py/venv/bin/python client/python/bench/bench_python.py):

  - call overhead: ops/s of 4 KiB Gets (into an arena buffer, and returning bytes) and of
    Lookups of 32 chained keys, Python against cbench (the same loops in C), rounds interleaved;
  - zero-copy Get bandwidth of 4 MiB chunks into an arena buffer, Python against C (and, for
    reference, Python into ordinary numpy memory, which the library stages and copies);
  - chunk_keys on 4,096 token ids from a list and from numpy;
  - llama-cpp-python's time to first token for a 2,000-token prompt: cold, restored from kvtier
    by a second process, and llama-cpp-python's own LlamaRAMCache (bench/llama_ttft.py).

Prints a table and, with --json FILE, writes every figure."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "client", "python", "tests"))

import numpy as np  # noqa: E402

import kvtier  # noqa: E402
from conftest import Daemon  # noqa: E402


def py_loop(fn, seconds):
    ops, t0 = 0, time.perf_counter()
    while True:
        for _ in range(16):
            fn()
        ops += 16
        t = time.perf_counter() - t0
        if t >= seconds:
            return ops / t


def c_loop(build, sock, mode, seconds):
    out = subprocess.run([os.path.join(build, "py", "cbench"), sock, mode, str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["ops_per_s"]


def setup(c, big):
    """The namespaces and chunks cbench uses (same model ids, tokens and fill)."""
    if big:
        ns = c.register("bench-py-4m", layers=16, kv_heads=8, head_dim=128, tokens_per_chunk=64)
        n = 8
    else:
        ns = c.register("bench-py-4k", layers=1, kv_heads=1, head_dim=64, tokens_per_chunk=16)
        n = 32
    keys = ns.chunk_keys(np.arange(n * ns.tokens_per_chunk, dtype=np.int32))
    buf = c.arena_alloc(ns.chunk_bytes)
    for i, k in enumerate(keys):
        np.frombuffer(buf, np.uint8)[:] = (i * 37 + 1) & 0xFF
        c.put(ns, k, buf)
    return ns, keys, buf


def client_bench(build, sock, seconds, rounds):
    res = {}
    with kvtier.Client(sock, arena_bytes=64 << 20) as c:
        ns4k, keys4k, buf4k = setup(c, False)
        ns4m, keys4m, buf4m = setup(c, True)
        staged = np.empty(ns4m.chunk_bytes, np.uint8)
        i = [0]

        def get4m(dst):
            i[0] += 1
            c.get(ns4m, keys4m[i[0] % 8], dst)

        py = {
            "get4k": lambda: c.get(ns4k, keys4k[0], buf4k),
            "get4k_bytes": lambda: c.get(ns4k, keys4k[0]),
            "lookup32": lambda: c.lookup(ns4k, keys4k),
            "get4m": lambda: get4m(buf4m),
            "get4m_staged": lambda: get4m(staged),
        }
        samples = {k: [] for k in list(py) + ["c_get4k", "c_lookup32", "c_get4m"]}
        for _ in range(rounds):
            for mode in ("get4k", "lookup32", "get4m"):
                samples["c_" + mode].append(c_loop(build, sock, mode, seconds))
                samples[mode].append(py_loop(py[mode], seconds))
            samples["get4k_bytes"].append(py_loop(py["get4k_bytes"], seconds))
            samples["get4m_staged"].append(py_loop(py["get4m_staged"], seconds))
        for k, v in samples.items():
            res[k + "_ops_per_s"] = statistics.median(v)
        mib4 = ns4m.chunk_bytes
        for k in ("get4m", "get4m_staged", "c_get4m"):
            res[k + "_gib_per_s"] = res[k + "_ops_per_s"] * mib4 / 2**30

        toks_list = list(range(4096))
        toks_np = np.arange(4096, dtype=np.int32)
        nsk = c.register("bench-py-keys", layers=1, kv_heads=1, head_dim=64,
                         tokens_per_chunk=256)
        for name, toks in (("list", toks_list), ("numpy", toks_np)):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                nsk.chunk_keys(toks)
                n += 1
            res[f"chunk_keys_4096_{name}_us"] = (time.perf_counter() - t0) / n * 1e6
    return res


def llama_bench(build, sock, model, tokens, chunk, threads, rounds):
    def run(mode):
        p = subprocess.run([sys.executable, os.path.join(HERE, "llama_ttft.py"), model, sock,
                            mode, "--tokens", str(tokens), "--chunk", str(chunk),
                            "--threads", str(threads), "--rounds", str(rounds)],
                           capture_output=True, text=True, timeout=1800)
        if p.returncode:
            raise RuntimeError(f"llama_ttft {mode} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])
    cold = run("cold")
    warm = run("kvtier")
    ram = run("ram")
    return {"cold": cold, "kvtier": warm, "ram": ram,
            "kvtier_logits_identical": cold["logits"] == warm["logits"],
            "ram_logits_identical": cold["logits"] == ram["logits"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--seconds", type=float, default=1.0, help="per loop and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--model", default=os.path.join(REPO, "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ["KVT_BUILD"] = a.build
    d = Daemon(["--cpu.prefault=true"]).start()
    try:
        load = os.getloadavg()
        res = {"loadavg_at_start": load, "client": client_bench(a.build, d.socket, a.seconds,
                                                                  a.rounds)}
        r = res["client"]
        print(f"load average at start {load[0]:.2f}; medians of {a.rounds} rounds of "
              f"{a.seconds:g} s, C and Python interleaved")
        ratio = r["get4k_ops_per_s"] / r["c_get4k_ops_per_s"]
        print(f"  4 KiB Get into arena   C {r['c_get4k_ops_per_s']:>9.0f} ops/s   Python "
              f"{r['get4k_ops_per_s']:>9.0f} ops/s   ({ratio:.2f}x)")
        print(f"  4 KiB Get -> bytes                          Python "
              f"{r['get4k_bytes_ops_per_s']:>9.0f} ops/s")
        print(f"  Lookup of 32 keys      C {r['c_lookup32_ops_per_s']:>9.0f} ops/s   Python "
              f"{r['lookup32_ops_per_s']:>9.0f} ops/s   "
              f"({r['lookup32_ops_per_s'] / r['c_lookup32_ops_per_s']:.2f}x)")
        ratio = r["get4m_gib_per_s"] / r["c_get4m_gib_per_s"]
        print(f"  4 MiB Get, zero-copy   C {r['c_get4m_gib_per_s']:>9.2f} GiB/s   Python "
              f"{r['get4m_gib_per_s']:>9.2f} GiB/s   ({ratio:.2f}x)")
        print(f"  4 MiB Get into numpy (staged + copied)      Python "
              f"{r['get4m_staged_gib_per_s']:>9.2f} GiB/s")
        print(f"  chunk_keys of 4,096 tokens: list {r['chunk_keys_4096_list_us']:.1f} us, "
              f"numpy int32 {r['chunk_keys_4096_numpy_us']:.1f} us")
        if not a.no_llama:
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print("  llama.cpp: llama-cpp-python not installed; skipped")
            else:
                ll = llama_bench(a.build, d.socket, a.model, a.tokens, a.chunk, a.threads,
                                 a.rounds)
                res["llama"] = ll
                print(f"  llama.cpp TTFT, {ll['cold']['tokens']}-token prompt, {a.threads} "
                      f"threads (median of {a.rounds}):")
                print(f"    cold                          {ll['cold']['median_s'] * 1e3:8.1f} ms")
                print(f"    restored from kvtier ({ll['kvtier']['restored_tokens']} tokens, "
                      f"chunks of {a.chunk}, another process) "
                      f"{ll['kvtier']['median_s'] * 1e3:8.1f} ms")
                print(f"    LlamaRAMCache (same process)  {ll['ram']['median_s'] * 1e3:8.1f} ms")
                print(f"    restore alone (lookup, get, rebuild the state, set it) "
                      f"{statistics.median(ll['kvtier']['restore_only_s']) * 1e3:.1f} ms")
                print(f"    logits equal to cold, bit for bit: kvtier "
                      f"{ll['kvtier_logits_identical']}, LlamaRAMCache {ll['ram_logits_identical']}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        d.cleanup()


if __name__ == "__main__":
    main()
