/*
 * Select over a context's span abstracts. See select.h.
 */
#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/select.h"
#include "kernels/kernels.h"
#include "kvtier/errors.h"

/* What Select knows of one span of the layer while it decides. */
struct span {
    uint32_t chunk;
    uint32_t first; /* within the chunk */
    uint32_t n;
    uint32_t abs_span; /* in the chunk's abstract */
    uint8_t forced;    /* sink, recent window or a chunk without abstract */
    uint8_t chosen;
};

void kvt_sel_scratch_free(struct kvt_sel_scratch *sc)
{
    kvt_free(KVT_ALLOC_ABSTRACT, sc->buf);
    sc->buf = NULL;
    sc->cap = 0;
}

static void *scratch(struct kvt_sel_scratch *sc, size_t bytes)
{
    if (bytes <= sc->cap)
        return sc->buf;
    kvt_sel_scratch_free(sc);
    size_t cap = bytes < 65536 ? 65536 : bytes + bytes / 2;
    sc->buf = kvt_malloc(KVT_ALLOC_ABSTRACT, cap);
    if (!sc->buf)
        return NULL;
    sc->cap = cap;
    return sc->buf;
}

static uint32_t chunk_spans(const struct kvt_ctx_chunk *k, uint32_t layer)
{
    return k->abs ? k->abs->layer_first[layer + 1] - k->abs->layer_first[layer] : 1;
}

uint32_t kvt_sel_spans(const struct kvt_ctx *c, uint32_t layer)
{
    if (layer >= c->n_layers)
        return 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < c->n_chunks; i++)
        n += chunk_spans(&c->chunks[i], layer);
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

int kvt_sel_run(const struct kvt_ctx *c, const struct kvt_sel_params *p, struct kvt_sel_scratch *sc,
                struct kvt_sel_span *out, size_t out_max, struct kvt_sel_est *est,
                struct kvt_sel_result *res)
{
    memset(res, 0, sizeof(*res));
    if (p->layer >= c->n_layers || !p->n_query_heads || p->n_query_heads % c->n_heads)
        return KVT_E_INVAL;
    const struct kvt_kernels *k = kvt_kernels();
    uint32_t n_spans = kvt_sel_spans(c, p->layer), H = c->n_heads;
    uint32_t group = p->n_query_heads / H;
    size_t hd = c->head_dim;
    res->spans_total = n_spans;
    res->context_tokens = c->tokens;
    if (!n_spans)
        return 0;

    size_t off_bounds = align8((size_t)n_spans * sizeof(struct span));
    size_t off_mass = off_bounds + align8((size_t)n_spans * H * sizeof(float));
    size_t off_order = off_mass + align8((size_t)n_spans * sizeof(float));
    size_t need = off_order + (size_t)n_spans * sizeof(uint32_t);
    uint8_t *m = scratch(sc, need);
    if (!m)
        return KVT_E_NOMEM;
    struct span *sp = (struct span *)m;
    float *bound = (float *)(m + off_bounds); /* [head][span] */
    float *mass = (float *)(m + off_mass);
    uint32_t *order = (uint32_t *)(m + off_order);

