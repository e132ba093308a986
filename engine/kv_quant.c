/*
 * quant KV mode (issue 12): rows that leave the recent window are kept as the kernels' group
 * quantization (kernels/quant.h, 8 or 4 bits, per-group fp16 scale and minimum) and attention
 * reads them back dequantized. The attention sinks and the recent window stay fp16, exactly as
 * computed.
 *
 * Storage. Per layer, a log of packed blocks: each prepare() quantizes the positions that left the
 * window since the last one as one block per (k|v, KV head), appended to the layer's log; that
 * log is what the mode keeps (bytes_kept). The engine's attention runs on fp16, so each block is
 * dequantized once, right after it is written, into the layer's fp16 working rows, which then
 * hold exactly what a reader of the packed form would get back; later steps read those rows (a
 * cache of the dequantized form, so a decode step does not unpack the whole context again).
 *
 * Grouping. Default: keys and values in groups of `group` channels of one row (along head_dim,
 * "per token"). keys_per_channel: keys in groups of `group` consecutive positions of one channel
 * (KIVI's keys per channel, which keeps outlier channels in their own groups); a key waits in fp16
 * until the whole group of positions has left the window. Values stay per token.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kv.h"
#include "engine/kv_lossy.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"

struct kv_quant {
    struct kvt_eng_kv base;
    struct kvt_eng_lossy_config cfg;
    struct kvt_quant_fmt fmt[2]; /* keys, values */
    const struct kvt_kernels *kt;
    size_t row_halfs;
    size_t n;       /* positions written */
    size_t done[2]; /* keys / values of positions [sinks, done) are quantized */
    uint16_t *rows; /* [layer][ctx_max][row] fp16 working rows */
    uint8_t *packed;
    size_t packed_cap; /* bytes of one layer's log */
    size_t *packed_len;
    uint64_t packed_total;
    int selects; /* --budget: sparse retrieval over the rows (kv_lossy.h) */
    struct kvt__eng_lsel sel;
};

static uint16_t *layer_rows(struct kv_quant *q, uint32_t layer)
{
    return q->rows + (size_t)layer * q->base.geom.ctx_max * q->row_halfs;
}

static void update_kept(struct kv_quant *q)
{
    const struct kvt_eng_kv_geom *g = &q->base.geom;
    size_t half_bytes = (size_t)g->n_head_kv * g->head_dim * sizeof(uint16_t), fp16_rows = 0;
    for (int kv = 0; kv < 2; kv++)
        fp16_rows += q->n - (q->done[kv] - q->cfg.sinks);
    q->base.bytes_kept = q->packed_total + (uint64_t)g->n_layer * fp16_rows * half_bytes;
}

static int qt_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                    size_t *reused_out)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    (void)tokens;
    (void)n;
    (void)allow_reuse;
    q->n = 0;
    q->done[0] = q->done[1] = q->cfg.sinks;
    memset(q->packed_len, 0, kv->geom.n_layer * sizeof(*q->packed_len));
    q->packed_total = 0;
    if (q->selects)
        kvt__eng_lsel_reset(&q->sel);
    update_kept(q);
    *reused_out = 0;
    return 0;
}

/* Quantizes k|v `side` of positions [from, to) in every layer and KV head, and reads it back. */
static void quantize_range(struct kv_quant *q, int side, size_t from, size_t to)
{
    const struct kvt_eng_kv_geom *g = &q->base.geom;
    const struct kvt_quant_fmt *f = &q->fmt[side];
    size_t n = to - from, hd = g->head_dim, block = kvt_quant_bytes(f, n);
    for (uint32_t l = 0; l < g->n_layer; l++) {
        uint16_t *base = layer_rows(q, l) + from * q->row_halfs + (size_t)side * g->n_head_kv * hd;
        for (uint32_t h = 0; h < g->n_head_kv; h++) {
            uint8_t *out = q->packed + (size_t)l * q->packed_cap + q->packed_len[l];
            q->kt->quant_f16(f, base + h * hd, n, q->row_halfs, out);
            q->kt->dequant_f16(f, out, n, base + h * hd, q->row_halfs);
            q->packed_len[l] += block;
            q->packed_total += block;
        }
    }
}

static int qt_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    if (pos != q->n || n > kv->geom.batch_max || pos + n > kv->geom.ctx_max)
        return -EINVAL;
    size_t limit = pos > q->cfg.recent ? pos - q->cfg.recent : 0;
    for (int side = 0; side < 2; side++) {
        size_t to = limit;
        if (q->fmt[side].axis == KVT_QUANT_AXIS_CHANNEL) /* whole groups of positions only */
            to = to > q->cfg.sinks
                     ? q->cfg.sinks + (to - q->cfg.sinks) / q->fmt[side].group * q->fmt[side].group
                     : 0;
        if (to > q->done[side]) {
            quantize_range(q, side, q->done[side], to);
            q->done[side] = to;
        }
    }
    update_kept(q);
    return 0;
}

static int qt_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                     const uint16_t *rows)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    /* prepare() took pos == n: rows already quantized are never written again. */
    if (layer >= kv->geom.n_layer || pos + n > kv->geom.ctx_max)
        return -EINVAL;
    memcpy(layer_rows(q, layer) + pos * q->row_halfs, rows, n * q->row_halfs * sizeof(uint16_t));
    if (pos + n > q->n) {
        q->n = pos + n;
        update_kept(q);
    }
    return 0;
}

