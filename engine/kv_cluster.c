/*
 * cluster KV mode (issue 12, Chelsea with KeepKV's counts): positions after the attention sinks
 * form windows of `window` positions; once a whole window has left the recent window, each
 * (layer, KV head) of it is clustered by the kernels (kernels/cluster.h: A/B split, match by key
 * cosine, the most similar pairs merged into count-weighted means of keys and values), removing
 * round(ratio * window) entries. One pass removes at most half of a window's entries, so larger
 * ratios run further passes over the merged entries with their counts. Every head of a window
 * keeps the same number of entries (the kernel merges the same number of pairs whatever the
 * keys), so the entries of all KV heads still share rows of the engine's layout
 * [k|v][kv_head][head_dim]; which positions an entry stands for differs from head to head.
 *
 * Layout, per layer: the entries (sinks, then each clustered window's entries) from row 0, then
 * the positions not yet clustered (from raw_from on) one row each, contiguous. A span of entries
 * carries bias = log(count) per (entry, KV head) (kv.h); its pos and n_tokens number entries.
 * Clustering a window writes its entries over the window's first rows and moves the rows after it
 * down (the recent window: a few hundred rows).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kv.h"
#include "engine/kv_lossy.h"
#include "kernels/cluster.h"
#include "kernels/kernels.h"

/* Bytes a kept format would store per (entry, KV head) for its count. */
#define CLUSTER_COUNT_BYTES 2

struct kv_cluster {
    struct kvt_eng_kv base;
    struct kvt_eng_lossy_config cfg;
    const struct kvt_kernels *kt;
    size_t row_halfs;
    size_t c;        /* window */
    size_t merge;    /* entries a window loses */
    size_t n;        /* positions written */
    size_t n_ent;    /* entries (sinks and clustered windows), the same in every layer */
    size_t raw_from; /* first position not in an entry; its row is row n_ent */
    uint16_t *rows;  /* [layer][ctx_max][row] */
    float *bias;     /* [layer][ctx_max][n_head_kv]: log(count) of entry e */
    uint32_t *count; /* [layer][ctx_max][n_head_kv] */
    /* clustering scratch: two windows of rows ping-ponged between passes, their counts */
    uint16_t *win[2];
    uint32_t *wcount[2]; /* [n_head_kv][c] */
    void *scratch;
    size_t scratch_bytes;
    int selects; /* --budget: sparse retrieval over the entries (kv_lossy.h) */
    struct kvt__eng_lsel sel;
};

static uint16_t *layer_rows(struct kv_cluster *k, uint32_t layer)
{
    return k->rows + (size_t)layer * k->base.geom.ctx_max * k->row_halfs;
}

static size_t layer_ent(const struct kv_cluster *k, uint32_t layer)
{
    return (size_t)layer * k->base.geom.ctx_max * k->base.geom.n_head_kv;
}

static void update_kept(struct kv_cluster *k)
{
    const struct kvt_eng_kv_geom *g = &k->base.geom;
    size_t row_bytes = k->row_halfs * sizeof(uint16_t);
    uint64_t per_layer =
        (uint64_t)(k->n_ent + (k->n - k->raw_from)) * row_bytes +
        (uint64_t)(k->n_ent - (k->n_ent < k->cfg.sinks ? k->n_ent : k->cfg.sinks)) * g->n_head_kv *
            CLUSTER_COUNT_BYTES;
    k->base.bytes_kept = per_layer * g->n_layer;
}

static int cl_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                    size_t *reused_out)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    (void)tokens;
    (void)n;
    (void)allow_reuse;
    k->n = k->n_ent = k->raw_from = 0;
    if (k->selects)
        kvt__eng_lsel_reset(&k->sel);
    update_kept(k);
    *reused_out = 0;
    return 0;
}

/* Clusters the window whose rows start at row n_ent of every layer (positions raw_from ..
 * raw_from + c). Returns the entries it leaves, or a negative error. */
