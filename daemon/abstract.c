/*
 * Span abstracts: building them from a chunk's bytes, and the store that keeps one per index
 * entry. See abstract.h.
 */
#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/abstract.h"
#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kvtier/errors.h"

static uint32_t spans_per_layer_max(const struct kvt_abs_geom *g, const struct kvt_span_policy *p)
{
    return (g->n_tokens + p->block_tokens - 1) / p->block_tokens;
}

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Bytes of an abstract of g with room for spans spans (all layers). */
static size_t abs_size(const struct kvt_abs_geom *g, size_t spans)
{
    size_t per = (size_t)g->n_heads * 2u * g->head_dim * sizeof(uint16_t);
    return align8(sizeof(struct kvt_abs)) + align8((g->n_layers + 1u) * sizeof(uint32_t)) +
           2 * align8(spans * sizeof(uint16_t)) + 2 * spans * per;
}

/* Points a's arrays into m, an allocation of abs_size(&a->g, spans) bytes that starts with a. */
static void abs_carve(struct kvt_abs *a, uint8_t *m, size_t spans)
{
    const struct kvt_abs_geom *g = &a->g;
    size_t at = align8(sizeof(*a));
    a->layer_first = (uint32_t *)(m + at);
    at += align8((g->n_layers + 1u) * sizeof(uint32_t));
    a->span_first = (uint16_t *)(m + at);
    at += align8(spans * sizeof(uint16_t));
    a->span_len = (uint16_t *)(m + at);
    at += align8(spans * sizeof(uint16_t));
    a->bounds = (uint16_t *)(m + at);
    a->means = a->bounds + spans * g->n_heads * 2u * g->head_dim;
}

size_t kvt_abs_bytes(const struct kvt_abs_geom *g, uint32_t max_spans_per_layer)
{
    return abs_size(g, (size_t)g->n_layers * max_spans_per_layer);
}

int kvt_span_policy_resolve(const struct kvt_span_policy *asked, const struct kvt_span_policy *dflt,
                            struct kvt_span_policy *out, const char **why)
{
    *out = *dflt;
    if (asked->kind > KVT_SPANS_VARIABLE) {
        *why = "unknown span policy kind";
        return KVT_E_INVAL;
    }
    if (asked->kind != KVT_SPANS_DEFAULT)
        out->kind = asked->kind;
    if (asked->block_tokens)
        out->block_tokens = asked->block_tokens;
    if (asked->max_tokens)
        out->max_tokens = asked->max_tokens;
    if (asked->merge_tol != 0.0f)
        out->merge_tol = asked->merge_tol;
    out->fine_layers = asked->fine_layers != UINT32_MAX ? asked->fine_layers : dflt->fine_layers;
    if (!out->block_tokens || out->block_tokens > KVT_SPAN_TOKENS_MAX ||
        out->max_tokens > KVT_SPAN_TOKENS_MAX) {
        *why = "span block_tokens must be 1..32768 and max_tokens at most 32768";
        return KVT_E_INVAL;
    }
    if (out->max_tokens < out->block_tokens)
        out->max_tokens = out->block_tokens;
    if (!(out->merge_tol >= 0.0f && out->merge_tol <= 100.0f)) {
        *why = "span merge_tol must be within 0..100";
        return KVT_E_INVAL;
    }
    return 0;
}

struct kvt_abs *kvt_abs_alloc(const struct kvt_abs_geom *g, const struct kvt_span_policy *p)
{
    if (!g->n_layers || !g->n_heads || !g->head_dim || !g->n_tokens ||
        g->n_tokens > UINT16_MAX + 1u)
        return NULL;
    size_t spans = (size_t)g->n_layers * spans_per_layer_max(g, p), bytes = abs_size(g, spans);
    uint8_t *m = kvt_malloc(KVT_ALLOC_ABSTRACT, bytes);
    if (!m)
        return NULL;
    struct kvt_abs *a = (struct kvt_abs *)m;
    memset(a, 0, sizeof(*a));
    a->refs = 1;
    a->g = *g;
    a->bytes = bytes;
    abs_carve(a, m, spans);
    return a;
}

struct kvt_abs *kvt_abs_alloc_spans(const struct kvt_abs_geom *g, uint32_t n_spans)
{
    if (!g->n_layers || !g->n_heads || !g->head_dim || !g->n_tokens ||
        g->n_tokens > UINT16_MAX + 1u || n_spans < g->n_layers ||
        (uint64_t)n_spans > (uint64_t)g->n_layers * g->n_tokens)
        return NULL;
    size_t bytes = abs_size(g, n_spans);
    uint8_t *m = kvt_malloc(KVT_ALLOC_ABSTRACT, bytes);
    if (!m)
        return NULL;
    struct kvt_abs *a = (struct kvt_abs *)m;
    memset(a, 0, sizeof(*a));
    a->refs = 1;
    a->g = *g;
    a->bytes = bytes;
    a->n_spans = n_spans;
    abs_carve(a, m, n_spans);
    return a;
}

