/*
 * Sparse retrieval over a lossy mode's own rows (quant, cluster with --budget): Quest's rule on
 * fixed blocks of KVT__ENG_LSEL_BLOCK rows, all inside the engine (no daemon). A layer's rows are
 * a "frozen" part [0, frozen) (rows that no longer change: quantized positions, or clustered
 * entries with their bias) followed by the rows still kept one a position. Each complete block of
 * the frozen part has per-channel key minima m and maxima M per KV head; for a query q its
 * bound Σ_d max(q_d m_d, q_d M_d) is an upper bound of q·k over the block, maximised over the
 * query heads. A decode step attends to the top blocks by bound, ceil(budget * blocks) of them,
 * plus block 0 (the attention sinks), the incomplete last block of the frozen part and every row
 * after it (the recent window). Batches (prefill) are declined: full attention.
 */
#ifndef KVT_ENGINE_KV_LOSSY_H
#define KVT_ENGINE_KV_LOSSY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/kv.h"

#define KVT__ENG_LSEL_BLOCK 16

struct kvt__eng_lsel {
    struct kvt_eng_kv_geom geom;
    double budget;
    size_t blocks_max;
    size_t *blocks;  /* [layer]: complete blocks with abstracts */
    float *minmax;   /* [layer][block][n_head_kv][2][head_dim] */
    float *score;    /* [blocks_max] */
    uint32_t *order; /* [blocks_max] */
};

/* Spans one select() may return: each selected block apart, plus the frozen tail and the rest. */
size_t kvt__eng_lsel_spans_max(const struct kvt_eng_kv_geom *g);

int kvt__eng_lsel_init(struct kvt__eng_lsel *s, const struct kvt_eng_kv_geom *g, double budget);
void kvt__eng_lsel_deinit(struct kvt__eng_lsel *s);
void kvt__eng_lsel_reset(struct kvt__eng_lsel *s);

/* The layer's rows of [0, frozen) are final: abstracts for the complete blocks not yet done. */
void kvt__eng_lsel_update(struct kvt__eng_lsel *s, uint32_t layer, const uint16_t *rows,
                          size_t frozen);

/* One decode query (q->n_tokens == 1) of a layer: the frozen part is rows[0, frozen) at entry
 * numbers 0.. (with bias, may be NULL); the rest, rows `rest` at positions [rest_pos, rest_pos +
 * rest_n), follows. Writes at most max spans to out and returns their count (or -EINVAL). */
int kvt__eng_lsel_select(struct kvt__eng_lsel *s, uint32_t layer, const struct kvt_eng_kv_query *q,
                         const uint16_t *rows, const float *bias, size_t frozen,
                         const uint16_t *rest, size_t rest_pos, size_t rest_n,
                         struct kvt_eng_kv_span *out, size_t max);

#endif
