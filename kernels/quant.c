/*
 * The quantization format's helpers (kernels/quant.h): checking a format, the sizes of a packed
 * block, and the one definition of a group's scale, which every variant's quantize calls.
 */
#include "kernels/quant.h"
#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kvtier/errors.h"

int kvt_quant_fmt_check(const struct kvt_quant_fmt *f)
{
    if (!f || (f->bits != 8 && f->bits != 4) ||
        (f->axis != KVT_QUANT_AXIS_TOKEN && f->axis != KVT_QUANT_AXIS_CHANNEL))
        return KVT_E_INVAL;
    if (f->head_dim < 2 || f->head_dim > KVT_QUANT_HEAD_DIM_MAX || f->head_dim % 2)
        return KVT_E_INVAL;
    if (f->group < 2 || f->group > KVT_QUANT_GROUP_MAX || f->group % 2)
        return KVT_E_INVAL;
    if (f->axis == KVT_QUANT_AXIS_TOKEN && f->head_dim % f->group)
        return KVT_E_INVAL;
    return 0;
}

size_t kvt_quant_groups(const struct kvt_quant_fmt *f, size_t n)
{
    if (f->axis == KVT_QUANT_AXIS_TOKEN)
        return n * (f->head_dim / f->group);
    return (n + f->group - 1) / f->group * f->head_dim;
}

size_t kvt_quant_code_bytes(const struct kvt_quant_fmt *f, size_t n)
{
    return n * f->head_dim * f->bits / 8;
}

size_t kvt_quant_bytes(const struct kvt_quant_fmt *f, size_t n)
{
    return kvt_quant_code_bytes(f, n) + kvt_quant_groups(f, n) * KVT_QUANT_PARAM_BYTES;
}

/* hi - lo is exact in double (two fp16 values: at most 41 significant bits), and so is s * L for
 * an fp16 s and L <= 255, so the comparisons below are exact: the result is the smallest fp16
 * whose multiple covers the range, whatever the starting guess. Positive fp16 bit patterns are
 * ordered like their values, so stepping the bits steps the value. */
uint16_t kvt_quant_scale_f16(uint16_t lo, uint16_t hi, uint32_t bits)
{
    const double range = (double)kvt_f16_to_f32(hi) - (double)kvt_f16_to_f32(lo);
    const double levels = (double)((1u << bits) - 1u);
    if (!(range > 0.0))
        return 0;
    uint16_t s = kvt_f32_to_f16((float)(range / levels));
    while ((double)kvt_f16_to_f32(s) * levels < range)
        s++;
    while (s > 0 && (double)kvt_f16_to_f32((uint16_t)(s - 1)) * levels >= range)
        s--;
    return s;
}

int kvt_quant_chunk_check(const struct kvt_quant_chunk *c)
{
    if (!c || kvt_quant_fmt_check(&c->keys) || kvt_quant_fmt_check(&c->values) ||
        c->keys.head_dim != c->values.head_dim || !c->n_layer || !c->n_kv_head)
        return KVT_E_INVAL;
    return 0;
}

size_t kvt_quant_chunk_bytes(const struct kvt_quant_chunk *c, size_t n_tokens)
{
    if (kvt_quant_chunk_check(c))
        return 0;
    return (size_t)c->n_layer * c->n_kv_head *
           (kvt_quant_bytes(&c->keys, n_tokens) + kvt_quant_bytes(&c->values, n_tokens));
}

/* Runs the block kernel over every (layer, k|v, KV head) block: the rows of a block are one KV
 * head's head_dim values of each token, a whole token row (2 * n_kv_head * head_dim) apart. */
static void chunk_blocks(const struct kvt_kernels *kt, const struct kvt_quant_chunk *c,
                         uint16_t *chunk, size_t n_tokens, uint8_t *packed, int dequant)
{
    const size_t d = c->keys.head_dim, row = 2 * (size_t)c->n_kv_head * d;
    const size_t bk = kvt_quant_bytes(&c->keys, n_tokens),
                 bv = kvt_quant_bytes(&c->values, n_tokens);
    for (size_t l = 0; l < c->n_layer; l++) {
        for (size_t kv = 0; kv < 2; kv++) {
            const struct kvt_quant_fmt *f = kv ? &c->values : &c->keys;
            for (size_t h = 0; h < c->n_kv_head; h++) {
                uint16_t *x = chunk + l * n_tokens * row + (kv * c->n_kv_head + h) * d;
                uint8_t *b = packed + l * c->n_kv_head * (bk + bv) + kv * c->n_kv_head * bk +
                             h * (kv ? bv : bk);
                if (dequant)
                    kt->dequant_f16(f, b, n_tokens, x, row);
                else
                    kt->quant_f16(f, x, n_tokens, row, b);
            }
        }
    }
}

int kvt_quant_chunk_f16(const struct kvt_kernels *kt, const struct kvt_quant_chunk *c,
                        const uint16_t *chunk, size_t n_tokens, uint8_t *out, size_t out_cap)
{
    if (kvt_quant_chunk_check(c) || out_cap < kvt_quant_chunk_bytes(c, n_tokens) ||
        (n_tokens && (!chunk || !out)))
        return KVT_E_INVAL;
    /* The kernels only read the rows; the cast lets one walker serve both directions. */
    chunk_blocks(kt ? kt : kvt_kernels(), c, (uint16_t *)(uintptr_t)chunk, n_tokens, out, 0);
    return 0;
}

int kvt_dequant_chunk_f16(const struct kvt_kernels *kt, const struct kvt_quant_chunk *c,
                          const uint8_t *in, size_t in_len, size_t n_tokens, uint16_t *chunk)
{
    if (kvt_quant_chunk_check(c) || in_len != kvt_quant_chunk_bytes(c, n_tokens) ||
        (n_tokens && (!chunk || !in)))
        return KVT_E_INVAL;
    chunk_blocks(kt ? kt : kvt_kernels(), c, chunk, n_tokens, (uint8_t *)(uintptr_t)in, 1);
    return 0;
}
