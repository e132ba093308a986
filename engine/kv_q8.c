/*
 * q8 KV mode: plain 8-bit KV quantization, the calibration point that every lossy or sparse method
 * is judged against (EVALUATION.md). Rows stay in the engine's memory like resident, but each key
 * and value row is quantized on append and dequantized back to fp16 at once ("fake"
 * quantization): attention then runs the unchanged fp16 code on exactly the values an 8-bit cache
 * would give back, so the mode measures what the quantization costs and nothing else.
 *
 * Format: asymmetric groups of KVT_ENG_Q8_GROUP (32) values along head_dim, separately for keys
 * and values of each KV head; per group an fp16 minimum and an fp16 scale, codes rounded to
 * nearest. For SmolLM2 (head_dim 64) that is two groups per head and 9 bits a value counting the
 * group constants (12,960 bytes a token against 23,040 in fp16).
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kv.h"
#include "engine/quant.h"

/* Bytes a group keeps besides its codes: fp16 minimum and fp16 scale. */
#define Q8_GROUP_META_BYTES 4

struct kv_q8 {
    struct kvt_eng_kv base;
    struct kvt_eng_kv *res; /* resident cache of the dequantized rows */
    size_t row_halfs;
    uint16_t *stage; /* batch_max rows being quantized */
};

void kvt_eng_kv_q8_round(uint16_t *vals, size_t n)
{
    assert(n % KVT_ENG_Q8_GROUP == 0);
    for (size_t g = 0; g < n; g += KVT_ENG_Q8_GROUP) {
        uint16_t *v = vals + g;
        float lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < KVT_ENG_Q8_GROUP; i++) {
            float x = kvt_eng_fp16_to_fp32(v[i]);
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        /* lo is an fp16 value already; the scale is rounded to what a stored group would keep. */
        float m = lo;
        float s = kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16((hi - lo) / 255.0f));
        if (s == 0.0f) {
            for (size_t i = 0; i < KVT_ENG_Q8_GROUP; i++)
                v[i] = kvt_eng_fp32_to_fp16(m);
            continue;
        }
        for (size_t i = 0; i < KVT_ENG_Q8_GROUP; i++) {
            float q = nearbyintf((kvt_eng_fp16_to_fp32(v[i]) - m) / s);
            q = q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q;
            v[i] = kvt_eng_fp32_to_fp16(m + q * s);
        }
    }
}

static int q8_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                    size_t *reused_out)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    return q->res->ops->begin(q->res, tokens, n, allow_reuse, reused_out);
}

static int q8_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    return q->res->ops->prepare(q->res, pos, n);
}

static int q8_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                     const uint16_t *rows)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    if (n > kv->geom.batch_max)
        return -EINVAL;
    memcpy(q->stage, rows, n * q->row_halfs * sizeof(uint16_t));
    /* A row is [k|v][kv_head][head_dim] and head_dim is a multiple of the group, so groups of
     * consecutive values never straddle two heads or keys and values. */
    kvt_eng_kv_q8_round(q->stage, n * q->row_halfs);
    return q->res->ops->append(q->res, layer, pos, n, q->stage);
}

static int q8_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                    size_t max)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    return q->res->ops->spans(q->res, layer, end, out, max);
}

static int q8_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    return q->res->ops->commit(q->res, tokens, n);
}

static void q8_destroy(struct kvt_eng_kv *kv)
{
    struct kv_q8 *q = (struct kv_q8 *)kv;
    kvt_eng_kv_destroy(q->res);
    free(q->stage);
    free(q);
}

static const struct kvt_eng_kv_ops q8_ops = {
    .name = "q8",
    .begin = q8_begin,
    .prepare = q8_prepare,
    .append = q8_append,
    .spans = q8_spans,
    .commit = q8_commit,
    .destroy = q8_destroy,
};

int kvt_eng_kv_q8_create(const struct kvt_eng_kv_geom *geom, struct kvt_eng_kv **out)
{
    if (geom->head_dim % KVT_ENG_Q8_GROUP || geom->batch_max == 0)
        return -EINVAL;
    struct kv_q8 *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->base.ops = &q8_ops;
    q->base.geom = *geom;
    q->row_halfs = kvt_eng_kv_row_halfs(geom);
    int rc = kvt_eng_kv_resident_create(geom, &q->res);
    if (rc) {
        free(q);
        return rc;
    }
    q->base.spans_max = q->res->spans_max;
    /* What an 8-bit cache would hold: one byte a value plus each group's minimum and scale. */
    q->base.token_bytes = (size_t)geom->n_layer *
                          (q->row_halfs + q->row_halfs / KVT_ENG_Q8_GROUP * Q8_GROUP_META_BYTES);
    q->stage = malloc(geom->batch_max * q->row_halfs * sizeof(uint16_t));
    if (!q->stage) {
        q8_destroy(&q->base);
        return -ENOMEM;
    }
    *out = &q->base;
    return 0;
}