    /* The spans in position order, and their bounds per head. */
    uint64_t recent_from = c->end_pos > p->recent_tokens ? c->end_pos - p->recent_tokens : 0;
    uint32_t at = 0;
    for (uint32_t ci = 0; ci < c->n_chunks; ci++) {
        const struct kvt_ctx_chunk *ch = &c->chunks[ci];
        const struct kvt_abs *a = ch->abs;
        uint32_t s0 = a ? a->layer_first[p->layer] : 0, ns = chunk_spans(ch, p->layer);
        for (uint32_t j = 0; j < ns; j++) {
            struct span *x = &sp[at + j];
            x->chunk = ci;
            x->first = a ? a->span_first[s0 + j] : 0;
            x->n = a ? a->span_len[s0 + j] + 1u : ch->n_tokens;
            x->abs_span = s0 + j;
            uint64_t pos = ch->start_pos + x->first;
            int sink = p->sink_tokens ? pos < p->sink_tokens : at + j == 0;
            int recent = p->recent_tokens && pos + x->n > recent_from;
            x->forced = (uint8_t)(!a || sink || recent);
            x->chosen = 0;
        }
        for (uint32_t h = 0; h < H; h++) {
            float *dst = bound + (size_t)h * n_spans + at;
            if (!a) {
                dst[0] = -INFINITY;
                continue;
            }
            k->bound_f16(p->query + (size_t)h * group * hd, group, kvt_abs_bounds(a, s0, h), ns,
                         (size_t)H * 2u * hd, hd, dst);
        }
        if (a)
            res->spans_scored += ns;
        at += ns;
    }

    /* Estimated mass per span: per head a softmax over the bounds, weighted by span length;
     * then the mean over heads. */
    memset(mass, 0, (size_t)n_spans * sizeof(float));
    const double scale = 1.0 / sqrt((double)hd);
    for (uint32_t h = 0; h < H; h++) {
        const float *b = bound + (size_t)h * n_spans;
        float top = -INFINITY;
        for (uint32_t i = 0; i < n_spans; i++)
            if (b[i] > top)
                top = b[i];
        if (!isfinite(top))
            continue;
        double z = 0;
        for (uint32_t i = 0; i < n_spans; i++)
            if (b[i] > -INFINITY)
                z += sp[i].n * exp(((double)b[i] - top) * scale);
        for (uint32_t i = 0; i < n_spans; i++)
            if (b[i] > -INFINITY)
                mass[i] += (float)(sp[i].n * exp(((double)b[i] - top) * scale) / z / H);
    }

    /* The forced spans first, then the best under the budget. */
    uint64_t tokens = 0;
    double got = 0;
    for (uint32_t i = 0; i < n_spans; i++)
        if (sp[i].forced) {
            sp[i].chosen = 1;
            tokens += sp[i].n;
            got += mass[i];
        }
    size_t ranked = k->topk_f32(mass, n_spans, n_spans, order);
    for (size_t r = 0; r < ranked; r++) {
        struct span *x = &sp[order[r]];
        if (x->chosen)
            continue;
        if (p->top_p > 0) {
            if (got >= (double)p->top_p)
                break;
        } else if (tokens + x->n > p->budget_tokens) {
            continue;
        }
        x->chosen = 1;
        tokens += x->n;
        got += mass[order[r]];
    }

    /* Runs in position order, adjacent chosen spans of one chunk merged. */
    uint32_t n_out = 0;
    for (uint32_t i = 0; i < n_spans; i++) {
        if (!sp[i].chosen)
            continue;
        struct kvt_sel_span *prev = n_out ? &out[n_out - 1] : NULL;
        if (prev && prev->chunk == sp[i].chunk &&
            prev->token_first + prev->n_tokens == sp[i].first) {
            prev->n_tokens += sp[i].n;
            prev->mass += mass[i];
            continue;
        }
        if (n_out == out_max)
            return KVT_E_SMALLBUF;
        out[n_out++] = (struct kvt_sel_span){sp[i].chunk, sp[i].first, sp[i].n, mass[i]};
    }
    /* The best of the rest, for estimation (chunks without abstract have nothing to give). */
    uint32_t n_est = 0;
    for (size_t r = 0; r < ranked && n_est < p->n_estimates; r++) {
        const struct span *x = &sp[order[r]];
        if (x->chosen || !c->chunks[x->chunk].abs)
            continue;
        est[n_est++] = (struct kvt_sel_est){x->chunk, x->abs_span, x->first, x->n, mass[order[r]]};
    }
    res->n_est = n_est;
    res->n_out = n_out;
    res->tokens_selected = tokens;
    res->mass_selected = (float)got;
    return 0;
}