static int cluster_window(struct kv_cluster *k, size_t *n_out)
{
    const struct kvt_eng_kv_geom *g = &k->base.geom;
    size_t hd = g->head_dim, nh = g->n_head_kv, v_off = nh * hd, rh = k->row_halfs, c = k->c;
    size_t kept = c;
    for (uint32_t l = 0; l < g->n_layer; l++) {
        uint16_t *rows = layer_rows(k, l) + k->n_ent * rh;
        size_t entries = c, left = k->merge;
        int cur = 0;
        memcpy(k->win[0], rows, c * rh * sizeof(uint16_t));
        for (size_t i = 0; i < nh * c; i++)
            k->wcount[0][i] = 1;
        /* Passes until the window has lost its share (at least one pass: merge 0 copies). */
        do {
            size_t n_a, n_b;
            kvt_cluster_sides(0, entries, &n_a, &n_b);
            size_t m = left < n_a ? left : n_a, got = 0;
            struct kvt_cluster_params p = {.merge = (uint32_t)m};
            for (size_t h = 0; h < nh; h++) {
                const uint16_t *in = k->win[cur];
                uint16_t *o = k->win[!cur];
                int rc = kvt_cluster_window_f16(k->kt, &p, in + h * hd, in + v_off + h * hd, rh, hd,
                                                entries, k->wcount[cur] + h * c, k->scratch,
                                                k->scratch_bytes, o + h * hd, o + v_off + h * hd,
                                                rh, k->wcount[!cur] + h * c, NULL, &got);
                if (rc)
                    return rc;
                if (got != entries - m) /* every head keeps as many entries (cluster.h) */
                    return -EPROTO;
            }
            entries = got;
            left -= m;
            cur = !cur;
            if (m == 0)
                break;
        } while (left > 0);
        memcpy(rows, k->win[cur], entries * rh * sizeof(uint16_t));
        float *bias = k->bias + layer_ent(k, l) + k->n_ent * nh;
        uint32_t *cnt = k->count + layer_ent(k, l) + k->n_ent * nh;
        for (size_t e = 0; e < entries; e++)
            for (size_t h = 0; h < nh; h++) {
                cnt[e * nh + h] = k->wcount[cur][h * c + e];
                bias[e * nh + h] = logf((float)cnt[e * nh + h]);
            }
        /* The positions after the window move down behind its entries. */
        memmove(rows + entries * rh, rows + c * rh,
                (k->n - (k->raw_from + c)) * rh * sizeof(uint16_t));
        kept = entries;
    }
    *n_out = kept;
    return 0;
}

static int cl_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    const struct kvt_eng_kv_geom *g = &kv->geom;
    if (pos != k->n || n > g->batch_max || pos + n > g->ctx_max)
        return -EINVAL;
    if (k->raw_from < k->cfg.sinks && pos >= k->cfg.sinks) {
        /* The sinks become entries of count 1 where they are. */
        for (uint32_t l = 0; l < g->n_layer; l++)
            for (size_t i = k->raw_from * g->n_head_kv; i < k->cfg.sinks * g->n_head_kv; i++) {
                k->count[layer_ent(k, l) + i] = 1;
                k->bias[layer_ent(k, l) + i] = 0.0f;
            }
        k->n_ent = k->raw_from = k->cfg.sinks;
    }
    while (k->raw_from >= k->cfg.sinks && k->raw_from + k->c + k->cfg.recent <= pos) {
        size_t kept;
        int rc = cluster_window(k, &kept);
        if (rc)
            return rc;
        k->n_ent += kept;
        k->raw_from += k->c;
    }
    update_kept(k);
    return 0;
}

static int cl_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                     const uint16_t *rows)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    if (layer >= kv->geom.n_layer || pos < k->raw_from || pos + n > kv->geom.ctx_max)
        return -EINVAL;
    memcpy(layer_rows(k, layer) + (k->n_ent + pos - k->raw_from) * k->row_halfs, rows,
           n * k->row_halfs * sizeof(uint16_t));
    if (pos + n > k->n) {
        k->n = pos + n;
        update_kept(k);
    }
    return 0;
}

static int cl_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                    size_t max)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    int ns = 0;
    if (end > k->n || end < k->raw_from || layer >= kv->geom.n_layer || max < 2)
        return -EINVAL;
    const uint16_t *rows = layer_rows(k, layer);
    if (k->n_ent) {
        out[ns].rows = rows;
        out[ns].pos = 0;
        out[ns].n_tokens = k->n_ent;
        out[ns].bias = k->bias + layer_ent(k, layer);
        ns++;
    }
    if (end > k->raw_from) {
        out[ns].rows = rows + k->n_ent * k->row_halfs;
        out[ns].pos = k->raw_from;
        out[ns].n_tokens = end - k->raw_from;
        out[ns].bias = NULL;
        ns++;
    }
    return ns;
}

