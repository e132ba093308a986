/*
 * The KV seam: every place the engine keeps attention keys and values goes through one small
 * operations table, so that new strategies (sparse retrieval, position-independent reuse,
 * clustering, quantization) plug in without touching the forward pass.
 *
 * Data model. For each layer and position the engine produces one "row" of fp16 values laid out
 * [k|v][kv_head][head_dim] (keys after RoPE). That is exactly one token of one layer in kvtier's
 * canonical chunk layout [layer][token][k|v][kv_head][head_dim], so a mode can move rows between
 * its memory and kvtier without reshuffling. Readers see the KV of a layer as an ordered list of
 * spans, each a run of consecutive positions whose rows are contiguous in memory.
 *
 * Call order for one forward step over positions [pos, pos+n):
 *   prepare(pos, n)                          make the KV of [0, pos) readable (fetch, decompress)
 *   for each layer: append(layer, pos, n, rows);
 *                   select(layer, queries, ...) when the mode has it and does not decline,
 *                   else spans(layer, pos+n, ...)
 *   commit(tokens, pos+n)                    persist what became complete (full chunks)
 * begin() starts a sequence and may declare a prefix already available (prefix reuse).
 *
 * Attention of a query row runs over exactly the rows its spans cover, in position order, with
 * the same arithmetic whatever their number: a softmax over the covered rows only, so a mode that
 * covers [0, end) with any number of spans gives the same bits as one span, and a mode that
 * returns fewer rows (sparse retrieval) makes the model attend to those rows and no others.
 *
 * Merged entries (lossy modes). A mode may keep fewer entries than positions: clustering merges
 * several positions of a (layer, KV head) into one entry that stands for `count` of them. Such
 * entries still travel as rows of a span, and the span's bias (kvt_eng_kv_span) adds log(count)
 * to their attention logits, so one entry weighs as much as the count equal keys it replaced.
 * Their span's pos and n_tokens then number entries, not positions: the spans of a layer stay in
 * increasing, disjoint order, and the entries of merged positions come before the rows still kept
 * one a position, whose spans carry real positions (a query's causal limit only ever cuts those).
 * The forward pass zeroes the span arrays before spans() and select(), so a mode that never sets
 * bias leaves it NULL and attention is unchanged, bit for bit.
 *
 * Modes in this tree: resident (kv_resident.c), offload and sparse (kv_offload.c), q8
 * (kv_q8.c), and the lossy quant (kv_quant.c) and cluster (kv_cluster.c).
 */
#ifndef KVT_ENGINE_KV_H
#define KVT_ENGINE_KV_H

#include <stddef.h>
#include <stdint.h>

struct kvt_eng_kv_geom {
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    size_t ctx_max;   /* positions a sequence may reach */
    size_t batch_max; /* positions one step may append */
};

/* fp16 values in one row: 2 * n_head_kv * head_dim. */
static inline size_t kvt_eng_kv_row_halfs(const struct kvt_eng_kv_geom *g)
{
    return 2 * (size_t)g->n_head_kv * g->head_dim;
}

/* A run of positions [pos, pos + n_tokens) of one layer; row i starts at rows + i * row_halfs.
 * bias: NULL, or n_tokens * n_head_kv floats (row i, KV head h at i * n_head_kv + h) added to the
 * scaled logits q.k / sqrt(head_dim) of that row and head before the softmax: log(count) for an
 * entry that merged count positions (0 for one that merged none). Borrowed like rows. */
struct kvt_eng_kv_span {
    const uint16_t *rows;
    size_t pos;
    size_t n_tokens;
    const float *bias;
};

/* Counters every mode keeps. Bytes fetched are split by the tier that served them (indexed by
 * enum kvt_tier_id; 0 is local memory). */
#define KVT_ENG_KV_TIERS 5
struct kvt_eng_kv_stats {
    uint64_t fetch_bytes[KVT_ENG_KV_TIERS];
    uint64_t fetch_chunks;
    uint64_t store_bytes;
    uint64_t store_chunks;
    uint64_t reused_tokens;
    uint64_t fetch_ns;
    uint64_t store_ns;
    uint64_t prefetch_hit_bytes; /* sparse: rows a layer found already read ahead for it */
};

/* The queries of one layer in one step, as select() sees them (borrowed for the call). */
struct kvt_eng_kv_query {
    const float *q;    /* [n_tokens][n_head][head_dim] fp32, after RoPE, not yet rounded */
    size_t pos;        /* position of row 0; row t is the query of position pos + t */
    size_t n_tokens;   /* rows in this step (1 in a decode step) */
    uint32_t n_head;   /* query heads; head h reads KV head h / (n_head / n_head_kv) */
    uint32_t head_dim; /* as in the geometry */
};

