/*
 * Resident KV mode: the reference. All rows stay in the engine's memory as fp16 (like llama.cpp's
 * default f16 cache), one contiguous array per layer, so every layer is a single span.
 */
#include "engine/kv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct kv_resident {
    struct kvt_eng_kv base;
    size_t row_halfs;
    size_t n;       /* positions written */
    uint16_t *rows; /* [layer][ctx_max][row] */
};

static uint16_t *layer_rows(struct kv_resident *r, uint32_t layer)
{
    return r->rows + (size_t)layer * r->base.geom.ctx_max * r->row_halfs;
}

static int res_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                     size_t *reused_out)
{
    struct kv_resident *r = (struct kv_resident *)kv;
    (void)tokens;
    (void)n;
    (void)allow_reuse;
    r->n = 0;
    *reused_out = 0;
    return 0;
}

static int res_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    struct kv_resident *r = (struct kv_resident *)kv;
    /* pos < n: a selective step (kvt_eng_forward_at) rewrites rows already held. */
    if (pos > r->n || n > kv->geom.batch_max || pos + n > kv->geom.ctx_max)
        return -EINVAL;
    return 0;
}

static int res_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                      const uint16_t *rows)
{
    struct kv_resident *r = (struct kv_resident *)kv;
    if (layer >= kv->geom.n_layer || pos + n > kv->geom.ctx_max)
        return -EINVAL;
    memcpy(layer_rows(r, layer) + pos * r->row_halfs, rows, n * r->row_halfs * sizeof(uint16_t));
    if (pos + n > r->n)
        r->n = pos + n;
    return 0;
}

static int res_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                     size_t max)
{
    struct kv_resident *r = (struct kv_resident *)kv;
    if (end > r->n || layer >= kv->geom.n_layer || max < 1)
        return -EINVAL;
    out[0].rows = layer_rows(r, layer);
    out[0].pos = 0;
    out[0].n_tokens = end;
    return 1;
}

static int res_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    (void)kv;
    (void)tokens;
    (void)n;
    return 0;
}

static void res_destroy(struct kvt_eng_kv *kv)
{
    struct kv_resident *r = (struct kv_resident *)kv;
    free(r->rows);
    free(r);
}

static const struct kvt_eng_kv_ops resident_ops = {
    .name = "resident",
    .begin = res_begin,
    .prepare = res_prepare,
    .append = res_append,
    .spans = res_spans,
    .commit = res_commit,
    .destroy = res_destroy,
};

int kvt_eng_kv_resident_create(const struct kvt_eng_kv_geom *geom, struct kvt_eng_kv **out)
{
    struct kv_resident *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->base.ops = &resident_ops;
    r->base.geom = *geom;
    r->base.spans_max = 1;
    r->row_halfs = kvt_eng_kv_row_halfs(geom);
    r->base.token_bytes = (size_t)geom->n_layer * r->row_halfs * sizeof(uint16_t);
    r->rows = calloc((size_t)geom->n_layer * geom->ctx_max * r->row_halfs, sizeof(uint16_t));
    if (!r->rows) {
        free(r);
        return -ENOMEM;
    }
    *out = &r->base;
    return 0;
}