void kvt_abs_unref(struct kvt_abs *a)
{
    if (a && --a->refs == 0)
        kvt_free(KVT_ALLOC_ABSTRACT, a);
}

/* Running abstract of a span for every head: fp32 min, max and sums, hd = n_heads * head_dim
 * values each. */
struct acc {
    float *min, *max, *ksum, *vsum;
    uint32_t first, len;
};

static void acc_block(struct acc *x, const struct kvt_abs_geom *g, const uint16_t *rows,
                      uint32_t first, uint32_t len)
{
    const struct kvt_kernels *k = kvt_kernels();
    size_t row = 2u * g->n_heads * g->head_dim, hd = g->head_dim;
    const uint16_t *r0 = rows + (size_t)first * row;
    for (uint32_t h = 0; h < g->n_heads; h++) {
        k->abstract_minmax_f16(r0 + h * hd, len, row, hd, x->min + h * hd, x->max + h * hd);
        k->sum_f16(r0 + h * hd, len, row, hd, x->ksum + h * hd);
        k->sum_f16(r0 + (g->n_heads + h) * hd, len, row, hd, x->vsum + h * hd);
    }
    x->first = first;
    x->len = len;
}

/* Sum over heads and channels of max - min of the union of a and b (b may be NULL), ignoring
 * channels with no finite bound. */
static double width(const struct acc *a, const struct acc *b, size_t n)
{
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        float lo = a->min[i], hi = a->max[i];
        if (b) {
            lo = fminf(lo, b->min[i]);
            hi = fmaxf(hi, b->max[i]);
        }
        if (isfinite(lo) && isfinite(hi))
            w += (double)hi - (double)lo;
    }
    return w;
}

static void acc_merge(struct acc *into, const struct acc *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        into->min[i] = fminf(into->min[i], b->min[i]);
        into->max[i] = fmaxf(into->max[i], b->max[i]);
        into->ksum[i] += b->ksum[i];
        into->vsum[i] += b->vsum[i];
    }
    into->len += b->len;
}

static void emit(struct kvt_abs *a, const struct acc *x)
{
    const struct kvt_abs_geom *g = &a->g;
    uint32_t s = a->n_spans++;
    a->span_first[s] = (uint16_t)x->first;
    a->span_len[s] = (uint16_t)(x->len - 1u); /* 1..65536 tokens stored as len - 1 */
    size_t hd = g->head_dim;
    float inv = 1.0f / (float)x->len;
    for (uint32_t h = 0; h < g->n_heads; h++) {
        uint16_t *b = a->bounds + ((size_t)s * g->n_heads + h) * 2u * hd;
        uint16_t *m = a->means + ((size_t)s * g->n_heads + h) * 2u * hd;
        for (size_t i = 0; i < hd; i++) {
            b[i] = kvt_f32_to_f16(x->min[h * hd + i]);
            b[hd + i] = kvt_f32_to_f16(x->max[h * hd + i]);
            m[i] = kvt_f32_to_f16(x->ksum[h * hd + i] * inv);
            m[hd + i] = kvt_f32_to_f16(x->vsum[h * hd + i] * inv);
        }
    }
}