/* select() returns this (positive) to decline: every row then attends to spans(). */
#define KVT_ENG_KV_DECLINE 1

struct kvt_eng_kv;

struct kvt_eng_kv_ops {
    const char *name;
    /* Starts a sequence whose first n tokens will be tokens[0..n). With allow_reuse the mode may
     * find the KV of a leading part elsewhere: *reused_out gets how many leading positions need
     * no computing (always < n, so the last token is computed and gives logits). */
    int (*begin)(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                 size_t *reused_out);
    /* Before computing [pos, pos + n): makes [0, pos) readable through spans(). */
    int (*prepare)(struct kvt_eng_kv *kv, size_t pos, size_t n);
    /* Stores the rows of positions [pos, pos + n) of one layer (copied). */
    int (*append)(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                  const uint16_t *rows);
    /* Fills out (capacity max) with the spans covering [0, end) of a layer, in position order;
     * returns their count or a negative error. Pointers stay valid until the next prepare. */
    int (*spans)(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                 size_t max);
    /* Optional (NULL: the mode never restricts attention). Called per layer after append() with
     * the step's queries, in place of spans(). Either returns KVT_ENG_KV_DECLINE (spans() is then
     * called and every row attends to all of [0, pos + t]), or selects for every row: row t's
     * spans go to out + t * max (capacity max = spans_max), their count to counts[t], and it
     * returns 0. A row's spans (one at least) are in increasing position order, disjoint,
     * non-empty, and cover only positions <= pos + t (its causal past, its own row included or
     * not); the forward pass checks this and fails the step with -EINVAL otherwise. The row
     * pointers stay valid until the next prepare. A mode that cannot select per row for a batch
     * (n_tokens > 1) declines it; sparse modes select in decode steps and decline batches, so a
     * prefill is full attention. Negative: an error, which ends the step. */
    int (*select)(struct kvt_eng_kv *kv, uint32_t layer, const struct kvt_eng_kv_query *q,
                  struct kvt_eng_kv_span *out, size_t max, size_t *counts);
    /* After a step: tokens[0..n) is the whole sequence so far. */
    int (*commit)(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n);
    void (*destroy)(struct kvt_eng_kv *kv);
};

/* Base of every mode's state (first member). */
struct kvt_eng_kv {
    const struct kvt_eng_kv_ops *ops;
    struct kvt_eng_kv_geom geom;
    struct kvt_eng_kv_stats stats;
    size_t spans_max;    /* most spans spans() returns for one layer, or select() for one row;
                          * callers size arrays with it */
    size_t token_bytes;  /* bytes one position of KV (all layers) takes in the mode's own
                          * representation: fp16 rows 2 * layers * kv_heads * head_dim * 2 */
    uint64_t bytes_kept; /* lossy modes (quant, cluster): bytes the mode keeps now for the whole
                          * sequence, all layers, in its own representation (codes, group
                          * constants, merged entries, counts and the rows still in fp16); 0 in
                          * the other modes, where every position takes token_bytes */
};

/* What a selecting mode is told to keep (parsed by the command line; modes that do not select
 * refuse a config with any field set). */
enum kvt_eng_span_policy { KVT_ENG_SPANS_DEFAULT, KVT_ENG_SPANS_FIXED, KVT_ENG_SPANS_VARIABLE };
struct kvt_eng_select_config {
    double budget; /* fraction of the context in (0, 1]; 0: not given */
    double top_p;  /* fraction of the estimated attention mass in (0, 1]; 0: not given */
    enum kvt_eng_span_policy spans;
    int prefetch; /* sparse: read the next layer's spans ahead (kv_prefetch.h); off by default */
    /* sparse: the best unselected spans (at most KVT_ENG_ESTIMATES_MAX) a step also attends to
     * through their abstract's means, as one entry of weight n_tokens each (RetroInfer's
     * estimate: logit q.mean_k + log n, value mean_v); 0: none, unselected spans are dropped */
    uint32_t estimates;
};
#define KVT_ENG_ESTIMATES_MAX 4096

static inline int kvt_eng_select_config_is_set(const struct kvt_eng_select_config *c)
{
    return c->budget != 0.0 || c->top_p != 0.0 || c->spans != KVT_ENG_SPANS_DEFAULT ||
           c->prefetch || c->estimates;
}

int kvt_eng_kv_resident_create(const struct kvt_eng_kv_geom *geom, struct kvt_eng_kv **out);

/* q8: rows stay in the engine's memory like resident, but every key and value row is
 * fake-quantized on append (kvt_eng_kv_q8_round), the calibration point of 8-bit KV. */
