/*
 * Span abstracts: what Select knows of a chunk without reading its bytes (docs/sparse.md).
 *
 * Each layer of a chunk is cut into spans (runs of consecutive tokens). For every (layer, span,
 * KV head) the abstract holds the per-channel minimum and maximum of the span's keys — Quest's
 * bound: sum_i max(q_i m_i, q_i M_i) is at least q.k for every key of the span — plus the mean
 * key and the mean value, which with the span's token count let an engine estimate what the
 * span would have contributed (RetroInfer). Minimums and maximums are fp16 values of the keys
 * themselves, so they are stored exactly in fp16; the means are rounded to fp16.
 *
 * Spans are built on Put by kvt_abs_build, on a worker, from the chunk's bytes in the canonical
 * layout [layer][token][k|v][kv_head][head_dim] (fp16 only). Fixed spans are base blocks of
 * block_tokens tokens; variable spans (LeoAM) merge neighbouring blocks, left to right, while the
 * merged span's width (the sum over heads and channels of max - min) stays within (1 + merge_tol)
 * of the wider part and the span stays within max_tokens; the first fine_layers layers keep base
 * blocks, since their attention is spread thin.
 *
 * An abstract is one allocation (tag MISC), immutable once built, reference counted on the loop
 * thread: the abstract store holds one reference per index entry, each context one per chunk, so
 * a context can still score a chunk whose bytes have left every tier.
 */
#ifndef KVT_DAEMON_ABSTRACT_H
#define KVT_DAEMON_ABSTRACT_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h" /* struct kvt_span_policy, enum kvt_span_kind */

/* Largest base block and merged span, in tokens (span offsets are 16-bit). */
#define KVT_SPAN_TOKENS_MAX 32768u

struct kvt_abs_geom {
    uint32_t n_layers;
    uint32_t n_heads; /* KV heads */
    uint32_t head_dim;
    uint32_t n_tokens;
};

struct kvt_abs {
    uint32_t refs;
    struct kvt_abs_geom g;
    uint32_t n_spans; /* over all layers */
    size_t bytes;     /* of the allocation */
    /* Spans of layer l are [layer_first[l], layer_first[l + 1]). */
    uint32_t *layer_first;
    uint16_t *span_first; /* first token of each span, within the chunk */
    uint16_t *span_len;   /* tokens of each span minus 1 (1..65536 tokens) */
    /* bounds + (s * n_heads + h) * 2 * head_dim: head_dim minimums then head_dim maximums of
     * span s, head h (the layout the bound kernel scans with a stride of n_heads * 2 * head_dim).
     */
    uint16_t *bounds;
    /* means + (s * n_heads + h) * 2 * head_dim: the mean key then the mean value. */
    uint16_t *means;
};

/* Bytes an abstract of g with at most max_spans_per_layer spans per layer needs. */
size_t kvt_abs_bytes(const struct kvt_abs_geom *g, uint32_t max_spans_per_layer);

/* Checks and completes a policy: DEFAULT fields are taken from dflt (itself complete). 0, or
 * KVT_E_INVAL with the reason in *why. */
int kvt_span_policy_resolve(const struct kvt_span_policy *asked, const struct kvt_span_policy *dflt,
                            struct kvt_span_policy *out, const char **why);

/* Allocates an abstract for a chunk of geometry g under policy p (not NONE), sized for its
 * finest cut, with one reference. NULL when out of memory or g is empty. Loop thread. */
struct kvt_abs *kvt_abs_alloc(const struct kvt_abs_geom *g, const struct kvt_span_policy *p);

/* Allocates an abstract of geometry g with room for exactly n_spans spans over all layers (one
 * reference; its arrays uninitialised, n_spans set): what a serialized abstract is read into
 * (daemon/abstract_io.h). NULL when out of memory or g or n_spans is out of range. */
struct kvt_abs *kvt_abs_alloc_spans(const struct kvt_abs_geom *g, uint32_t n_spans);

/* Fills a from the chunk's fp16 bytes (canonical layout, g's geometry). Any thread: it touches
 * only a and chunk. */
void kvt_abs_build(struct kvt_abs *a, const struct kvt_span_policy *p, const uint16_t *chunk);

/* A copy of built abstract a sized for the spans it has (variable spans merge, so it is often
 * smaller than its allocation), or a itself when the copy would save little or cannot be made.
 * The caller owns the result (one reference) and, when it differs, still owns a. Any thread. */
struct kvt_abs *kvt_abs_compact(const struct kvt_abs *a);

static inline void kvt_abs_ref(struct kvt_abs *a)
{
    a->refs++;
}
/* Drops a reference; frees at zero. NULL-safe. Loop thread. */
void kvt_abs_unref(struct kvt_abs *a);

/* Span s of a: its layer-relative data, for Select. */
static inline const uint16_t *kvt_abs_bounds(const struct kvt_abs *a, uint32_t s, uint32_t h)
{
    return a->bounds + ((size_t)s * a->g.n_heads + h) * 2u * a->g.head_dim;
}

/*
 * The abstract store: one optional abstract per index entry, counted against a byte limit. An
 * abstract that does not fit is not kept (its chunk has none; counted in dropped).
 */
struct kvt_abs_store {
    struct kvt_abs **v; /* by index entry id */
    uint32_t cap;
    uint64_t bytes;     /* of the abstracts held */
    uint64_t bytes_max; /* 0: none kept */
    uint64_t built;
    uint64_t dropped;
};

int kvt_abs_store_init(struct kvt_abs_store *st, uint32_t cap, uint64_t bytes_max);
void kvt_abs_store_deinit(struct kvt_abs_store *st);
/* Whether an abstract of that many bytes would be kept now. */
int kvt_abs_store_room(const struct kvt_abs_store *st, size_t bytes);
/* Gives entry id the abstract a (the store takes the caller's reference; a previous one is
 * dropped). A store without room drops a instead and counts it. */
void kvt_abs_store_set(struct kvt_abs_store *st, uint32_t id, struct kvt_abs *a);
/* The same without counting a as built (an abstract read back from disk at start): 1 when a is
 * kept, 0 when it was dropped. */
int kvt_abs_store_keep(struct kvt_abs_store *st, uint32_t id, struct kvt_abs *a);
/* The entry's abstract (borrowed), or NULL. */
static inline struct kvt_abs *kvt_abs_store_get(const struct kvt_abs_store *st, uint32_t id)
{
    return id < st->cap ? st->v[id] : NULL;
}
/* The entry left the index: its reference goes. */
void kvt_abs_store_drop(struct kvt_abs_store *st, uint32_t id);

#endif
