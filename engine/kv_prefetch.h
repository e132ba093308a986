/*
 * Layer-ahead prefetch for the sparse mode (docs/sparse.md, "Pipeline"). While the engine
 * computes layer l of a decode step, a thread of its own, on a kvtier connection of its own, asks
 * Select for layer l + 1 with layer l's query (the best predictor at hand) and reads the rows it
 * picks into its own region, laid out by position ([layer][position][row]). When layer l + 1's own
 * Select comes, the mode takes from that region every run whose rows all arrived in this step, and
 * fetches only the rest: the selection stays exactly the one layer l + 1's query makes; the
 * prefetch only moves reads off the critical path. Rows are valid for one step (the generation
 * passed in): nothing is cached across steps, so the engine never holds more than a step needs.
 *
 * One job in flight at a time; start() waits for the previous one. Not thread-safe beyond that:
 * one engine thread drives it.
 */
#ifndef KVT_ENGINE_KV_PREFETCH_H
#define KVT_ENGINE_KV_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"

struct kvt_eng_prefetch;

struct kvt_eng_prefetch_config {
    const struct kvt_connect_opts *connect; /* arena_bytes is computed here */
    const struct kvt_ns_spec *spec;
    const struct kvt_span_policy *spans; /* as the mode registered, may be NULL */
    uint32_t n_layers;
    size_t max_tokens; /* positions of the stored context */
    size_t row_bytes;  /* one token of one layer */
    uint32_t tokens_per_chunk;
};

int kvt_eng_prefetch_create(const struct kvt_eng_prefetch_config *cfg,
                            struct kvt_eng_prefetch **out);
void kvt_eng_prefetch_destroy(struct kvt_eng_prefetch *p);

/* Starts the prefetch of req's layer for context ctx in step gen (req and its query are copied).
 * 0, or an error when the previous job's could not be collected. */
int kvt_eng_prefetch_start(struct kvt_eng_prefetch *p, uint64_t ctx,
                           const struct kvt_select_req *req, uint64_t gen);

/* Waits for the job in flight. Its error (the prefetch is only an optimisation: callers go on
 * without it). Bytes it read from each tier are added to fetch_bytes (KVT_ENG_KV_TIERS long). */
int kvt_eng_prefetch_wait(struct kvt_eng_prefetch *p, uint64_t *fetch_bytes, size_t n_tiers);

/* The rows of positions [pos, pos + n) of layer, when the prefetch of step gen read all of them;
 * else NULL. Call after kvt_eng_prefetch_wait. */
const uint16_t *kvt_eng_prefetch_rows(const struct kvt_eng_prefetch *p, uint32_t layer, size_t pos,
                                      size_t n, uint64_t gen);

#endif