static int cl_select(struct kvt_eng_kv *kv, uint32_t layer, const struct kvt_eng_kv_query *q,
                     struct kvt_eng_kv_span *out, size_t max, size_t *counts)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    if (!k->selects || q->n_tokens != 1)
        return KVT_ENG_KV_DECLINE;
    size_t end = q->pos + 1;
    const uint16_t *rows = layer_rows(k, layer);
    if (end > k->n || end < k->raw_from)
        return -EINVAL;
    /* Entries never change once written: their blocks' bounds are computed once. */
    kvt__eng_lsel_update(&k->sel, layer, rows, k->n_ent);
    int ns = kvt__eng_lsel_select(&k->sel, layer, q, rows, k->bias + layer_ent(k, layer), k->n_ent,
                                  rows + k->n_ent * k->row_halfs, k->raw_from, end - k->raw_from,
                                  out, max);
    if (ns < 0)
        return ns;
    counts[0] = (size_t)ns;
    return 0;
}

static int cl_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    (void)kv;
    (void)tokens;
    (void)n;
    return 0;
}

static void cl_destroy(struct kvt_eng_kv *kv)
{
    struct kv_cluster *k = (struct kv_cluster *)kv;
    if (!k)
        return;
    free(k->rows);
    free(k->bias);
    free(k->count);
    for (int i = 0; i < 2; i++) {
        free(k->win[i]);
        free(k->wcount[i]);
    }
    free(k->scratch);
    if (k->selects)
        kvt__eng_lsel_deinit(&k->sel);
    free(k);
}

static const struct kvt_eng_kv_ops cluster_ops = {
    .name = "cluster",
    .begin = cl_begin,
    .prepare = cl_prepare,
    .append = cl_append,
    .spans = cl_spans,
    .select = cl_select,
    .commit = cl_commit,
    .destroy = cl_destroy,
};

int kvt_eng_kv_cluster_create(const struct kvt_eng_kv_geom *geom,
                              const struct kvt_eng_lossy_config *cfg,
                              const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out)
{
    size_t c = cfg->window ? cfg->window : 32;
    if (sel && kvt_eng_select_config_is_set(sel) &&
        (sel->top_p != 0.0 || sel->spans != KVT_ENG_SPANS_DEFAULT || sel->prefetch ||
         !(sel->budget > 0.0 && sel->budget <= 1.0)))
        return -EINVAL; /* a budget only */
    if (!(cfg->ratio >= 0.0 && cfg->ratio < 1.0) || c < 2 || c > KVT_CLUSTER_WINDOW_MAX || c % 2 ||
        geom->batch_max == 0 || geom->ctx_max == 0 || geom->n_head_kv == 0)
        return -EINVAL;
    struct kv_cluster *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->base.ops = &cluster_ops;
    k->base.geom = *geom;
    k->base.spans_max = 2;
    k->cfg = *cfg;
    k->cfg.window = (uint32_t)c;
    k->kt = kvt_kernels();
    k->c = c;
    k->merge = (size_t)lround(cfg->ratio * (double)c);
    k->row_halfs = kvt_eng_kv_row_halfs(geom);
    /* Per position in the long run: the entries a window keeps and their counts. */
    k->base.token_bytes =
        (size_t)geom->n_layer *
        (k->row_halfs * sizeof(uint16_t) + geom->n_head_kv * CLUSTER_COUNT_BYTES) * (c - k->merge) /
        c;
    size_t ents = (size_t)geom->n_layer * geom->ctx_max * geom->n_head_kv;
    k->rows = calloc((size_t)geom->n_layer * geom->ctx_max * k->row_halfs, sizeof(uint16_t));
    k->bias = calloc(ents, sizeof(float));
    k->count = calloc(ents, sizeof(uint32_t));
    k->scratch_bytes = kvt_cluster_scratch_bytes(c);
    k->scratch = malloc(k->scratch_bytes);
    int ok = k->rows && k->bias && k->count && k->scratch;
    for (int i = 0; i < 2; i++) {
        k->win[i] = malloc(c * k->row_halfs * sizeof(uint16_t));
        k->wcount[i] = malloc(c * geom->n_head_kv * sizeof(uint32_t));
        ok = ok && k->win[i] && k->wcount[i];
    }
    if (!ok) {
        cl_destroy(&k->base);
        return -ENOMEM;
    }
    if (sel && sel->budget > 0.0) {
        int rc = kvt__eng_lsel_init(&k->sel, geom, sel->budget);
        if (rc) {
            cl_destroy(&k->base);
            return rc;
        }
        k->selects = 1;
        k->base.spans_max = kvt__eng_lsel_spans_max(geom);
    }
    *out = &k->base;
    return 0;
}