int kvt_eng_kv_q8_create(const struct kvt_eng_kv_geom *geom, struct kvt_eng_kv **out);

/* 8-bit asymmetric group quantization, in place, of n fp16 values (n a multiple of
 * KVT_ENG_Q8_GROUP): per group of 32 consecutive values, min m and scale s = (max - m) / 255 are
 * rounded to fp16 (what a stored format keeps), each value becomes q = round-to-nearest((x - m) /
 * s) clamped to [0, 255] and is replaced by the fp16 rounding of m + q * s. A constant group
 * (s = 0) is kept as m. The KV rows of the q8 mode go through this per k|v and KV head, so groups
 * run along head_dim. */
#define KVT_ENG_Q8_GROUP 32
void kvt_eng_kv_q8_round(uint16_t *vals, size_t n);

/* The lossy modes' parameters (kvtier-engine --bits, --kivi, --group, --ratio, --window,
 * --sinks, --recent). Both modes keep positions [0, sinks) and the last `recent` positions before
 * each step's first in fp16, exactly as computed; the rest is lossy.
 *
 * quant: each row that leaves the recent window is quantized with the kernels' group format
 * (kernels/quant.h, bits 8 or 4, groups of `group`) and read back dequantized. Default: keys and
 * values grouped along head_dim (per token); keys_per_channel: keys grouped along the tokens of
 * each channel (KIVI), `group` positions at a time (keys wait in fp16 until a whole group has
 * left the window), values still per token.
 *
 * cluster: positions after the sinks form windows of `window` positions; once a whole window has
 * left the recent window, each (layer, KV head) of it is clustered (kernels/cluster.h:
 * alternate A/B split, match by key cosine, merge into count-weighted means), removing
 * round(ratio * window) of its entries in one or more passes (one pass removes at most half).
 * Attention adds log(count) to a merged entry's logits. */
struct kvt_eng_lossy_config {
    uint32_t bits;        /* quant: 8 or 4; 0: 8 */
    uint32_t group;       /* quant: values a group; 0: 32 */
    int keys_per_channel; /* quant: KIVI grouping of keys */
    double ratio;         /* cluster: share of a window's entries removed, in [0, 1) */
    uint32_t window;      /* cluster: positions a window; 0: 32 */
    uint32_t sinks;       /* leading positions never made lossy */
    uint32_t recent;      /* trailing positions never made lossy */
};

/* Defaults of the command line. */
#define KVT_ENG_LOSSY_SINKS_DEFAULT 4
#define KVT_ENG_LOSSY_RECENT_DEFAULT 128

/* quant and cluster (engine/kv_quant.c, engine/kv_cluster.c): -EINVAL for a config out of range
 * (bits not 8 or 4, a group the format refuses, ratio outside [0, 1), window outside
 * [2, KVT_CLUSTER_WINDOW_MAX] or odd). sel, when set, adds sparse retrieval over the lossy rows
 * (kv_lossy_select.c): budget only, NULL or unset for none. */
int kvt_eng_kv_quant_create(const struct kvt_eng_kv_geom *geom,
                            const struct kvt_eng_lossy_config *cfg,
                            const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out);
int kvt_eng_kv_cluster_create(const struct kvt_eng_kv_geom *geom,
                              const struct kvt_eng_lossy_config *cfg,
                              const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out);

/* Offload: full chunks live in kvtier, the partial tail in local memory. */
struct kvt_eng_offload_config {
    const char *socket_path; /* NULL: $KVTIER_SOCKET or the default */
    const char *tenant;      /* NULL: "default" */
    const char *model_id;    /* namespace model id */
    uint32_t tokens_per_chunk;
    uint32_t timeout_ms; /* per libkvtier call; 0: 5000 */
    float rope_theta;
    uint32_t rotary_dims;
    uint32_t rope_style; /* kvt_ns_spec.rope_style: 0 neox, 1 gpt-j (interleaved pairs) */
};

/* Sparse: offload whose decode steps attend only to the spans kvtier selects for each layer's
 * query (Select under sel's budget or top-p, then those rows fetched), plus the local tail. sel
 * needs a budget or a top_p in (0, 1]. */
int kvt_eng_kv_sparse_create(const struct kvt_eng_kv_geom *geom,
                             const struct kvt_eng_offload_config *cfg,
                             const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out);

/* Connects to the daemon and registers the namespace; errors from libkvtier pass through. */
int kvt_eng_kv_offload_create(const struct kvt_eng_kv_geom *geom,
                              const struct kvt_eng_offload_config *cfg, struct kvt_eng_kv **out);

static inline void kvt_eng_kv_destroy(struct kvt_eng_kv *kv)
{
    if (kv)
        kv->ops->destroy(kv);
}

#endif