static int qt_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                    size_t max)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    if (end > q->n || layer >= kv->geom.n_layer || max < 1)
        return -EINVAL;
    out[0].rows = layer_rows(q, layer);
    out[0].pos = 0;
    out[0].n_tokens = end;
    return 1;
}

static int qt_select(struct kvt_eng_kv *kv, uint32_t layer, const struct kvt_eng_kv_query *qr,
                     struct kvt_eng_kv_span *out, size_t max, size_t *counts)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    if (!q->selects || qr->n_tokens != 1)
        return KVT_ENG_KV_DECLINE;
    /* Rows before both sides' quantized end no longer change. */
    size_t frozen = q->done[0] < q->done[1] ? q->done[0] : q->done[1], end = qr->pos + 1;
    const uint16_t *rows = layer_rows(q, layer);
    if (end > q->n || frozen > end)
        return -EINVAL;
    kvt__eng_lsel_update(&q->sel, layer, rows, frozen);
    int ns = kvt__eng_lsel_select(&q->sel, layer, qr, rows, NULL, frozen,
                                  rows + frozen * q->row_halfs, frozen, end - frozen, out, max);
    if (ns < 0)
        return ns;
    counts[0] = (size_t)ns;
    return 0;
}

static int qt_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    (void)kv;
    (void)tokens;
    (void)n;
    return 0;
}

static void qt_destroy(struct kvt_eng_kv *kv)
{
    struct kv_quant *q = (struct kv_quant *)kv;
    if (!q)
        return;
    free(q->rows);
    free(q->packed);
    free(q->packed_len);
    if (q->selects)
        kvt__eng_lsel_deinit(&q->sel);
    free(q);
}

static const struct kvt_eng_kv_ops quant_ops = {
    .name = "quant",
    .begin = qt_begin,
    .prepare = qt_prepare,
    .append = qt_append,
    .spans = qt_spans,
    .select = qt_select,
    .commit = qt_commit,
    .destroy = qt_destroy,
};

int kvt_eng_kv_quant_create(const struct kvt_eng_kv_geom *geom,
                            const struct kvt_eng_lossy_config *cfg,
                            const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out)
{
    uint32_t bits = cfg->bits ? cfg->bits : 8, group = cfg->group ? cfg->group : 32;
    if (sel && kvt_eng_select_config_is_set(sel) &&
        (sel->top_p != 0.0 || sel->spans != KVT_ENG_SPANS_DEFAULT || sel->prefetch ||
         !(sel->budget > 0.0 && sel->budget <= 1.0)))
        return -EINVAL; /* a budget only */
    struct kvt_quant_fmt fk = {bits, KVT_QUANT_AXIS_TOKEN, group, geom->head_dim};
    struct kvt_quant_fmt fv = fk;
    if (cfg->keys_per_channel)
        fk.axis = KVT_QUANT_AXIS_CHANNEL;
    if ((bits != 8 && bits != 4) || kvt_quant_fmt_check(&fk) || kvt_quant_fmt_check(&fv) ||
        geom->batch_max == 0 || geom->ctx_max == 0)
        return -EINVAL;
    struct kv_quant *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->base.ops = &quant_ops;
    q->base.geom = *geom;
    q->base.spans_max = 1;
    q->cfg = *cfg;
    q->cfg.bits = bits;
    q->cfg.group = group;
    q->fmt[0] = fk;
    q->fmt[1] = fv;
    q->kt = kvt_kernels();
    q->row_halfs = kvt_eng_kv_row_halfs(geom);
    /* Per position in the long run: the packed bytes of a group of positions, spread over it. */
    q->base.token_bytes = (size_t)geom->n_layer * geom->n_head_kv *
                          ((kvt_quant_bytes(&fk, group) + kvt_quant_bytes(&fv, group)) / group);
    /* A layer's log holds at most every position once, in blocks whose sizes add up (codes are
     * linear in the rows; a keys-per-channel block is whole groups). */
    q->packed_cap = (size_t)geom->n_head_kv *
                    (kvt_quant_bytes(&fk, geom->ctx_max) + kvt_quant_bytes(&fv, geom->ctx_max));
    q->rows = calloc((size_t)geom->n_layer * geom->ctx_max * q->row_halfs, sizeof(uint16_t));
    q->packed = malloc((size_t)geom->n_layer * q->packed_cap);
    q->packed_len = calloc(geom->n_layer, sizeof(*q->packed_len));
    if (!q->rows || !q->packed || !q->packed_len) {
        qt_destroy(&q->base);
        return -ENOMEM;
    }
    q->done[0] = q->done[1] = q->cfg.sinks;
    if (sel && sel->budget > 0.0) {
        int rc = kvt__eng_lsel_init(&q->sel, geom, sel->budget);
        if (rc) {
            qt_destroy(&q->base);
            return rc;
        }
        q->selects = 1;
        q->base.spans_max = kvt__eng_lsel_spans_max(geom);
    }
    *out = &q->base;
    return 0;
}
