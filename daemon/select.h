/*
 * Select: which spans of one layer of a context are worth reading for a query (docs/sparse.md).
 *
 * Every span with an abstract is scored per KV head with Quest's bound (kernel bound_f16; the
 * query heads of a GQA group combined by their maximum). Bounds of different heads live on
 * different scales, so each head's bounds become an estimate of its attention mass over the
 * context, w_h(s) = n_s exp((b_h(s) - max b_h) / sqrt(head_dim)) normalised to sum 1, and a span's
 * estimated mass is the mean over heads. Kept always: the sink (the spans holding the context's
 * first sink_tokens tokens, or its first span), the recent window (spans holding any of its last
 * recent_tokens tokens) and chunks without an abstract (whole). Then spans by decreasing mass
 * (ties to the earlier span) under one budget: a token count (a span that does not fit is
 * skipped, a smaller later one may still fit), or top-p of the estimated mass.
 *
 * Pure function of its inputs (deterministic); scratch memory comes from the caller.
 */
#ifndef KVT_DAEMON_SELECT_H
#define KVT_DAEMON_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/context.h"

struct kvt_sel_params {
    uint32_t layer;
    uint32_t n_query_heads; /* a multiple of the context's n_heads */
    const float *query;     /* n_query_heads x head_dim */
    uint64_t budget_tokens; /* used when top_p == 0 */
    float top_p;            /* in (0, 1], or 0 */
    uint64_t sink_tokens;
    uint64_t recent_tokens;
    uint32_t n_estimates; /* the best unselected spans to describe in est (RetroInfer) */
};

/* An unselected span an engine may estimate instead of dropping: its abstract's means. */
struct kvt_sel_est {
    uint32_t chunk;
    uint32_t span; /* in the chunk's abstract (kvt_abs_bounds / means index) */
    uint32_t token_first;
    uint32_t n_tokens;
    float mass;
};

/* One run of selected tokens of one chunk (adjacent selected spans merged). */
struct kvt_sel_span {
    uint32_t chunk;
    uint32_t token_first;
    uint32_t n_tokens;
    float mass;
};

struct kvt_sel_result {
    uint32_t n_out; /* runs written */
    uint32_t n_est; /* estimates written */
    uint32_t spans_scored;
    uint32_t spans_total;
    uint64_t tokens_selected;
    uint64_t context_tokens;
    float mass_selected;
};

/* Reusable scratch (grown on demand, bounded by the context's spans). */
struct kvt_sel_scratch {
    void *buf;
    size_t cap;
};
void kvt_sel_scratch_free(struct kvt_sel_scratch *sc);

/* Spans of layer in c (scored or not): what an answer can hold at most. */
uint32_t kvt_sel_spans(const struct kvt_ctx *c, uint32_t layer);

/* Runs Select. out has room for out_max runs (kvt_sel_spans(c, layer) always suffices); est for
 * p->n_estimates entries (may be NULL when it is 0), filled in rank order.
 * 0; KVT_E_INVAL for a layer out of range or a query head count that is not a multiple of the
 * context's heads; KVT_E_NOMEM; KVT_E_SMALLBUF when out is too small. */
int kvt_sel_run(const struct kvt_ctx *c, const struct kvt_sel_params *p, struct kvt_sel_scratch *sc,
                struct kvt_sel_span *out, size_t out_max, struct kvt_sel_est *est,
                struct kvt_sel_result *res);

#endif
