/*
 * Eviction under a DRAM limit on a passage trace: the passages of RAG requests (each stored once
 * under its own key, fetched wherever it appears) replayed against real daemons whose CPU tier
 * holds a fraction of the trace's distinct passages, one daemon per eviction policy (tier.eviction
 * lru and cost), same trace, same limit. No model: a fetched passage saves its tokens' recompute,
 * a missed one is recomputed (counted) and stored again. Used by `kvtier-bench evict` on a
 * synthetic trace and by `kvtier-bench reuse` on its own.
 */
#ifndef KVT_BENCH_EVICT_H
#define KVT_BENCH_EVICT_H

#include <stddef.h>
#include <stdint.h>

#include "bench/bench.h"

struct kvt_bench_evict_trace {
    const uint32_t *passage_tokens; /* n_passages: the length of each distinct passage */
    size_t n_passages;
    const uint32_t *order;       /* passage ids of every request, one request after another */
    const uint32_t *request_len; /* n_requests: how many ids of order each request takes */
    size_t n_requests;
    uint32_t layers, kv_heads, head_dim; /* the namespace's geometry (fp16) */
};

struct kvt_bench_evict_arm {
    const char *policy;    /* "lru" or "cost" */
    uint64_t fetches;      /* passages asked for */
    uint64_t hits;         /* found in the CPU tier */
    uint64_t tokens;       /* tokens of every passage asked for */
    uint64_t tokens_saved; /* tokens of the passages found: recompute saved */
    uint64_t evictions;    /* cpu.evictions at the end */
    double replay_ms;
};

/* Replays t against one daemon per policy with a CPU tier of dram_fraction (0 < f < 1) of the
 * distinct passages' bytes, and adds a row per arm (hit ratio, recompute saved) to r plus the
 * ratios cost_vs_lru_hit_ratio and cost_vs_lru_recompute_ratio. arms (2 entries) receives the
 * counts. Returns 0, or nonzero when a daemon failed (r holds what was measured). */
int kvt_bench_evict_run(const struct kvt_bench_opts *opts, const struct kvt_bench_evict_trace *t,
                        double dram_fraction, struct kvt_bench_report *r,
                        struct kvt_bench_evict_arm arms[2]);

#endif