void kvt_abs_build(struct kvt_abs *a, const struct kvt_span_policy *p, const uint16_t *chunk)
{
    const struct kvt_abs_geom *g = &a->g;
    size_t n = (size_t)g->n_heads * g->head_dim, row = 2 * n;
    /* Two running abstracts, on the stack for the usual geometries (64 KiB at most). */
    enum { STACK_FLOATS = 8 * 2048 };
    float stack[STACK_FLOATS], *buf = stack;
    if (8 * n > STACK_FLOATS) {
        buf = kvt_malloc(KVT_ALLOC_ABSTRACT, 8 * n * sizeof(float));
        if (!buf) {
            a->n_spans = 0; /* an empty abstract is dropped by its owner */
            return;
        }
    }
    struct acc cur = {buf, buf + n, buf + 2 * n, buf + 3 * n, 0, 0};
    struct acc nxt = {buf + 4 * n, buf + 5 * n, buf + 6 * n, buf + 7 * n, 0, 0};
    a->n_spans = 0;
    for (uint32_t l = 0; l < g->n_layers; l++) {
        const uint16_t *rows = chunk + (size_t)l * g->n_tokens * row;
        int merge = p->kind == KVT_SPANS_VARIABLE && l >= p->fine_layers;
        a->layer_first[l] = a->n_spans;
        uint32_t t = 0, bt = p->block_tokens;
        acc_block(&cur, g, rows, 0, bt < g->n_tokens ? bt : g->n_tokens);
        t = cur.len;
        double wcur = merge ? width(&cur, NULL, n) : 0;
        while (t < g->n_tokens) {
            uint32_t len = g->n_tokens - t < bt ? g->n_tokens - t : bt;
            acc_block(&nxt, g, rows, t, len);
            t += len;
            if (merge && cur.len + nxt.len <= p->max_tokens) {
                double wn = width(&nxt, NULL, n), wu = width(&cur, &nxt, n);
                double wmax = wcur > wn ? wcur : wn;
                if (wu <= (1.0 + (double)p->merge_tol) * wmax) {
                    acc_merge(&cur, &nxt, n);
                    wcur = wu;
                    continue;
                }
                emit(a, &cur);
                struct acc sw = cur;
                cur = nxt;
                nxt = sw;
                wcur = wn;
                continue;
            }
            emit(a, &cur);
            struct acc sw = cur;
            cur = nxt;
            nxt = sw;
            wcur = merge ? width(&cur, NULL, n) : 0;
        }
        emit(a, &cur);
    }
    a->layer_first[g->n_layers] = a->n_spans;
    if (buf != stack)
        kvt_free(KVT_ALLOC_ABSTRACT, buf);
}

struct kvt_abs *kvt_abs_compact(const struct kvt_abs *a)
{
    const struct kvt_abs_geom *g = &a->g;
    size_t n = a->n_spans, bytes = abs_size(g, n);
    size_t per = (size_t)g->n_heads * 2u * g->head_dim;
    if (!n || bytes + bytes / 8 >= a->bytes)
        return (struct kvt_abs *)a;
    uint8_t *m = kvt_malloc(KVT_ALLOC_ABSTRACT, bytes);
    if (!m)
        return (struct kvt_abs *)a;
    struct kvt_abs *c = (struct kvt_abs *)m;
    *c = *a;
    c->refs = 1;
    c->bytes = bytes;
    abs_carve(c, m, n);
    memcpy(c->layer_first, a->layer_first, (g->n_layers + 1u) * sizeof(uint32_t));
    memcpy(c->span_first, a->span_first, n * sizeof(uint16_t));
    memcpy(c->span_len, a->span_len, n * sizeof(uint16_t));
    memcpy(c->bounds, a->bounds, n * per * sizeof(uint16_t));
    memcpy(c->means, a->means, n * per * sizeof(uint16_t));
    return c;
}

/* ---- the store --------------------------------------------------------------------------------
 */

int kvt_abs_store_init(struct kvt_abs_store *st, uint32_t cap, uint64_t bytes_max)
{
    memset(st, 0, sizeof(*st));
    st->v = kvt_calloc(KVT_ALLOC_ABSTRACT, cap, sizeof(*st->v));
    if (!st->v)
        return KVT_E_NOMEM;
    st->cap = cap;
    st->bytes_max = bytes_max;
    return 0;
}

void kvt_abs_store_deinit(struct kvt_abs_store *st)
{
    for (uint32_t i = 0; st->v && i < st->cap; i++)
        kvt_abs_unref(st->v[i]);
    kvt_free(KVT_ALLOC_ABSTRACT, st->v);
    memset(st, 0, sizeof(*st));
}

int kvt_abs_store_room(const struct kvt_abs_store *st, size_t bytes)
{
    return st->bytes + bytes <= st->bytes_max;
}

void kvt_abs_store_drop(struct kvt_abs_store *st, uint32_t id)
{
    if (id >= st->cap || !st->v[id])
        return;
    st->bytes -= st->v[id]->bytes;
    kvt_abs_unref(st->v[id]);
    st->v[id] = NULL;
}

int kvt_abs_store_keep(struct kvt_abs_store *st, uint32_t id, struct kvt_abs *a)
{
    kvt_abs_store_drop(st, id);
    if (!a)
        return 0;
    if (id >= st->cap || !a->n_spans || !kvt_abs_store_room(st, a->bytes)) {
        st->dropped++;
        kvt_abs_unref(a);
        return 0;
    }
    st->v[id] = a;
    st->bytes += a->bytes;
    return 1;
}

void kvt_abs_store_set(struct kvt_abs_store *st, uint32_t id, struct kvt_abs *a)
{
    st->built += (uint64_t)kvt_abs_store_keep(st, id, a);
}
